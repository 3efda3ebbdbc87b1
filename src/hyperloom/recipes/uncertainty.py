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
next to the test figures. Hyperparameters are chosen on validation NLL only, by
``hyperloom sweep`` (one run per value, :mod:`hyperloom.recipes.sweep`). The defaults
``diversity=3`` and ``dropout=0.2`` are the values that ``docs/results/uncertainty.md`` selected
so (seed 0; ``kl_weight=1``, the ELBO, untuned), e.g.::

    hyperloom sweep uncertainty --grid diversity=0,0.1,0.3,1,3 \
        --select summary.method=hypernet.val_nll --methods=hypernet --reg_steps=0

and ``train_samples=10`` (z draws per training step) won against 5 on validation NLL there too.

Outputs under ``runs/<timestamp>-uncertainty/``: results.json, results.csv, reliability.png
and regression.png (with ``reg_steps=0`` the toy's networks stay untrained: its figures mean
nothing then). With ``repeats=3`` the table shows mean ± std over seeds seed..seed+2.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
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
from .config import data_dir_field, dataset_field, out_field, quiet_field, seed_field
from .distributed import Runtime, amp_field, device_field, nproc_field, runtime
from .reproduce import Recorded
from .runs import count_trainable, make_run_dir, progress, write_json, write_results

METHODS = ("single", "dropout", "ensemble", "hypernet", "variational")
"""Method keys: single net, MC dropout, deep ensemble, implicit and variational hypernetwork."""

NAMES = {
    "single": "single",
    "dropout": "mc dropout",
    "ensemble": "deep ensemble",
    "hypernet": "hypernet",
    "variational": "hypernet (variational)",
}


