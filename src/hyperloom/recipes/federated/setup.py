"""The federated recipe's set-up: configuration, client data, target, hypernetwork, optimiser.

Shared by the in-process loop (:mod:`.recipe`) and the Flower apps (:mod:`.flower_app`), so that
neither imports the other's module for it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ...conditioning import TaskEmbedding
from ...data import DATASET_NAMES, fashion_mnist_available, load_dataset
from ...federated import (
    IDLE_EMBEDDINGS,
    class_shares,
    dirichlet_shares,
    partition_clients,
)
from ...generators import HeadsGenerator
from ...hypernet import HyperNetwork
from ...networks import build_target
from ..config import check_ranges
from ..distributed import amp_field, device_field, nproc_field

LOGGER = logging.getLogger("hyperloom.federated")

METHODS = ("pfedhn", "pfedhn-pc", "fedavg", "fedavg-ft", "local")
TRUST_BOUND = 10.0
"""The default trust bound: ``||reply - sent|| <= 10 ||sent||`` (see docs/federated.md)."""

PERSONAL_HEAD = ("out.*",)
"""pFedHN-PC: the target's parameters that stay on the client (the classifier head)."""


@dataclass
class Config:
    """Options of ``hyperloom train federated`` (also the Flower apps' run config)."""

    dataset: str = field(
        default="fashion-mnist",
        metadata={
            "help": "dataset ('auto': Fashion-MNIST if present, else digits)",
            "choices": DATASET_NAMES,
        },
    )
    data_dir: str | None = field(default=None, metadata={"help": "Fashion-MNIST IDX folder"})
    split: str = field(
        default="classes",
        metadata={
            "help": "non-IID split: a few classes per client, or Dirichlet(alpha)",
            "choices": ("classes", "dirichlet"),
        },
    )
    classes_per_client: int = field(
        default=2, metadata={"help": "classes per client (split=classes)"}
    )
    alpha: float = field(
        default=0.5, metadata={"help": "Dirichlet concentration (split=dirichlet)"}
    )
    samples_per_client: tuple[int, ...] | None = field(
        default=None,
        metadata={
            "help": "training examples per client: LOW,HIGH draws each client's count "
            "uniformly from LOW..HIGH, one value gives every client that many (none: its "
            "whole share); the test split keeps the whole shares",
            "range": (1, None),
        },
    )
    num_clients: int = field(default=10, metadata={"help": "clients that take part in training"})
    new_clients: int = field(
        default=2, metadata={"help": "further clients that join after training (0: none)"}
    )
    methods: tuple[str, ...] = field(
        default=METHODS, metadata={"help": f"methods to run, from {','.join(METHODS)}"}
    )
    engine: str = field(
        default="inprocess",
        metadata={
            "help": "inprocess (no Ray) or flower (Flower's simulation engine)",
            "choices": ("inprocess", "flower"),
        },
    )
    rounds: int = field(default=100, metadata={"help": "communication rounds"})
    clients_per_round: int = field(default=5, metadata={"help": "clients sampled per round"})
    inner_steps: int = field(default=10, metadata={"help": "client SGD steps per round"})
    inner_lr: float = field(
        default=5e-2, metadata={"help": "client learning rate (every method; the paper: 5e-3)"}
    )
    inner_momentum: float = field(default=0.9, metadata={"help": "client SGD momentum"})
    inner_wd: float = field(default=5e-5, metadata={"help": "client weight decay"})
    inner_clip: float | None = field(
        default=10.0,
        metadata={"help": "client gradient-norm clipping, every method (none: off)"},
    )
    batch_size: int = field(default=64, metadata={"help": "client minibatch size"})
    hn_optimizer: str = field(
        default="adam",
        metadata={
            "help": "server optimizer on Phi and the embeddings (adam: tuned on seed 100)",
            "choices": ("sgd", "adam"),
        },
    )
    hn_lr: float = field(
        default=3e-5, metadata={"help": "server learning rate (adam 3e-5; with sgd, try 3e-4)"}
    )
    hn_momentum: float = field(default=0.9, metadata={"help": "server SGD momentum (sgd only)"})
    hn_wd: float = field(default=1e-3, metadata={"help": "server weight decay"})
    hn_hidden: int = field(default=100, metadata={"help": "hypernetwork MLP width"})
    hn_layers: int = field(default=3, metadata={"help": "hypernetwork hidden layers"})
    embed_dim: int | None = field(
        default=None, metadata={"help": "client embedding size (none: 1 + num_clients // 4)"}
    )
    max_grad_norm: float = field(
        default=50.0, metadata={"help": "server gradient clipping", "range": (0, None, "open")}
    )
    trust_bound: float | None = field(
        default=TRUST_BOUND,
        metadata={
            "help": "refuse a reply whose update norm exceeds this many times the sent "
            "weights' norm (none: no bound)",
            "range": (0, None, "open"),
        },
    )
    idle_embeddings: str = field(
        default="skip",
        metadata={
            "help": "skip: only replying clients' embeddings move; step: weight decay and "
            "momentum move every embedding at every step (pFedHN's code)",
            "choices": IDLE_EMBEDDINGS,
        },
    )
    finetune_steps: int = field(default=50, metadata={"help": "fedavg-ft fine-tuning steps"})
    new_client_rounds: int = field(
        default=10, metadata={"help": "rounds a new client trains (its embedding, for pFedHN)"}
    )
    embed_lr: float = field(default=0.1, metadata={"help": "new clients' embedding lr (Adam)"})
    client_timeout: float | None = field(
        default=None, metadata={"help": "seconds a client may take per round (none: no limit)"}
    )
    flower_cpus: int = field(default=1, metadata={"help": "CPUs Flower's simulation may use"})
    out: str = field(default="runs", metadata={"help": "root folder of the run folders"})
    seed: int = field(default=0, metadata={"help": "seed of partition, models and sampling"})
    eval_every: int = field(
        default=0,
        metadata={
            "help": "also record the clients' mean test accuracy every this many rounds "
            "(0: only at the end; in-process engine)"
        },
    )
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})
    device: str = device_field()
    amp: str = amp_field()
    nproc: int = nproc_field()


