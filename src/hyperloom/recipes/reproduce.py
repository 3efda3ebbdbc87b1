"""One command per recorded result: ``hyperloom reproduce NAME [--seeds 0,1] [--smoke]``.

Every registered recipe module defines two module-level values next to its ``Config``:

* ``SMOKE``: a ``dict`` of ``Config`` overrides that runs the whole recipe on a tiny budget
  (seconds, data present on every machine). ``make test`` runs it for every recipe, so a recipe
  cannot silently stop running.
* ``RECORDED``: a tuple of :class:`Recorded`, one per recorded result of
  ``docs/results/NAME.md``: the ``Config`` overrides that produced it, where each figure sits in
  the dict that ``run(config)`` returns, and the figures as recorded, per seed.

``reproduce`` reruns exactly those configurations (for the recorded seeds, or the seeds asked
for) and prints each figure as recorded beside the new one and their difference.

Some figures move with the CPU they were computed on: a run whose baselines forget most of what
they learned (fine-tuning on permuted Fashion-MNIST) amplifies the last-bit differences between
the SIMD kernels torch and MKL pick for one CPU and another into points of accuracy. A result
recorded with ``numerics="portable"`` was run under :data:`PORTABLE_NUMERICS` (torch's and
oneDNN's kernels without CPU-specific vector code, MKL in its conditional-reproducibility mode,
one thread), which every x86-64 CPU computes alike; ``hyperloom reproduce`` reruns such a result
in a child process under the same settings (they must be set before torch starts). With
``smoke=True`` it runs the first recorded configuration with ``SMOKE`` on top, checks that every
figure the recorded result names is produced, and prints them (the values are not comparable).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import subprocess
import sys
import typing
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any

from .config import ArgumentParser
from .registry import RECIPES, load_recipe
from .runs import format_table

PORTABLE_NUMERICS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "default",  # torch's own kernels: no AVX2/AVX-512 variants
    "MKL_CBWR": "COMPATIBLE",  # MKL's BLAS: the same code path (and rounding) on every x86 CPU
    "ONEDNN_MAX_CPU_ISA": "SSE41",  # oneDNN's kernels (convolutions) capped likewise
    "OMP_NUM_THREADS": "1",  # one thread: no order of a parallel reduction to vary
    "MKL_NUM_THREADS": "1",
}
"""The environment a ``numerics="portable"`` result is recorded and reproduced under."""


def portable_numerics() -> bool:
    """Whether this process runs under :data:`PORTABLE_NUMERICS` (set before torch started).

    Example:
        >>> import os
        >>> portable_numerics() == all(os.environ.get(k) == v for k, v in PORTABLE_NUMERICS.items())
        True
    """
    return all(os.environ.get(k) == v for k, v in PORTABLE_NUMERICS.items())


@dataclass(frozen=True)
class Recorded:
    """A recorded result: its configuration and its figures, per seed.

    Args:
        name: a short label, e.g. ``"split-fmnist"``.
        overrides: the ``Config`` fields that differ from the defaults (never the seed or ``out``).
        metrics: label -> dotted path into the dict ``run(config)`` returns, e.g.
            ``{"hnet avg acc (%)": "results.hnet.avg_acc"}`` (see :func:`lookup`).
        values: seed -> label -> the figure as recorded in the results page.
        seed_field: the ``Config`` field a seed goes to (a ``tuple`` field gets ``(seed,)``).
        page: the results page that records it.
        numerics: ``"native"`` (recorded with the kernels this CPU picks) or ``"portable"``
            (recorded under :data:`PORTABLE_NUMERICS`, reproduced under them too).

    Example:
        >>> r = Recorded("tiny", {"epochs": 1}, {"acc": "results.acc"}, {0: {"acc": 90.0}})
        >>> r.seeds
        (0,)
    """

    name: str
    overrides: Mapping[str, Any]
    metrics: Mapping[str, str]
    values: Mapping[int, Mapping[str, float]] = field(default_factory=dict)
    seed_field: str = "seed"
    page: str = ""
    numerics: str = "native"

    def __post_init__(self) -> None:
        if self.numerics not in ("native", "portable"):
            raise ValueError(
                f"recorded {self.name!r}: numerics must be 'native' or 'portable', "
                f"got {self.numerics!r}"
            )
        for seed, figures in self.values.items():
            unknown = sorted(set(figures) - set(self.metrics))
            if unknown:
                raise ValueError(
                    f"recorded {self.name!r}, seed {seed}: figures {unknown} have no metric path"
                )
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seeds whose figures are recorded, sorted."""
        return tuple(sorted(self.values))


