"""Multi-objective data built offline: two overlaid images with two labels, a regression toy.

Everything is generated deterministically from a seed out of files already on disk
(Fashion-MNIST's IDX files, scikit-learn's bundled digits); nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import load_digits, load_fashion_mnist

MULTI_DATASETS = ("multi-fashion", "multi-fashion-digits", "multi-digits", "regression")
"""The names :func:`load_multi` accepts."""


@dataclass(frozen=True)
class MultiObjectiveData:
    """A dataset with one target column per objective.

    Attributes:
        name: one of :data:`MULTI_DATASETS`.
        x_train: ``(N, ...)`` float32 inputs; ``x_test`` likewise.
        y_train: ``(N, m)`` targets, int64 class labels (classification) or float32 values
            (regression); column ``i`` belongs to objective ``i``. ``y_test`` likewise.
        objectives: the m objectives' names.
        kind: ``"classification"`` or ``"regression"``.
        num_classes: classes per objective (0 for regression).
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    objectives: tuple[str, ...]
    kind: str
    num_classes: int = 0

    @property
    def num_objectives(self) -> int:
        """m, the number of objectives."""
        return len(self.objectives)

    def __repr__(self) -> str:
        return (
            f"MultiObjectiveData(name={self.name!r}, train={len(self.x_train)}, "
            f"test={len(self.x_test)}, input_shape={tuple(self.x_train.shape[1:])}, "
            f"objectives={self.objectives})"
        )