# ``hyperloom reproduce uncertainty --smoke``: every method for one epoch on the digits, and 20
# steps of the regression toy (not the 4,000 of a real run, which took most of this smoke run).
SMOKE: dict = {
    "dataset": "digits",
    "n_test": 100,
    "hidden": (16,),
    "epochs": 1,
    "eval_samples": 3,
    "train_samples": 2,
    "reg_steps": 20,
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
    seed: int = seed_field()
    out: str = out_field()
    quiet: bool = quiet_field()
    device: str = device_field()
    amp: str = amp_field()
    nproc: int = nproc_field()


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


@dataclass
class Model:
    """One method's model as the loop sees it.

    Attributes:
        params: what Adam trains.
        loss: ``(x, y) -> scalar``, the training loss on one batch.
        predict: ``(x, K) -> (K, B, out)``, the outputs of K members (draws, passes, nets).
        count: trainable parameters (reported).
    """

    params: list[nn.Parameter]
    loss: Callable[[Tensor, Tensor], Tensor]
    predict: Callable[[Tensor, int], Tensor]
    count: int


def build_model(
    key: str,
    config: Config,
    *,
    seed: int,
    in_features: int,
    n_out: int,
    n_data: int,
    reg: bool,
    device: torch.device | None = None,
) -> Model:
    """The model of method ``key`` (one of :data:`METHODS`) for classification or the toy.

    Each method's initialisation comes from its own seed, ``1000 seed + 10 index + reg``,
    whatever else runs (on the CPU, then moved to ``device``). ``n_data`` (training examples)
    scales the variational KL term. Losses are computed in float32 (under autocast too).
    """

    def make(dropout: float = 0.0) -> nn.Sequential:
        if reg:
            return mlp(1, config.reg_hidden, 1, dropout).to(device)
        return mlp(in_features, config.hidden, n_out, dropout).to(device)

    def data_loss(out: Tensor, y: Tensor) -> Tensor:
        # out: (K, B, n_out); the mean over members of each member's loss
        out = out.float()
        if reg:
            return F.mse_loss(out, y.expand_as(out))
        return F.cross_entropy(out.flatten(0, 1), y.repeat(out.shape[0]))

    torch.manual_seed(1000 * seed + 10 * METHODS.index(key) + int(reg))
    if key == "single":
        single = make()
        return Model(
            list(single.parameters()),
            lambda x, y: data_loss(single(x)[None], y),
            lambda x, k: single.eval()(x)[None],
            count_trainable(single),
        )
    if key == "dropout":
        net = make(config.dropout)

        def mc_predict(x: Tensor, k: int) -> Tensor:
            net.train()  # dropout on: k passes as one batch of k copies
            return net(x.repeat(k, *([1] * (x.dim() - 1)))).view(k, len(x), -1)

        return Model(
            list(net.parameters()),
            lambda x, y: data_loss(net.train()(x)[None], y),
            mc_predict,
            count_trainable(net),
        )
    if key == "ensemble":
        members = [make() for _ in range(config.ensemble)]
        stacked = {k: nn.Parameter(v) for k, v in stack_module_state(members)[0].items()}
        base = make()  # {name: (M, *shape)} applied to it
        return Model(
            list(stacked.values()),
            # summed member losses: each member gets its own, unscaled gradient
            lambda x, y: config.ensemble * data_loss(sample_outputs(base, stacked, x), y),
            lambda x, k: sample_outputs(base, stacked, x),
            sum(p.numel() for p in stacked.values()),
        )
    # "hypernet" or "variational": weights drawn from G(z)
    hnets = [h.to(device) for h in noise_hypernets(make(), config)]
    post = GaussianPosterior(config.z_dim * len(hnets)) if key == "variational" else None
    if post is not None:
        post.to(device)

    def hnet_loss(x: Tensor, y: Tensor) -> Tensor:
        k = config.train_samples
        z = post.rsample(k) if post is not None else None
        ws = draw_weights(hnets, k, z=z)  # {name: (K, *shape)}
        out = sample_outputs(hnets[0].target, ws, x).float()  # (K, B, n_out)
        fit = mixture_nll(out, y) if config.fit == "mixture" and not reg else data_loss(out, y)
        if post is not None:
            return elbo_loss(fit, post.kl(), n_data, kl_weight=config.kl_weight)
        spread = (
            flatten_weights(ws).float()
            if config.diversity_space == "weights"
            else (out if reg else out.log_softmax(-1)).flatten(1)
        )
        return implicit_loss(fit, spread, diversity=config.diversity, term=config.diversity_term)

    def hnet_predict(x: Tensor, k: int) -> Tensor:
        g = torch.Generator().manual_seed(10_000 + seed)  # the same k nets each call
        z = None
        if post is not None:
            z = post.mean + post.std * torch.randn(k, post.dim, generator=g).to(post.mean.device)
        return sample_outputs(hnets[0].target, draw_weights(hnets, k, z=z, generator=g), x)

    params = hypernet_parameters(hnets) + (list(post.parameters()) if post else [])
    return Model(params, hnet_loss, hnet_predict, sum(p.numel() for p in params if p.requires_grad))


def member_count(name: str, config: Config) -> int:
    """K, the members a method predicts with: 1, the ensemble's size, or ``eval_samples``."""
    if name == "single":
        return 1
    return config.ensemble if name == "deep ensemble" else config.eval_samples


def evaluate_classification(
    m: Model, k: int, data: Dataset, val: tuple[Tensor, Tensor], x_ood: Tensor
) -> tuple[dict[str, float | None], dict]:
    """Validation and test figures of one model, and its test reliability diagram.

    Returns:
        ``(figures, diagram)``: val_acc, val_nll, val_ece (when there is a validation set),
        acc, nll, brier, ece, auroc, auroc_mi (``None`` for one member); percentages in %.
    """
    x_val, y_val = val
    row: dict[str, float | None] = {}
    if len(y_val):  # validation: what hyperparameters are chosen on
        probs = summarize_classification(batched_logits(lambda x: m.predict(x, k), x_val)).probs
        row["val_acc"] = 100 * accuracy(probs, y_val)
        row["val_nll"] = nll(probs, y_val)
        row["val_ece"] = 100 * expected_calibration_error(probs, y_val, bins=15)
    pred_in = summarize_classification(batched_logits(lambda x: m.predict(x, k), data.x_test))
    pred_out = summarize_classification(batched_logits(lambda x: m.predict(x, k), x_ood))
    probs, y = pred_in.probs, data.y_test
    ece = 100 * expected_calibration_error(probs, y, bins=15)
    row |= {
        "acc": 100 * accuracy(probs, y),
        "nll": nll(probs, y),
        "brier": brier_score(probs, y),
        "ece": ece,
        "auroc": 100 * ood_auroc(pred_in.entropy, pred_out.entropy),
        "auroc_mi": (
            100 * ood_auroc(pred_in.mutual_information, pred_out.mutual_information)
            if k > 1
            else None
        ),
    }
    diagram: dict = reliability_diagram(probs, y, bins=15)
    diagram["ece"] = ece / 100
    return row, diagram


@torch.no_grad()
def evaluate_regression(
    m: Model, k: int, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor]
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Test NLL and gap/data std ratio of one model on the toy, and its curve on a grid.

    The noise variance is the model's training residual variance.
    """
    x_grid = torch.linspace(-6, 6, 241, device=train[0].device)[:, None]  # (241, 1)
    fit = m.predict(train[0], k)  # (K, n, 1)
    noise_var = (fit.mean(0) - train[1]).pow(2).mean()  # residual variance
    on_test = summarize_regression(m.predict(test[0], k), noise_var)
    grid = summarize_regression(m.predict(x_grid, k), noise_var)
    xs = x_grid.squeeze(1)
    in_gap = (xs > GAP[0]) & (xs < GAP[1])
    on_data = (xs.abs() >= GAP[1]) & (xs.abs() <= 4)
    std = grid.variance.sqrt().squeeze(1)
    figures = {
        "reg_nll": gaussian_nll(on_test.mean, on_test.variance, test[1]),
        "gap_std_ratio": (std[in_gap].mean() / std[on_data].mean()).item(),
    }
    curve = {"x": xs.tolist(), "mean": grid.mean.squeeze(1).tolist(), "std": std.tolist()}
    return figures, curve


def summarize(per_seed: list[dict], validation: bool) -> tuple[list[dict], list[dict]]:
    """Mean and std over seeds per method, and the printed table (``mean ± std`` strings)."""
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
    if validation:
        metrics.insert(metrics.index("auroc"), "val_nll")  # next to the test figures
    percent = ("acc", "ece", "auroc", "auroc_mi", "val_acc", "val_ece", "train_s")
    table = []
    for e in summary:
        row = {"method": e["method"], "params": e["params"]}
        for key in [*metrics, "train_s"]:
            if key in e:
                digits = 1 if key in percent else 4 if key == "val_nll" else 3
                row[key] = f"{e[key]:.{digits}f} ± {e[key + '_std']:.{digits}f}"
        table.append(row)
    return summary, table


def check_config(config: Config) -> None:
    """Raise ``ValueError`` naming the options that cannot run together."""
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
    if not 0 <= config.shared_layers <= min(len(config.hidden), len(config.reg_hidden)):
        raise ValueError(
            f"shared_layers must leave at least one linear layer to generate, got "
            f"{config.shared_layers} (hidden={config.hidden}, reg_hidden={config.reg_hidden})"
        )


def run(config: Config) -> dict:
    check_config(config)
    with runtime(device=config.device, amp=config.amp) as rt:
        return _run(config, rt)


def _run(config: Config, rt: Runtime) -> dict:
    data, (x_val, y_val), x_ood, ood_what = load_problem(config)
    data, x_val, y_val, x_ood = rt.move((data, x_val, y_val, x_ood))
    n_train, in_features = len(data.y_train), data.x_train[0].numel()
    print(
        f"data: {data.name}, {n_train:,} train / {len(y_val):,} validation / "
        f"{len(data.y_test):,} test images, {data.num_classes} classes; OOD: {ood_what}"
    )
    run_dir = make_run_dir(config.out, "uncertainty") if rt.is_main else None  # rank 0 writes
    per_seed: list[dict] = []
    diagrams: dict[str, dict] = {}
    reg_curves: dict[str, dict] = {}
    reg_data: tuple[Tensor, Tensor] | None = None

    for seed in range(config.seed, config.seed + config.repeats):
        torch.manual_seed(seed)
        g_data = torch.Generator().manual_seed(seed)
        x_reg, y_reg = rt.move(regression_toy(config.reg_points, config.reg_noise, g_data))

        # ---- The models, one per method and problem; Adam for each ---------------------------
        models: dict[tuple[str, str], Model] = {}
        for task, n_out, n_data in (
            ("cls", data.num_classes, n_train),
            ("reg", 1, config.reg_points),
        ):
            for key in config.methods:
                models[task, NAMES[key]] = build_model(
                    key, config, seed=seed, in_features=in_features, n_out=n_out,
                    n_data=n_data, reg=task == "reg", device=rt.device,
                )  # fmt: skip
        torch.manual_seed(seed)
        opts = {which: torch.optim.Adam(m.params, lr=config.lr) for which, m in models.items()}
        seconds = dict.fromkeys(models, 0.0)

        # ---- The one training loop: one classification batch and one regression step -------
        batches_per_epoch = math.ceil(n_train / config.batch_size)
        cls_steps = config.epochs * batches_per_epoch
        order = torch.empty(0, dtype=torch.long)
        for step in progress(
            range(max(cls_steps, config.reg_steps)), quiet=config.quiet, desc=f"seed {seed}"
        ):
            batch = {}
            if step < cls_steps:
                i = step % batches_per_epoch
                if i == 0:
                    order = torch.randperm(n_train, generator=g_data)
                idx = order[i * config.batch_size : (i + 1) * config.batch_size]
                for mine in rt.shard([idx]):  # this process's part (none: too small to share)
                    batch["cls"] = (data.x_train[mine], data.y_train[mine])
            if step < config.reg_steps:
                mine = rt.part(torch.arange(len(x_reg)))  # the full batch, shared out
                batch["reg"] = (x_reg[mine], y_reg[mine])
            for which, m in models.items():
                if which[0] not in batch:
                    continue
                t0 = time.perf_counter()
                with rt.autocast():
                    loss = m.loss(*batch[which[0]])
                opts[which].zero_grad(set_to_none=True)
                loss.backward()
                rt.sync_grads(opts[which])  # data-parallel: the mean over processes
                opts[which].step()
                seconds[which] += time.perf_counter() - t0

        # ---- Evaluation: the same metrics for every method ----------------------------------
        rows: dict[str, dict] = {}
        g_eval = torch.Generator().manual_seed(20_000 + seed)
        test_reg = rt.move(regression_toy(1000, config.reg_noise, g_eval))
        for (task, name), m in models.items():
            k = member_count(name, config)
            if task == "cls":
                scores, diagram = evaluate_classification(m, k, data, (x_val, y_val), x_ood)
                rows[name] = {"seed": seed, "method": name, "params": m.count, **scores}
                rows[name]["train_s"] = seconds[task, name]
                if seed == config.seed:
                    diagrams[name] = diagram
            else:
                figures, curve = evaluate_regression(m, k, (x_reg, y_reg), test_reg)
                rows[name] |= figures
                if seed == config.seed:
                    reg_curves[name], reg_data = curve, (x_reg, y_reg)
        per_seed += rows.values()
        if run_dir is not None:
            write_json(run_dir / "results.json", {"config": asdict(config), "per_seed": per_seed})

    # ---- Report: mean ± std over seeds ------------------------------------------------------
    summary, table = summarize(per_seed, validation=len(y_val) > 0)
    if run_dir is None:  # not rank 0: nothing to write or print
        return {"summary": summary, "per_seed": per_seed}
    if reg_data is not None:
        plot_regression(reg_curves, *reg_data, run_dir / "regression.png")
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
    }
    seeds = f"seed {config.seed}" if config.repeats == 1 else (
        f"seeds {config.seed}..{config.seed + config.repeats - 1}, mean ± std"
    )  # fmt: skip
    print(
        f"\n{data.name}, {config.epochs} epochs, {seeds}; acc, ece, auroc in %; OOD: "
        f"{ood_what}; K = {config.eval_samples} draws (deep ensemble: {config.ensemble} "
        "members)"
    )
    write_results(
        run_dir,
        results,
        per_seed,
        plot=lambda path: plot_reliability(diagrams, path),
        plot_name="reliability.png",
        table=table,
    )
    print(f"\n{run_dir}")
    results["run_dir"] = str(run_dir)
    return results