@dataclass(frozen=True)
class ClientData:
    """One client's train and test examples."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def check_config(config: Config) -> None:
    """Raise ValueError naming the first option that cannot work."""
    check_ranges(config)
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown or not config.methods:
        raise ValueError(f"unknown methods {unknown or '()'}; choose from {', '.join(METHODS)}")
    if config.num_clients < 2:
        raise ValueError(f"num_clients must be >= 2, got {config.num_clients}")
    if not 1 <= config.clients_per_round <= config.num_clients:
        raise ValueError(
            f"clients_per_round must be in [1, num_clients={config.num_clients}], "
            f"got {config.clients_per_round}"
        )
    for name in ("rounds", "inner_steps", "batch_size", "hn_hidden", "hn_layers"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.new_clients < 0:
        raise ValueError(f"new_clients must be >= 0, got {config.new_clients}")
    if config.inner_clip is not None and not config.inner_clip > 0:
        raise ValueError(f"inner_clip must be > 0 or none, got {config.inner_clip}")
    spc = config.samples_per_client
    if spc is not None and (len(spc) not in (1, 2) or spc[0] > spc[-1]):
        raise ValueError(
            f"samples_per_client must be LOW,HIGH with LOW <= HIGH, or one count, got "
            f"{','.join(map(str, spc))}"
        )
    if config.eval_every < 0:
        raise ValueError(f"eval_every must be >= 0, got {config.eval_every}")
    if config.eval_every and config.engine != "inprocess":
        raise ValueError(
            f"eval_every needs engine=inprocess (the flower engine evaluates once, at the "
            f"end), got engine={config.engine}"
        )


def load_clients(config: Config) -> tuple[list[ClientData], int, tuple[int, ...]]:
    """Partition the dataset among ``num_clients + new_clients`` clients (same shares for test).

    With ``samples_per_client``, each client's number of training examples is drawn from its
    range (:func:`client_sizes`) and taken in the class proportions of its share
    (:func:`~hyperloom.federated.partition_clients` with ``sizes``); the test split is
    partitioned with the same shares, whole.

    Returns:
        ``(clients, num_classes, image_shape)``; the last ``new_clients`` are the new ones.
    """
    data = load_dataset(config.dataset, config.data_dir)
    total = config.num_clients + config.new_clients
    if config.split == "classes":
        shares = class_shares(total, data.num_classes, config.classes_per_client, seed=config.seed)
    else:
        shares = dirichlet_shares(total, data.num_classes, config.alpha, seed=config.seed)
    sizes = client_sizes(config, total)
    train = partition_clients(data.y_train, shares, seed=config.seed, sizes=sizes)
    test = partition_clients(data.y_test, shares, seed=config.seed + 1)
    clients = [
        ClientData(data.x_train[a], data.y_train[a], data.x_test[b], data.y_test[b])
        for a, b in zip(train, test, strict=True)
    ]
    empty = [i for i, c in enumerate(clients) if len(c.y_train) == 0]
    if empty:
        raise ValueError(f"clients {empty} got no training examples; use fewer clients")
    return clients, data.num_classes, data.input_shape


def client_sizes(config: Config, total: int) -> Tensor | None:
    """Training examples per client from ``samples_per_client`` (``None`` without it).

    Each of the ``total`` clients draws its count uniformly from ``LOW..HIGH`` (both included)
    with a generator seeded by ``config.seed``.

    Example:
        >>> sizes = client_sizes(Config(samples_per_client=(50, 200)), 100)
        >>> len(sizes), 50 <= int(sizes.min()), int(sizes.max()) <= 200
        (100, True, True)
    """
    spc = config.samples_per_client
    if spc is None:
        return None
    low, high = spc[0], spc[-1]
    g = torch.Generator().manual_seed(config.seed)
    return torch.randint(low, high + 1, (total,), generator=g)


def dataset_geometry(config: Config) -> tuple[int, tuple[int, ...]]:
    """``(num_classes, image_shape)`` of the configured dataset, without loading it."""
    name = config.dataset
    if name == "auto":
        name = "fashion-mnist" if fashion_mnist_available(config.data_dir) else "digits"
    shapes = {"fashion-mnist": (10, (1, 28, 28)), "digits": (10, (1, 8, 8))}
    if name not in shapes:
        raise ValueError(f"unknown dataset {name!r}; accepted names: {', '.join(DATASET_NAMES)}")
    return shapes[name]


def lenet_target(num_classes: int, image_shape: tuple[int, ...]) -> nn.Module:
    """The paper's LeNet-style target for images of ``image_shape`` (C, H, W)."""
    return build_target(
        "lenet", in_channels=image_shape[0], image_size=image_shape[-1], num_classes=num_classes
    )