def recipe_entries(module: ModuleType) -> tuple[dict[str, Any], tuple[Recorded, ...]]:
    """A recipe module's ``SMOKE`` and ``RECORDED``, checked against its ``Config``.

    Raises:
        TypeError: the module lacks ``SMOKE`` or ``RECORDED``, or they have the wrong type.
        ValueError: an override names a field ``Config`` does not have.
    """
    name = module.__name__
    smoke = getattr(module, "SMOKE", None)
    recorded = getattr(module, "RECORDED", None)
    if not isinstance(smoke, dict):
        raise TypeError(f"recipe {name} defines no SMOKE dict of Config overrides")
    if not isinstance(recorded, tuple) or not all(isinstance(r, Recorded) for r in recorded):
        raise TypeError(f"recipe {name} defines no RECORDED tuple of Recorded")
    fields = {f.name for f in dataclasses.fields(module.Config)}
    for label, keys in [
        ("SMOKE", smoke),
        *((f"RECORDED {r.name!r}", r.overrides) for r in recorded),
    ]:
        unknown = sorted(set(keys) - fields)
        if unknown:
            raise ValueError(f"recipe {name}: {label} names unknown Config fields {unknown}")
    for r in recorded:
        if r.seed_field not in fields:
            raise ValueError(f"recipe {name}: RECORDED {r.name!r} seed field {r.seed_field!r}")
    return smoke, recorded


def lookup(results: Mapping[str, Any], path: str) -> Any:
    """The value at dotted ``path`` in ``results``.

    A part ``key=value`` picks the first dict of a list whose ``key`` is ``value``; an integer
    part indexes a list.

    Example:
        >>> rows = {"rows": [{"model": "a", "acc": 90.0}, {"model": "b", "acc": 80.0}]}
        >>> lookup(rows, "rows.model=b.acc")
        80.0
        >>> lookup({"curve": [1.0, 2.5]}, "curve.1")
        2.5
    """
    value: Any = results
    parts = path.split(".")
    for i, key in enumerate(parts):
        try:
            if isinstance(value, list) and "=" in key:
                field_name, wanted = key.split("=", 1)
                value = next(v for v in value if str(v.get(field_name)) == wanted)
            elif isinstance(value, list):
                value = value[int(key)]
            else:
                value = value[key]
        except (KeyError, IndexError, ValueError, TypeError, StopIteration, AttributeError):
            done = ".".join(parts[:i]) or "(top)"
            raise KeyError(f"{path!r}: no {key!r} under {done}") from None
    return value


def _config(module: ModuleType, overrides: Mapping[str, Any], seed_field: str, seed: int | None):
    values = dict(overrides)
    if seed is not None:
        hint = typing.get_type_hints(module.Config)[seed_field]
        values[seed_field] = (seed,) if typing.get_origin(hint) is tuple else seed
    return module.Config(**values)


