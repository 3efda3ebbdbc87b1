"""HyperITE on ACIC 2016: plain ITE learners against their hypernetwork versions.

Chauhan et al. (AISTATS 2024) let a task-conditioned hypernetwork generate the per-treatment
networks of ITE learners from one embedding per arm, so the arms share information softly, and
report lower PEHE than the plain learners on IHDP, ACIC 2016 and Twins, more so on smaller
data. This recipe checks that direction on the 10 ACIC 2016 instances that ``causallib`` ships
(4,802 units; the true potential-outcome means are known, so sqrt(PEHE) is exact):

- ``t``, ``s``, ``tarnet``: the T-learner, S-learner and TARNet, each plain (ordinary
  ``nn.Module`` networks) and HyperITE (``hyperloom.causal.Hyper*``), all trained side by side
  in one loop on the same minibatches, with the same initial seed, optimiser and early stopping;
- ``xlearner`` and ``causal_forest``: econml's X-learner and causal forest (``CausalForestDML``)
  with scikit-learn histogram gradient boosting as their outcome and propensity models, the
  non-neural tools practitioners use.

Per instance and seed the units are split, stratified by treatment, into out-of-sample test
units (``test_size``) and in-sample units; ``n_train`` optionally keeps a random subset of the
in-sample units (the paper's data-size experiments). A share ``val_size`` of the in-sample
units is held out for early stopping on the factual MSE only; the true effects are used for
scoring alone. Covariates are standardised and the outcome scaled with in-sample statistics.
sqrt(PEHE) and the ATE's absolute error are reported in-sample (all in-sample units, as is
customary: training and validation) and out-of-sample (the test units).

Outputs under ``runs/<timestamp>-causal/``: results.json (config, one row per instance, seed and
method, the summary), results.csv (the rows) and pehe.png (out-of-sample sqrt PEHE per
instance, mean and std over seeds). With ``repeats=3`` the table shows mean ± std over seeds
seed..seed+2 of the mean over instances.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..causal import (
    ACIC16_INSTANCES,
    LEARNERS,
    CausalData,
    ate_error,
    build_learner,
    effects,
    factual_loss,
    load_acic16,
    pehe,
    standardise,
    stratified_split,
)
from ..generators import ChunkedGenerator, FlatGenerator, GeneratorFactory, HeadsGenerator
from .config import out_field, quiet_field, seed_field
from .distributed import Runtime, amp_field, device_field, nproc_field, runtime
from .reproduce import Recorded
from .runs import (
    Stopwatch,
    count_trainable,
    format_table,
    make_run_dir,
    progress,
    write_results,
)

BASELINES = ("xlearner", "causal_forest")
"""Non-neural baselines (econml): X-learner and causal forest, gradient-boosted nuisances."""

NAMES = {
    "t": "T-learner",
    "s": "S-learner",
    "tarnet": "TARNet",
    "xlearner": "X-learner (econml)",
    "causal_forest": "causal forest (econml)",
}

GENERATORS = ("flat", "heads", "chunked")


@dataclass
class Config:
    """Options of ``hyperloom train causal``."""

    instances: tuple[int, ...] = field(
        default=ACIC16_INSTANCES, metadata={"help": "ACIC 2016 instances (1..10)"}
    )
    learners: tuple[str, ...] = field(
        default=tuple(LEARNERS),
        metadata={"help": f"neural learners, each plain and HyperITE, among {', '.join(LEARNERS)}"},
    )
    baselines: tuple[str, ...] = field(
        default=BASELINES,
        metadata={"help": f"econml baselines among {', '.join(BASELINES)} (empty: none)"},
    )
    test_size: float = field(
        default=0.2, metadata={"help": "share of units held out as out-of-sample test units"}
    )
    val_size: float = field(
        default=0.3,
        metadata={"help": "share of in-sample units held out for early stopping (factual MSE)"},
    )
    n_train: int | None = field(
        default=None,
        metadata={"help": "keep this many in-sample units, drawn at random (none: all)"},
    )
    hidden: tuple[int, ...] = field(
        default=(100, 100),
        metadata={"help": "outcome MLP hidden sizes (TARNet: its representation)"},
    )
    head: tuple[int, ...] = field(default=(100,), metadata={"help": "TARNet head hidden sizes"})
    emb_dim: int = field(default=8, metadata={"help": "arm embedding size (T, TARNet)"})
    s_emb_dim: int = field(default=1, metadata={"help": "HyperSLearner embedding size"})
    generator: str = field(
        default="chunked",
        metadata={
            "help": "the hypernetworks' core generator (chunked: fixed-size chunks, 2-5x "
            "faster per step than flat here; flat: generate once, the paper's default; "
            "heads: one head per tensor)",
            "choices": GENERATORS,
        },
    )
    gen_hidden: tuple[int, ...] = field(
        default=(100,), metadata={"help": "generator trunk hidden sizes"}
    )
    chunk_size: int = field(default=2048, metadata={"help": "chunk size (generator=chunked)"})
    epochs: int = field(default=300, metadata={"help": "most epochs (early stopping ends most)"})
    patience: int = field(
        default=20, metadata={"help": "epochs without a lower validation loss before stopping"}
    )
    batch_size: int = field(default=256, metadata={"help": "minibatch size"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (plain learners)"})
    hyper_lr: float | None = field(
        default=None, metadata={"help": "Adam learning rate of the HyperITE learners (none: lr)"}
    )
    weight_decay: float = field(default=1e-4, metadata={"help": "Adam weight decay"})
    forest_trees: int = field(default=200, metadata={"help": "causal forest: number of trees"})
    repeats: int = field(default=1, metadata={"help": "seeds seed, seed+1, ... (mean ± std)"})
    seed: int = seed_field("random seed (splits and initialisation)")
    from_runs: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "no training: summarise the rows of these run folders together (e.g. one "
            "run per seed), which must share every option but the seed"
        },
    )
    out: str = out_field()
    quiet: bool = quiet_field()
    device: str = device_field()
    amp: str = amp_field()
    nproc: int = nproc_field()


# ``hyperloom reproduce causal --smoke``: every learner (plain and HyperITE) and both econml
# baselines on one instance, 120 in-sample units, tiny networks, a few epochs (as the tests).
SMOKE: dict = {
    "instances": (2,),
    "n_train": 120,
    "hidden": (8,),
    "head": (4,),
    "gen_hidden": (8,),
    "chunk_size": 32,
    "epochs": 3,
    "patience": 2,
    "forest_trees": 8,
    "repeats": 1,
    "quiet": True,
}


def _pehe_out(methods: tuple[str, ...]) -> dict[str, str]:
    """label -> path of each method's out-of-sample sqrt(PEHE), mean over the instances."""
    return {f"{m} sqrt PEHE out": f"summary.means.{m}.pehe_out" for m in methods}


