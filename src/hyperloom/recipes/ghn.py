"""Graph hypernetwork: predict the weights of image classifiers it never saw (Knyazev et al.).

One :class:`~hyperloom.architectures.GraphHyperNetwork` is trained on a family of architectures
sampled at
random at every step (MLPs of 1 to 4 hidden layers of 32 to 128 units; CNNs of 1 to 3
convolutions of 8 to 32 channels with 3x3 or 5x5 kernels, each followed by ReLU, two of them
chosen at random (``--pooling=first``: the first two) by 2x2 max-pooling, then average pooling
to 4x4 and a linear classifier): each step predicts the weights of ``archs_per_step`` (4)
sampled networks, runs them on one minibatch and backpropagates their mean cross-entropy into
the GHN. Nothing else is trained. By default every hidden layer of every architecture is
followed by batch normalisation (``--batchnorm=false``: none), whose statistics are set for
each evaluation by :func:`bn_statistics_`, and the GHN weight-standardises every matrix and
convolution it predicts (``--standardize=false``: not; see
:class:`~hyperloom.TiledGenerator`).
``docs/results/ghn.md`` records these defaults (table 9) and the settings tried before them.

It is then evaluated on architectures held out from that family (:data:`HELD_OUT`: wider,
deeper, more channels, more convolutions, 7x7 kernels; the deeper MLP has two hidden layers
more than any MLP of the family, the deeper CNN one convolution more): the test accuracy of
the predicted weights with no training step at all, and after 1 and 100 fine-tuning steps
(Adam) from them, against the same architecture fine-tuned from PyTorch's random
initialisation on the same minibatches. Architectures of the training family are evaluated
too, for reference.

``--sweep`` also scores the predicted weights, with no training step, on architectures one
axis at a time away from the family (:data:`SWEEP`: CNN width, depth and kernel size, MLP
width and depth), as trained and with width-aware tiling (``GraphHyperNetwork(max_width=
FAMILY_WIDTHS)``, which needs no training of its own); ``--ghn=RUN_FOLDER`` evaluates a GHN
an earlier run saved instead of training one.

Outputs under ``runs/<timestamp>-ghn/``: results.json, results.csv, finetune.png (accuracy
against fine-tuning steps, predicted against random initialisation), ghn.safetensors with
ghn.json (the trained GHN and its options) and, with ``--sweep``, sweep.csv and sweep.png.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..architectures import GraphHyperNetwork
from ..data import load_dataset
from ..functional import call
from .config import data_dir_field, dataset_field
from .distributed import Runtime, amp_field, device_field, nproc_field, runtime
from .reproduce import Recorded
from .runs import (
    Stopwatch,
    count_trainable,
    format_table,
    make_run_dir,
    progress,
    write_csv,
    write_json,
)

MLP_WIDTHS = (32, 64, 96, 128)
MLP_DEPTHS = (1, 2, 3, 4)
CNN_CHANNELS = (8, 16, 24, 32)
CNN_DEPTHS = (1, 2, 3)
CNN_KERNELS = (3, 5)
BN_IMAGES = 4096  # training images that give batch-norm statistics for evaluation
POOLED = 4  # CNN features are average-pooled to POOLED x POOLED before the classifier


@dataclass(frozen=True)
class Arch:
    """One architecture of the family: an MLP (``widths``) or a CNN (``channels``, ``kernel``).

    Every convolution is ``kernel x kernel`` with padding ``kernel // 2``, then ReLU; the
    convolutions whose indices are in ``pools`` (``None``: the first two) are followed by 2x2
    max-pooling. A CNN ends with average pooling to ``POOLED x POOLED`` (so the classifier reads
    the same layout whatever the depth) and a linear classifier. ``batchnorm``: every hidden
    layer (linear or convolution, then without bias) is followed by batch normalisation before
    its ReLU.
    """

    kind: str
    widths: tuple[int, ...] = ()
    channels: tuple[int, ...] = ()
    kernel: int = 3
    pools: tuple[int, ...] | None = None
    batchnorm: bool = False

    def __post_init__(self) -> None:
        if self.pools is None:
            return
        if any(not 0 <= i < len(self.channels) for i in self.pools):
            raise ValueError(
                f"pools must index the {len(self.channels)} convolutions, got {self.pools}"
            )
        pools = tuple(sorted(set(self.pools)))
        object.__setattr__(self, "pools", None if pools == self._first_two else pools)

    @property
    def _first_two(self) -> tuple[int, ...]:
        return tuple(range(min(2, len(self.channels))))

    @property
    def pooled(self) -> tuple[int, ...]:
        """Indices of the convolutions followed by max-pooling."""
        return self._first_two if self.pools is None else self.pools

    @property
    def name(self) -> str:
        bn = "-bn" if self.batchnorm else ""
        if self.kind == "mlp":
            return "mlp-" + "-".join(map(str, self.widths)) + bn
        name = f"cnn-{'-'.join(map(str, self.channels))}-k{self.kernel}"
        if self.pools is not None:
            name += "-p" + "".join(map(str, self.pools))
        return name + bn

    def build(self, in_shape: tuple[int, ...], classes: int) -> nn.Module:
        """The module, with PyTorch's default initialisation."""
        c, h, w = in_shape
        layers: list[nn.Module] = []
        bias = not self.batchnorm
        if self.kind == "mlp":
            layers.append(nn.Flatten())
            prev = c * h * w
            for width in self.widths:
                layers.append(nn.Linear(prev, width, bias=bias))
                if self.batchnorm:
                    layers.append(nn.BatchNorm1d(width))
                layers.append(nn.ReLU())
                prev = width
            layers.append(nn.Linear(prev, classes))
            return nn.Sequential(*layers)
        if self.kind != "cnn":
            raise ValueError(f"kind must be 'mlp' or 'cnn', got {self.kind!r}")
        prev = c
        for i, ch in enumerate(self.channels):
            layers.append(nn.Conv2d(prev, ch, self.kernel, padding=self.kernel // 2, bias=bias))
            if self.batchnorm:
                layers.append(nn.BatchNorm2d(ch))
            layers.append(nn.ReLU())
            if i in self.pooled:
                layers.append(nn.MaxPool2d(2))
            prev = ch
        layers += [nn.AdaptiveAvgPool2d(POOLED), nn.Flatten(), nn.Linear(prev * POOLED**2, classes)]
        return nn.Sequential(*layers)


HELD_OUT = (
    Arch("mlp", widths=(256, 256)),  # wider than any training MLP
    Arch("mlp", widths=(64,) * 6),  # deeper
    Arch("cnn", channels=(48, 48), kernel=3),  # more channels
    Arch("cnn", channels=(16, 16, 16, 16), kernel=3),  # more convolutions
    Arch("cnn", channels=(16, 16), kernel=7),  # a kernel size never seen
)
IN_FAMILY = (
    Arch("mlp", widths=(128, 64)),
    Arch("cnn", channels=(16, 32), kernel=5),
)
# The widest layers of the training family: ``--width_tiling`` predicts wider ones as repeats of
# layers this wide at most (GraphHyperNetwork's max_width).
FAMILY_WIDTHS = {"conv": max(CNN_CHANNELS), "linear": max(MLP_WIDTHS)}
# ``--sweep``: architectures scored with no training step, one axis at a time away from
# cnn-16-16-k3 and mlp-64-64 (family values included): (axis, value, architecture).
SWEEP: tuple[tuple[str, int, Arch], ...] = (
    *(("cnn width", w, Arch("cnn", channels=(w, w))) for w in (8, 16, 24, 32, 33, 40, 48, 64, 96)),
    ("cnn width", 128, Arch("cnn", channels=(128, 128))),
    *(("cnn depth", d, Arch("cnn", channels=(16,) * d)) for d in range(1, 7)),
    *(("cnn kernel", k, Arch("cnn", channels=(16, 16), kernel=k)) for k in (1, 3, 5, 7, 9, 11)),
    *(("mlp width", w, Arch("mlp", widths=(w, w))) for w in (32, 64, 128, 256, 512)),
    *(("mlp depth", d, Arch("mlp", widths=(64,) * d)) for d in (1, 2, 4, 6, 8, 10)),
)


POOLINGS = ("first", "random")


def sample_arch(rng: random.Random, pooling: str = "first", batchnorm: bool = False) -> Arch:
    """An architecture of the training family, uniformly by kind, depth, width and kernel.

    ``pooling``: which convolutions of a CNN are followed by max-pooling, ``"first"`` the first
    two, ``"random"`` two of them (or all, when there are fewer) chosen uniformly, so that
    convolutions also follow one another at the same resolution. ``batchnorm``: see
    :class:`Arch` (it draws no random number, so the same seed gives the same family).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if rng.random() < 0.5:
        depth = rng.choice(MLP_DEPTHS)
        widths = tuple(rng.choice(MLP_WIDTHS) for _ in range(depth))
        return Arch("mlp", widths=widths, batchnorm=batchnorm)
    depth = rng.choice(CNN_DEPTHS)
    channels = tuple(rng.choice(CNN_CHANNELS) for _ in range(depth))
    kernel = rng.choice(CNN_KERNELS)
    pools = tuple(rng.sample(range(depth), min(2, depth))) if pooling == "random" else None
    return Arch("cnn", channels=channels, kernel=kernel, pools=pools, batchnorm=batchnorm)


# ``hyperloom reproduce ghn --smoke``: 20 training steps on the digits (fine-tuning keeps its
# 100 steps: the recorded figures are named after them).
SMOKE: dict = {
    "dataset": "digits",
    "steps": 20,
    "hidden": 16,
    "decoder_hidden": (16,),
    "tile": (8, 8),
    "eval_images": 100,
    "quiet": True,
}

_COLUMNS = (
    ("0 steps", "predicted_0"),
    ("100 steps", "predicted_100"),
    ("random 100", "random_100"),
)


def _figures(arch: str, *values: float) -> dict[str, float]:
    return {f"{arch} {c}": v for (c, _), v in zip(_COLUMNS, values, strict=True)}


# docs/results/ghn.md, table 9 (the defaults, test split): accuracy in % of the held-out
# architectures with predicted weights after 0 and 100 fine-tuning steps, and from random
# initialisation after 100.
RECORDED: tuple[Recorded, ...] = (
    Recorded(
        "defaults",
        {"dataset": "fashion-mnist", "quiet": True},
        {
            f"{arch} {c}": f"results.architecture={arch}.{key}"
            for arch in (
                "mlp-256-256-bn",
                "mlp-64-64-64-64-64-64-bn",
                "cnn-48-48-k3-bn",
                "cnn-16-16-16-16-k3-bn",
                "cnn-16-16-k7-bn",
            )
            for c, key in _COLUMNS
        },
        {
            0: {
                **_figures("mlp-256-256-bn", 83.6, 83.2, 81.8),
                **_figures("mlp-64-64-64-64-64-64-bn", 83.5, 83.4, 79.1),
                **_figures("cnn-48-48-k3-bn", 71.6, 81.0, 78.7),
                **_figures("cnn-16-16-16-16-k3-bn", 66.8, 79.6, 76.7),
                **_figures("cnn-16-16-k7-bn", 76.6, 80.6, 76.3),
            },
            1: {
                **_figures("mlp-256-256-bn", 83.4, 83.2, 81.5),
                **_figures("mlp-64-64-64-64-64-64-bn", 83.3, 83.0, 79.4),
                **_figures("cnn-48-48-k3-bn", 63.6, 81.4, 78.3),
                **_figures("cnn-16-16-16-16-k3-bn", 75.8, 79.9, 76.0),
                **_figures("cnn-16-16-k7-bn", 77.6, 80.7, 77.0),
            },
            2: {
                **_figures("mlp-256-256-bn", 83.5, 82.2, 81.5),
                **_figures("mlp-64-64-64-64-64-64-bn", 83.0, 82.8, 80.0),
                **_figures("cnn-48-48-k3-bn", 67.1, 80.3, 77.7),
                **_figures("cnn-16-16-16-16-k3-bn", 74.6, 78.4, 75.9),
                **_figures("cnn-16-16-k7-bn", 77.4, 79.8, 77.8),
            },
        },
        page="docs/results/ghn.md",
    ),
)


@dataclass
class Config:
    """Options of ``hyperloom train ghn``."""

    dataset: str = dataset_field()
    data_dir: str | None = data_dir_field()
    steps: int = field(default=7500, metadata={"help": "GHN training steps"})
    archs_per_step: int = field(default=4, metadata={"help": "architectures sampled per step"})
    batch_size: int = field(default=64, metadata={"help": "minibatch size"})
    lr: float = field(
        default=1e-3, metadata={"help": "GHN Adam learning rate (linear warm-up, cosine to 0)"}
    )
    warmup: float = field(
        default=0.05, metadata={"help": "fraction of the steps over which the lr warms up from 0"}
    )
    ema: float = field(
        default=0.999,
        metadata={
            "help": "decay of the exponential moving average of the GHN's parameters that is "
            "evaluated and saved (0: the last step's parameters)"
        },
    )
    pooling: str = field(
        default="random",
        metadata={
            "help": "which convolutions of a training CNN are followed by max-pooling: the first "
            "two, or two chosen at random (see sample_arch)",
            "choices": POOLINGS,
        },
    )
    hidden: int = field(default=64, metadata={"help": "GHN node embedding size"})
    rounds: int = field(default=1, metadata={"help": "message-passing rounds"})
    tile: tuple[int, ...] = field(default=(16, 16), metadata={"help": "decoder tile (rows,cols)"})
    decoder_hidden: tuple[int, ...] = field(
        default=(64,), metadata={"help": "decoder MLP hidden sizes"}
    )
    frequencies: int = field(default=6, metadata={"help": "decoder position frequencies"})
    integrated: bool = field(
        default=True,
        metadata={"help": "average the position frequencies over each tile's span"},
    )
    standardize: bool = field(
        default=True,
        metadata={"help": "weight-standardise every predicted matrix and convolution"},
    )
    offsets: str = field(
        default="absolute",
        metadata={
            "help": "kernel offsets in the decoder's tile descriptions: in elements, or as a "
            "fraction of the kernel's size (see TiledGenerator)",
            "choices": ("absolute", "relative"),
        },
    )
    width_tiling: bool = field(
        default=False,
        metadata={
            "help": "predict layers wider than the family's widest (32 channels, 128 units) as "
            "repeats of narrower ones (GraphHyperNetwork's max_width)"
        },
    )
    sweep: bool = field(
        default=False,
        metadata={
            "help": "also score, with no training step, a sweep of CNN widths, depths and "
            "kernel sizes and MLP widths and depths (SWEEP), without and with width tiling"
        },
    )
    ghn: str | None = field(
        default=None,
        metadata={
            "help": "a run folder of this recipe whose saved GHN is evaluated instead of "
            "training one (the GHN options and --steps are then not used)"
        },
    )
    batchnorm: bool = field(
        default=True,
        metadata={
            "help": "batch normalisation after every hidden layer of the trained and the "
            "evaluated architectures (statistics for evaluation: see bn_statistics_)"
        },
    )
    finetune_steps: int = field(default=100, metadata={"help": "fine-tuning steps to compare"})
    finetune_lr: float = field(default=1e-3, metadata={"help": "fine-tuning Adam learning rate"})
    eval_split: str = field(
        default="test",
        metadata={
            "help": "evaluate on the test split, or on a validation split (the last 10,000 "
            "training images, then left out of training) for choosing settings",
            "choices": ("test", "val"),
        },
    )
    eval_images: int | None = field(
        default=None, metadata={"help": "evaluate on at most this many images (none: all)"}
    )
    out: str = field(default="runs", metadata={"help": "folder for the run folder"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})
    seed: int = field(default=0, metadata={"help": "seed of sampling, minibatches and inits"})
    device: str = device_field()
    amp: str = amp_field()
    nproc: int = nproc_field()


@torch.no_grad()
def bn_statistics_(net: nn.Module, x: Tensor, batch: int = 512) -> nn.Module:
    """Set the running statistics of ``net``'s batch-norm layers to their averages over ``x``.

    Each statistic is reset and then averaged over the batches of ``x`` (cumulative average, in
    training mode: :func:`torch.optim.swa_utils.update_bn`); ``net`` is left in evaluation
    mode. Parameters are not touched: this is how a network whose parameters were predicted,
    not trained, gets the statistics that its evaluation mode uses. Without batch-norm layers
    it only switches ``net`` to evaluation mode.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        return net.eval()
    if len(x) < 2 or batch < 2 or len(x) % batch == 1:
        raise ValueError(
            f"batch-norm statistics need at least 2 images in every batch; got {len(x)} "
            f"images in batches of {batch}"
        )
    torch.optim.swa_utils.update_bn(x.split(batch), net)
    return net.eval()


@torch.no_grad()
def accuracy(forward, x: Tensor, y: Tensor, batch: int = 2000) -> float:
    """Accuracy in percent of ``forward`` on ``(x, y)``, in batches."""
    right = 0
    for i in range(0, len(x), batch):
        right += (forward(x[i : i + batch]).argmax(-1) == y[i : i + batch]).sum().item()
    return 100.0 * right / len(x)


def run(config: Config) -> dict:
    if config.steps < 0 or config.archs_per_step < 1 or config.finetune_steps < 1:
        raise ValueError(
            f"steps must be >= 0, archs_per_step and finetune_steps >= 1; got {config.steps}, "
            f"{config.archs_per_step} and {config.finetune_steps}"
        )
    if config.pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {config.pooling!r}")
    if not 0.0 <= config.warmup < 1.0 or not 0.0 <= config.ema < 1.0:
        raise ValueError(
            f"warmup and ema must be in [0, 1); got warmup={config.warmup}, ema={config.ema}"
        )
    with runtime(device=config.device, amp=config.amp) as rt:
        return _run(config, rt)


def _run(config: Config, rt: Runtime) -> dict:
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    data = load_dataset(config.dataset, config.data_dir)
    x_train, y_train = data.x_train, data.y_train
    if config.eval_split == "val":
        n_val = min(10_000, len(x_train) // 5)
        x_eval, y_eval = x_train[-n_val:], y_train[-n_val:]
        x_train, y_train = x_train[:-n_val], y_train[:-n_val]
    else:
        x_eval, y_eval = data.x_test, data.y_test
    if config.eval_images is not None:
        x_eval, y_eval = x_eval[: config.eval_images], y_eval[: config.eval_images]
    in_shape, classes = data.input_shape, data.num_classes
    x_train, y_train, x_eval, y_eval = rt.move((x_train, y_train, x_eval, y_eval))
    print(
        f"data: {data.name}, {len(x_train):,} training images, {len(x_eval):,} "
        f"{config.eval_split} images"
    )
    max_width = FAMILY_WIDTHS if config.width_tiling else None
    if config.ghn is None:
        ghn = GraphHyperNetwork(
            hidden=config.hidden,
            rounds=config.rounds,
            tile=config.tile,
            decoder_hidden=config.decoder_hidden,
            frequencies=config.frequencies,
            integrated=config.integrated,
            standardize=config.standardize,
            offsets=config.offsets,
            max_width=max_width,
        )
    else:
        ghn = load_ghn(config.ghn, max_width=max_width)
    ghn.to(rt.device)
    ghn_params = count_trainable(ghn)  # counted now: the averaged copy evaluated below is frozen
    print(f"GHN: {ghn_params:,} parameters; {ghn.describe().architecture}")
    opt = torch.optim.Adam(ghn.parameters(), lr=config.lr)
    warm = int(config.warmup * config.steps)

    def lr_factor(i: int) -> float:  # i = steps taken: linear warm-up, then cosine to 0
        if i < warm:
            return (i + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (i - warm) / max(config.steps - warm, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    # The evaluated GHN: an exponential moving average of the parameters, which smooths the
    # last steps' noise out of the weights that predict unseen architectures.
    averaged = copy.deepcopy(ghn).requires_grad_(False) if config.ema else ghn
    g = torch.Generator().manual_seed(config.seed)
    modules: dict[Arch, nn.Module] = {}  # one module per architecture: traced once
    log: list[dict] = []
    running_loss, running_acc = 0.0, 0.0
    steps = config.steps if config.ghn is None else 0  # a loaded GHN is evaluated as saved
    with Stopwatch() as train_time:
        for step in progress(range(1, steps + 1), quiet=config.quiet, desc="GHN"):
            idx = torch.randint(len(x_train), (config.batch_size,), generator=g)
            idx = rt.part(idx)  # this process's part of the global batch
            x, y = x_train[idx], y_train[idx]
            loss = x.new_zeros(())
            correct = 0.0
            for _ in range(config.archs_per_step):
                arch = sample_arch(rng, config.pooling, config.batchnorm)
                net = modules.get(arch)
                if net is None:
                    net = modules[arch] = arch.build(in_shape, classes).to(rt.device)
                with rt.autocast():  # the loss in float32
                    # float32 weights: autocast casts them per op, and F.batch_norm refuses bf16
                    # affine weights with float32 running statistics (no-op without --amp)
                    weights = {name: w.float() for name, w in ghn(net).items()}
                    logits = call(net, weights, x).float()
                    loss = loss + F.cross_entropy(logits, y) / config.archs_per_step
                correct += (logits.argmax(-1) == y).float().mean().item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            rt.sync_grads(opt)  # data-parallel: the mean over processes, then clipped
            torch.nn.utils.clip_grad_norm_(ghn.parameters(), 5.0)
            opt.step()
            sched.step()
            if averaged is not ghn:
                with torch.no_grad():
                    d = min(config.ema, step / (step + 10))  # short memory at the start
                    for a, p in zip(averaged.parameters(), ghn.parameters(), strict=True):
                        a.lerp_(p, 1.0 - d)
            step_loss = rt.average(loss.item())  # every process's slice, not rank 0's
            running_loss = 0.98 * running_loss + 0.02 * step_loss if step > 1 else step_loss
            acc = 100.0 * rt.average(correct) / config.archs_per_step
            running_acc = 0.98 * running_acc + 0.02 * acc if step > 1 else acc
            if step % 100 == 0 or step == config.steps:
                log.append({"step": step, "loss": running_loss, "train_acc": running_acc})
    print(
        f"GHN trained {steps} steps in {train_time.seconds / 60:.1f} min; "
        f"{len(modules)} distinct architectures seen"
    )

    # Evaluation: predicted weights with no training step, then fine-tuning from them against
    # fine-tuning from a random initialisation, on the same minibatches.
    ghn = averaged.eval()
    checkpoints = sorted({0, 1, min(10, config.finetune_steps), config.finetune_steps})
    rows: list[dict] = []
    curves: list[dict] = []
    held: list[dict[str, float]] = []  # the held-out architectures' accuracies
    evaluated = [
        (replace(a, batchnorm=config.batchnorm), group)
        for group, archs in (("held-out", HELD_OUT), ("in family", IN_FAMILY))
        for a in archs
    ]
    x_stats = x_train[:BN_IMAGES]  # the batch-norm statistics of every evaluation
    for arch, group in progress(evaluated, quiet=config.quiet, desc="evaluate"):
        torch.manual_seed(config.seed + 1)
        random_net = arch.build(in_shape, classes).to(rt.device)
        predicted_net = ghn.export(random_net)
        accs: dict[str, float] = {}  # "predicted_0", ..., "random_100"
        for init, net in (("predicted", predicted_net), ("random", random_net)):
            ft = torch.optim.Adam(net.parameters(), lr=config.finetune_lr)
            gb = torch.Generator().manual_seed(config.seed + 2)  # the same batches for both
            for step in range(config.finetune_steps + 1):
                if step in checkpoints:
                    acc = accuracy(bn_statistics_(net, x_stats), x_eval, y_eval)
                    net.train()
                    curves.append(
                        {"architecture": arch.name, "init": init, "step": step, "acc": acc}
                    )
                    if step in (0, 1, config.finetune_steps):
                        accs[f"{init}_{step}"] = acc
                if step == config.finetune_steps:
                    break
                idx = torch.randint(len(x_train), (config.batch_size,), generator=gb)
                # the evaluation's fine-tuning: every process alike, in float32 (not --amp)
                loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
                ft.zero_grad(set_to_none=True)
                loss.backward()
                ft.step()
        rows.append(
            {
                "architecture": arch.name,
                "group": group,
                "params": count_trainable(random_net),
                **accs,
            }
        )
        if group == "held-out":
            held.append(accs)

    # The sweep: predicted weights with no training step, one axis at a time, as trained and
    # with width tiling (which changes nothing within the family's widths: those are copied).
    sweep = []
    if config.sweep:
        untiled = load_ghn(ghn).to(rt.device)
        tiled = load_ghn(ghn, max_width=FAMILY_WIDTHS).to(rt.device)
        for axis, value, base in progress(SWEEP, quiet=config.quiet, desc="sweep"):
            arch = replace(base, batchnorm=config.batchnorm)
            torch.manual_seed(config.seed + 1)
            net = arch.build(in_shape, classes).to(rt.device)
            acc = accuracy(bn_statistics_(untiled.export(net), x_stats), x_eval, y_eval)
            limit = FAMILY_WIDTHS["conv" if arch.kind == "cnn" else "linear"]
            if max(arch.widths + arch.channels) > limit:
                acc_tiled = accuracy(bn_statistics_(tiled.export(net), x_stats), x_eval, y_eval)
            else:
                acc_tiled = acc
            sweep.append(
                {
                    "axis": axis,
                    "value": value,
                    "architecture": arch.name,
                    "untiled": acc,
                    "tiled": acc_tiled,
                }
            )

    n = config.finetune_steps
    summary = {
        "held_out_zero_shot_mean": statistics.fmean(r["predicted_0"] for r in held),
        "held_out_zero_shot_min": min(r["predicted_0"] for r in held),
        f"held_out_predicted_{n}_mean": statistics.fmean(r[f"predicted_{n}"] for r in held),
        f"held_out_random_{n}_mean": statistics.fmean(r[f"random_{n}"] for r in held),
        f"held_out_predicted_beats_random_at_{n}": sum(
            r[f"predicted_{n}"] > r[f"random_{n}"] for r in held
        ),
        "held_out_count": len(held),
        "ghn_params": ghn_params,
        "train_minutes": train_time.seconds / 60,
        "architectures_seen": len(modules),
    }
    if not rt.is_main:  # rank 0 alone prints and writes the run folder
        return {"results": rows, "summary": summary}
    run_dir = make_run_dir(config.out, "ghn")
    write_csv(run_dir / "results.csv", rows)
    write_json(
        run_dir / "results.json",
        {
            "config": asdict(config),
            "ghn": ghn.config(),
            "criteria": ghn.describe().to_dict(),
            "results": rows,
            "summary": summary,
            "train_log": log,
            "curves": curves,
            "sweep": sweep,
        },
    )
    _save_ghn(ghn, run_dir)
    _plot(curves, run_dir / "finetune.png", config.eval_split)
    if sweep:
        write_csv(run_dir / "sweep.csv", sweep)
        plot_sweep({"this run": [sweep]}, run_dir / "sweep.png", config.eval_split)
        print(format_table(sweep))
    print(format_table(rows))
    print(
        f"held-out ({len(held)} architectures, {config.eval_split} split): predicted weights "
        f"{summary['held_out_zero_shot_mean']:.1f}% with no training (min "
        f"{summary['held_out_zero_shot_min']:.1f}%); after {n} steps "
        f"{summary[f'held_out_predicted_{n}_mean']:.1f}% from predicted vs "
        f"{summary[f'held_out_random_{n}_mean']:.1f}% from random "
        f"(predicted ahead on {summary[f'held_out_predicted_beats_random_at_{n}']} of {len(held)})"
    )
    print(run_dir)
    return {"results": rows, "summary": summary, "run_dir": str(run_dir)}


def load_ghn(
    source: str | os.PathLike | GraphHyperNetwork, max_width: dict[str, int] | None = None
) -> GraphHyperNetwork:
    """A GHN saved by this recipe (a run folder) or a copy of ``source``, with ``max_width``.

    Example:
        >>> ghn = GraphHyperNetwork(hidden=8, tile=(4, 4))
        >>> load_ghn(ghn, max_width={"conv": 16}).options["max_width"]
        {'conv': 16}
    """
    if isinstance(source, GraphHyperNetwork):
        options, state = source.config(), source.state_dict()
    else:
        from safetensors.torch import load_file

        folder = Path(source)
        if not (folder / "ghn.json").is_file() or not (folder / "ghn.safetensors").is_file():
            raise ValueError(f"{str(source)!r} holds no ghn.json and ghn.safetensors")
        options = json.loads((folder / "ghn.json").read_text())
        state = load_file(folder / "ghn.safetensors")
    options["max_width"] = max_width
    ghn = GraphHyperNetwork(**options)
    ghn.load_state_dict(state)
    return ghn.eval()


def _save_ghn(ghn: GraphHyperNetwork, run_dir) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ghn.state_dict().items()}, run_dir / "ghn.safetensors")
    (run_dir / "ghn.json").write_text(json.dumps(ghn.config(), indent=2) + "\n")


def _plot(curves: list[dict], path, split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(c["architecture"] for c in curves))
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for init, style in (("predicted", "o-"), ("random", "s--")):
            pts = [c for c in curves if c["architecture"] == name and c["init"] == init]
            ax.plot([c["step"] + 1 for c in pts], [c["acc"] for c in pts], style, label=init)
        ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("fine-tuning steps + 1")
        ax.set_ylabel(f"{split} accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("GHN-predicted vs random initialisation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# The family's range on each sweep axis, shaded in the sweep plots.
_FAMILY_RANGE = {
    "cnn width": (min(CNN_CHANNELS), max(CNN_CHANNELS)),
    "cnn depth": (min(CNN_DEPTHS), max(CNN_DEPTHS)),
    "cnn kernel": (min(CNN_KERNELS), max(CNN_KERNELS)),
    "mlp width": (min(MLP_WIDTHS), max(MLP_WIDTHS)),
    "mlp depth": (min(MLP_DEPTHS), max(MLP_DEPTHS)),
}


def plot_sweep(runs: dict[str, list[list[dict]]], path, split: str = "test") -> None:
    """Accuracy with no training step against each sweep axis, one panel per axis.

    Args:
        runs: ``{label: [sweep rows of one run, ...]}`` (the ``sweep`` entry of results.json);
            a label's runs (seeds) are drawn as their mean with a band of one standard
            deviation, as trained (solid) and with width tiling (dashed, where it differs).
        path: the PNG to write.
        split: the evaluation split, for the axis label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_names = list(_FAMILY_RANGE)
    fig, axes = plt.subplots(1, len(axes_names), figsize=(3.3 * len(axes_names), 3.0))
    for ax, axis in zip(axes, axes_names, strict=True):
        lo, hi = _FAMILY_RANGE[axis]
        ax.axvspan(lo, hi, color="0.9", label="training family" if ax is axes[0] else None)
        for i, (label, seeds) in enumerate(runs.items()):
            color = f"C{i}"
            for key, style in (("untiled", "o-"), ("tiled", "s--")):
                points: dict[int, list[float]] = {}
                for sweep in seeds:
                    for r in sweep:
                        if r["axis"] == axis:
                            points.setdefault(r["value"], []).append(r[key])
                if key == "tiled" and all(
                    r["tiled"] == r["untiled"] for sw in seeds for r in sw if r["axis"] == axis
                ):
                    continue  # width tiling changes nothing on this axis
                xs = sorted(points)
                mean = [statistics.fmean(points[x]) for x in xs]
                std = [statistics.stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in xs]
                name = label if key == "untiled" else f"{label}, width tiling"
                ax.plot(xs, mean, style, color=color, label=name, markersize=3)
                if len(seeds) > 1:
                    ax.fill_between(
                        xs,
                        [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)],
                        color=color,
                        alpha=0.15,
                    )
        if axis.endswith("width"):
            ax.set_xscale("log", base=2)
        ax.set_title(axis, fontsize=9)
        ax.set_xlabel(axis.split()[1])
        ax.set_ylabel(f"{split} accuracy, 0 steps (%)")
        ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
