"""Run folders, results files, accuracy and progress bars shared by the recipes (functions)."""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from ..checkpoint import to_jsonable

T = TypeVar("T")


def make_run_dir(root: str | os.PathLike = "runs", name: str = "") -> Path:
    """Create ``root/<timestamp>[-name]/`` (a new folder, never reused) and return it.

    Example:
        >>> import tempfile
        >>> make_run_dir(tempfile.mkdtemp(), "demo").name.endswith("-demo")
        True
    """
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / (f"{stamp}-{name}" if name else stamp)
    path, i = base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            i += 1
            path = base.with_name(f"{base.name}-{i}")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (atomically: a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write a list of dicts as CSV, columns in first-seen order."""
    path = Path(path)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: to_jsonable(v) for k, v in row.items()})
    return path


def format_table(rows: Sequence[Mapping[str, Any]], floats: str = "{:.4g}") -> str:
    """A plain-text table of a list of dicts (columns in first-seen order)."""
    if not rows:
        return "(no rows)"
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return floats.format(v)
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10_000:
            return f"{v:,}"
        return "" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def progress(iterable: Iterable[T], *, quiet: bool = False, **tqdm_kwargs: Any) -> Iterator[T]:
    """``tqdm`` over ``iterable`` on a terminal, else (or when ``quiet``) the iterable itself.

    Under a non-terminal stderr (CI, a log file) a bar would print one empty ``0%`` line per
    loop, so none is drawn (tqdm's ``disable=None``); recipes print a line per finished model.

    Example:
        >>> list(progress(range(3), quiet=True))
        [0, 1, 2]
    """
    if quiet:
        yield from iterable
        return
    from tqdm.auto import tqdm

    tqdm_kwargs.setdefault("disable", None)  # None: only on a terminal
    yield from tqdm(iterable, dynamic_ncols=True, leave=False, **tqdm_kwargs)


class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.seconds``: wall time of a block."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def count_trainable(module: torch.nn.Module) -> int:
    """Number of trainable parameters (``HyperNetwork`` leaves out the generated ones)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@torch.no_grad()
def count_correct(
    forward: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, batch_size: int = 2000
) -> int:
    """How many rows of ``x`` the logits ``forward(x)`` classify as ``y``, in chunks.

    Args:
        forward: inputs ``(b, ...)`` -> logits ``(b, classes)``.
        x: inputs ``(N, ...)``.
        y: labels ``(N,)``.
        batch_size: rows per call of ``forward``.

    Returns:
        The number of rows whose arg-max logit is the label.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
        >>> count_correct(lambda x: x, logits, torch.tensor([0, 1, 1]), batch_size=2)
        2
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((forward(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
    return correct


def batched_accuracy(
    forward: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, batch_size: int = 2000
) -> float:
    """Accuracy in percent of the logits ``forward(x)`` on labels ``y``, in chunks of ``x``.

    Args:
        forward: inputs ``(b, ...)`` -> logits ``(b, classes)``; called under ``no_grad``.
        x: inputs ``(N, ...)``, ``N >= 1``.
        y: labels ``(N,)``.
        batch_size: rows per call of ``forward``.

    Returns:
        ``100 * correct / N``.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
        >>> batched_accuracy(lambda x: x, logits, torch.tensor([0, 1, 1, 1]))
        75.0
    """
    if len(x) == 0:
        raise ValueError("batched_accuracy needs at least one example, got 0")
    return 100.0 * count_correct(forward, x, y, batch_size=batch_size) / len(x)


def write_results(
    run_dir: str | os.PathLike,
    results: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    *,
    csv_name: str = "results.csv",
    plot: Callable[[Path], None] | None = None,
    plot_name: str = "results.png",
    table: Sequence[Mapping[str, Any]] | None = None,
    floats: str = "{:.4g}",
) -> None:
    """The trailer every recipe ends with: results.json, a CSV, a plot and a printed table.

    Args:
        run_dir: the run folder (from :func:`make_run_dir`).
        results: written to ``run_dir/results.json``.
        rows: written to ``run_dir/<csv_name>``; also the printed table unless ``table`` is given.
        csv_name: the CSV's file name.
        plot: called with ``run_dir/<plot_name>`` to draw the figure (``None``: no figure).
        plot_name: the figure's file name.
        table: the rows to print (default: ``rows``; an empty sequence prints nothing).
        floats: the format of floats in the printed table.

    Example:
        >>> import tempfile
        >>> d = make_run_dir(tempfile.mkdtemp(), "demo")
        >>> write_results(d, {"acc": 0.5}, [{"model": "a", "acc": 0.5}])
        model  acc
        -----  ---
        a      0.5
        >>> sorted(p.name for p in d.iterdir())
        ['results.csv', 'results.json']
    """
    run_dir = Path(run_dir)
    write_json(run_dir / "results.json", results)
    write_csv(run_dir / csv_name, rows)
    if plot is not None:
        plot(run_dir / plot_name)
    shown = rows if table is None else table
    if shown:
        print(format_table(shown, floats=floats))
