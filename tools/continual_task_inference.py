"""Task inference by entropy, re-scored offline on the hypernetworks of `hyperloom train continual`.

    python tools/continual_task_inference.py [--plot=OUT.png] RUN_FOLDER [RUN_FOLDER ...]

Each RUN_FOLDER holds a results.json and a hypernetwork.safetensors of one HNET run. The
tasks are rebuilt from the run's config (the same images, the same held-out calibration
images), every task's generated network scores every test image, and the task is inferred by
each rule below; the table gives the class-incremental accuracy (task and class right) and the
task-inference accuracy in %, per run and as mean ± std over the runs.

* ``entropy`` / ``log-entropy``: the lowest predictive entropy (``hl.continual.infer_task``);
* ``temperature``: the same after dividing each task's logits by its temperature, fitted on
  that task's held-out images (``--calibration=N`` runs only; as the recipe's ``/T`` figures);
* ``standardized``: the lowest ``(log H_t(x) - m_t) / s_t``, with ``m_t``, ``s_t`` the mean and
  standard deviation of task ``t``'s log-entropy on its own held-out images: how unusually
  confident task ``t``'s network is on ``x`` by its own standard (``--calibration=N`` runs).

With ``--plot=OUT.png``, OUT.png shows the first run's task-confusion matrix and the mean
entropy of each task's network on each task's test images, as results.json recorded them.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import torch
from torch import Tensor

import hyperloom as hl
from hyperloom.continual import fit_temperature, infer_task, log_predictive_entropy, task_logits
from hyperloom.recipes import continual


@torch.no_grad()
def score(folder: Path) -> dict[str, tuple[float, float]]:
    """``{rule: (class-incremental %, task inference %)}`` for one run folder."""
    saved = json.loads((folder / "results.json").read_text())
    names = {f.name for f in fields(continual.Config)}
    config = continual.resolve(
        continual.Config(**{k: v for k, v in saved["config"].items() if k in names})
    )
    tasks, held = continual.split_calibration(continual.load_tasks(config), config.calibration)
    hnet = hl.load(folder / "hypernetwork.safetensors")
    every = list(range(len(tasks)))

    def logits(x: Tensor) -> Tensor:  # (T, B, k)
        parts = [task_logits(hnet, x[i : i + 1000], task=every) for i in range(0, len(x), 1000)]
        return torch.cat(parts, dim=1)

    rules: dict[str, Callable[[Tensor], Tensor]] = {  # (T, B, k) logits -> (B,) task
        "entropy": lambda z: infer_task(z, rule="entropy"),
        "log-entropy": lambda z: infer_task(z, rule="log-entropy"),
    }
    if config.calibration:
        own = [logits(x)[t] for t, (x, _) in enumerate(held)]  # each task's network, own images
        labels = [y for _, y in held]
        temperature = torch.tensor(
            [fit_temperature(z, y) for z, y in zip(own, labels, strict=True)]
        )
        h = [log_predictive_entropy(z) for z in own]
        shift = torch.stack([v.mean() for v in h])[:, None]  # (T, 1)
        scale = torch.stack([v.std() for v in h])[:, None]
        rules["temperature"] = lambda z: infer_task(z, temperature=temperature, rule="log-entropy")
        rules["standardized"] = lambda z: ((log_predictive_entropy(z) - shift) / scale).argmin(0)
    right = dict.fromkeys(rules, 0)
    found = dict.fromkeys(rules, 0)
    total = 0
    for i, task in enumerate(tasks):
        z = logits(task.x_test)
        rows = torch.arange(z.shape[1])
        for rule, infer in rules.items():
            guess = infer(z)
            pred = z[guess, rows].argmax(-1)
            found[rule] += int((guess == i).sum())
            right[rule] += int(((guess == i) & (pred == task.y_test)).sum())
        total += len(task.y_test)
    return {r: (100.0 * right[r] / total, 100.0 * found[r] / total) for r in rules}


def plot(folder: Path, out: str) -> None:
    """The run's recorded task-confusion matrix and mean entropies, side by side, in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved = json.loads((folder / "results.json").read_text())
    r = saved["results"]["hnet"]
    names = [n.replace("split-", "") for n in saved["tasks"]]
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.6), constrained_layout=True)
    panels = (
        ("task_confusion", "% of task i's test images\ngiven to task j", "{:.0f}", False),
        (
            "mean_entropy",
            "mean entropy (nats) of task j's\nnetwork on task i's images",
            "{:.3f}",
            True,
        ),
    )
    for ax, (key, title, fmt, log) in zip(axes, panels, strict=True):
        m = torch.tensor(r[key])
        shown = m.clamp(min=1e-4).log10() if log else m
        ax.imshow(shown.numpy(), cmap="viridis")
        for i in range(len(m)):
            for j in range(len(m)):
                ax.text(
                    j,
                    i,
                    fmt.format(m[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if shown[i, j] < shown.mean() else "black",
                )
        ax.set_xticks(range(len(m)), names)
        ax.set_yticks(range(len(m)), names)
        ax.set_xlabel("task j (network)")
        ax.set_ylabel("task i (test images)")
        ax.set_title(title, fontsize=9)
    seed = saved["config"]["seed"]
    fig.suptitle(f"split-fmnist HNET, seed {seed}: lowest-entropy task inference", fontsize=10)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> None:
    out = next((a.split("=", 1)[1] for a in argv if a.startswith("--plot=")), None)
    argv = [a for a in argv if not a.startswith("--plot=")]
    if not argv:
        raise SystemExit(__doc__)
    if out:
        plot(Path(argv[0]), out)
    per_run: dict[str, dict[str, tuple[float, float]]] = {}
    for arg in argv:
        per_run[arg] = score(Path(arg))
        print(arg, {r: f"{a:.2f} / {b:.2f}" for r, (a, b) in per_run[arg].items()})
    rules = list(next(iter(per_run.values())))
    print("\nrule | class-incremental (%) | task inference (%) | runs")
    for rule in rules:
        ci = [r[rule][0] for r in per_run.values() if rule in r]
        ti = [r[rule][1] for r in per_run.values() if rule in r]
        print(f"{rule} | {_mean_std(ci)} | {_mean_std(ti)} | {len(ci)}")


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


if __name__ == "__main__":
    main(sys.argv[1:])