_NEURAL = ("T-learner", "HyperT-learner", "S-learner", "HyperS-learner", "TARNet", "HyperTARNet")
_ALL = (*_NEURAL, "X-learner (econml)", "causal forest (econml)")


def _figures(methods: tuple[str, ...], values: tuple[float, ...]) -> dict[str, float]:
    return {f"{m} sqrt PEHE out": v for m, v in zip(methods, values, strict=True)}


# docs/results/causal.md. Full data (section 1, `hyperloom train causal --seed=S`, one run per
# seed): the per-seed out-of-sample sqrt(PEHE), mean over the 10 instances, from the line "Mean
# over the 10 instances of each seed's sqrt(PEHE) out-of-sample, per seed (0, 1, 2)". The
# 500-unit runs (sections 2 and 3) are one run each with ``repeats=3`` from seed 0, so what that
# run returns (and the page records) is the mean over seeds 0-2: the "sqrt PEHE out" column of
# section 2's table and the plain and HyperITE (flat) columns of section 3's, under seed 0.
RECORDED: tuple[Recorded, ...] = (
    Recorded(
        "full",
        {"quiet": True},
        _pehe_out(_ALL),
        {
            0: _figures(_ALL, (3.055, 2.942, 2.791, 3.003, 2.571, 2.836, 1.448, 1.847)),
            1: _figures(_ALL, (3.025, 2.738, 2.807, 2.750, 2.411, 2.736, 1.265, 1.715)),
            2: _figures(_ALL, (3.144, 3.010, 2.808, 2.957, 2.659, 2.752, 1.372, 1.827)),
        },
        page="docs/results/causal.md",
    ),
    Recorded(
        "n500",
        {"n_train": 500, "repeats": 3, "quiet": True},
        _pehe_out(_ALL),
        {0: _figures(_ALL, (4.100, 4.133, 3.801, 4.405, 3.615, 3.723, 2.564, 2.612))},
        page="docs/results/causal.md",
    ),
    Recorded(
        "n500-flat",
        {"n_train": 500, "repeats": 3, "generator": "flat", "baselines": (), "quiet": True},
        _pehe_out(_NEURAL),
        {0: _figures(_NEURAL, (4.100, 4.367, 3.801, 4.791, 3.615, 4.041))},
        page="docs/results/causal.md",
    ),
)


