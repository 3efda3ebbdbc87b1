"""Uncertainty from noise-conditioned hypernetworks against a single net, MC dropout, an ensemble.

A hypernetwork conditioned on noise z generates a whole set of target weights per draw, so one
model holds a distribution over networks and K draws predict as an ensemble in one batched
call (``hl.call_batched``). This recipe trains, on the same data, batches and seeds:

- ``single``: one MLP;
- ``mc dropout``: the MLP with dropout, K stochastic passes at test time (Gal and Ghahramani);
- ``deep ensemble``: ``ensemble`` MLPs from independent initialisations (Lakshminarayanan et al.),
  trained side by side as one stacked weight set through ``hl.call_batched``;
- ``hypernet``: an implicit weight distribution G(z), z ~ N(0, I), trained with K draws per
  step and a diversity term (``hl.uncertainty.implicit_loss``: kernel repulsion or an entropy
  surrogate);
- ``hypernet (variational)``: the same generator with a learned Gaussian q(z) and the ELBO's
  KL term (``hl.uncertainty.GaussianPosterior``, ``hl.uncertainty.elbo_loss``).

The hypernetworks' design is set by ``z_dim``, ``gen_hidden``, ``gen_norm`` (by default z is
RMS-normalised and read by one linear layer: a sphere of networks), ``shared_layers`` (layers
not generated), ``z_per_layer`` (one z per layer) and ``fit`` (the mean of the draws'
cross-entropies or their mixture's NLL, ``hl.uncertainty.mixture_nll``). The defaults are the
design that
``docs/results/uncertainty.md`` kept on validation NLL against the alternatives.

Two problems share the one training loop (one minibatch of each per step):

1. classification on Fashion-MNIST (digits when its files are absent): accuracy, NLL, Brier
   score, ECE (15 bins) and out-of-distribution AUROC by predictive entropy (and by mutual
   information), with scikit-learn's digits upscaled to 28x28 as OOD inputs, or held-out
   classes (``ood=heldout``);
2. a 1-D regression toy with a gap in its inputs, where a good posterior grows its uncertainty:
   test NLL and the ratio of the predictive std in the gap to that on the data.

The last ``val_size`` training images (5,000 on Fashion-MNIST) are held out as a validation
set: every model trains on the rest, and its validation accuracy, NLL and ECE are reported
next to the test figures. Hyperparameters are chosen on validation NLL only: with
``diversity_grid`` (the hypernetwork's diversity weight), ``kl_grid`` (the variational one's KL
weight) and/or ``dropout_grid`` (the MC dropout rate) the recipe runs in selection mode,
training one model per value side by side in the same loop on the same minibatches, and reports
validation figures only (no test set, no OOD, no regression toy) with the value of lowest mean
validation NLL over the seeds. The defaults ``diversity=3`` and ``dropout=0.2`` are the values
that ``docs/results/uncertainty.md`` selected so (seed 0; ``kl_weight=1``, the ELBO, untuned)::

    hyperloom train uncertainty --methods=dropout,hypernet \\
        --diversity_grid=0,0.1,0.3,1,3 --dropout_grid=0.05,0.1,0.2,0.3,0.5

and ``train_samples=10`` (z draws per training step) won against 5 on validation NLL there too.

Outputs under ``runs/<timestamp>-uncertainty/``: results.json, results.csv, reliability.png,
regression.png (selection mode: results.json and results.csv). With ``repeats=3`` the table
shows mean ± std over seeds seed..seed+2.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import stack_module_state

from ..conditioning import Noise
from ..data import Dataset, load_dataset, load_digits
from ..data.datasets import fashion_mnist_available
from ..generators import FlatGenerator
from ..hypernet import HyperNetwork
from ..uncertainty import (
    DIVERSITY_TERMS,
    GaussianPosterior,
    accuracy,
    brier_score,
    elbo_loss,
    expected_calibration_error,
    flatten_weights,
    gaussian_nll,
    implicit_loss,
    mixture_nll,
    nll,
    ood_auroc,
    reliability_diagram,
    sample_outputs,
    sample_weights,
    summarize_classification,
    summarize_regression,
)
from .config import data_dir_field, dataset_field
from .reproduce import Recorded
from .runs import count_trainable, format_table, make_run_dir, progress, write_csv, write_json

METHODS = ("single", "dropout", "ensemble", "hypernet", "variational")
"""Method keys: single net, MC dropout, deep ensemble, implicit and variational hypernetwork."""

NAMES = {
    "single": "single",
    "dropout": "mc dropout",
    "ensemble": "deep ensemble",
    "hypernet": "hypernet",
    "variational": "hypernet (variational)",
}


# ``hyperloom reproduce uncertainty --smoke``: every method for one epoch on the digits.
SMOKE: dict = {
    "dataset": "digits",
    "n_test": 100,
    "hidden": (16,),
    "epochs": 1,
    "eval_samples": 3,
    "train_samples": 2,
    "quiet": True,
}

_COLUMNS = ("val NLL", "NLL", "ECE (%)", "AUROC (%)")
_KEYS = ("val_nll", "nll", "ece", "auroc")


def _figures(method: str, *values: float) -> dict[str, float]:
    return {f"{method} {c}": v for c, v in zip(_COLUMNS, values, strict=True)}


# docs/results/uncertainty.md, the recorded run's per-seed table (every option at its default;
# ``--repeats=3`` ran seeds 0, 1, 2 in one run, and ``--seed=0`` alone gave seed 0's figures).
RECORDED: tuple[Recorded, ...] = (
    Recorded(
        "recorded-run",
        {"quiet": True},
        {
            f"{m} {c}": f"per_seed.method={NAMES[m]}.{k}"
            for m in METHODS
            for c, k in zip(_COLUMNS, _KEYS, strict=True)
        },
        {
            0: {
                **_figures("single", 0.3564, 0.3582, 2.57, 85.3),
                **_figures("dropout", 0.3233, 0.3336, 1.45, 85.1),
                **_figures("ensemble", 0.314, 0.3177, 1.31, 86.9),
                **_figures("hypernet", 0.2979, 0.3137, 1.51, 89.6),
                **_figures("variational", 0.3092, 0.3238, 1.91, 88.1),
            },
            1: {
                **_figures("single", 0.3276, 0.3463, 3.46, 83.2),
                **_figures("dropout", 0.3208, 0.3383, 1.54, 83.8),
                **_figures("ensemble", 0.2947, 0.3116, 2.26, 86.5),
                **_figures("hypernet", 0.2982, 0.3234, 0.91, 88.9),
                **_figures("variational", 0.3017, 0.3212, 1.69, 87.4),
            },
            2: {
                **_figures("single", 0.3271, 0.3386, 2.87, 85.1),
                **_figures("dropout", 0.3229, 0.3319, 0.65, 87.3),
                **_figures("ensemble", 0.2909, 0.3005, 1.24, 88.1),
                **_figures("hypernet", 0.2965, 0.3117, 0.58, 89.8),
                **_figures("variational", 0.2987, 0.3077, 0.76, 89.2),
            },
        },
        page="docs/results/uncertainty.md",
    ),
)


@dataclass
class Config:
    """Options of ``hyperloom train uncertainty``."""

    dataset: str = dataset_field()
    data_dir: str | None = data_dir_field()
    ood: str = field(
        default="auto",
        metadata={
            "help": "out-of-distribution inputs: digits (scikit-learn's, upscaled to the image "
            "size), heldout (classes left out of training), auto (digits for Fashion-MNIST, "
            "heldout for digits)",
            "choices": ("auto", "digits", "heldout"),
        },
    )
    heldout: tuple[int, ...] = field(
        default=(5, 6, 7, 8, 9), metadata={"help": "classes held out when ood=heldout"}
    )
    n_train: int | None = field(default=None, metadata={"help": "training images (none: all)"})
    n_test: int | None = field(default=None, metadata={"help": "test images (none: all)"})
    val_size: int | None = field(
        default=None,
        metadata={
            "help": "validation images held out from the end of the training set (none: 5,000, "
            "at most a tenth of the training images; 0: no validation split)"
        },
    )
    hidden: tuple[int, ...] = field(default=(200, 200), metadata={"help": "MLP hidden sizes"})
    epochs: int = field(default=10, metadata={"help": "classification epochs"})
    batch_size: int = field(default=128, metadata={"help": "minibatch size"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (every model)"})
    z_dim: int = field(default=3, metadata={"help": "size of the hypernetworks' noise z"})
    gen_hidden: tuple[int, ...] = field(
        default=(), metadata={"help": "generator trunk hidden sizes (empty: z normalised only)"}
    )
    gen_norm: bool = field(
        default=True,
        metadata={
            "help": "RMS-normalise the generator's features (with no trunk: z itself, so the "
            "networks lie on a (z_dim - 1)-sphere; false: a Gaussian of rank z_dim in weights)"
        },
    )
    z_per_layer: bool = field(
        default=False,
        metadata={
            "help": "one hypernetwork per generated linear layer, each with its own z of z_dim "
            "(independent noise per layer, the same parameter count; false: one z for all)"
        },
    )
    shared_layers: int = field(
        default=0,
        metadata={
            "help": "the hypernetworks' first N linear layers are ordinary weights shared by "
            "every draw; the generator makes the rest (0: it generates all)"
        },
    )
    train_samples: int = field(
        default=10, metadata={"help": "z draws per training step (hypernetworks)"}
    )
    fit: str = field(
        default="mean",
        metadata={
            "help": "the hypernetworks' classification data term: the mean of the draws' "
            "cross-entropies, or the NLL of their mixture (hl.uncertainty.mixture_nll; the "
            "regression toy "
            "keeps the mean squared error)",
            "choices": ("mean", "mixture"),
        },
    )
    eval_samples: int = field(
        default=20, metadata={"help": "z draws (and MC dropout passes) at test time"}
    )
    diversity: float = field(
        default=3.0,
        metadata={"help": "weight of the diversity term (3: chosen on validation NLL)"},
    )
    diversity_term: str = field(
        default="kernel",
        metadata={"help": "kernel repulsion or entropy surrogate", "choices": DIVERSITY_TERMS},
    )
    diversity_space: str = field(
        default="weights",
        metadata={
            "help": "what the diversity term keeps apart: the sampled weights or the members' "
            "log-probabilities on the batch",
            "choices": ("weights", "outputs"),
        },
    )
    methods: tuple[str, ...] = field(
        default=METHODS,
        metadata={"help": f"which methods to train, among {', '.join(METHODS)}"},
    )
    kl_weight: float = field(default=1.0, metadata={"help": "KL weight of the ELBO"})
    dropout: float = field(
        default=0.2, metadata={"help": "MC dropout rate (0.2: chosen on validation NLL)"}
    )
    diversity_grid: tuple[float, ...] = field(
        default=(),
        metadata={
            "help": "selection mode: train one hypernet per diversity weight, report validation "
            "figures only and the weight of lowest validation NLL"
        },
    )
    dropout_grid: tuple[float, ...] = field(
        default=(),
        metadata={
            "help": "selection mode: train one MC dropout net per rate, report validation "
            "figures only and the rate of lowest validation NLL"
        },
    )
    kl_grid: tuple[float, ...] = field(
        default=(),
        metadata={
            "help": "selection mode: train one variational hypernet per KL weight, report "
            "validation figures only and the weight of lowest validation NLL"
        },
    )
    ensemble: int = field(default=5, metadata={"help": "deep ensemble size"})
    reg_points: int = field(default=160, metadata={"help": "regression toy training points"})
    reg_noise: float = field(default=0.1, metadata={"help": "regression toy noise std"})
    reg_hidden: tuple[int, ...] = field(
        default=(64, 64), metadata={"help": "regression MLP hidden sizes"}
    )
    reg_steps: int = field(
        default=4000, metadata={"help": "full-batch regression steps (within the same loop)"}
    )
    repeats: int = field(default=1, metadata={"help": "seeds seed, seed+1, ... (mean ± std)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    out: str = field(default="runs", metadata={"help": "folder for the run folder"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})


GRIDS = {"hypernet": "diversity", "dropout": "dropout", "variational": "kl_weight"}
"""Selection mode: the method each grid is for -> the hyperparameter it selects."""

LABELS = {"hypernet": "diversity", "dropout": "p", "variational": "kl"}
"""How a variant of a grid is named: ``hypernet (diversity=1)``, ``mc dropout (p=0.2)``, ..."""

GAP = (-1.5, 1.5)
"""The regression toy's inputs are in [-4, -1.5] and [1.5, 4]: nothing in the gap."""