def overlay_pairs(
    first: Tensor,
    second: Tensor,
    *,
    canvas: int = 36,
    shift: int = 4,
    size: int = 28,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Overlay two images per sample, one near the top left, one near the bottom right.

    As in Multi-MNIST (Sabour et al. 2017; Sener and Koltun 2018): image ``first[i]`` goes to
    the top-left corner of a ``canvas x canvas`` square, ``second[i]`` to the bottom-right one,
    each moved towards the centre by a random 0..``shift`` pixels in each direction; the pixel
    is the larger of the two, and the square is resized to ``size x size``.

    Args:
        first: ``(N, 1, H, W)`` images in [0, 1]; ``second`` likewise (same shape).
        canvas: side of the square, ``>= H`` and ``>= W``.
        shift: largest random move.
        size: side of the output images.
        generator: draws the moves.

    Returns:
        ``(N, 1, size, size)`` float32 images.

    Example:
        >>> a, b = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
        >>> overlay_pairs(a, b).shape
        torch.Size([4, 1, 28, 28])
    """
    if first.shape != second.shape or first.dim() != 4:
        raise ValueError(
            f"first and second must be (N, C, H, W) of one shape, got {tuple(first.shape)} and "
            f"{tuple(second.shape)}"
        )
    n, c, h, w = first.shape
    if canvas < max(h, w) or shift < 0 or canvas - max(h, w) < shift:
        raise ValueError(
            f"canvas={canvas} and shift={shift} do not fit images of {h}x{w}: "
            f"need canvas >= {max(h, w)} + shift"
        )
    moves = torch.randint(0, shift + 1, (2, n, 2), generator=generator)  # (pair, N, dy/dx)
    out = torch.zeros(n, c, canvas, canvas)
    for which, image in enumerate((first, second)):
        layer = torch.zeros(n, c, canvas, canvas)
        for dy in range(shift + 1):
            for dx in range(shift + 1):
                pick = ((moves[which, :, 0] == dy) & (moves[which, :, 1] == dx)).nonzero()[:, 0]
                if not len(pick):
                    continue
                top = dy if which == 0 else canvas - h - dy
                left = dx if which == 0 else canvas - w - dx
                layer[pick, :, top : top + h, left : left + w] = image[pick]
        out = torch.maximum(out, layer)
    if size != canvas:
        out = F.interpolate(out, size=(size, size), mode="bilinear", antialias=True)
    return out.clamp_(0, 1)


def toy_functions(x: Tensor) -> Tensor:
    r"""The two noise-free regression targets of the toy: :math:`(\sin 3x, \cos 3x)`.

    For ``x`` uniform on [-1, 1] they differ by :math:`E[(\sin 3x - \cos 3x)^2] = 1`, so the
    optimum of the linear scalarisation for ray ``r`` predicts :math:`r_1 t_1 + r_2 t_2` and
    has mean squared errors :math:`(r_2^2 + \sigma^2, r_1^2 + \sigma^2)` in expectation.

    Args:
        x: ``(N, 1)``.

    Returns:
        ``(N, 2)``.

    Example:
        >>> toy_functions(torch.zeros(1, 1))
        tensor([[0., 1.]])
    """
    return torch.cat([torch.sin(3 * x), torch.cos(3 * x)], dim=-1)


def regression_toy(
    n_train: int = 2000, n_test: int = 2000, *, noise: float = 0.1, seed: int = 0
) -> MultiObjectiveData:
    """The two-objective regression toy: one output fitted to two conflicting targets.

    ``x ~ U(-1, 1)``, ``y = toy_functions(x) + noise * N(0, I)``; a network with one output
    is scored by its squared error to each column, so no network is best on both.

    Example:
        >>> d = regression_toy(100, 50)
        >>> d.x_train.shape, d.y_train.shape, d.num_objectives
        (torch.Size([100, 1]), torch.Size([100, 2]), 2)
    """
    g = torch.Generator().manual_seed(seed)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    splits = []
    for n in (n_train, n_test):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n_train and n_test must be positive ints, got {n!r}")
        x = torch.rand(n, 1, generator=g) * 2 - 1  # (n, 1)
        y = toy_functions(x) + noise * torch.randn(n, 2, generator=g)  # (n, 2)
        splits += [x, y]
    x_train, y_train, x_test, y_test = splits
    return MultiObjectiveData(
        "regression", x_train, y_train, x_test, y_test,
        objectives=("sin 3x", "cos 3x"), kind="regression",
    )  # fmt: skip


def _pairs(
    images: tuple[Tensor, Tensor], labels: tuple[Tensor, Tensor], n: int, g: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Draw n (first, second) pairs, without replacement where the pools are large enough."""
    picks = []
    for pool in images:
        size = len(pool)
        if n <= size:
            picks.append(torch.randperm(size, generator=g)[:n])
        else:
            picks.append(torch.randint(0, size, (n,), generator=g))
    x = overlay_pairs(images[0][picks[0]], images[1][picks[1]], generator=g)
    y = torch.stack([labels[0][picks[0]], labels[1][picks[1]]], dim=1)  # (n, 2)
    return x, y


def load_multi(
    name: str,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    noise: float = 0.1,
) -> MultiObjectiveData:
    """Build a two-objective dataset deterministically from ``seed``.

    * ``multi-fashion``: two Fashion-MNIST items overlaid (:func:`overlay_pairs`); objective 1
      classifies the top-left item, objective 2 the bottom-right one. Default 60,000 / 10,000
      pairs, drawn from the training and test splits respectively.
    * ``multi-fashion-digits``: a Fashion-MNIST item top left, one of scikit-learn's 8x8 digits
      (enlarged to 28x28) bottom right; the counterpart of PHN's Multi-Fashion+MNIST. Default
      60,000 / 10,000 pairs (digits drawn with replacement).
    * ``multi-digits``: two enlarged digits, a Multi-MNIST built from scikit-learn's digits
      (1,347 / 450 digits; default 10,000 / 2,000 pairs, with replacement).
    * ``regression``: :func:`regression_toy` (default 2,000 / 2,000 points).

    Args:
        name: one of :data:`MULTI_DATASETS`.
        n_train: training pairs (``None``: the default above); ``n_test`` likewise.
        seed: the pairs and moves (and the digits' train/test split).
        data_dir: folder of Fashion-MNIST's IDX files (default: Debian's).
        noise: the regression toy's noise.

    Returns:
        A :class:`MultiObjectiveData` with 28x28 images (or ``(N, 1)`` inputs).

    Example:
        >>> load_multi("multi-digits", n_train=8, n_test=4)
        MultiObjectiveData(name='multi-digits', train=8, test=4, input_shape=(1, 28, 28), objectives=('top-left digit', 'bottom-right digit'))
    """  # noqa: E501
    if name not in MULTI_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {MULTI_DATASETS}")
    if name == "regression":
        return regression_toy(n_train or 2000, n_test or 2000, noise=noise, seed=seed)
    for what, n in (("n_train", n_train), ("n_test", n_test)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"{what} must be a positive int or None, got {n!r}")
    g = torch.Generator().manual_seed(seed)
    pools: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
    if name in ("multi-fashion", "multi-fashion-digits"):
        f = load_fashion_mnist(data_dir)
        pools["fashion"] = (f.x_train, f.y_train, f.x_test, f.y_test)
    if name in ("multi-digits", "multi-fashion-digits"):
        d = load_digits(seed=seed)
        big = [
            F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
            for x in (d.x_train, d.x_test)
        ]
        pools["digits"] = (big[0], d.y_train, big[1], d.y_test)
    first, second, objectives = {
        "multi-fashion": ("fashion", "fashion", ("top-left item", "bottom-right item")),
        "multi-fashion-digits": ("fashion", "digits", ("fashion item", "digit")),
        "multi-digits": ("digits", "digits", ("top-left digit", "bottom-right digit")),
    }[name]
    default_train, default_test = (10_000, 2_000) if name == "multi-digits" else (60_000, 10_000)
    a, b = pools[first], pools[second]
    x_train, y_train = _pairs((a[0], b[0]), (a[1], b[1]), n_train or default_train, g)
    x_test, y_test = _pairs((a[2], b[2]), (a[3], b[3]), n_test or default_test, g)
    return MultiObjectiveData(
        name, x_train, y_train, x_test, y_test, objectives, "classification", num_classes=10
    )
