"""A grid of any recipe's options, selected on a validation figure: ``hyperloom sweep NAME``.

``hyperloom sweep uncertainty --grid diversity=0,1,3 --select summary.method=hypernet.val_nll
--methods=hypernet`` runs ``hyperloom train uncertainty --methods=hypernet --diversity=V`` once
per value ``V`` (each its own run folder, its own process state reset by the recipe's seeding),
reads the figure at the dotted path ``--select`` (:func:`~hyperloom.recipes.reproduce.lookup`)
from each run's results and reports the value of the lowest mean over seeds (``--maximize``: the
highest). Several ``--grid`` options make their product. Options the sweep does not know go to
the recipe, as for ``hyperloom train``.

A sweep selects on what ``--select`` names and nothing else; point it at a validation figure, so
that the test set plays no part in the choice. Output: ``<out>/<timestamp>-sweep-NAME/sweep.json``
and ``sweep.csv`` (one row per run: the values, the seed, the figure, the run folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .config import (
    ArgumentParser,
    add_config_arguments,
    check_ranges,
    config_from_args,
    field_range,
    range_problem,
    value_parser,
)
from .registry import RECIPES, load_recipe
from .reproduce import lookup
from .runs import format_table, make_run_dir, write_csv, write_json


def parse_grid(config_cls: type, text: str) -> tuple[str, tuple[Any, ...]]:
    """``"key=a,b,c"`` -> ``(key, (a, b, c))``, each value parsed and range-checked as ``--key``.

    Args:
        config_cls: the recipe's ``Config`` dataclass.
        text: a field name, ``=``, and comma-separated values (at least one, all distinct).

    Raises:
        ValueError: an unknown field, a tuple field (its values hold commas), a value that does
            not parse or is outside the field's range, no values or a repeated one.

    Example:
        >>> from hyperloom.recipes.uncertainty import Config
        >>> parse_grid(Config, "diversity=0,0.3,1")
        ('diversity', (0.0, 0.3, 1.0))
    """
    key, sep, values = text.partition("=")
    key = key.strip().replace("-", "_")
    hints = typing.get_type_hints(config_cls)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    if not sep or key not in fields:
        raise ValueError(
            f"--grid {text!r}: expected KEY=V1,V2,... with KEY one of {', '.join(sorted(fields))}"
        )
    if typing.get_origin(hints[key]) is tuple:
        raise ValueError(f"--grid {text!r}: {key} is a tuple option; sweep scalar options only")
    parse, _ = value_parser(hints[key])
    bounds = field_range(fields[key], hints[key])
    parsed: list[Any] = []
    for part in (p.strip() for p in values.split(",")):
        try:
            value = parse(part)
        except (ValueError, argparse.ArgumentTypeError):
            raise ValueError(f"--grid {key}: cannot read {part!r} as {hints[key]}") from None
        problem = range_problem(value, bounds)
        if problem:
            raise ValueError(f"--grid {key}: {problem}")
        choices = fields[key].metadata.get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"--grid {key}: {value!r} is not one of {', '.join(choices)}")
        parsed.append(value)
    if not parsed or len(set(parsed)) != len(parsed):
        raise ValueError(f"--grid {key}: give distinct values, got {values!r}")
    return key, tuple(parsed)


def grid_points(grids: Sequence[tuple[str, tuple[Any, ...]]]) -> list[dict[str, Any]]:
    """The product of the grids, the first grid varying slowest.

    Example:
        >>> grid_points([("a", (1, 2)), ("b", ("x", "y"))])
        [{'a': 1, 'b': 'x'}, {'a': 1, 'b': 'y'}, {'a': 2, 'b': 'x'}, {'a': 2, 'b': 'y'}]
    """
    keys = [k for k, _ in grids]
    if len(set(keys)) != len(keys):
        raise ValueError(f"each option may have one --grid, got {keys}")
    return [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(v for _, v in grids))
    ]


def select_best(scores: Mapping[int, Sequence[float]], *, maximize: bool = False) -> int:
    """The key whose scores have the lowest mean (``maximize``: highest); the first on a tie.

    Args:
        scores: ``{candidate: [score per seed]}``; every candidate needs a finite score.

    Example:
        >>> select_best({0: [0.5, 0.3], 1: [0.35, 0.36], 2: [0.2, 0.6]})
        1
        >>> select_best({0: [0.4], 1: [0.4]}, maximize=True)
        0
    """
    bad = {k: s for k, s in scores.items() if not s or not all(math.isfinite(v) for v in s)}
    if not scores or bad:
        raise ValueError(f"every candidate needs finite scores, got {dict(bad) or scores}")
    sign = -1.0 if maximize else 1.0
    return min(scores, key=lambda k: sign * sum(scores[k]) / len(scores[k]))


def sweep(
    name: str,
    grids: Sequence[tuple[str, tuple[Any, ...]]],
    select: str,
    *,
    base: Mapping[str, Any] | None = None,
    seeds: Sequence[int] | None = None,
    maximize: bool = False,
    out: str = "runs",
    run: Callable[[Any], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run recipe ``name`` once per grid point (and seed) and select on the figure ``select``.

    Args:
        name: a registered recipe.
        grids: ``(option, values)`` pairs (:func:`parse_grid`); their product is run.
        select: a dotted path into the dict the recipe's ``run`` returns, e.g.
            ``"summary.method=hypernet.val_nll"``; a validation figure.
        base: options every run shares (``Config`` field -> value).
        seeds: seeds to run each point with, one run each, given to the recipe's ``seeds``
            option (as a one-seed tuple) where it has one, else to ``seed`` (``None``: the
            recipe's own); the selection uses the mean over them.
        maximize: select the highest mean instead of the lowest.
        out: the folder the run folders and the sweep's folder go under.
        run: the recipe's ``run`` (default: the registered module's; tests pass a stand-in).

    Returns:
        ``{"recipe", "select", "rows", "points", "selected", "sweep_dir"}``: one row per run
        (the point's values, seed, figure, run folder), the mean figure per point, and the point
        of the best mean.
    """
    module = load_recipe(name)
    config_cls = module.Config
    hints = typing.get_type_hints(config_cls)
    base = dict(base or {})
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(({k for k, _ in grids} | set(base)) - fields)
    if unknown:
        raise ValueError(f"recipe {name!r} has no options {unknown}")
    seed_key = "seeds" if "seeds" in hints else "seed"
    if seed_key in {k for k, _ in grids} and seeds is not None:
        raise ValueError(f"give the seeds by --seeds or by --grid {seed_key}=..., not both")
    points = grid_points(grids)
    run = run if run is not None else module.run
    seed_list: list[int | None] = list(seeds) if seeds is not None else [None]
    configs = []
    for i, point in enumerate(points):
        for seed in seed_list:
            values = {**base, **point, "out": out} if "out" in fields else {**base, **point}
            if seed is not None:  # ``seeds`` where a recipe runs once per seed, else ``seed``
                key = "seeds" if "seeds" in hints else "seed"
                values[key] = (seed,) if typing.get_origin(hints[key]) is tuple else seed
            config = config_cls(**values)
            check_ranges(config)  # every point before the first run
            configs.append((i, seed, config))
    rows: list[dict[str, Any]] = []
    scores: dict[int, list[float]] = {i: [] for i in range(len(points))}
    for i, seed, config in configs:
        label = ", ".join(f"{k}={v}" for k, v in points[i].items())
        print(f"\n=== sweep {name}: {label}" + ("" if seed is None else f", seed {seed}"))
        result = run(config)
        figure = float(lookup(result, select))
        scores[i].append(figure)
        rows.append(
            {
                **points[i],
                "seed": seed if seed is not None else getattr(config, "seed", None),
                select: figure,
                "run_dir": result.get("run_dir"),
            }
        )
    best = select_best(scores, maximize=maximize)
    summary = [
        {**p, f"mean {select}": sum(scores[i]) / len(scores[i]), "runs": len(scores[i])}
        for i, p in enumerate(points)
    ]
    sweep_dir = make_run_dir(out, f"sweep-{name}")
    results = {
        "recipe": name,
        "select": select,
        "maximize": maximize,
        "base": base,
        "rows": rows,
        "points": summary,
        "selected": points[best],
        "sweep_dir": str(sweep_dir),
    }
    write_json(sweep_dir / "sweep.json", results)
    write_csv(sweep_dir / "sweep.csv", rows)
    print(f"\nsweep of {name}: {select} per point ({'highest' if maximize else 'lowest'} wins)")
    print(format_table(summary))
    chosen = ", ".join(f"{k}={v}" for k, v in points[best].items())
    print(f"selected {chosen}: mean {select} {summary[best][f'mean {select}']:.4f}")
    print(f"\n{sweep_dir}")
    return results


