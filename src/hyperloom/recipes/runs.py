"""Run folders, results files, progress bars and plots shared by the recipes (plain functions)."""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

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
