"""The MLP trunk shared by the built-in generators (criterion 5: hypernetwork architecture)."""

from __future__ import annotations

import copy
import inspect
import itertools
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import activation as _torch_activations

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}

Activation = str | nn.Module | Mapping[str, Any]


def activation_module(activation: Activation) -> nn.Module:
    """A fresh activation module from a name, a module or its :func:`activation_config`.

    Args:
        activation: a name of :data:`ACTIVATIONS` (``"relu"``, ``"leaky_relu"``, ...), an
            instance of one of ``torch.nn``'s activation classes (``nn.LeakyReLU(0.1)``; copied),
            or ``{"name": class name, "kwargs": {...}}`` as :func:`activation_config` writes it.

    Raises:
        ValueError: an unknown name, a module that is not one of ``torch.nn``'s activations, or
            a configuration whose class or arguments do not fit.

    Example:
        >>> activation_module("leaky_relu")
        LeakyReLU(negative_slope=0.01)
        >>> activation_module({"name": "LeakyReLU", "kwargs": {"negative_slope": 0.2}})
        LeakyReLU(negative_slope=0.2)
    """
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}, "
                "or pass a torch.nn activation module such as nn.LeakyReLU(0.1)"
            )
        return ACTIVATIONS[activation]()
    if isinstance(activation, nn.Module):
        _activation_class(type(activation).__name__)  # raises unless torch.nn's own
        return copy.deepcopy(activation)
    if isinstance(activation, Mapping):
        name, kwargs = activation.get("name"), activation.get("kwargs", {})
        if not isinstance(name, str) or not isinstance(kwargs, Mapping):
            raise ValueError(f"an activation config needs a name and kwargs, got {activation!r}")
        cls = _activation_class(name)
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ValueError(f"activation {name} does not take {dict(kwargs)!r}: {e}") from None
    raise ValueError(f"activation must be a name or an nn.Module, got {activation!r}")


def activation_config(activation: Activation) -> str | dict[str, Any]:
    """The JSON-ready form of an activation: its name, or its class and constructor arguments.

    Example:
        >>> activation_config(nn.LeakyReLU(0.2))
        {'name': 'LeakyReLU', 'kwargs': {'negative_slope': 0.2}}
    """
    if isinstance(activation, str):
        activation_module(activation)  # raises on an unknown name
        return activation
    module = activation_module(activation)
    params = inspect.signature(type(module).__init__).parameters
    kwargs = {
        k: getattr(module, k)
        for k in params
        if k not in ("self", "inplace") and isinstance(getattr(module, k, None), (int, float, str))
    }
    return {"name": type(module).__name__, "kwargs": kwargs}


def _activation_class(name: str) -> type[nn.Module]:
    cls = getattr(_torch_activations, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or cls is nn.Module:
        raise ValueError(
            f"{name!r} is not one of torch.nn's activation modules (torch.nn.modules.activation)"
        )
    return cls


class MLPTrunk(nn.Module):
    """``Linear -> act`` for each hidden size, then (by default) RMS normalisation of the features.

    The features every readout layer reads have a root-mean-square of 1 for every context, so
    the scale of the generated weights is what the hyperfan initialisation set, for each
    context and not only on average over contexts: otherwise a context whose features happen to
    be 15% larger scales every generated layer by 15%, and a 10-layer target by a factor of 4.

    Args:
        in_dim: input size.
        hidden: hidden sizes.
        activation: a name (``relu``, ``elu``, ``gelu``, ``silu``, ``tanh``, ``leaky_relu``) or
            a ``torch.nn`` activation module (see :func:`activation_module`).
        norm: RMS-normalise the features (default). ``False`` leaves them as the last
            activation gives them, the plain MLP of most hypernetworks (Ha et al.; von Oswald et
            al.): a few fewer operations per call, and the scale of the generated weights then
            holds on average over contexts only.
        final_activation: apply the activation after the last hidden layer too (default).
            ``False`` ends the trunk on a linear layer, as pFedHN's hypernetwork does.

    Shapes:
        ``(*, in_dim) -> (*, out_dim)`` with ``out_dim = hidden[-1]`` (``in_dim`` without
        layers, when the trunk only normalises).

    Example:
        >>> MLPTrunk(8, (32, 16))(torch.randn(3, 8)).shape
        torch.Size([3, 16])
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        activation: Activation = "relu",
        *,
        norm: bool = True,
        final_activation: bool = True,
    ) -> None:
        super().__init__()
        if any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be >= 1, got {tuple(hidden)}")
        sizes = [in_dim, *(int(h) for h in hidden)]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.act = activation_module(activation)
        self.out_dim = sizes[-1]
        self.norm = bool(norm)
        self.final_activation = bool(final_activation)

    def _act(self, x: Tensor, i: int) -> Tensor:
        """The activation after hidden layer ``i`` (none after the last without it)."""
        if i == len(self.layers) - 1 and not self.final_activation:
            return x
        return self.act(x)

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = self._act(layer(x), i)
        return F.rms_norm(x, (x.shape[-1],)) if self.norm else x

    def forward_pair(self, c: Tensor, e: Tensor) -> Tensor:
        """The trunk on ``cat([c broadcast over K], e broadcast over M)`` without building it.

        Args:
            c: ``(M, d_c)`` conditioning vectors.
            e: ``(K, d_e)`` learned embeddings (chunks or components), shared by every row of
                ``c``, or ``(M, K, d_e)``, one set per row.

        Returns:
            ``(M, K, out_dim)``; the first layer's matmul is split between the two parts, so the
            ``(M, K, d_c + d_e)`` concatenation is never materialised.
        """
        if not self.layers:
            m, k = c.shape[0], e.shape[-2]
            x = torch.cat([c[:, None].expand(m, k, -1), e.expand(m, k, -1)], dim=-1)
            return F.rms_norm(x, (x.shape[-1],)) if self.norm else x
        first = cast(nn.Linear, self.layers[0])
        d = c.shape[-1]
        h = F.linear(c, first.weight[:, :d])[:, None] + F.linear(e, first.weight[:, d:], first.bias)
        x = self._act(h, 0)  # (M, K, hidden[0])
        for i, layer in enumerate(self.layers[1:], start=1):
            x = self._act(layer(x), i)
        return F.rms_norm(x, (x.shape[-1],)) if self.norm else x  # (M, K, out_dim)