def mlp(in_features: int, hidden: tuple[int, ...], out_features: int, dropout: float = 0.0):
    """``Flatten -> (Linear -> ReLU [-> Dropout])* -> Linear``."""
    layers: list[nn.Module] = [nn.Flatten()]
    sizes = [in_features, *hidden]
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(sizes[-1], out_features))
    return nn.Sequential(*layers)


def noise_hypernets(target: nn.Module, config: Config) -> list[HyperNetwork]:
    """The recipe's noise-conditioned hypernetwork(s) for ``target``: ``theta(z) = b + W h(z)``.

    ``z ~ N(0, I)`` of size ``config.z_dim`` goes through the generator's trunk
    (``config.gen_hidden``; none by default) and, with ``config.gen_norm``, RMS normalisation,
    then one linear readout. With no trunk and no normalisation the generated weights are
    affine in z, a Gaussian of rank ``z_dim`` in weight space; with normalisation only z's
    direction counts (a sphere of networks). The first ``config.shared_layers`` linear layers of
    ``target`` are not generated: they are ordinary parameters shared by every draw.

    Returns:
        One hypernetwork generating every generated layer from one z, or with
        ``config.z_per_layer`` one per generated linear layer, each with its own z (the
        networks are then a product of one sphere or Gaussian per layer). They share
        ``target``; :func:`draw_weights` samples them together.

    Example:
        >>> net = mlp(4, (8,), 3)
        >>> [h.spec.names for h in noise_hypernets(net, Config(z_dim=5, shared_layers=1))]
        [('3.weight', '3.bias')]
        >>> [h.spec.names for h in noise_hypernets(net, Config(z_per_layer=True))]
        [('1.weight', '1.bias'), ('3.weight', '3.bias')]
    """
    linear = [n for n, m in target.named_modules() if isinstance(m, nn.Linear)]
    if not 0 <= config.shared_layers < len(linear):
        raise ValueError(
            f"shared_layers must leave at least one of the {len(linear)} linear layers to "
            f"generate, got {config.shared_layers}"
        )
    generated = linear[config.shared_layers :]
    groups = [(n,) for n in generated] if config.z_per_layer else [tuple(generated)]
    return [
        HyperNetwork(
            target,
            Noise(config.z_dim),
            FlatGenerator.factory(hidden=config.gen_hidden, norm=config.gen_norm),
            generate=lambda name, _, prefixes=tuple(f"{n}." for n in group): name.startswith(
                prefixes
            ),
        )
        for group in groups
    ]


