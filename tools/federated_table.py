"""Summarise `hyperloom train federated` runs: per-method accuracy over seeds, paired differences.

    python tools/federated_table.py [--curves OUT.png] FOLDER [FOLDER ...]

Every run folder under each FOLDER (one with a results.json) is read; runs are grouped by seed,
and a method's figure for a seed is its mean personal test accuracy ("acc"). Printed, as
markdown: mean ± sample std over the seeds and each seed's value (with the training seconds);
then, for each pair of methods present in every seed, the paired difference per seed (same
partition) and the number of clients on which the first method is ahead (level clients in
parentheses); then any accuracy curve recorded with --eval_every. Every run must share the
options other than the seed, the methods and --out (else it stops, naming the option).
With --curves, those curves are also drawn in OUT.png, one line per method and seed.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from hyperloom.recipes.federated.recipe import plot_curves

PAIRS = (
    ("pfedhn", "local"),
    ("pfedhn-pc", "local"),
    ("pfedhn", "fedavg-ft"),
    ("pfedhn-pc", "fedavg-ft"),
    ("pfedhn", "fedavg"),
    ("pfedhn-pc", "fedavg"),
    ("fedavg-ft", "local"),
)
ORDER = ("pfedhn", "pfedhn-pc", "fedavg", "fedavg-ft", "local")
VARYING = ("seed", "methods", "out", "quiet")


def load(folders: list[str]) -> dict[int, dict[str, dict]]:
    """seed -> method -> that method's entry of results.json (plus "run": the folder name)."""
    runs: dict[int, dict[str, dict]] = {}
    shared: dict | None = None
    for folder in folders:
        for path in sorted(Path(folder).glob("*/results.json")):
            result = json.loads(path.read_text())
            config = result["config"]
            fixed = {k: v for k, v in config.items() if k not in VARYING}
            if shared is None:
                shared = fixed
            differ = sorted(k for k in set(fixed) | set(shared) if fixed.get(k) != shared.get(k))
            if differ:
                raise SystemExit(f"{path}: options {differ} differ from the first run's")
            for method, res in result["results"].items():
                runs.setdefault(config["seed"], {})[method] = {**res, "run": path.parent.name}
    if not runs:
        raise SystemExit(f"no results.json under {', '.join(folders)}")
    return runs


def fmt(values: list[float]) -> str:
    """``mean ± std`` (two decimals; the std of one value is left out)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def ahead(first: list[float], second: list[float]) -> str:
    """Clients on which ``first`` is ahead of ``second``, with the level ones in parentheses."""
    wins = sum(a > b for a, b in zip(first, second, strict=True))
    level = sum(a == b for a, b in zip(first, second, strict=True))
    return f"{wins}" + (f" ({level} level)" if level else "")


def main(argv: list[str]) -> None:
    curves = None
    if argv[:1] == ["--curves"]:
        curves, argv = argv[1], argv[2:]
    if not argv:
        raise SystemExit(__doc__)
    runs = load(argv)
    seeds = sorted(runs)
    methods = [m for m in ORDER if all(m in runs[s] for s in seeds)]
    print(f"seeds {', '.join(map(str, seeds))}\n")
    print("| method | mean ± std | " + " | ".join(f"seed {s}" for s in seeds) + " | train s |")
    print("|---|---|" + "---|" * len(seeds) + "---|")
    for m in methods:
        accs = [runs[s][m]["acc"] for s in seeds]
        secs = ", ".join(f"{runs[s][m]['train_seconds']:.0f}" for s in seeds)
        print(f"| {m} | {fmt(accs)} | " + " | ".join(f"{a:.2f}" for a in accs) + f" | {secs} |")
    print(
        "\n| comparison | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | clients ahead |"
    )
    print("|---|" + "---|" * len(seeds) + "---|---|")
    for a, b in PAIRS:
        if a not in methods or b not in methods:
            continue
        diffs = [runs[s][a]["acc"] - runs[s][b]["acc"] for s in seeds]
        wins = ", ".join(ahead(runs[s][a]["client_accs"], runs[s][b]["client_accs"]) for s in seeds)
        cells = " | ".join(f"{d:+.2f}" for d in diffs)
        print(f"| {a} - {b} | {cells} | {statistics.fmean(diffs):+.2f} | {wins} |")
    for s in seeds:
        for m in methods:
            if "curve" in runs[s][m]:
                points = ", ".join(f"{p['round']}: {p['acc']:.2f}" for p in runs[s][m]["curve"])
                print(f"\ncurve, {m}, seed {s} (round: acc %): {points}")
    if curves is not None:
        drawn = {
            f"{m}, seed {s}": runs[s][m] for s in seeds for m in runs[s] if "curve" in runs[s][m]
        }
        plot_curves(drawn, curves)
        print(f"\n{curves}: {', '.join(drawn)}")
    print(
        "\nrun folders: "
        + "; ".join(
            f"seed {s}: " + ", ".join(f"{m} {runs[s][m]['run']}" for m in methods) for s in seeds
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