def check_config(config: Config) -> None:
    """Raise ``ValueError`` naming the first option that is out of range."""
    bad = [i for i in config.instances if i not in ACIC16_INSTANCES]
    if not config.instances or bad:
        raise ValueError(f"instances must be among 1..10, got {config.instances}")
    unknown = [n for n in config.learners if n not in LEARNERS]
    if unknown:
        raise ValueError(f"unknown learners {unknown}; available: {', '.join(LEARNERS)}")
    unknown = [n for n in config.baselines if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; available: {', '.join(BASELINES)}")
    if not config.learners and not config.baselines:
        raise ValueError("nothing to run: learners and baselines are both empty")
    if config.generator not in GENERATORS:
        raise ValueError(f"generator must be one of {GENERATORS}, got {config.generator!r}")
    for name in ("test_size", "val_size"):
        v = getattr(config, name)
        if not 0.0 < v < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {v}")
    for name in ("lr", "hyper_lr"):
        v = getattr(config, name)
        if v is not None and not v > 0:
            raise ValueError(f"{name} must be > 0, got {v}")
    for name in ("epochs", "patience", "batch_size", "repeats", "emb_dim", "s_emb_dim"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.n_train is not None and config.n_train < 8:
        raise ValueError(f"n_train must be >= 8 (or none), got {config.n_train}")


def make_generator(config: Config) -> GeneratorFactory:
    """A factory of the core generator ``config.generator`` names."""
    if config.generator == "flat":
        return FlatGenerator.factory(hidden=config.gen_hidden)
    if config.generator == "heads":
        return HeadsGenerator.factory(hidden=config.gen_hidden)
    return ChunkedGenerator.factory(chunk_size=config.chunk_size, hidden=config.gen_hidden)


def split_units(
    data: CausalData, config: Config, seed: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(in_sample, train, val, test)`` unit indices for one instance and seed.

    Stratified by treatment: test units first (``test_size``), then, among the in-sample units
    (a random ``n_train`` of them when set), the validation units (``val_size``).
    ``train`` and ``val`` partition ``in_sample``; ``test`` is disjoint from it.
    """
    g = torch.Generator().manual_seed(10_000 * seed + 17)
    in_sample, test = stratified_split(data.t, config.test_size, g)
    if config.n_train is not None and config.n_train < len(in_sample):
        keep, _ = stratified_split(data.t[in_sample], 1 - config.n_train / len(in_sample), g)
        in_sample = in_sample[keep]
    train, val = stratified_split(data.t[in_sample], config.val_size, g)
    return in_sample, in_sample[train], in_sample[val], test


def fit_baseline(name: str, x: Tensor, t: Tensor, y: Tensor, seed: int, trees: int = 200):
    """Fit an econml baseline on numpy copies; returns ``x -> estimated effects (n,)``.

    Both use scikit-learn's ``HistGradientBoostingRegressor`` for the outcomes and
    ``HistGradientBoostingClassifier`` for the propensity (default settings).
    """
    # econml and scikit-learn ship no type stubs
    from econml.dml import CausalForestDML
    from econml.metalearners import XLearner
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
    )

    xn, tn, yn = x.numpy(), t.numpy(), y.numpy()
    reg = HistGradientBoostingRegressor(random_state=seed)
    clf = HistGradientBoostingClassifier(random_state=seed)
    if name == "xlearner":
        est = XLearner(models=reg, propensity_model=clf)
        est.fit(yn, tn, X=xn)
    elif name == "causal_forest":
        est = CausalForestDML(
            model_y=reg,
            model_t=clf,
            discrete_treatment=True,
            n_estimators=trees,
            random_state=seed,
        )
        est.fit(yn, tn, X=xn)
    else:
        raise ValueError(f"unknown baseline {name!r}; available: {', '.join(BASELINES)}")
    return lambda xs: torch.as_tensor(est.effect(xs.numpy()), dtype=torch.float32).flatten()


def plot_pehe(rows: list[dict], methods: list[str], instances: list[int], path: Path) -> None:
    """Out-of-sample sqrt(PEHE) per instance, mean ± std over seeds: a plain learner as a hollow
    square, its HyperITE version as a filled circle of the same colour, baselines as diamonds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(methods))
    bases = list(dict.fromkeys(m.removeprefix("Hyper") for m in methods))
    colours = {b: f"C{i}" for i, b in enumerate(bases)}  # a plain learner and its Hyper version
    for j, m in enumerate(methods):
        means, stds = [], []
        for i in instances:
            vals = [r["pehe_out"] for r in rows if r["method"] == m and r["instance"] == i]
            means.append(statistics.fmean(vals))
            stds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
        xs = [k + (j - (len(methods) - 1) / 2) * width for k in range(len(instances))]
        hyper, baseline = m.startswith("Hyper"), "econml" in m
        ax.errorbar(
            xs,
            means,
            yerr=stds,
            fmt="D" if baseline else "o" if hyper else "s",
            ms=4,
            capsize=2,
            label=m,
            color=colours[m.removeprefix("Hyper")],
            mfc=None if hyper or baseline else "white",
        )
    ax.set_xticks(range(len(instances)), [str(i) for i in instances])
    ax.set_xlabel("ACIC 2016 instance (causallib)")
    ax.set_ylabel("out-of-sample sqrt(PEHE)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_runs(folders: tuple[str, ...]) -> tuple[list[dict], dict[str, int]]:
    """The rows and parameter counts of earlier run folders, checked to be one experiment.

    Raises:
        ValueError: a folder has no results.json, two runs differ in an option other than
            ``seed``, ``repeats``, ``out`` and ``quiet`` (the option is named), or a row
            (instance, seed, method) appears twice.
    """
    free = {"seed", "repeats", "out", "quiet", "from_runs"}
    rows: list[dict] = []
    params: dict[str, int] = {}
    first: dict | None = None
    for folder in folders:
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise ValueError(f"from_runs: no results.json in {folder!r}")
        saved = json.loads(path.read_text())
        options = {k: v for k, v in saved["config"].items() if k not in free}
        if first is None:
            first = options
        diff = sorted(k for k in first.keys() | options.keys() if first.get(k) != options.get(k))
        if diff:
            raise ValueError(f"from_runs: {folder!r} differs from {folders[0]!r} in {diff}")
        rows += saved["rows"]
        params |= saved["trainable_params"]
    keys = [(r["instance"], r["seed"], r["method"]) for r in rows]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"from_runs: rows appear twice (instance, seed, method): {twice[:3]}")
    return rows, params


def run(config: Config) -> dict:
    check_config(config)
    with runtime(device=config.device, amp=config.amp) as rt:
        return _run(config, rt)


def _run(config: Config, rt: Runtime) -> dict:
    seeds = list(range(config.seed, config.seed + config.repeats))
    rows: list[dict] = []
    params: dict[str, int] = {}
    instances = list(config.instances)
    if config.from_runs:
        rows, params = load_runs(config.from_runs)
        seeds = sorted({r["seed"] for r in rows})
        instances = sorted({r["instance"] for r in rows})
        print(f"from_runs: {len(rows)} rows of {len(config.from_runs)} run(s), no training")
    start = time.perf_counter()
    for instance in [] if config.from_runs else config.instances:
        data = load_acic16(instance)
        for seed in seeds:
            in_sample, train, val, test = split_units(data, config, seed)
            x = standardise(data.x, in_sample)  # with in-sample statistics
            y_mean, y_std = data.y[in_sample].mean(), data.y[in_sample].std()
            y = (data.y - y_mean) / y_std
            ite = data.ite
            xd, td, yd = rt.move((x, data.t, y))  # the neural learners' copies on the device

            # One model per learner and version, all trained in the loop below.
            models: dict[str, nn.Module] = {}
            for name in config.learners:
                for hyper in (False, True):
                    torch.manual_seed(seed)
                    label = ("Hyper" if hyper else "") + NAMES[name]
                    models[label] = build_learner(
                        name,
                        data.d,
                        hyper=hyper,
                        hidden=config.hidden,
                        head=config.head,
                        emb_dim=config.s_emb_dim if name == "s" else config.emb_dim,
                        generator=make_generator(config) if hyper else None,
                    ).to(rt.device)
                    params[label] = count_trainable(models[label])
            hyper_lr = config.lr if config.hyper_lr is None else config.hyper_lr
            opts = {
                k: torch.optim.Adam(
                    m.parameters(),
                    lr=hyper_lr if k.startswith("Hyper") else config.lr,
                    weight_decay=config.weight_decay,
                )
                for k, m in models.items()
            }
            best = {k: (float("inf"), 0, copy.deepcopy(m.state_dict())) for k, m in models.items()}
            waiting = dict.fromkeys(models, 0)
            active = set(models)
            g = torch.Generator().manual_seed(seed)
            desc = f"instance {instance} seed {seed}"
            with Stopwatch() as sw:
                for epoch in progress(range(1, config.epochs + 1), quiet=config.quiet, desc=desc):
                    if not active:
                        break
                    order = train[torch.randperm(len(train), generator=g)]
                    for idx in rt.shard(order.split(config.batch_size)):  # this process's part
                        for k in active:
                            with rt.autocast():  # the loss in float32
                                po = models[k](xd[idx]).float()
                                loss = factual_loss(po, td[idx], yd[idx])
                            opts[k].zero_grad(set_to_none=True)
                            loss.backward()
                            rt.sync_grads(opts[k])  # data-parallel: the mean over processes
                            opts[k].step()
                    with torch.no_grad():  # early stopping on the factual validation loss
                        for k in sorted(active):  # every process: the parameters are equal
                            v = float(factual_loss(models[k](xd[val]), td[val], yd[val]))
                            if v < best[k][0]:
                                best[k] = (v, epoch, copy.deepcopy(models[k].state_dict()))
                                waiting[k] = 0
                            else:
                                waiting[k] += 1
                                if waiting[k] >= config.patience:
                                    active.discard(k)
            neural_seconds = sw.seconds

            for k, m in models.items():
                m.load_state_dict(best[k][2])
                with torch.no_grad():
                    tau = effects(m(xd)).cpu() * y_std  # (n,) back on the outcome's scale
                rows.append(
                    _row(instance, seed, k, tau, ite, in_sample, test)
                    | {"val_mse": best[k][0], "best_epoch": best[k][1]}
                    | {"seconds": neural_seconds / len(models)}
                )
            for name in config.baselines:
                with Stopwatch() as sw:
                    predict = fit_baseline(
                        name,
                        x[in_sample],
                        data.t[in_sample],
                        data.y[in_sample],
                        seed,
                        config.forest_trees,
                    )
                    tau = predict(x)
                rows.append(
                    _row(instance, seed, NAMES[name], tau, ite, in_sample, test)
                    | {"val_mse": None, "best_epoch": None, "seconds": sw.seconds}
                )
            done = [r for r in rows if r["instance"] == instance and r["seed"] == seed]
            if not config.quiet:
                print(
                    f"instance {instance} seed {seed}: "
                    + ", ".join(f"{r['method']} {r['pehe_out']:.3f}" for r in done)
                )

    methods = list(dict.fromkeys(r["method"] for r in rows))
    summary = summarise(rows, methods, seeds)
    minutes = (time.perf_counter() - start) / 60
    results = {
        "config": asdict(config),
        "trainable_params": params,
        "rows": rows,
        "summary": summary,
        "minutes": minutes,
    }
    if not rt.is_main:  # rank 0 alone prints and writes the run folder
        return results
    run_dir = make_run_dir(config.out, "causal")
    n = len(instances)
    print(f"\nACIC 2016, {n} instance(s), seeds {seeds}: sqrt(PEHE) and |ATE error|, mean over")
    print("instances; mean ± std over seeds")
    write_results(
        run_dir,
        results,
        rows,
        plot=lambda path: plot_pehe(rows, methods, instances, path),
        plot_name="pehe.png",
        table=summary["table"],
    )
    if summary["pairs"]:
        print(format_table(summary["pairs"]))
    print(f"{minutes:.1f} min\n{run_dir}")
    return results


def _row(instance, seed, method, tau, ite, in_sample, test) -> dict:
    return {
        "instance": instance,
        "seed": seed,
        "method": method,
        "pehe_in": pehe(tau[in_sample], ite[in_sample]),
        "pehe_out": pehe(tau[test], ite[test]),
        "ate_in": ate_error(tau[in_sample], ite[in_sample]),
        "ate_out": ate_error(tau[test], ite[test]),
    }


def _mean_std(values: list[float]) -> str:
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.3f} ± {s:.3f}"


def summarise(rows: list[dict], methods: list[str], seeds: list[int]) -> dict:
    """Per method: the mean over instances per seed, then mean ± std over seeds; per learner:
    the HyperITE version against the plain one (mean difference and wins per instance and seed).
    """
    table: list[dict] = []
    means: dict[str, dict[str, float | list[float]]] = {}
    pehe_out: dict[str, float] = {}  # per method, the mean over seeds
    for m in methods:
        rows_m = [r for r in rows if r["method"] == m]
        per_seed = {
            key: [statistics.fmean(r[key] for r in rows_m if r["seed"] == s) for s in seeds]
            for key in ("pehe_in", "pehe_out", "ate_in", "ate_out")
        }
        means[m] = {k: statistics.fmean(v) for k, v in per_seed.items()}
        means[m] |= {f"{k}_seeds": v for k, v in per_seed.items()}
        pehe_out[m] = statistics.fmean(per_seed["pehe_out"])
        table.append(
            {
                "method": m,
                "sqrt PEHE in": _mean_std(per_seed["pehe_in"]),
                "sqrt PEHE out": _mean_std(per_seed["pehe_out"]),
                "ATE err in": _mean_std(per_seed["ate_in"]),
                "ATE err out": _mean_std(per_seed["ate_out"]),
            }
        )
    pairs = []
    for m in methods:
        if not m.startswith("Hyper") or m[len("Hyper") :] not in methods:
            continue
        plain = m[len("Hyper") :]
        mine = {(r["instance"], r["seed"]): r["pehe_out"] for r in rows if r["method"] == m}
        theirs = {(r["instance"], r["seed"]): r["pehe_out"] for r in rows if r["method"] == plain}
        diffs = [mine[k] - theirs[k] for k in mine]
        pairs.append(
            {
                "learner": plain,
                "hyper - plain, out": f"{statistics.fmean(diffs):+.3f}",
                "hyper lower": f"{sum(d < 0 for d in diffs)} of {len(diffs)}",
                "relative": f"{pehe_out[m] / pehe_out[plain] - 1:+.1%}",
            }
        )
    return {"table": table, "pairs": pairs, "means": means}