def draw_weights(
    hnets: list[HyperNetwork],
    k: int,
    *,
    z: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """``k`` weight sets from hypernetworks that share a target, ``{name: (k, *shape)}``.

    Args:
        hnets: from :func:`noise_hypernets`.
        k: number of weight sets.
        z: ``(k, sum of the z sizes)``, split among the hypernetworks in order; ``None``: each
            draws its own (from ``generator`` when given).
        generator: a ``torch.Generator`` to draw z from.

    Raises:
        ValueError: ``z`` does not have shape ``(k, sum of the z sizes)``.
    """
    dims = [h.conditioner.dim for h in hnets]
    if z is not None and tuple(z.shape) != (k, sum(dims)):
        raise ValueError(f"z must have shape ({k}, {sum(dims)}), got {tuple(z.shape)}")
    zs = [None] * len(hnets) if z is None else z.split(dims, dim=1)  # [(k, dim)]
    weights: dict[str, Tensor] = {}
    for h, part in zip(hnets, zs, strict=True):
        weights |= sample_weights(h, k, z=part, generator=generator)
    return weights


def hypernet_parameters(hnets: list[HyperNetwork]) -> list[nn.Parameter]:
    """The trainable parameters of :func:`noise_hypernets`' hypernetworks, each once.

    Their generators' parameters and the shared target's parameters that none of them generates.
    """
    generated = {n for h in hnets for n in h.spec.names}
    params = [p for h in hnets for p in h.generator.parameters()]
    target = hnets[0].target
    return params + [p for n, p in target.named_parameters() if n not in generated]


def regression_toy(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` points ``y = x sin(x) + noise`` with ``x`` uniform on [-4, -1.5] and [1.5, 4]."""
    side = torch.randint(0, 2, (n, 1), generator=generator).float() * 2 - 1
    x = side * (GAP[1] + (4.0 - GAP[1]) * torch.rand(n, 1, generator=generator))  # (n, 1)
    y = x * torch.sin(x) + noise * torch.randn(n, 1, generator=generator)
    return x, y


def validation_size(config: Config, n_train: int) -> int:
    """``config.val_size``, or when it is None 5,000 but at most a tenth of ``n_train``."""
    if config.val_size is None:
        return min(5000, n_train // 10)
    if not 0 <= config.val_size < n_train:
        raise ValueError(f"val_size must be in [0, {n_train}), got {config.val_size}")
    return config.val_size


def split_validation(data: Dataset, val_size: int) -> tuple[Dataset, Tensor, Tensor]:
    """Hold out the last ``val_size`` training examples as a validation set.

    Args:
        data: the dataset; its test split is left as it is.
        val_size: number of training examples to hold out, ``0 <= val_size < len(y_train)``.

    Returns:
        ``(rest, x_val, y_val)``: the dataset whose training split is the first
        ``len(y_train) - val_size`` examples, and the held-out images and labels (empty when
        ``val_size`` is 0). The two parts are disjoint and together the original split.
    """
    n = len(data.y_train)
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}), got {val_size}")
    keep = n - val_size
    rest = Dataset(
        data.name,
        data.x_train[:keep],
        data.y_train[:keep],
        data.x_test,
        data.y_test,
        data.classes,
    )
    return rest, data.x_train[keep:], data.y_train[keep:]


def select_lowest(scores: dict[float, list[float]]) -> float:
    """The candidate whose scores have the lowest mean (the first one listed on a tie).

    Args:
        scores: ``{candidate value: [score per seed]}``, e.g. validation NLLs.

    Returns:
        The candidate value.

    Example:
        >>> select_lowest({0.0: [0.32, 0.31], 0.3: [0.30, 0.31], 1.0: [0.33]})
        0.3
    """
    empty = [v for v, s in scores.items() if not s]
    if not scores or empty:
        raise ValueError(f"every candidate needs at least one score, got {scores}")
    return min(scores, key=lambda v: sum(scores[v]) / len(scores[v]))


def load_problem(config: Config) -> tuple[Dataset, tuple[Tensor, Tensor], Tensor, str]:
    """The dataset, validation ``(x, y)`` and OOD images (all normalised), and the OOD's name.

    The validation images are the last ``val_size`` of the (in-distribution) training set; the
    returned dataset's training split is the rest, and its mean and std normalise everything.
    """
    data = load_dataset(config.dataset, config.data_dir)
    if config.dataset == "auto" and not fashion_mnist_available(config.data_dir):
        print("Fashion-MNIST files not found: using scikit-learn's digits instead")
    ood = config.ood
    if ood == "auto":
        ood = "digits" if data.name != "digits" else "heldout"
    if ood == "digits" and data.name == "digits":
        raise ValueError("ood=digits needs another in-distribution dataset; use ood=heldout")
    if config.n_train is not None or config.n_test is not None:
        data = data.subset(n_train=config.n_train, n_test=config.n_test, seed=0)
    if ood == "digits":
        digits = load_digits()
        x_ood = torch.cat([digits.x_train, digits.x_test])  # (1797, 1, 8, 8)
        size = tuple(data.input_shape[1:])
        x_ood = F.interpolate(x_ood, size=size, mode="bilinear", align_corners=False)
        what = f"scikit-learn digits upscaled to {size[0]}x{size[1]} ({len(x_ood)} images)"
    else:
        bad = [c for c in config.heldout if not 0 <= c < data.num_classes]
        if bad or not config.heldout or len(set(config.heldout)) >= data.num_classes - 1:
            raise ValueError(
                f"heldout={config.heldout} must name 1 to {data.num_classes - 2} classes of "
                f"range({data.num_classes})"
            )
        keep = [c for c in range(data.num_classes) if c not in config.heldout]
        remap = torch.full((data.num_classes,), -1, dtype=torch.long)
        remap[keep] = torch.arange(len(keep))
        ood_test = remap[data.y_test] < 0
        x_ood = data.x_test[ood_test]
        train = remap[data.y_train] >= 0
        data = Dataset(
            data.name,
            data.x_train[train],
            remap[data.y_train[train]],
            data.x_test[~ood_test],
            remap[data.y_test[~ood_test]],
            tuple(data.classes[c] for c in keep),
        )
        what = f"held-out classes {list(config.heldout)} ({len(x_ood)} test images)"
    data, x_val, y_val = split_validation(data, validation_size(config, len(data.y_train)))
    mean, std = data.x_train.mean(), data.x_train.std()
    data = Dataset(
        data.name,
        (data.x_train - mean) / std,
        data.y_train,
        (data.x_test - mean) / std,
        data.y_test,
        data.classes,
    )
    return data, ((x_val - mean) / std, y_val), (x_ood - mean) / std, what


@torch.no_grad()
def batched_logits(predict, x: Tensor, size: int = 1000) -> Tensor:
    """``predict(x_chunk) -> (K, b, C)`` over chunks of ``x``, concatenated to ``(K, N, C)``."""
    return torch.cat([predict(x[i : i + size]) for i in range(0, len(x), size)], dim=1)


def plot_reliability(diagrams: dict[str, dict], path: Path) -> None:
    """One reliability diagram per method: accuracy per confidence bin against the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(diagrams), figsize=(3.2 * len(diagrams), 3.4), squeeze=False)
    for ax, (name, d) in zip(axes[0], diagrams.items(), strict=True):
        centres = [(lo + hi) / 2 for lo, hi in zip(d["lower"], d["upper"], strict=True)]
        width = d["upper"][0] - d["lower"][0]
        acc = [a if a is not None else 0.0 for a in d["accuracy"]]
        conf = [c if c is not None else 0.0 for c in d["confidence"]]
        ax.bar(centres, acc, width=width, edgecolor="black", label="accuracy")
        gap_low = [min(a, c) for a, c in zip(acc, conf, strict=True)]
        gap = [abs(c - a) for a, c in zip(acc, conf, strict=True)]
        ax.bar(centres, gap, bottom=gap_low, width=width, color="none", edgecolor="tab:red",
               hatch="//", label="|accuracy - confidence|")  # fmt: skip
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", title=f"{name}\nECE {d['ece']:.3f}")
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_regression(curves: dict[str, dict], x: Tensor, y: Tensor, path: Path) -> None:
    """Predictive mean and ±2 std band of each method on the toy, the gap shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 3.2), squeeze=False)
    for ax, (name, c) in zip(axes[0], curves.items(), strict=True):
        grid, mean, std = c["x"], c["mean"], c["std"]
        ax.axvspan(*GAP, color="0.92")
        ax.plot(grid, [g * math.sin(g) for g in grid], "k:", lw=1, label="x sin x")
        ax.fill_between(grid, [m - 2 * s for m, s in zip(mean, std, strict=True)],
                        [m + 2 * s for m, s in zip(mean, std, strict=True)],
                        alpha=0.3, label="±2 std")  # fmt: skip
        ax.plot(grid, mean, lw=1.5, label="mean")
        ax.scatter(x.squeeze(1), y.squeeze(1), s=4, c="k")
        ax.set(ylim=(-6, 6), title=name, xlabel="x")
    axes[0][0].legend(loc="lower center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config: Config) -> dict:
    if config.repeats < 1 or config.ensemble < 2 or config.train_samples < 2:
        raise ValueError(
            f"need repeats >= 1, ensemble >= 2 and train_samples >= 2, got {config.repeats}, "
            f"{config.ensemble}, {config.train_samples}"
        )
    if config.eval_samples < 2:
        raise ValueError(f"eval_samples must be >= 2, got {config.eval_samples}")
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown or not config.methods:
        raise ValueError(f"methods {list(config.methods)}: choose among {', '.join(METHODS)}")
    grids = {
        "hypernet": config.diversity_grid,
        "dropout": config.dropout_grid,
        "variational": config.kl_grid,
    }
    for key, grid in grids.items():
        if grid and key not in config.methods:
            raise ValueError(f"a grid for {key} needs {key} in methods, got {config.methods}")
        if len(set(grid)) != len(grid) or any(v < 0 for v in grid):
            raise ValueError(f"grid {grid} for {key}: values must be distinct and >= 0")
    if any(p >= 1 for p in config.dropout_grid):
        raise ValueError(f"dropout_grid {config.dropout_grid}: rates must be < 1")
    selecting = any(grids.values())
    if not 0 <= config.shared_layers <= min(len(config.hidden), len(config.reg_hidden)):
        raise ValueError(
            f"shared_layers must leave at least one linear layer to generate, got "
            f"{config.shared_layers} (hidden={config.hidden}, reg_hidden={config.reg_hidden})"
        )
    data, (x_val, y_val), x_ood, ood_what = load_problem(config)
    if selecting and not len(y_val):
        raise ValueError("the grids select on validation NLL: they need val_size > 0")
    n_train = len(data.y_train)
    print(
        f"data: {data.name}, {n_train:,} train / {len(y_val):,} validation / "
        f"{len(data.y_test):,} test images, {data.num_classes} classes; OOD: {ood_what}"
    )
    if selecting:
        print("selection mode: validation figures only (no test set, no OOD, no regression toy)")
    reg_steps = 0 if selecting else config.reg_steps
    run_dir = make_run_dir(config.out, "uncertainty")
    in_features = data.x_train[0].numel()
    per_seed: list[dict] = []
    diagrams: dict[str, dict] = {}
    reg_curves: dict[str, dict] = {}
    reg_data: tuple[Tensor, Tensor] | None = None
    variant_of: dict[str, tuple[str, float]] = {}  # selection mode: name -> (method, value)

    for seed in range(config.seed, config.seed + config.repeats):
        torch.manual_seed(seed)
        g_data = torch.Generator().manual_seed(seed)
        x_reg, y_reg = regression_toy(config.reg_points, config.reg_noise, g_data)

        # ---- The models: each is its parameters and a loss on a (x, y) batch ----------------
        def make(out_features: int, regression: bool, dropout: float = 0.0) -> nn.Module:
            if regression:
                return mlp(1, config.reg_hidden, 1, dropout)
            return mlp(in_features, config.hidden, out_features, dropout)

        models: dict[tuple[str, str], dict] = {}
        for task in ("cls",) if selecting else ("cls", "reg"):
            reg = task == "reg"
            n_out, n_data = (1, config.reg_points) if reg else (data.num_classes, n_train)

            def data_loss(out: Tensor, y: Tensor, reg: bool = reg) -> Tensor:
                # out: (K, B, n_out); the mean over members of each member's loss
                if reg:
                    return F.mse_loss(out, y.expand_as(out))
                return F.cross_entropy(out.flatten(0, 1), y.repeat(out.shape[0]))

            # one model per method, or per value of its grid (selection mode)
            variants = [(key, v) for key in config.methods for v in grids.get(key) or (None,)]
            for key, value in variants:
                # each method's initialisation comes from its own seed, whatever else runs (the
                # variants of a grid start from the same initialisation)
                torch.manual_seed(1000 * seed + 10 * METHODS.index(key) + int(reg))
                name = NAMES[key]
                if value is not None:
                    name += f" ({LABELS[key]}={value:g})"
                    variant_of[name] = (key, value)
                diversity = config.diversity if value is None else value
                kl_weight = config.kl_weight if value is None else value
                if key == "single":
                    single = make(n_out, reg)
                    models[task, name] = {
                        "params": list(single.parameters()),
                        "loss": lambda x, y, m=single, dl=data_loss: dl(m(x)[None], y),
                        "predict": lambda x, k, m=single: m.eval()(x)[None],
                        "count": count_trainable(single),
                    }
                elif key == "dropout":
                    dropout_net = make(n_out, reg, config.dropout if value is None else value)

                    def mc_predict(x: Tensor, k: int, m: nn.Module = dropout_net) -> Tensor:
                        m.train()  # dropout on: k passes as one batch of k copies
                        return m(x.repeat(k, *([1] * (x.dim() - 1)))).view(k, len(x), -1)

                    models[task, name] = {
                        "params": list(dropout_net.parameters()),
                        "loss": lambda x, y, m=dropout_net, dl=data_loss: dl(m.train()(x)[None], y),
                        "predict": mc_predict,
                        "count": count_trainable(dropout_net),
                    }
                elif key == "ensemble":
                    members = [make(n_out, reg) for _ in range(config.ensemble)]
                    stacked, _ = stack_module_state(members)  # {name: (M, *shape)}
                    stacked = {k: nn.Parameter(v) for k, v in stacked.items()}
                    base = make(n_out, reg)
                    models[task, name] = {
                        "params": list(stacked.values()),
                        # summed member losses: each member gets its own, unscaled gradient
                        "loss": lambda x, y, b=base, w=stacked, dl=data_loss: (
                            config.ensemble * dl(sample_outputs(b, w, x), y)
                        ),
                        "predict": lambda x, k, b=base, w=stacked: sample_outputs(b, w, x),
                        "count": sum(p.numel() for p in stacked.values()),
                    }
                else:  # "hypernet" or "variational"
                    hnets = noise_hypernets(make(n_out, reg), config)
                    z_size = config.z_dim * len(hnets)
                    post = GaussianPosterior(z_size) if key == "variational" else None

                    def hnet_loss(
                        x, y, h=hnets, q=post, dl=data_loss, n=n_data, reg=reg, div=diversity,
                        kw=kl_weight,
                    ):  # fmt: skip
                        k = config.train_samples
                        z = q.rsample(k) if q is not None else None
                        ws = draw_weights(h, k, z=z)  # {name: (K, *shape)}
                        out = sample_outputs(h[0].target, ws, x)  # (K, B, n_out)
                        mixture = config.fit == "mixture" and not reg
                        fit = mixture_nll(out, y) if mixture else dl(out, y)
                        if q is not None:
                            return elbo_loss(fit, q.kl(), n, kl_weight=kw)
                        spread = (
                            flatten_weights(ws)
                            if config.diversity_space == "weights"
                            else (out if reg else out.log_softmax(-1)).flatten(1)
                        )
                        return implicit_loss(fit, spread, diversity=div, term=config.diversity_term)

                    def hnet_predict(x, k, h=hnets, q=post, s=seed) -> Tensor:
                        g = torch.Generator().manual_seed(10_000 + s)  # the same k nets each call
                        z = (
                            None
                            if q is None
                            else q.mean + q.std * torch.randn(k, q.dim, generator=g)
                        )
                        return sample_outputs(h[0].target, draw_weights(h, k, z=z, generator=g), x)

                    params = hypernet_parameters(hnets) + (list(post.parameters()) if post else [])
                    models[task, name] = {
                        "params": params,
                        "loss": hnet_loss,
                        "predict": hnet_predict,
                        "count": sum(p.numel() for p in params if p.requires_grad),
                    }
        torch.manual_seed(seed)
        for m in models.values():
            m["opt"] = torch.optim.Adam(m["params"], lr=config.lr)
            m["seconds"] = 0.0

        # ---- The one training loop: one classification batch and one regression step -------
        batches_per_epoch = math.ceil(n_train / config.batch_size)
        steps = max(config.epochs * batches_per_epoch, reg_steps)
        order = torch.empty(0, dtype=torch.long)
        for step in progress(range(steps), quiet=config.quiet, desc=f"seed {seed}"):
            batch = {}
            if step < config.epochs * batches_per_epoch:
                i = step % batches_per_epoch
                if i == 0:
                    order = torch.randperm(n_train, generator=g_data)
                idx = order[i * config.batch_size : (i + 1) * config.batch_size]
                batch["cls"] = (data.x_train[idx], data.y_train[idx])
            if step < reg_steps:
                batch["reg"] = (x_reg, y_reg)
            for (task, _), m in models.items():
                if task not in batch:
                    continue
                t0 = time.perf_counter()
                loss = m["loss"](*batch[task])
                m["opt"].zero_grad(set_to_none=True)
                loss.backward()
                m["opt"].step()
                m["seconds"] += time.perf_counter() - t0

        # ---- Evaluation: the same metrics for every method ----------------------------------
        rows = []
        g_eval = torch.Generator().manual_seed(20_000 + seed)
        x_grid = torch.linspace(-6, 6, 241)[:, None]  # (241, 1)
        x_test_reg, y_test_reg = regression_toy(1000, config.reg_noise, g_eval)
        for (task, name), m in models.items():
            k = config.ensemble if name == "deep ensemble" else config.eval_samples
            k = 1 if name == "single" else k
            if task == "cls":
                row = {"seed": seed, "method": name, "params": m["count"]}
                if name in variant_of:
                    row["value"] = variant_of[name][1]
                if len(y_val):  # validation: what hyperparameters are chosen on
                    probs = summarize_classification(
                        batched_logits(lambda x, m=m, k=k: m["predict"](x, k), x_val)
                    ).probs
                    row["val_acc"] = 100 * accuracy(probs, y_val)
                    row["val_nll"] = nll(probs, y_val)
                    row["val_ece"] = 100 * expected_calibration_error(probs, y_val, bins=15)
                if selecting:  # selection mode never looks at the test set
                    row["train_s"] = m["seconds"]
                    rows.append(row)
                    continue
                pred_in = summarize_classification(
                    batched_logits(lambda x, m=m, k=k: m["predict"](x, k), data.x_test)
                )
                pred_out = summarize_classification(
                    batched_logits(lambda x, m=m, k=k: m["predict"](x, k), x_ood)
                )
                probs, y = pred_in.probs, data.y_test
                row |= {
                    "acc": 100 * accuracy(probs, y),
                    "nll": nll(probs, y),
                    "brier": brier_score(probs, y),
                    "ece": 100 * expected_calibration_error(probs, y, bins=15),
                    "auroc": 100 * ood_auroc(pred_in.entropy, pred_out.entropy),
                    "auroc_mi": (
                        100 * ood_auroc(pred_in.mutual_information, pred_out.mutual_information)
                        if k > 1
                        else None
                    ),
                    "train_s": m["seconds"],
                }
                if seed == config.seed:
                    diagrams[name] = reliability_diagram(probs, y, bins=15)
                    diagrams[name]["ece"] = row["ece"] / 100
                rows.append(row)
            else:
                with torch.no_grad():
                    fit = m["predict"](x_reg, k)  # (K, n, 1)
                    noise_var = (fit.mean(0) - y_reg).pow(2).mean()  # residual variance
                    test = summarize_regression(m["predict"](x_test_reg, k), noise_var)
                    grid = summarize_regression(m["predict"](x_grid, k), noise_var)
                in_gap = (x_grid.squeeze(1) > GAP[0]) & (x_grid.squeeze(1) < GAP[1])
                on_data = (x_grid.squeeze(1).abs() >= GAP[1]) & (x_grid.squeeze(1).abs() <= 4)
                std = grid.variance.sqrt().squeeze(1)
                row = next(r for r in rows if r["method"] == name)
                row["reg_nll"] = gaussian_nll(test.mean, test.variance, y_test_reg)
                row["gap_std_ratio"] = (std[in_gap].mean() / std[on_data].mean()).item()
                if seed == config.seed:
                    reg_curves[name] = {
                        "x": x_grid.squeeze(1).tolist(),
                        "mean": grid.mean.squeeze(1).tolist(),
                        "std": std.tolist(),
                    }
                    reg_data = (x_reg, y_reg)
        per_seed += rows
        write_json(run_dir / "results.json", {"config": asdict(config), "per_seed": per_seed})

    # ---- Report: mean ± std over seeds ------------------------------------------------------
    val_metrics = ["val_acc", "val_nll", "val_ece"]
    metrics = ["acc", "nll", "brier", "ece", "auroc", "auroc_mi", "reg_nll", "gap_std_ratio"]
    summary = []
    for name in dict.fromkeys(r["method"] for r in per_seed):
        rs = [r for r in per_seed if r["method"] == name]
        entry: dict = {"method": name, "params": rs[0]["params"]}
        for key in [*val_metrics, *metrics, "train_s"]:
            vals = torch.tensor([r[key] for r in rs if r.get(key) is not None], dtype=torch.float64)
            if len(vals):
                entry[key] = vals.mean().item()
                entry[f"{key}_std"] = vals.std().item() if len(vals) > 1 else 0.0
        summary.append(entry)
    if selecting:
        metrics = val_metrics
    elif len(y_val):
        metrics.insert(metrics.index("auroc"), "val_nll")  # next to the test figures
    table = []
    for e in summary:
        row = {"method": e["method"], "params": e["params"]}
        for key in [*metrics, "train_s"]:
            if key in e:
                percent = ("acc", "ece", "auroc", "auroc_mi", "val_acc", "val_ece", "train_s")
                digits = 1 if key in percent else 4 if key == "val_nll" else 3
                row[key] = f"{e[key]:.{digits}f} ± {e[key + '_std']:.{digits}f}"
        table.append(row)
    # ---- Selection mode: per grid, the value of lowest mean validation NLL -----------------
    selection: dict[str, dict] = {}
    for key, grid in grids.items():
        if not grid:
            continue
        scores = {
            v: [r["val_nll"] for r in per_seed if variant_of.get(r["method"]) == (key, v)]
            for v in grid
        }
        selection[GRIDS[key]] = {
            "method": NAMES[key],
            "val_nll": {str(v): s for v, s in scores.items()},
            "selected": select_lowest(scores),
        }
    if reg_data is not None:
        plot_regression(reg_curves, *reg_data, run_dir / "regression.png")
    if diagrams:
        plot_reliability(diagrams, run_dir / "reliability.png")
    results = {
        "config": asdict(config),
        "data": {
            "name": data.name,
            "train": n_train,
            "validation": len(y_val),
            "test": len(data.y_test),
            "ood": ood_what,
        },
        "summary": summary,
        "per_seed": per_seed,
        "reliability": diagrams,
        "regression": reg_curves,
        "selection": selection,
    }
    write_json(run_dir / "results.json", results)
    write_csv(run_dir / "results.csv", per_seed)
    seeds = f"seed {config.seed}" if config.repeats == 1 else (
        f"seeds {config.seed}..{config.seed + config.repeats - 1}, mean ± std"
    )  # fmt: skip
    if selecting:
        print(f"\n{data.name}, {config.epochs} epochs, {seeds}; validation only, acc and ece in %")
    else:
        print(
            f"\n{data.name}, {config.epochs} epochs, {seeds}; acc, ece, auroc in %; OOD: "
            f"{ood_what}; K = {config.eval_samples} draws (deep ensemble: {config.ensemble} "
            "members)"
        )
    print(format_table(table))
    for what, sel in selection.items():
        best = sel["val_nll"][str(sel["selected"])]
        print(
            f"selected {what} = {sel['selected']:g} for {sel['method']}: lowest mean validation "
            f"NLL, {sum(best) / len(best):.4f} over {len(best)} seed(s)"
        )
    print(f"\n{run_dir}")
    results["run_dir"] = str(run_dir)
    return results