def build_hypernet(config: Config, target: nn.Module, personal_head: bool) -> HyperNetwork:
    """Client embeddings of size 1 + N/4, an MLP trunk (100 x 3), one head per target tensor."""
    dim = config.embed_dim or 1 + config.num_clients // 4
    return HyperNetwork(
        target,
        TaskEmbedding(config.num_clients, dim),
        HeadsGenerator.factory(hidden=(config.hn_hidden,) * config.hn_layers),
        generate=(lambda n, p: not n.startswith("out.")) if personal_head else None,
        gain=math.sqrt(2.0),  # ReLU target
    )


def server_optimizer(config: Config, hnet: HyperNetwork) -> torch.optim.Optimizer:
    """The server's optimizer on Phi and the embeddings (the target's own tensors excluded)."""
    params = [p for n, p in hnet.named_parameters() if not n.startswith("target.")]
    if config.hn_optimizer == "adam":
        # The fused kernel: about 4x faster than the default per-tensor loop on the 8.7 M
        # parameters of the paper's hypernetwork (60 against 230 ms a step on one CPU thread).
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        return torch.optim.Adam(params, lr=config.hn_lr, weight_decay=config.hn_wd, fused=fused)
    return torch.optim.SGD(
        params, lr=config.hn_lr, momentum=config.hn_momentum, weight_decay=config.hn_wd
    )


def inner(config: Config) -> dict[str, Any]:
    """The client training options shared by every method and engine."""
    return {
        "lr": config.inner_lr,
        "batch_size": config.batch_size,
        "momentum": config.inner_momentum,
        "weight_decay": config.inner_wd,
        "max_grad_norm": config.inner_clip,
    }


def client_seed(config: Config, rnd: int, client: int) -> int:
    """Seed of one client's minibatches in one round."""
    return (config.seed * 1_000_003 + rnd * 10_007 + client) % (2**62)


def generated(hnet: HyperNetwork, *, task: int) -> dict[str, Tensor]:
    """The weights the server sends to client ``task`` (detached)."""
    with torch.no_grad():
        return {k: v.detach() for k, v in hnet.generate(task=torch.tensor(task)).items()}


def personal_model(
    hnet: HyperNetwork, personal: dict[int, dict[str, Tensor]], *, task: int
) -> dict[str, Tensor]:
    """Client ``task``'s whole model under pFedHN: generated weights and (pFedHN-PC) its head."""
    return {**generated(hnet, task=task), **personal.get(task, {})}


def diverged(weights: dict[str, Tensor], client: int, rnd: int) -> bool:
    """Whether a client's local training produced NaN or inf (logged as a warning).

    Such a client keeps its previous state (its personal head in pFedHN-PC, its model in
    local-only training); otherwise one diverged round would leave it non-finite for good. Its
    reply is rejected by the server's :func:`check_reply` as well.

    Example:
        >>> diverged({"w": torch.tensor([1.0, float("nan")])}, client=0, rnd=1)
        True
    """
    if all(bool(torch.isfinite(t).all()) for t in weights.values()):
        return False
    LOGGER.warning(
        "round %d: client %d diverged (non-finite weights); it keeps its state", rnd, client
    )
    return True


def config_from_mapping(values: dict[str, Any]) -> Config:
    """A :class:`Config` from plain values (Flower's run config: tuples as comma strings)."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in fields:
            continue
        if name == "methods" and isinstance(value, str):
            value = tuple(v for v in value.split(",") if v)
        elif isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, str) and value.lower() == "none":
            value = None
        kwargs[name] = value
    return Config(**kwargs)


def config_json(config: Config) -> str:
    """The config as a JSON string (how the Flower apps receive it in simulation)."""
    return json.dumps(asdict(config))