def main(argv: Sequence[str]) -> int:
    """``hyperloom sweep NAME --grid KEY=V1,V2 [--grid ...] --select PATH [recipe options]``."""
    parser = ArgumentParser(
        prog="hyperloom sweep",
        description="Run a recipe once per value of a grid of its options and select the value "
        "whose figure --select (a validation figure) is lowest.",
    )
    parser.add_argument("recipe", choices=sorted(RECIPES), help="the recipe to sweep")
    parser.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="KEY=V1,V2,...",
        help="an option and its values (repeat for a product)",
    )
    parser.add_argument(
        "--select",
        required=True,
        help="dotted path of the figure to select on in the recipe's results, e.g. "
        "summary.method=hypernet.val_nll",
    )
    parser.add_argument("--maximize", action="store_true", help="the highest mean wins")
    parser.add_argument(
        "--seeds",
        type=lambda t: tuple(int(p) for p in t.split(",") if p.strip()),
        default=None,
        help="seeds per point, e.g. 0,1,2 (default: the recipe's seed); the mean is selected",
    )
    args, rest = parser.parse_known_args(list(argv))
    module = load_recipe(args.recipe)
    recipe_parser = ArgumentParser(prog=f"hyperloom sweep {args.recipe} (recipe options)")
    add_config_arguments(recipe_parser, module.Config)
    recipe_args = recipe_parser.parse_args(rest)
    given = {k: v for k, v in vars(recipe_args).items() if f"--{k}" in _flags(rest)}
    config_from_args(module.Config, recipe_args)  # the shared options, range-checked
    grids = [parse_grid(module.Config, text) for text in args.grid]
    out = given.pop("out", "runs")
    sweep(
        args.recipe,
        grids,
        args.select,
        base=given,
        seeds=args.seeds,
        maximize=args.maximize,
        out=out,
    )
    return 0


def _flags(argv: Sequence[str]) -> set[str]:
    """The option names in ``argv`` (``--a-b=1`` -> ``--a_b``)."""
    return {
        a.split("=", 1)[0].replace("-", "_").replace("__", "--", 1) for a in argv if a[:2] == "--"
    }
