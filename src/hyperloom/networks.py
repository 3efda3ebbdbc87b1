"""Example target networks (an MLP and the pFedHN LeNet) that checkpoints rebuild from a config.

Any ``nn.Module`` can be a target; these builders exist so that a checkpoint written by a
recipe says how to rebuild its target (``{"builder": "mlp", "kwargs": {...}}``) and
``hyperloom describe``/``export`` need no Python code from the user. A built module carries its
config in the attribute ``hyperloom_config``, which :func:`hyperloom.save` reads.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def _builder(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _BUILDERS[fn.__name__] = fn
    return fn


@_builder
def mlp(in_features: int, hidden: Sequence[int], out_features: int, activation: str = "relu"):
    """``Flatten -> (Linear -> act) x len(hidden) -> Linear``.

    Example:
        >>> mlp(784, (100,), 10)
        Sequential(
          (0): Flatten(start_dim=1, end_dim=-1)
          (1): Linear(in_features=784, out_features=100, bias=True)
          (2): ReLU()
          (3): Linear(in_features=100, out_features=10, bias=True)
        )
    """
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}
    if activation not in acts:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(acts)}")
    layers: list[nn.Module] = [nn.Flatten()]
    sizes = [in_features, *hidden]
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), acts[activation]()]
    layers.append(nn.Linear(sizes[-1], out_features))
    return nn.Sequential(*layers)


@_builder
def lenet(in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> nn.Sequential:
    """The pFedHN paper's LeNet-style target: conv 5x5 16, pool, conv 5x5 32, pool, fc 120, 84, out.

    Images of 28x28 or more use unpadded convolutions (28 -> 24 -> 12 -> 8 -> 4, as the paper's
    32 -> 28 -> 14 -> 10 -> 5); smaller ones (the 8x8 digits) pad both convolutions by 2 so that
    the two poolings leave a 2x2 map.

    Args:
        in_channels: image channels.
        image_size: height = width of the images.
        num_classes: outputs of the last layer (named ``out``).

    Returns:
        An ``nn.Sequential`` with named layers ``conv1, conv2, fc1, fc2, out`` (and activations).

    Example:
        >>> lenet()(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> lenet(image_size=8)(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    if image_size < 4:
        raise ValueError(f"lenet needs images of at least 4x4, got image_size={image_size}")
    pad = 0 if image_size >= 28 else 2
    side = image_size
    for _ in range(2):
        side = (side + 2 * pad - 4) // 2  # conv 5x5, then pool 2x2
    if side < 1:
        raise ValueError(f"image_size={image_size} is too small for two conv+pool stages")
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(in_channels, 16, 5, padding=pad)),
                ("act1", nn.ReLU()),
                ("pool1", nn.MaxPool2d(2)),
                ("conv2", nn.Conv2d(16, 32, 5, padding=pad)),
                ("act2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(2)),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(32 * side * side, 120)),
                ("act3", nn.ReLU()),
                ("fc2", nn.Linear(120, 84)),
                ("act4", nn.ReLU()),
                ("out", nn.Linear(84, num_classes)),
            ]
        )
    )


def build_target(builder: str, **kwargs: Any) -> nn.Module:
    """Build a target by builder name and tag it with its config.

    Example:
        >>> net = build_target("mlp", in_features=64, hidden=[32], out_features=10)
        >>> net.hyperloom_config
        {'builder': 'mlp', 'kwargs': {'in_features': 64, 'hidden': [32], 'out_features': 10}}
    """
    if builder not in _BUILDERS:
        raise ValueError(f"unknown target builder {builder!r}; available: {', '.join(_BUILDERS)}")
    module = _BUILDERS[builder](**kwargs)
    config = {"builder": builder, "kwargs": dict(kwargs)}
    object.__setattr__(module, "hyperloom_config", config)  # plain data, not a submodule
    return module


def target_from_config(config: Mapping[str, Any], checkpoint_format: int = 2) -> nn.Module:
    """Inverse of a module's ``hyperloom_config``.

    Args:
        config: ``{"builder": name, "kwargs": {...}}``.
        checkpoint_format: the format of the checkpoint the config comes from; in format 1
            (hyperloom 0.1) ``lenet`` names 0.1's LeNet with unnamed layers (:func:`lenet_v01`).

    Returns:
        The built module, tagged with its (current) config.

    Example:
        >>> net = target_from_config({"builder": "lenet", "kwargs": {}}, checkpoint_format=1)
        >>> net.hyperloom_config["builder"], list(dict(net.named_children()))[:2]
        ('lenet_v01', ['0', '1'])
    """
    builder = str(config["builder"])
    if checkpoint_format < 2 and builder == "lenet":
        builder = "lenet_v01"
    return build_target(builder, **dict(config.get("kwargs", {})))


def list_targets() -> list[str]:
    """Names of the target builders."""
    return list(_BUILDERS)


@_builder
def lenet_v01(in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> nn.Sequential:
    """hyperloom 0.1's ``lenet`` (unnamed layers, unpadded), kept so that its checkpoints load.

    Args:
        in_channels: image channels.
        image_size: height = width of the images (at least 16).
        num_classes: outputs of the last layer.

    Returns:
        An ``nn.Sequential`` whose layers are numbered ``0..11``, as 0.1 built them.

    Example:
        >>> lenet_v01(image_size=16)(torch.randn(2, 1, 16, 16)).shape
        torch.Size([2, 10])
    """
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ValueError(f"image_size={image_size} is too small for two 5x5 convolutions")
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * side * side, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
