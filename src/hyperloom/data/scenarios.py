"""Task scenarios for continual and federated learning, built from any labelled dataset.

Each function takes a :class:`~hyperloom.data.Dataset` (or any object with ``x_train``,
``y_train``, ``x_test``, ``y_test`` and ``classes`` attributes, images of shape (N, C, H, W)
and labels in ``range(len(classes))``) and returns a list of :class:`Task`. The input is never
modified; every task holds new tensors.

* :func:`split_by_classes`: disjoint groups of classes, e.g. split Fashion-MNIST, 5 tasks of 2.
* :func:`permuted`: the same classes, each task with its own fixed pixel permutation.
* :func:`rotated`: the same classes, each task rotated by its own fixed angle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Task", "describe_tasks", "permuted", "rotated", "split_by_classes"]


@dataclass(frozen=True)
class Task:
    """One task of a scenario: a train and a test split with the classes it covers.

    Attributes:
        id: position of the task in its scenario, from 0.
        name: a short name such as ``"split-0"`` or ``"rotated-45"``.
        x_train: images, shape (N_train, C, H, W).
        y_train: int64 labels, shape (N_train,).
        x_test: images, shape (N_test, C, H, W).
        y_test: int64 labels, shape (N_test,).
        classes: the global class ids of the dataset present in this task.
        num_outputs: size of the output layer the labels need, when it is not
            ``len(classes)``; class-incremental splits keep global labels and set it to the
            dataset's number of classes. ``None`` means the labels are ``0..len(classes)-1``.

    Example:
        >>> import torch
        >>> task = Task(0, "toy", torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]),
        ...             torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), classes=(3, 7))
        >>> task.num_classes
        2
    """

    id: int
    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[int, ...]
    num_outputs: int | None = None

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train):
            raise ValueError(
                f"task {self.name!r}: x_train has {len(self.x_train)} examples but y_train "
                f"has {len(self.y_train)}"
            )
        if len(self.x_test) != len(self.y_test):
            raise ValueError(
                f"task {self.name!r}: x_test has {len(self.x_test)} examples but y_test "
                f"has {len(self.y_test)}"
            )

    @property
    def num_classes(self) -> int:
        """Number of output classes the labels need: they lie in ``range(num_classes)``."""
        return len(self.classes) if self.num_outputs is None else self.num_outputs


def _check_dataset(dataset: Any) -> int:
    """Check the attributes every scenario needs; return the number of classes."""
    needed = ("x_train", "y_train", "x_test", "y_test", "classes")
    missing = [a for a in needed if not hasattr(dataset, a)]
    if missing:
        raise TypeError(
            f"dataset of type {type(dataset).__name__} lacks attributes {', '.join(missing)}"
        )
    n_classes = len(dataset.classes)
    for split in ("train", "test"):
        y = getattr(dataset, f"y_{split}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
            raise ValueError(
                f"y_{split} has labels in [{int(y.min())}, {int(y.max())}], outside "
                f"[0, {n_classes}) for {n_classes} classes"
            )
    return n_classes


def split_by_classes(
    dataset: Any,
    n_tasks: int | None = None,
    *,
    classes_per_task: int | None = None,
    relabel: bool = True,
    class_order: Sequence[int] | None = None,
) -> list[Task]:
    """Split a dataset into tasks with disjoint groups of classes.

    The classes, in ``class_order``, are dealt out in consecutive groups of
    ``classes_per_task``: with 10 classes and ``n_tasks=5``, task 0 holds classes 0 and 1,
    task 1 classes 2 and 3, and so on. Give ``n_tasks``, ``classes_per_task`` or both (their
    product must then be the number of classes); with neither, tasks have 2 classes each.

    Args:
        dataset: a :class:`~hyperloom.data.Dataset` or anything with the same attributes.
        n_tasks: the number of tasks.
        classes_per_task: the number of classes in each task.
        relabel: ``True`` maps each task's labels to ``0..k-1`` in the order of its
            ``classes`` (task-incremental, one head per task); ``False`` keeps the global
            labels (class-incremental, one shared head of ``len(dataset.classes)`` outputs).
        class_order: the class ids in the order they are dealt out; default ascending. It may
            name a subset of the classes; the others are left out.

    Returns:
        The tasks, in order.

    Raises:
        ValueError: when the classes do not divide into tasks as asked, or ``class_order``
            repeats or names unknown classes.

    Example:
        >>> from hyperloom.data import load_digits
        >>> tasks = split_by_classes(load_digits(), n_tasks=5)
        >>> [t.classes for t in tasks]
        [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
        >>> sorted(tasks[1].y_train.unique().tolist()), tasks[1].num_classes
        ([0, 1], 2)
    """
    n_classes = _check_dataset(dataset)
    order = list(range(n_classes)) if class_order is None else [int(c) for c in class_order]
    if len(set(order)) != len(order):
        raise ValueError(f"class_order {order} repeats a class")
    unknown = [c for c in order if not 0 <= c < n_classes]
    if unknown:
        raise ValueError(f"class_order names classes {unknown} outside [0, {n_classes})")
    n_used = len(order)
    for arg_name, value in (("n_tasks", n_tasks), ("classes_per_task", classes_per_task)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{arg_name} must be an int or None, got {value!r}")
        if value is not None and value < 1:
            raise ValueError(f"{arg_name} must be at least 1, got {value}")

    per_task: int  # classes per task
    if n_tasks is None:
        per_task = 2 if classes_per_task is None else classes_per_task
        if n_used % per_task:
            raise ValueError(
                f"{n_used} classes do not divide into tasks of classes_per_task="
                f"{per_task} ({n_used} % {per_task} = "
                f"{n_used % per_task})"
            )
        n_tasks = n_used // per_task
    elif classes_per_task is None:
        if n_used % n_tasks:
            raise ValueError(
                f"{n_used} classes do not divide into n_tasks={n_tasks} equal tasks "
                f"({n_used} % {n_tasks} = {n_used % n_tasks})"
            )
        per_task = n_used // n_tasks
    elif n_tasks * classes_per_task != n_used:
        raise ValueError(
            f"n_tasks={n_tasks} x classes_per_task={classes_per_task} = "
            f"{n_tasks * classes_per_task} classes, but there are {n_used} to split"
        )
    else:
        per_task = classes_per_task

    tasks = []
    for t in range(n_tasks):
        group = tuple(order[t * per_task : (t + 1) * per_task])
        # Global label -> label in this task (-1 for classes outside the task).
        lookup = torch.full((n_classes,), -1, dtype=torch.int64)
        lookup[list(group)] = torch.arange(len(group)) if relabel else torch.tensor(group)
        splits = []
        for split in ("train", "test"):
            x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
            keep = lookup[y] >= 0  # (N,) bool
            splits += [x[keep], lookup[y[keep]]]
        x_train, y_train, x_test, y_test = splits
        num_outputs = None if relabel else n_classes
        tasks.append(
            Task(
                t,
                f"split-{t}",
                x_train,
                y_train,
                x_test,
                y_test,
                classes=group,
                num_outputs=num_outputs,
            )
        )
    return tasks


def permuted(
    dataset: Any, n_tasks: int, *, seed: int = 0, first_identity: bool = True
) -> list[Task]:
    """Permuted tasks: each applies its own fixed random permutation to the pixels.

    The permutation of task ``t`` is the ``t``-th draw of ``torch.randperm`` from a
    ``torch.Generator`` seeded with ``seed``, over the C*H*W values of an image; it is the
    same for train and test. With ``first_identity`` task 0 keeps the images as they are (its
    draw is discarded, so the other tasks do not depend on ``first_identity``).

    Args:
        dataset: a :class:`~hyperloom.data.Dataset` or anything with the same attributes.
        n_tasks: the number of tasks, at least 1.
        seed: seed of the permutations; the same seed gives the same tasks.
        first_identity: leave task 0 unpermuted.

    Returns:
        The tasks, each with all classes and the dataset's labels.

    Example:
        >>> from hyperloom.data import load_digits
        >>> tasks = permuted(load_digits(), 3, seed=0)
        >>> [t.name for t in tasks], tasks[2].x_train.shape
        (['permuted-0', 'permuted-1', 'permuted-2'], torch.Size([1347, 1, 8, 8]))
    """
    n_classes = _check_dataset(dataset)
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1:
        raise ValueError(f"n_tasks must be a positive int, got {n_tasks!r}")
    image_shape = tuple(dataset.x_train.shape[1:])  # (C, H, W)
    n_values = math.prod(image_shape)
    generator = torch.Generator().manual_seed(seed)
    tasks = []
    for t in range(n_tasks):
        perm = torch.randperm(n_values, generator=generator)  # (C*H*W,)
        if t == 0 and first_identity:
            perm = torch.arange(n_values)
        splits = []
        for split in ("train", "test"):
            x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
            flat = x.reshape(len(x), n_values)  # (N, C*H*W)
            splits += [flat[:, perm].reshape(len(x), *image_shape), y.clone()]  # (N, C, H, W)
        x_train, y_train, x_test, y_test = splits
        tasks.append(
            Task(
                t,
                f"permuted-{t}",
                x_train,
                y_train,
                x_test,
                y_test,
                classes=tuple(range(n_classes)),
            )
        )
    return tasks


def rotate_images(x: Tensor, angle: float, *, batch_size: int = 8192) -> Tensor:
    """Rotate images counter-clockwise (as displayed, row 0 at the top) about their centre.

    Bilinear interpolation; pixels that come from outside the image are zero. For an output
    pixel at normalised position p (x to the right, y down, both in [-1, 1]) the input is
    sampled at A p with, in pixel units, the rotation matrix

    .. math:: A = \\begin{pmatrix} \\cos\\theta & -\\sin\\theta \\\\ \\sin\\theta & \\cos\\theta
              \\end{pmatrix},

    rescaled by the aspect ratio so that non-square images rotate without shearing.

    Args:
        x: images, shape (N, C, H, W), floating point.
        angle: the angle in degrees; positive is counter-clockwise.
        batch_size: images per ``grid_sample`` call, to bound memory.

    Returns:
        The rotated images, a new tensor of the same shape and dtype.

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 1, 3, 3); x[0, 0, 0, 1] = 1.0  # top centre
        >>> rotate_images(x, 90.0)[0, 0].round().tolist()  # moves to the left centre
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(
            f"images must be floating point of shape (N, C, H, W), got {x.dtype} of shape "
            f"{tuple(x.shape)}"
        )
    n, _, h, w = x.shape
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    matrix = torch.tensor(
        [[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=x.dtype, device=x.device
    )  # (2, 3)
    out = torch.empty_like(x)
    for start in range(0, n, batch_size):
        chunk = x[start : start + batch_size]  # (B, C, H, W)
        grid = F.affine_grid(
            matrix.expand(len(chunk), 2, 3), list(chunk.shape), align_corners=False
        )  # (B, H, W, 2)
        out[start : start + batch_size] = F.grid_sample(
            chunk, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
    return out


def rotated(dataset: Any, angles: Sequence[float]) -> list[Task]:
    """Rotated tasks: task ``t`` rotates every image by ``angles[t]`` degrees.

    Rotation is counter-clockwise about the image centre, bilinear, with zero padding (see
    :func:`rotate_images`); the images are assumed to be floating point.

    Args:
        dataset: a :class:`~hyperloom.data.Dataset` or anything with the same attributes.
        angles: one angle in degrees per task, e.g. ``[0, 45, 90]``.

    Returns:
        The tasks, each with all classes and the dataset's labels.

    Example:
        >>> from hyperloom.data import load_digits
        >>> [t.name for t in rotated(load_digits(), [0, 22.5, 90])]
        ['rotated-0', 'rotated-22.5', 'rotated-90']
    """
    n_classes = _check_dataset(dataset)
    angles = [float(a) for a in angles]
    if not angles:
        raise ValueError("angles is empty; give one angle per task")
    tasks = []
    for t, angle in enumerate(angles):
        splits = []
        for split in ("train", "test"):
            x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
            splits += [rotate_images(x, angle), y.clone()]
        x_train, y_train, x_test, y_test = splits
        name = f"rotated-{angle:g}"
        tasks.append(
            Task(t, name, x_train, y_train, x_test, y_test, classes=tuple(range(n_classes)))
        )
    return tasks


def describe_tasks(tasks: Sequence[Task]) -> str:
    """A small text table of tasks: id, name, classes, n_train, n_test.

    Args:
        tasks: the tasks, e.g. from :func:`split_by_classes`.

    Returns:
        The table, one header line and one line per task, without a trailing newline.

    Example:
        >>> from hyperloom.data import load_digits
        >>> print(describe_tasks(split_by_classes(load_digits(), n_tasks=2)))
        id  name     classes    n_train  n_test
        0   split-0  0,1,2,3,4  676      225
        1   split-1  5,6,7,8,9  671      225
    """
    header = ("id", "name", "classes", "n_train", "n_test")
    rows = [
        (
            str(t.id),
            t.name,
            ",".join(str(c) for c in t.classes),
            str(len(t.y_train)),
            str(len(t.y_test)),
        )
        for t in tasks
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)
