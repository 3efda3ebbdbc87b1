"""Summarise `hyperloom train ghn --sweep=true` runs: a mean ± std table and the sweep plot.

    python tools/ghn_sweep.py OUT.png LABEL=FOLDER [LABEL=FOLDER ...]

Every run folder under FOLDER (with a results.json that has a sweep) is one seed of LABEL.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from hyperloom.recipes.ghn import plot_sweep


def main(argv: list[str]) -> None:
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        raise SystemExit(__doc__)
    runs: dict[str, list[list[dict]]] = {}
    for arg in argv[1:]:
        label, folder = arg.split("=", 1)
        for path in sorted(Path(folder).glob("*/results.json")):
            result = json.loads(path.read_text())
            if result.get("sweep"):
                runs.setdefault(label, []).append(result["sweep"])
                print(f"{label}: {path.parent.name} seed {result['config']['seed']}")
    plot_sweep(runs, argv[0])
    labels = list(runs)
    seeds = {lab: f"{len(runs[lab])} seed" + ("s" if len(runs[lab]) > 1 else "") for lab in labels}
    head = ["axis", "value"] + [
        f"{lab}{t} ({seeds[lab]})" for lab in labels for t in ("", ", width tiling")
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    first = runs[labels[0]][0]
    for i, row in enumerate(first):
        cells = [row["axis"], str(row["value"])]
        for lab in labels:
            for key in ("untiled", "tiled"):
                vals = [sweep[i][key] for sweep in runs[lab]]
                if len(vals) == 1:
                    cells.append(f"{vals[0]:.1f}")
                    continue
                cells.append(f"{statistics.fmean(vals):.1f} ± {statistics.stdev(vals):.1f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
