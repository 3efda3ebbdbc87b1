"""Small image-classification datasets held in memory as tensors.

Nothing here downloads anything. Fashion-MNIST is read from IDX files already on disk (the
Debian/Ubuntu package ``dataset-fashion-mnist`` installs them in :data:`FASHION_MNIST_DIR`);
the 8x8 digits come bundled with scikit-learn, which is imported only when they are loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .idx import read_idx

__all__ = [
    "DATASET_NAMES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_FILES",
    "Dataset",
    "fashion_mnist_available",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package installs the IDX files."""

FASHION_MNIST_ENV = "HYPERLOOM_FASHION_MNIST_DIR"
"""Environment variable that overrides :data:`FASHION_MNIST_DIR`."""

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The four standard file names; each may also be present with a ``.gz`` suffix."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

DATASET_NAMES = ("auto", "fashion-mnist", "digits")
"""The names :func:`load_dataset` accepts."""


@dataclass(frozen=True)
class Dataset:
    """An image-classification dataset with a train and a test split, as tensors.

    Attributes:
        name: a short name such as ``"fashion-mnist"``.
        x_train: float32 images scaled to [0, 1], shape (N_train, C, H, W).
        y_train: int64 labels in ``range(len(classes))``, shape (N_train,).
        x_test: float32 images, shape (N_test, C, H, W).
        y_test: int64 labels, shape (N_test,).
        classes: the class names; label ``i`` is ``classes[i]``.

    Example:
        >>> import torch
        >>> ds = Dataset(
        ...     "toy",
        ...     torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2]),
        ...     torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2]),
        ...     ("a", "b", "c"),
        ... )
        >>> ds
        Dataset(name='toy', train=6, test=3, input_shape=(1, 4, 4), classes=3)
        >>> ds.subset(n_train=3).y_train.bincount().tolist()  # one of each class
        [1, 1, 1]
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.classes, tuple) or not self.classes:
            raise TypeError(f"classes must be a non-empty tuple of names, got {self.classes!r}")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                raise TypeError(f"x_{split} and y_{split} must be tensors")
            if x.dtype != torch.float32 or x.ndim != 4:
                raise ValueError(
                    f"x_{split} must be float32 of shape (N, C, H, W), "
                    f"got {x.dtype} of shape {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.ndim != 1:
                raise ValueError(
                    f"y_{split} must be int64 of shape (N,), got {y.dtype} of shape "
                    f"{tuple(y.shape)}"
                )
            if len(x) != len(y):
                raise ValueError(f"x_{split} has {len(x)} images but y_{split} has {len(y)}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise ValueError(
                    f"y_{split} has labels in [{int(y.min())}, {int(y.max())}], outside "
                    f"[0, {len(self.classes)}) for {len(self.classes)} classes"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"x_train images have shape {tuple(self.x_train.shape[1:])} but x_test images "
                f"have shape {tuple(self.x_test.shape[1:])}"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image, (C, H, W)."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"input_shape={self.input_shape}, classes={self.num_classes})"
        )

    def subset(
        self, n_train: int | None = None, n_test: int | None = None, seed: int = 0
    ) -> Dataset:
        """A random, class-balanced subset; the dataset itself is left unchanged.

        Each class keeps about its share of the ``n`` examples: examples are ranked within
        their class in a random order and taken by rank / class size, so that classes are
        represented in proportion. The chosen examples keep their original order.

        Args:
            n_train: number of training examples to keep; ``None`` keeps them all.
            n_test: number of test examples to keep; ``None`` keeps them all.
            seed: seed of the ``torch.Generator`` that draws the subset.

        Returns:
            A new :class:`Dataset` with the same name and classes.

        Raises:
            ValueError: when ``n_train`` or ``n_test`` is negative or larger than the split.

        Example:
            >>> ds = load_digits().subset(n_train=100, n_test=50)
            >>> len(ds.y_train), len(ds.y_test), int(ds.y_train.bincount().min())
            (100, 50, 10)
        """
        generator = torch.Generator().manual_seed(seed)
        train = _stratified_indices(self.y_train, n_train, generator, "n_train")
        test = _stratified_indices(self.y_test, n_test, generator, "n_test")
        return Dataset(
            self.name,
            self.x_train[train],
            self.y_train[train],
            self.x_test[test],
            self.y_test[test],
            self.classes,
        )


def _stratified_indices(y: Tensor, n: int | None, generator: torch.Generator, what: str) -> Tensor:
    """Sorted indices of ``n`` examples of ``y``, each class in proportion to its size."""
    total = len(y)
    if n is None:
        return torch.arange(total)
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{what} must be an int or None, got {n!r}")
    if n < 0 or n > total:
        raise ValueError(f"{what}={n} is outside [0, {total}], the number of examples available")
    perm = torch.randperm(total, generator=generator)  # (N,)
    y_perm = y[perm]  # (N,)
    counts = torch.bincount(y_perm)  # (C,)
    starts = torch.cumsum(counts, 0) - counts  # (C,) first position of each class when sorted
    order = torch.sort(y_perm, stable=True).indices  # (N,) grouped by class, random within
    rank = torch.empty_like(perm)
    rank[order] = torch.arange(total) - starts[y_perm[order]]  # (N,) rank within class
    key = rank.double() / counts[y_perm].double()  # (N,) in [0, 1)
    chosen = perm[torch.sort(key, stable=True).indices[:n]]  # ties broken by the random order
    return torch.sort(chosen).values


def _fashion_mnist_dir(data_dir: str | os.PathLike | None) -> Path:
    """The folder to look in: ``data_dir``, else the environment variable, else the default."""
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)


def _find_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Map each standard file name to its path (plain or ``.gz``); also list the missing."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for stem in FASHION_MNIST_FILES:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[stem] = candidate
                break
        else:
            missing.append(stem)
    return found, missing


def fashion_mnist_available(data_dir: str | os.PathLike | None = None) -> bool:
    """Whether the four Fashion-MNIST IDX files are present.

    Args:
        data_dir: the folder to look in; ``None`` means ``$HYPERLOOM_FASHION_MNIST_DIR``
            when set, else :data:`FASHION_MNIST_DIR`.

    Returns:
        ``True`` when each of :data:`FASHION_MNIST_FILES` exists, plain or gzipped.

    Example:
        >>> fashion_mnist_available("/nonexistent")
        False
    """
    return not _find_files(_fashion_mnist_dir(data_dir))[1]


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load Fashion-MNIST (60000 train and 10000 test 28x28 images, 10 classes) from disk.

    Nothing is downloaded. The folder must hold the four standard IDX files, each plain or
    gzipped: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``.

    Args:
        data_dir: the folder to read; ``None`` means ``$HYPERLOOM_FASHION_MNIST_DIR`` when
            set, else :data:`FASHION_MNIST_DIR`.

    Returns:
        A :class:`Dataset` named ``"fashion-mnist"`` with images of shape (N, 1, 28, 28)
        (or whatever size the files hold) scaled to [0, 1].

    Raises:
        FileNotFoundError: listing the missing files and how to obtain them.
        ValueError: when a file is corrupt, or images and labels disagree.

    Example:
        >>> ds = load_fashion_mnist()  # doctest: +SKIP
        >>> ds  # doctest: +SKIP
        Dataset(name='fashion-mnist', train=60000, test=10000, input_shape=(1, 28, 28), classes=10)
    """
    folder = _fashion_mnist_dir(data_dir)
    found, missing = _find_files(folder)
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files missing from {str(folder)!r}: {', '.join(missing)} "
            "(each may be plain or .gz). Nothing is downloaded at run time. To get them, "
            "either run `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; it installs "
            f"them in {FASHION_MNIST_DIR}), or download the four files from the dataset's "
            "official repository, https://github.com/zalandoresearch/fashion-mnist "
            "(folder data/fashion), into a folder and pass it with --data-dir "
            f"(data_dir=... in Python, or set ${FASHION_MNIST_ENV})."
        )
    splits = []
    for prefix in ("train", "t10k"):
        images_path = found[f"{prefix}-images-idx3-ubyte"]
        labels_path = found[f"{prefix}-labels-idx1-ubyte"]
        images = read_idx(images_path)  # (N, H, W) uint8
        labels = read_idx(labels_path)  # (N,) uint8
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"{str(images_path)!r}: expected uint8 images of shape (N, H, W), got "
                f"{images.dtype} of shape {images.shape}"
            )
        if labels.ndim != 1:
            raise ValueError(
                f"{str(labels_path)!r}: expected labels of shape (N,), got shape {labels.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(
                f"{str(images_path)!r} holds {len(images)} images but {str(labels_path)!r} "
                f"holds {len(labels)} labels"
            )
        if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
            raise ValueError(
                f"{str(labels_path)!r}: label {int(labels.max())} is not a Fashion-MNIST class "
                f"(0..{len(FASHION_MNIST_CLASSES) - 1})"
            )
        x = torch.from_numpy(images).unsqueeze(1).float().div_(255.0)  # (N, 1, H, W)
        y = torch.from_numpy(labels.astype(np.int64))  # (N,)
        splits.append((x, y))
    (x_train, y_train), (x_test, y_test) = splits
    return Dataset("fashion-mnist", x_train, y_train, x_test, y_test, FASHION_MNIST_CLASSES)


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """Load scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).

    The data ships with scikit-learn (``pip install hyperloom[data]``), so nothing is
    downloaded. Pixel values 0..16 are scaled to [0, 1]. The split is stratified: each class
    puts ``round(test_fraction * class_size)`` of its images, drawn with
    ``numpy.random.default_rng(seed)``, in the test split.

    Args:
        test_fraction: share of each class held out for testing, strictly between 0 and 1.
        seed: seed of the split; the same seed gives the same split.

    Returns:
        A :class:`Dataset` named ``"digits"`` with images of shape (N, 1, 8, 8).

    Raises:
        ValueError: when ``test_fraction`` is not strictly between 0 and 1.
        ImportError: when scikit-learn is not installed.

    Example:
        >>> ds = load_digits()
        >>> ds
        Dataset(name='digits', train=1347, test=450, input_shape=(1, 8, 8), classes=10)
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
    try:
        # scikit-learn ships no type information (no py.typed marker).
        from sklearn.datasets import load_digits as _sklearn_load_digits
    except ImportError as e:
        raise ImportError(
            "load_digits needs scikit-learn, which bundles the digits: "
            "pip install 'hyperloom[data]' (or pip install scikit-learn)"
        ) from e
    bunch = _sklearn_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    labels = np.asarray(bunch.target, dtype=np.int64)  # (1797,)

    rng = np.random.default_rng(seed)
    test_parts = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        n_test = round(test_fraction * len(members))
        test_parts.append(rng.permutation(members)[:n_test])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test_parts)] = True

    x = torch.from_numpy(images).unsqueeze(1)  # (1797, 1, 8, 8)
    y = torch.from_numpy(labels)
    train, test = torch.from_numpy(~is_test), torch.from_numpy(is_test)
    classes = tuple(str(c) for c in range(10))
    return Dataset("digits", x[train], y[train], x[test], y[test], classes)


def load_dataset(name: str = "auto", data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a dataset by name.

    Args:
        name: ``"fashion-mnist"``, ``"digits"``, or ``"auto"``: Fashion-MNIST when its files
            are present in the folder, else the digits.
        data_dir: the Fashion-MNIST folder (see :func:`load_fashion_mnist`); ignored for
            ``"digits"``.

    Returns:
        The :class:`Dataset`.

    Raises:
        ValueError: when ``name`` is not one of :data:`DATASET_NAMES`.

    Example:
        >>> load_dataset("digits").num_classes
        10
    """
    if name == "auto":
        name = "fashion-mnist" if fashion_mnist_available(data_dir) else "digits"
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    if name == "digits":
        return load_digits()
    raise ValueError(f"unknown dataset {name!r}; accepted names: {', '.join(DATASET_NAMES)}")