def reproduce(
    name: str,
    seeds: Sequence[int] | None = None,
    *,
    smoke: bool = False,
    only: Iterable[str] = (),
    out: str = "runs",
) -> list[dict[str, Any]]:
    """Rerun the recorded results of recipe ``name`` and compare them with the record.

    Args:
        name: a registered recipe (``hyperloom list``).
        seeds: the seeds to run; ``None``: the seeds each result records.
        smoke: run the first recorded configuration with the recipe's ``SMOKE`` on top instead.
        only: names of the recorded results to run (default: all).
        out: the folder the run folders go under.

    Returns:
        One row per figure: result, seed, metric, recorded (``None`` where no figure is
        recorded for that seed), new, diff (new minus recorded).

    Example:
        >>> import tempfile
        >>> rows = reproduce("hyperconv", smoke=True, out=tempfile.mkdtemp())  # doctest: +ELLIPSIS
        smoke run of hyperconv...
        >>> sorted(rows[0])
        ['diff', 'metric', 'new', 'recorded', 'result', 'seed']
    """
    module = load_recipe(name)
    smoke_overrides, recorded = recipe_entries(module)
    wanted = set(only)
    unknown = sorted(wanted - {r.name for r in recorded})
    if unknown:
        names = ", ".join(r.name for r in recorded) or "(none)"
        raise ValueError(f"recipe {name!r} records no result {unknown}; recorded: {names}")
    if smoke:
        first = recorded[0] if recorded else Recorded("smoke", {}, {})
        plans: list[tuple[Recorded, int | None, dict[str, Any]]]
        plans = [(first, None, {**first.overrides, **smoke_overrides, "out": out})]
        print(f"smoke run of {name} ({first.name} with {smoke_overrides})")
    else:
        if not recorded:
            raise ValueError(f"recipe {name!r} has no recorded result to reproduce")
        plans = [
            (r, s, {**r.overrides, "out": out})
            for r in recorded
            if not wanted or r.name in wanted
            for s in (r.seeds if seeds is None else seeds)
        ]
    rows: list[dict[str, Any]] = []
    for entry, seed, overrides in plans:
        if seed is not None and entry.numerics == "portable" and not portable_numerics():
            warnings.warn(
                f"{name} {entry.name!r} was recorded under PORTABLE_NUMERICS and this process "
                "runs without them: its figures may differ by CPU (`hyperloom reproduce` "
                "sets them for you)",
                stacklevel=2,
            )
        config = _config(module, overrides, entry.seed_field, seed)
        result = module.run(config)
        figures: Mapping[str, float] = entry.values.get(seed, {}) if seed is not None else {}
        for metric, path in entry.metrics.items():
            new = float(lookup(result, path))
            old = figures.get(metric)
            rows.append(
                {
                    "result": entry.name,
                    "seed": "smoke" if seed is None else seed,
                    "metric": metric,
                    "recorded": old,
                    "new": new,
                    "diff": None if old is None or math.isnan(new) else new - old,
                }
            )
    title = "smoke run (a tiny budget: not comparable)" if smoke else "recorded vs new"
    print(f"\n{name}: {title}")
    print(format_table(rows, floats="{:.2f}") if rows else "(no figures recorded)")
    return rows


def main(argv: Sequence[str]) -> int:
    """``hyperloom reproduce NAME [--seeds 0,1] [--smoke] [--only A,B] [--out DIR]``."""
    parser = ArgumentParser(
        prog="hyperloom reproduce",
        description="Rerun a recorded result (docs/results/NAME.md) and print the recorded "
        "figures beside the new ones.",
    )
    parser.add_argument("recipe", choices=sorted(RECIPES), help="the recipe whose results to rerun")
    parser.add_argument(
        "--seeds",
        type=_int_list,
        default=None,
        help="e.g. 0 or 0,1,2 (default: the recorded seeds)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny budget (seconds): check the recipe runs"
    )
    parser.add_argument(
        "--only", type=_str_list, default=(), help="recorded results to run, by name (default: all)"
    )
    parser.add_argument("--out", default="runs", help="folder for the run folders (default: runs)")
    args = parser.parse_args(list(argv))
    if not args.smoke and not portable_numerics():
        _, recorded = recipe_entries(load_recipe(args.recipe))
        if any(r.numerics == "portable" for r in recorded if not args.only or r.name in args.only):
            print(f"rerunning under {PORTABLE_NUMERICS} (the recorded numerics)", flush=True)
            env = os.environ | PORTABLE_NUMERICS
            argv = ["-m", "hyperloom", "reproduce", *argv]
            return subprocess.run([sys.executable, *argv], env=env, check=False).returncode
    reproduce(args.recipe, args.seeds, smoke=args.smoke, only=args.only, out=args.out)
    return 0


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.replace(" ", "").split(",") if p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds, got {text!r}") from None


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(p for p in text.replace(" ", "").split(",") if p)
