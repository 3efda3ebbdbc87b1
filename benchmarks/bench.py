"""hyperloom against hand-written hypernetworks and peer libraries, side by side.

Run by ``make bench`` in its own virtual environment (``.venv-bench``; the peer libraries are
benchmark-only). Every timing interleaves its contenders round-robin in this one process (the
starting contender rotates each round), so a noisy, shared machine slows all of them alike;
figures are medians over the rounds with their spread (25th-75th percentile), and each ratio is
the median of per-round ratios. Writes ``benchmarks/results.md``.

Sections: ``static`` (train step, one task per step), ``per_sample`` (one generated weight set per
sample), ``scaling`` (generators against target size), ``cached`` (inference).

    python benchmarks/bench.py [--quick] [--sections static,per_sample,scaling,cached]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

import hyperloom as hl

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------
# timing


def interleave(contenders: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each contender, ``rounds`` times, round-robin with rotating start."""
    for fn in contenders.values():  # warm-up: allocator, oneDNN primitives, lazy init
        fn()
    names = list(contenders)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        k0 = r % len(names)
        for name in names[k0:] + names[:k0]:
            gc.collect()
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def fmt_time(xs: list[float], scale: float, unit: str) -> str:
    lo, med, hi = quartiles([x * scale for x in xs])
    return f"{med:.3g} {unit} [{lo:.3g}, {hi:.3g}]"


def ratio(a: list[float], b: list[float]) -> tuple[float, float, float]:
    return quartiles([x / y for x, y in zip(a, b, strict=True)])


def fmt_ratio(a: list[float], b: list[float]) -> str:
    lo, med, hi = ratio(a, b)
    return f"{med:.3f} [{lo:.3f}, {hi:.3f}]"


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def verdict(value: float, limit: float) -> str:
    return "met" if value <= limit else "NOT met"


# ---------------------------------------------------------------------------------------------
# 1. static train step


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _batches(n: int, batch: int, d_in: int, classes: int, tasks: int):
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n, batch, d_in, generator=g)
    ys = torch.randint(0, classes, (n, batch), generator=g)
    return [(xs[i], ys[i], i % tasks) for i in range(n)]


def _stepper(params, loss_fn, data) -> Callable[[int], None]:
    opt = torch.optim.Adam(list(params), lr=1e-3)
    state = {"i": 0}

    def run(steps: int) -> None:
        for _ in range(steps):
            x, y, t = data[state["i"] % len(data)]
            state["i"] += 1
            opt.zero_grad(set_to_none=True)
            loss_fn(x, y, t).backward()
            opt.step()

    return run


def static_contenders(peers: dict[str, str]) -> dict[str, Callable[[int], None]]:
    """Each contender: ``run(steps)`` Adam steps, batch 128, MLP 32-64-10, task embedding 8."""
    torch.manual_seed(0)
    tasks, emb, hidden, sizes = 4, 8, 64, [32, 64, 10]
    data = _batches(16, 128, sizes[0], sizes[-1], tasks)
    out: dict[str, Callable[[int], None]] = {}

    plain = _mlp(sizes)
    out["plain nn.Module (no hypernetwork)"] = _stepper(
        plain.parameters(), lambda x, y, t: F.cross_entropy(plain(x), y), data
    )

    # A 20-line functional_call hypernetwork.
    target = _mlp(sizes)
    names = [n for n, _ in target.named_parameters()]
    shapes = [p.shape for _, p in target.named_parameters()]
    numel = sum(s.numel() for s in shapes)
    fc_net = nn.ModuleDict(
        {
            "emb": nn.Embedding(tasks, emb),
            "body": nn.Sequential(nn.Linear(emb, hidden), nn.ReLU(), nn.Linear(hidden, numel)),
        }
    )

    def fc_loss(x: Tensor, y: Tensor, t: int) -> Tensor:
        flat = fc_net["body"](fc_net["emb"].weight[t])
        parts = flat.split([s.numel() for s in shapes])
        weights = {n: p.view(s) for n, p, s in zip(names, parts, shapes, strict=True)}
        return F.cross_entropy(functional_call(target, weights, (x,)), y)

    out["hand-written functional_call"] = _stepper(fc_net.parameters(), fc_loss, data)

    # The leanest: embedding, MLP, one flat output split into views, F.linear on the views.
    def lean(rms: bool):
        net = nn.ModuleDict(
            {
                "emb": nn.Embedding(tasks, emb),
                "l1": nn.Linear(emb, hidden),
                "l2": nn.Linear(hidden, numel),
            }
        )
        cut = [64 * 32, 64, 10 * 64, 10]

        def loss(x: Tensor, y: Tensor, t: int) -> Tensor:
            h = F.relu(net["l1"](net["emb"].weight[t]))
            if rms:
                h = F.rms_norm(h, (hidden,))
            w1, b1, w2, b2 = net["l2"](h).split(cut)
            z = F.relu(F.linear(x, w1.view(64, 32), b1))
            return F.cross_entropy(F.linear(z, w2.view(10, 64), b2), y)

        return _stepper(net.parameters(), loss, data)

    out["leanest hand-written"] = lean(False)
    out["leanest hand-written + RMS norm (hyperloom's maths)"] = lean(True)

    hnet = hl.HyperNetwork(
        _mlp(sizes), hl.TaskEmbedding(tasks, emb), hl.FlatGenerator.factory(hidden=(hidden,))
    )
    out["hyperloom"] = _stepper(
        hnet.parameters(), lambda x, y, t: F.cross_entropy(hnet(x, task=t), y), data
    )
    # The same maths as the leanest and the peers: a trunk without the RMS normalisation.
    bare = hl.HyperNetwork(
        _mlp(sizes),
        hl.TaskEmbedding(tasks, emb),
        hl.FlatGenerator.factory(hidden=(hidden,), norm=False),
    )
    out[NO_NORM] = _stepper(
        bare.parameters(), lambda x, y, t: F.cross_entropy(bare(x, task=t), y), data
    )

    if "hypnettorch" not in peers:
        from hypnettorch.hnets import HMLP
        from hypnettorch.mnets import MLP

        mnet = MLP(n_in=32, n_out=10, hidden_layers=[64], no_weights=True, verbose=False)
        hmlp = HMLP(
            mnet.param_shapes,
            uncond_in_size=0,
            cond_in_size=emb,
            layers=[hidden],
            num_cond_embs=tasks,
            verbose=False,
        )

        def hyp_loss(x: Tensor, y: Tensor, t: int) -> Tensor:
            return F.cross_entropy(mnet.forward(x, weights=hmlp.forward(cond_id=t)), y)

        out["hypnettorch 0.0.4 (HMLP + MLP)"] = _stepper(hmlp.parameters(), hyp_loss, data)

    if "hyperlight" not in peers:
        import hyperlight

        main = _hyperlight_main(sizes)
        light = nn.ModuleDict(
            {
                "emb": nn.Embedding(tasks, emb),
                "hnet": hyperlight.HyperNet(
                    input_shapes={"h": (emb,)},
                    output_shapes=main.external_shapes(),
                    hidden_sizes=[hidden],
                    encoding=None,
                    fc_kws={"nonlinearity": "ReLU"},
                ),
            }
        )

        def light_loss(x: Tensor, y: Tensor, t: int) -> Tensor:
            weights = light["hnet"](h=light["emb"].weight[t])
            with main.using_externals(weights):
                return F.cross_entropy(main(x), y)

        out["hyperlight 0.0.5 (hypernetize)"] = _stepper(light.parameters(), light_loss, data)
    return out


def _hyperlight_main(sizes: list[int]) -> nn.Module:
    import hyperlight

    net = _mlp(sizes)
    modules = hyperlight.find_modules_of_type(net, [nn.Linear])
    return hyperlight.hypernetize(net, modules=modules)


NO_NORM = "hyperloom, FlatGenerator.factory(norm=False)"
LEAN_RMS = "leanest hand-written + RMS norm (hyperloom's maths)"


def bench_static(rounds: int, steps: int, peers: dict[str, str]) -> tuple[str, dict]:
    runs = static_contenders(peers)
    times = interleave({k: (lambda f=f: f(steps)) for k, f in runs.items()}, rounds)
    per_step = {k: [t / steps for t in v] for k, v in times.items()}
    hl_t, bare_t = per_step["hyperloom"], per_step[NO_NORM]
    lean = per_step["leanest hand-written"]
    rows = [
        [
            k,
            fmt_time(v, 1e6, "µs"),
            fmt_ratio(hl_t, v) if k != "hyperloom" else "1",
            fmt_ratio(bare_t, v) if k != NO_NORM else "1",
        ]
        for k, v in per_step.items()
    ]
    header = ["contender", "time per step", "hyperloom / this", "hyperloom norm=False / this"]
    text = table(header, rows)

    def line(label: str, a: list[float], b: list[float], limit: float | None) -> str:
        lo, med, hi = ratio(a, b)
        bold = f"**{med:.3f}**" if limit is not None else f"{med:.3f}"
        tail = f" (target <= {limit}: {verdict(med, limit)})" if limit is not None else ""
        return f"- {label} = {bold} [{lo:.3f}, {hi:.3f}]{tail}"

    peer_names = [k for k in per_step if k.startswith(("hypnettorch", "hyperlight"))]
    summary = {
        "hyperloom/leanest": ratio(hl_t, lean)[1],
        "hyperloom/leanest+rms": ratio(hl_t, per_step[LEAN_RMS])[1],
        "norm=False/leanest": ratio(bare_t, lean)[1],
    }
    lines = [
        text,
        "",
        "Configurations: `hyperloom` is `HyperNetwork(MLP 32-64-10, TaskEmbedding(4, 8), "
        "FlatGenerator.factory(hidden=(64,)))`, the defaults: its trunk RMS-normalises the "
        "features before the readout. `hyperloom, FlatGenerator.factory(norm=False)` is the same "
        "with `norm=False`: embedding -> Linear -> ReLU -> readout, the maths of the leanest "
        "hand-written hypernetwork and of both peers. `leanest hand-written + RMS norm` is the "
        "leanest with `F.rms_norm` after the ReLU, the maths of the default. Like is compared "
        "with like below; the default against the leanest (different maths) is shown too.",
        "",
        line(
            "hyperloom norm=False / leanest hand-written (same maths)",
            bare_t,
            lean,
            1.05,
        ),
        line(
            "hyperloom (default) / leanest + RMS norm (same maths)", hl_t, per_step[LEAN_RMS], 1.05
        ),
        line(
            "hyperloom (default) / leanest hand-written (default has the RMS norm)",
            hl_t,
            lean,
            1.05,
        ),
    ]
    if peer_names:
        fastest = min(peer_names, key=lambda k: statistics.median(per_step[k]))
        summary["norm=False/fastest peer"] = ratio(bare_t, per_step[fastest])[1]
        summary["hyperloom/fastest peer"] = ratio(hl_t, per_step[fastest])[1]
        lines.append(
            line(
                f"hyperloom norm=False / fastest peer ({fastest}, same maths)",
                bare_t,
                per_step[fastest],
                1.0,
            )
        )
        lines.append(
            line(f"hyperloom (default) / fastest peer ({fastest})", hl_t, per_step[fastest], 1.0)
        )
        if "hyperlight 0.0.5 (hypernetize)" in per_step:
            r2 = ratio(lean, per_step["hyperlight 0.0.5 (hypernetize)"])
            lines.append(f"- leanest / hyperlight = {r2[1]:.3f} [{r2[0]:.3f}, {r2[2]:.3f}]")
    stages, stage_gap = static_breakdown(rounds)
    summary["stage gap s"] = stage_gap
    summary["step gap s"] = statistics.median(hl_t) - statistics.median(per_step[LEAN_RMS])
    summary["step gap norm=False s"] = statistics.median(bare_t) - statistics.median(lean)
    lines += ["", stages]
    return "\n".join(lines), summary


def static_breakdown(rounds: int, calls: int = 300) -> tuple[str, float]:
    """Where hyperloom's static step spends its extra time: each stage against its lean twin."""
    torch.manual_seed(0)
    sizes, emb, hidden = [32, 64, 10], 8, 64
    hnet = hl.HyperNetwork(
        _mlp(sizes), hl.TaskEmbedding(4, emb), hl.FlatGenerator.factory(hidden=(64,))
    )
    x = torch.randn(128, 32)
    cond, _ = hnet.conditioner.from_call((), {"task": 1})
    weights = hnet.generator(cond)
    table_ = nn.Embedding(4, emb)
    l1, l2 = nn.Linear(emb, hidden), nn.Linear(hidden, hnet.spec.numel)
    cut = [p.numel for p in hnet.spec]
    views = [weights[p.name] for p in hnet.spec]

    def lean_gen(c: Tensor) -> list[Tensor]:
        h = F.rms_norm(F.relu(l1(c)), (hidden,))
        return [t.view(s) for t, s in zip(l2(h).split(cut), hnet.spec.shapes, strict=True)]

    def lean_call() -> Tensor:
        return F.linear(F.relu(F.linear(x, views[0], views[1])), views[2], views[3])

    stages = {
        "conditioner: TaskEmbedding.from_call(task=1)": lambda: hnet.conditioner.from_call(
            (), {"task": 1}
        ),
        "conditioner, lean: nn.Embedding weight[1]": lambda: table_.weight[1],
        "generator: FlatGenerator(cond)": lambda: hnet.generator(cond),
        "generator, lean: same maths, split into views": lambda: lean_gen(table_.weight[1]),
        "target: hl.call(target, weights, x)": lambda: hl.call(hnet.target, weights, x),
        "target, lean: F.linear on the views": lean_call,
    }

    def repeat(f: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                for _ in range(calls):
                    f()

        return run

    t = interleave({k: repeat(f) for k, f in stages.items()}, rounds)
    rows = [[k, fmt_time([v / calls for v in t[k]], 1e6, "µs")] for k in stages]
    med = [statistics.median(t[k]) / calls for k in stages]
    gap = sum(med[i] - med[i + 1] for i in range(0, len(med), 2))  # each stage minus its twin
    text = (
        "Forward stages of one static step, each against its lean twin (no_grad, interleaved):"
        "\n\n" + table(["stage", "time per call"], rows)
    )
    return text, gap


# ---------------------------------------------------------------------------------------------
# 2. per-sample weights


class HandGenerator(nn.Module):
    """encoder -> Linear -> ReLU -> RMS norm -> Linear(numel): hyperloom's FlatGenerator maths."""

    def __init__(self, d_in: int, cond: int, hidden: int, shapes: dict[str, torch.Size]) -> None:
        super().__init__()
        self.enc = nn.Linear(d_in, cond)
        self.l1 = nn.Linear(cond, hidden)
        self.l2 = nn.Linear(hidden, sum(s.numel() for s in shapes.values()))
        self.shapes = shapes

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = F.relu(self.l1(self.enc(x)))
        flat = self.l2(F.rms_norm(h, (h.shape[-1],)))  # (B, numel)
        parts = flat.split([s.numel() for s in self.shapes.values()], dim=-1)
        return {
            n: p.view(-1, *s) for (n, s), p in zip(self.shapes.items(), parts, strict=True)
        }  # {name: (B, *shape)}


def per_sample_contenders(batch: int) -> tuple[dict[str, Callable[[], Tensor]], dict]:
    torch.manual_seed(0)
    sizes, cond, hidden = [784, 100, 10], 8, 64
    x = torch.randn(batch, sizes[0])
    y = torch.randint(0, sizes[-1], (batch,))
    target = _mlp(sizes)
    shapes = {n: p.shape for n, p in target.named_parameters()}
    gen = HandGenerator(sizes[0], cond, hidden, shapes)

    def naive() -> Tensor:
        w = gen(x)
        outs = [
            functional_call(target, {k: v[i] for k, v in w.items()}, (x[i : i + 1],))
            for i in range(batch)
        ]
        return F.cross_entropy(torch.cat(outs), y)

    def vmapped() -> Tensor:
        w = gen(x)

        def one(wi: dict[str, Tensor], xi: Tensor) -> Tensor:
            return functional_call(target, wi, (xi.unsqueeze(0),)).squeeze(0)

        return F.cross_entropy(vmap(one)(w, x), y)

    def einsum() -> Tensor:
        w = gen(x)
        h = F.relu(torch.einsum("bi,boi->bo", x, w["0.weight"]) + w["0.bias"])
        return F.cross_entropy(torch.einsum("bi,boi->bo", h, w["2.weight"]) + w["2.bias"], y)

    hnet = hl.HyperNetwork(
        _mlp(sizes),
        hl.SampleEncoder(nn.Linear(sizes[0], cond), cond),
        hl.FlatGenerator.factory(hidden=(hidden,)),
    )

    def hyperloom() -> Tensor:
        return F.cross_entropy(hnet(x), y)

    def hyperloom_formed() -> Tensor:
        weights = hnet.generate(x=x)  # (B, *shape) per tensor
        return F.cross_entropy(hl.call_batched(hnet.target, weights, x[:, None])[:, 0], y)

    numel = sum(s.numel() for s in shapes.values())
    flops = 2 * batch * (sizes[0] * cond + cond * hidden + hidden * numel + numel)
    # hyperloom's readout path (hl.functional.call_from_readout): per Linear layer, forward
    # U = x R_k (2 B in out K), contraction with h and r x (2 B out K + 2 B in out) and the bias
    # readout (2 B K out); backward grad R (2 B in out K), grad h, grad r, and grad x for
    # layers after the first (2 B out K in).
    fused_f = fused_b = 2 * batch * (sizes[0] * cond + cond * hidden)
    for i, (d_in, d_out) in enumerate(itertools.pairwise(sizes)):
        fused_f += 2 * batch * (d_in * d_out * hidden + 2 * d_out * hidden + d_in * d_out)
        fused_b += 2 * batch * (d_in * d_out * hidden + d_out * hidden + d_in * d_out)
        fused_b += 2 * batch * d_out * hidden * d_in if i else 0
    info = {
        "numel": numel,
        "flops_fwd": flops,
        "weight_bytes": 4 * batch * numel,
        "readout_flops": {"forward": fused_f, "forward+backward": fused_f + fused_b},
    }
    contenders = {
        "naive Python loop of functional_call": naive,
        "vmap(functional_call) by hand": vmapped,
        "hand-written einsum": einsum,
        "hyperloom, weights formed (generate, then call_batched)": hyperloom_formed,
        "hyperloom": hyperloom,
    }
    params = [*gen.parameters(), *hnet.parameters()]
    return contenders, {"info": info, "params": params}


def measure_rates(numel: int, batch: int, hidden: int) -> tuple[float, float]:
    """Matmul rate (FLOP/s) and copy bandwidth (bytes/s), measured here.

    The rate is the best of the generation's three matmul shapes (forward, gradient of the
    input, gradient of the weight), into preallocated outputs, so the floor it gives is a floor.
    """
    h, w, g = torch.randn(batch, hidden), torch.randn(hidden, numel), torch.randn(batch, numel)
    out_f, out_gi, out_gw = (
        torch.empty(batch, numel),
        torch.empty(batch, hidden),
        torch.empty(hidden, numel),
    )
    src, dst = torch.randn(batch * numel), torch.empty(batch * numel)
    t = interleave(
        {
            "forward": lambda: torch.mm(h, w, out=out_f),
            "grad input": lambda: torch.mm(g, w.T, out=out_gi),
            "grad weight": lambda: torch.mm(h.T, g, out=out_gw),
            "copy": lambda: dst.copy_(src),
        },
        9,
    )
    flops = 2 * batch * hidden * numel
    rates = {k: flops / statistics.median(t[k]) for k in ("forward", "grad input", "grad weight")}
    bandwidth = 2 * 4 * batch * numel / statistics.median(t["copy"])  # read + write
    return rates, bandwidth


def bench_per_sample(rounds: int, batch: int, naive_rounds: int) -> tuple[str, dict]:
    contenders, extra = per_sample_contenders(batch)
    info, params = extra["info"], extra["params"]

    def fwd(f: Callable[[], Tensor]) -> Callable[[], None]:
        return lambda: f() and None

    def fwd_bwd(f: Callable[[], Tensor]) -> Callable[[], None]:
        def run() -> None:
            f().backward()
            for p in params:
                p.grad = None

        return run

    # Check the contenders compute the same kind of thing (finite losses), once.
    for name, f in contenders.items():
        if not torch.isfinite(f()):
            raise RuntimeError(f"{name}: non-finite loss")
    fast = {k: v for k, v in contenders.items() if not k.startswith("naive")}
    t_f = interleave({k: fwd(v) for k, v in fast.items()}, rounds)
    t_fb = interleave({k: fwd_bwd(v) for k, v in fast.items()}, rounds)
    naive_name = "naive Python loop of functional_call"
    # The loop is ~100x slower: fewer rounds, paired with hyperloom in the same rounds.
    pair_f = interleave(
        {naive_name: fwd(contenders[naive_name]), "hyperloom": fwd(contenders["hyperloom"])},
        naive_rounds,
    )
    pair_fb = interleave(
        {
            naive_name: fwd_bwd(contenders[naive_name]),
            "hyperloom": fwd_bwd(contenders["hyperloom"]),
        },
        naive_rounds,
    )
    target_only = bench_target_only(rounds, batch, naive_rounds)
    rates, bandwidth = measure_rates(info["numel"], batch, 64)
    rate = max(rates.values())
    floors = {
        "forward": (info["flops_fwd"] / rate, 2 * info["weight_bytes"] / bandwidth),
        # backward: two matmuls per forward one; weights and their gradients written + read once
        "forward+backward": (3 * info["flops_fwd"] / rate, 4 * info["weight_bytes"] / bandwidth),
    }
    rows = []
    for mode, t, pair in (("forward", t_f, pair_f), ("forward+backward", t_fb, pair_fb)):
        for k, v in t.items():
            rows.append([mode, k, fmt_time(v, 1e3, "ms"), fmt_ratio(t["hyperloom"], v)])
        rows.append(
            [
                mode,
                naive_name + f" ({naive_rounds} paired rounds)",
                fmt_time(pair[naive_name], 1e3, "ms"),
                fmt_ratio(pair["hyperloom"], pair[naive_name]),
            ]
        )
    lines = [table(["pass", "contender", "time per call", "hyperloom / this"], rows), ""]
    lines.append(
        f"Measured in the same run: matmul rate {rate / 1e9:.1f} GFLOP/s (best of the "
        f"generation's three ({batch}x64)@(64x{info['numel']}) matmul shapes: "
        + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in rates.items())
        + "), "
        f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; "
        f"generated weights {info['weight_bytes'] / 1e6:.1f} MB per batch, "
        f"{info['flops_fwd'] / 1e9:.2f} GFLOP forward."
    )
    lines.append("")
    summary = {}
    for mode, t, pair in (("forward", t_f, pair_f), ("forward+backward", t_fb, pair_fb)):
        comp, mem = floors[mode]
        floor = max(comp, mem)
        med = statistics.median(t["hyperloom"])
        r_naive = ratio(pair["hyperloom"], pair[naive_name])
        r_ein = ratio(t["hyperloom"], t["hand-written einsum"])
        own = info["readout_flops"][mode]
        lines.append(
            f"- {mode}: compute floor {comp * 1e3:.2f} ms, memory floor {mem * 1e3:.2f} ms "
            f"(floors of forming the weights); hyperloom's readout path does "
            f"{own / 1e9:.2f} GFLOP, {own / rate * 1e3:.2f} ms at the measured rate; "
            f"hyperloom {med * 1e3:.2f} ms = **{med / floor:.2f}x the floor**"
            + (f" (target <= 2: {verdict(med / floor, 2.0)})" if mode != "forward" else "")
            + f"; hyperloom / naive loop = **1/{1 / r_naive[1]:.0f}**"
            + (f" (target <= 1/50: {verdict(r_naive[1], 1 / 50)})" if mode != "forward" else "")
            + f"; hyperloom / einsum = **{r_ein[1]:.3f}** [{r_ein[0]:.3f}, {r_ein[2]:.3f}]"
            + (f" (target <= 1.0: {verdict(r_ein[1], 1.0)})" if mode != "forward" else "")
        )
        summary[mode] = {"floor_x": med / floor, "naive": r_naive[1], "einsum": r_ein[1]}
    lines += ["", profile_hyperloom(contenders["hyperloom"], params), "", target_only[0]]
    summary["target only"] = target_only[1]
    return "\n".join(lines), summary


def profile_hyperloom(f: Callable[[], Tensor], params: list) -> str:
    """The operations that take hyperloom's per-sample forward+backward time (torch.profiler)."""

    def step() -> None:
        f().backward()
        for p in params:
            p.grad = None

    step()
    with torch.profiler.profile() as prof:
        for _ in range(2):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [
        [
            f"`{e.key}`",
            f"{e.self_cpu_time_total / 2e3:.1f} ms",
            f"{e.count // 2}",
            f"{100 * e.self_cpu_time_total / total:.0f}%",
        ]
        for e in events[:8]
    ]
    return (
        "Where hyperloom's per-sample forward+backward time goes (torch.profiler, self CPU time "
        "per step, top operations):\n\n"
        + table(["operation", "time per step", "calls per step", "share"], rows)
    )


def bench_target_only(rounds: int, batch: int, naive_rounds: int) -> tuple[str, dict]:
    """The target alone on given per-sample weights (leaves that need gradients), fwd+bwd."""
    torch.manual_seed(0)
    sizes = [784, 100, 10]
    target = _mlp(sizes)
    x = torch.randn(batch, sizes[0])
    y = torch.randint(0, sizes[-1], (batch,))
    w = {
        n: (0.05 * torch.randn(batch, *p.shape)).requires_grad_()
        for n, p in target.named_parameters()
    }

    def naive() -> Tensor:
        outs = [
            functional_call(target, {k: v[i] for k, v in w.items()}, (x[i : i + 1],))
            for i in range(batch)
        ]
        return torch.cat(outs)

    def vmapped() -> Tensor:
        def one(wi: dict[str, Tensor], xi: Tensor) -> Tensor:
            return functional_call(target, wi, (xi.unsqueeze(0),)).squeeze(0)

        return vmap(one)(w, x)

    def einsum() -> Tensor:
        h = F.relu(torch.einsum("bi,boi->bo", x, w["0.weight"]) + w["0.bias"])
        return torch.einsum("bi,boi->bo", h, w["2.weight"]) + w["2.bias"]

    def hyperloom() -> Tensor:
        return hl.call_batched(target, w, x.unsqueeze(1)).flatten(0, 1)

    def fb(f: Callable[[], Tensor]) -> Callable[[], None]:
        def run() -> None:
            F.cross_entropy(f(), y).backward()
            for t in w.values():
                t.grad = None

        return run

    torch.testing.assert_close(hyperloom(), einsum(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(hyperloom(), naive(), rtol=1e-4, atol=1e-4)
    fast = {"vmap(functional_call) by hand": vmapped, "hand-written einsum": einsum}
    fast["hyperloom call_batched"] = hyperloom
    t = interleave({k: fb(f) for k, f in fast.items()}, rounds)
    pair = interleave({"naive": fb(naive), "hyperloom call_batched": fb(hyperloom)}, naive_rounds)
    rows = [
        [k, fmt_time(v, 1e3, "ms"), fmt_ratio(t["hyperloom call_batched"], v)] for k, v in t.items()
    ]
    rows.append(
        [
            f"naive Python loop of functional_call ({naive_rounds} paired rounds)",
            fmt_time(pair["naive"], 1e3, "ms"),
            fmt_ratio(pair["hyperloom call_batched"], pair["naive"]),
        ]
    )
    r = ratio(pair["hyperloom call_batched"], pair["naive"])
    text = (
        "Target alone (weights given, as leaves that need gradients; forward+backward), "
        "the part the fast paths replace:\n\n"
        + table(["contender", "time per call", "hyperloom / this"], rows)
        + f"\n\n- target alone: hyperloom / naive loop = **1/{1 / r[1]:.0f}**"
    )
    return text, {"naive": r[1]}


# ---------------------------------------------------------------------------------------------
# 3. scaling


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.b1(self.c1(x)))
        h = self.b2(self.c2(h))
        return F.relu(h + (x if self.short is None else self.short(x)))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (11.2M parameters), written out so torchvision is not needed."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64))
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(F.relu(self.stem(x)))
        return self.fc(h.mean((2, 3)))


MLP_WIDTHS = {"1e4": 30, "1e5": 230, "1e6": 880, "1e7": 3040}  # in 256, two hidden layers
GENERATORS = {
    "once": lambda: hl.FlatGenerator.factory(hidden=(64,)),
    "chunked": lambda: hl.ChunkedGenerator.factory(chunk_size=4096, chunk_dim=8, hidden=(64,)),
    "component": lambda: hl.ComponentGenerator.factory(component_dim=8, hidden=(64,)),
}
# Parameters above this many are not built (shared 23 GB machine; Adam keeps 4 copies).
MAX_PARAMS = 150_000_000


def make_target(kind: str) -> tuple[nn.Module, Callable[[int], tuple[Tensor, Tensor]]]:
    if kind == "resnet18":

        def data(b: int):
            return torch.randn(b, 3, 32, 32), torch.randint(0, 10, (b,))

        return ResNet18(), data
    w = MLP_WIDTHS[kind]

    def data_mlp(b: int):
        return torch.randn(b, 256), torch.randint(0, 10, (b,))

    return _mlp([256, w, w, 10]), data_mlp


def generator_params(spec: hl.TargetSpec, gen: str, cond: int = 8, h: int = 64) -> int:
    """Trainable parameters of a generator for ``spec``, computed without building it."""
    trunk = lambda d: d * h + h  # noqa: E731
    if gen == "once":
        return trunk(cond) + (h + 1) * spec.numel
    if gen == "chunked":
        n = -(-spec.numel // 4096)
        return n * 8 + trunk(cond + 8) + (h + 1) * 4096
    shapes = {p.shape for p in spec}
    numels = sum(torch.Size(s).numel() for s in shapes)
    return len(spec) * 8 + trunk(cond + 8) + (h + 1) * numels


def build(kind: str, gen: str | None):
    torch.manual_seed(0)
    target, data = make_target(kind)
    if gen is None:
        return target, list(target.parameters()), (lambda x: target(x)), data
    hnet = hl.HyperNetwork(target, hl.TaskEmbedding(4, 8), GENERATORS[gen]())
    return hnet, list(hnet.parameters()), (lambda x: hnet(x, task=1)), data


def probe(kind: str, gen: str | None, batch: int) -> dict:
    """Peak resident memory above the resident set after imports, while building (hyperfan
    initialisation included) and while training 2 steps (run in a fresh process)."""
    torch.set_num_threads(1)
    base = _rss()
    _, params, fwd, data = build(kind, gen)
    built = _status_kb("VmHWM") * 1024
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets the peak (VmHWM) to the current
        f.write("5")
    opt = torch.optim.Adam(params, lr=1e-4)
    for _ in range(2):
        x, y = data(batch)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(fwd(x), y).backward()
        opt.step()
    trained = _status_kb("VmHWM") * 1024
    return {"build_mb": (built - base) / 1e6, "train_mb": (trained - base) / 1e6}


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB. VmHWM (peak RSS) belongs to this process image; the
    rusage maximum would include the parent's resident set inherited through fork."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _probe_subprocess(kind: str, gen: str | None, batch: int) -> str:
    cmd = [sys.executable, __file__, "--probe", kind, gen or "plain", str(batch)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
        got = json.loads(res.stdout.strip().splitlines()[-1])
        return f"{got['train_mb']:.0f} MB / {got['build_mb']:.0f} MB"
    except Exception as e:  # reported in the table
        return f"probe failed ({type(e).__name__})"


def bench_scaling(rounds: int, kinds: list[str], steps: int) -> tuple[str, dict]:
    rows, summary = [], {}
    for kind in kinds:
        batch = 8 if kind == "resnet18" else 64
        target, _ = make_target(kind)
        spec = hl.select(target)
        plain_n = sum(p.numel() for p in target.parameters())
        del target
        runs, counts = {}, {"plain target": plain_n}
        skipped = {}
        for gen in [None, *GENERATORS]:
            name = "plain target" if gen is None else gen
            if gen is not None:
                counts[name] = generator_params(spec, gen) + 8 * 4
                if counts[name] > MAX_PARAMS:
                    skipped[name] = f"not run: {counts[name] / 1e6:.0f}M parameters"
                    continue
            _, params, fwd, data = build(kind, gen)
            opt = torch.optim.Adam(params, lr=1e-4)
            x, y = data(batch)

            def run(fwd=fwd, opt=opt, x=x, y=y) -> None:
                for _ in range(steps):
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(fwd(x), y).backward()
                    opt.step()

            runs[name] = run
        times = interleave(runs, rounds)
        per_step = {k: [t / steps for t in v] for k, v in times.items()}
        runs.clear()  # free this size's models before the memory probes build them again
        gc.collect()
        for name in ["plain target", *GENERATORS]:
            if name in skipped:
                row = [kind, f"{plain_n:,}", name, f"{counts[name]:,}", "-", skipped[name], "-"]
                rows.append(row)
                continue
            mem = _probe_subprocess(kind, None if name == "plain target" else name, batch)
            v = per_step[name]
            rows.append(
                [
                    kind,
                    f"{plain_n:,}",
                    name,
                    f"{counts[name]:,}",
                    mem,
                    fmt_time(v, 1e3, "ms"),
                    fmt_ratio(v, per_step["plain target"]),
                ]
            )
            summary[f"{kind}/{name}"] = ratio(v, per_step["plain target"])[1]
    header = [
        "target",
        "target params",
        "generator",
        "trainable params",
        "peak memory: training / building",
        "step time",
        "step / plain step",
    ]
    return table(header, rows), summary


# ---------------------------------------------------------------------------------------------
# 3b. scaling over processes (data-parallel, gloo)

DDP_KINDS = ["1e4", "1e5", "1e6", "1e7", "resnet18"]


def ddp_probe(kind: str, gen: str | None, batch: int, steps: int) -> dict:
    """Train ``steps`` Adam steps on a per-process batch of ``batch`` in this process, joined to
    torchrun's group when there is one; step times, all-reduce times and peak memory."""
    from hyperloom.recipes import distributed as D

    torch.set_num_threads(1)
    rt = D.start(device="cpu")
    base = _rss()
    _, params, fwd, data = build(kind, gen)
    torch.manual_seed(1 + rt.rank)  # each process its own samples
    x, y = data(batch)
    opt = torch.optim.Adam(params, lr=1e-4)
    step_t, sync_t = [], []
    for i in range(steps + 1):  # the first is a warm-up
        if rt.distributed:
            torch.distributed.barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(fwd(x), y).backward()
        t1 = time.perf_counter()
        rt.sync_grads(params)
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i:
            step_t.append(t3 - t0)
            sync_t.append(t2 - t1)
    peak = torch.tensor([float(_status_kb("VmHWM") * 1024 - base)])
    if rt.distributed:
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    D.stop(rt)
    reduced = sum(p.numel() for p in params if p.requires_grad)
    return {
        "step": statistics.median(step_t),
        "sync": statistics.median(sync_t),
        "peak_mb": peak.item() / 1e6,
        "reduced": reduced,
    }


def _ddp_run(nproc: int, kind: str, gen: str | None, batch: int, steps: int) -> dict:
    probe_args = ["--ddp-probe", kind, gen or "plain", str(batch), str(steps)]
    if nproc == 1:
        cmd = [sys.executable, __file__, *probe_args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            __file__,
            *probe_args,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True, env=env)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def bench_ddp(kinds: list[str], steps: int, rounds: int) -> tuple[str, dict]:
    """1 process on the global batch, 1 on half of it, 2 processes on a half each (gloo)."""
    rows, summary = [], {}
    for kind in kinds:
        glob = 8 if kind == "resnet18" else 64
        for gen in (None, "chunked"):
            name = "plain target" if gen is None else gen
            runs: dict[str, list[dict]] = {"1 proc, batch B": [], "1 proc, B/2": [], "2 procs": []}
            for _ in range(rounds):  # alternate the three, so that load drifts hit them alike
                runs["1 proc, batch B"].append(_ddp_run(1, kind, gen, glob, steps))
                runs["1 proc, B/2"].append(_ddp_run(1, kind, gen, glob // 2, steps))
                runs["2 procs"].append(_ddp_run(2, kind, gen, glob // 2, steps))

            def med(key: str, field: str, runs: dict = runs) -> float:
                return statistics.median(r[field] for r in runs[key])

            one, half, two = (med(k, "step") for k in runs)
            rows.append(
                [
                    kind,
                    name,
                    f"{runs['2 procs'][0]['reduced']:,}",
                    f"{one * 1e3:.3g} ms",
                    f"{half * 1e3:.3g} ms",
                    f"{two * 1e3:.3g} ms",
                    f"{med('2 procs', 'sync') * 1e3:.3g} ms",
                    f"{med('1 proc, batch B', 'peak_mb'):.0f} MB / "
                    f"{med('2 procs', 'peak_mb'):.0f} MB",
                    f"**{two / half:.2f}**",
                    f"{one / two:.2f}",
                ]
            )
            summary[f"{kind}/{name}"] = {"overhead": two / half, "speedup": one / two}
    header = [
        "target",
        "trained",
        "all-reduced params",
        "1 proc, global batch",
        "1 proc, half batch",
        "2 procs, half each",
        "of which all-reduce",
        "peak memory per process: 1 proc / 2 procs",
        "DDP overhead (2 procs / 1 proc, same per-process batch)",
        "speed-up (1 proc / 2 procs, same global batch)",
    ]
    caption = (
        "Both processes share this machine's 2 logical CPUs (one thread each) with other jobs, "
        "so the 2-process column measures gloo's all-reduce and the contention for the cores, "
        "not what two free GPUs or machines would give. A hypernetwork all-reduces the "
        "gradients of its own parameters (Φ: the chunked generator's ~0.27-0.29M), not of the "
        "target (Θ: up to 11.2M for ResNet-18): the 'all-reduced params' column. Step times "
        "are medians over the steps of each run and then over runs; peak memory is the "
        "resident-set peak above the set after imports (VmHWM), the larger of the two "
        "processes."
    )
    return table(header, rows) + "\n\n" + caption, summary


# ---------------------------------------------------------------------------------------------
# 3c. torch.compile: the static step and the per-sample step


def _graph_breaks(fn: Callable[..., Tensor], *args: object) -> str:
    torch._dynamo.reset()
    ex = torch._dynamo.explain(fn)(*args)
    reasons = sorted({str(r.reason).splitlines()[0][:120] for r in ex.break_reasons})
    text = f"{ex.graph_count} graph(s), {ex.graph_break_count} graph break(s)"
    return text + ("" if not reasons else ": " + "; ".join(f"`{r}`" for r in reasons))


def bench_compiled(rounds: int, steps: int, batch: int) -> tuple[str, dict]:
    torch.manual_seed(0)
    tasks, emb, hidden, sizes = 4, 8, 64, [32, 64, 10]
    data = _batches(16, 128, sizes[0], sizes[-1], tasks)
    numel = sum(p.numel() for p in _mlp(sizes).parameters())
    cut = [64 * 32, 64, 10 * 64, 10]

    def lean_net() -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                "emb": nn.Embedding(tasks, emb),
                "l1": nn.Linear(emb, hidden),
                "l2": nn.Linear(hidden, numel),
            }
        )

    def lean_loss(net: nn.ModuleDict) -> Callable[[Tensor, Tensor, int], Tensor]:
        def loss(x: Tensor, y: Tensor, t: int) -> Tensor:
            h = F.relu(net["l1"](net["emb"].weight[t]))
            w1, b1, w2, b2 = net["l2"](h).split(cut)
            z = F.relu(F.linear(x, w1.view(64, 32), b1))
            return F.cross_entropy(F.linear(z, w2.view(10, 64), b2), y)

        return loss

    def hnet_loss(norm: bool) -> tuple[hl.HyperNetwork, Callable[[Tensor, Tensor, int], Tensor]]:
        hnet = hl.HyperNetwork(
            _mlp(sizes),
            hl.TaskEmbedding(tasks, emb),
            hl.FlatGenerator.factory(hidden=(hidden,), norm=norm),
        )
        return hnet, lambda x, y, t: F.cross_entropy(hnet(x, task=t), y)

    runs: dict[str, Callable[[int], None]] = {}
    net = lean_net()
    runs["leanest hand-written, eager"] = _stepper(net.parameters(), lean_loss(net), data)
    net_c = lean_net()
    runs["leanest hand-written, compiled"] = _stepper(
        net_c.parameters(), torch.compile(lean_loss(net_c)), data
    )
    hnet, loss = hnet_loss(True)
    runs["hyperloom, eager"] = _stepper(hnet.parameters(), loss, data)
    hnet_c, loss_c = hnet_loss(True)
    runs["hyperloom, compiled"] = _stepper(hnet_c.parameters(), torch.compile(loss_c), data)
    hnet_m, _ = hnet_loss(True)
    compiled_module = torch.compile(hnet_m)
    runs["hyperloom, torch.compile(hnet)"] = _stepper(
        hnet_m.parameters(),
        lambda x, y, t: F.cross_entropy(compiled_module(x, task=t), y),
        data,
    )
    bare_c, bare_loss_c = hnet_loss(False)
    runs["hyperloom norm=False, compiled"] = _stepper(
        bare_c.parameters(), torch.compile(bare_loss_c), data
    )
    t0 = time.perf_counter()
    for f in runs.values():  # compile outside the timing: every task id once
        f(tasks + 1)
    compile_s = time.perf_counter() - t0
    times = interleave({k: (lambda f=f: f(steps)) for k, f in runs.items()}, rounds)
    per_step = {k: [t / steps for t in v] for k, v in times.items()}
    lean = per_step["leanest hand-written, eager"]
    static_rows = [[k, fmt_time(v, 1e6, "µs"), fmt_ratio(v, lean)] for k, v in per_step.items()]
    x0, y0, _ = data[0]
    breaks_static = _graph_breaks(loss, x0, y0, 1)

    # per-sample: every sample its own generated weights (the per_sample section's hyperloom)
    torch.manual_seed(0)
    ps_sizes, cond = [784, 100, 10], 8
    xs, ys = torch.randn(batch, ps_sizes[0]), torch.randint(0, 10, (batch,))

    def per_sample_net() -> hl.HyperNetwork:
        return hl.HyperNetwork(
            _mlp(ps_sizes),
            hl.SampleEncoder(nn.Linear(ps_sizes[0], cond), cond),
            hl.FlatGenerator.factory(hidden=(hidden,)),
        )

    ps_e, ps_c = per_sample_net(), per_sample_net()
    ps_loss_c = torch.compile(lambda: F.cross_entropy(ps_c(xs), ys))

    def fwd_bwd(model: nn.Module, f: Callable[[], Tensor]) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            f().backward()

        return run

    ps_runs = {
        "hyperloom per-sample, eager": fwd_bwd(ps_e, lambda: F.cross_entropy(ps_e(xs), ys)),
        "hyperloom per-sample, compiled": fwd_bwd(ps_c, ps_loss_c),
    }
    t0 = time.perf_counter()
    for f in ps_runs.values():
        f()
    compile_s += time.perf_counter() - t0
    ps_times = interleave(ps_runs, max(3, rounds // 3))
    ps_eager = ps_times["hyperloom per-sample, eager"]
    ps_rows = [[k, fmt_time(v, 1e3, "ms"), fmt_ratio(v, ps_eager)] for k, v in ps_times.items()]
    breaks_ps = _graph_breaks(lambda: F.cross_entropy(ps_e(xs), ys))

    hl_c = per_step["hyperloom, compiled"]
    r = ratio(hl_c, lean)
    summary = {
        "compiled/leanest eager": r[1],
        "eager/leanest eager": ratio(per_step["hyperloom, eager"], lean)[1],
        "per-sample compiled/eager": ratio(ps_times["hyperloom per-sample, compiled"], ps_eager)[1],
        "compile seconds": compile_s,
    }
    lines = [
        f"Static step (as in the static section: MLP 32-64-10, batch 128, {steps} Adam steps per "
        "round, eager Adam in every row). `compiled` is `torch.compile` (inductor, default mode) "
        "of the loss function (forward and loss; AOTAutograd compiles the backward); "
        "`torch.compile(hnet)` compiles the module alone.",
        "",
        table(["contender", "time per step", "this / leanest eager"], static_rows),
        "",
        f"- hyperloom (default, RMS-normalised trunk) compiled / leanest hand-written eager = "
        f"**{r[1]:.3f}** [{r[0]:.3f}, {r[2]:.3f}] (target <= 1.05: {verdict(r[1], 1.05)})",
        f"- graphs of the static loss under dynamo: {breaks_static}",
        "",
        _compiled_bound(per_step, lean),
        "",
        f"Per-sample step (forward + backward, batch {batch}, target MLP 784-100-10, "
        "data-conditioned):",
        "",
        table(["contender", "time per step", "this / eager"], ps_rows),
        "",
        f"- graphs of the per-sample loss under dynamo: {breaks_ps}",
        f"- compilation (not timed above): {compile_s:.0f} s in all",
    ]
    return "\n".join(lines), summary


def _compiled_bound(per_step: dict[str, list[float]], lean: list[float]) -> str:
    """The "what bounds it" paragraph of the compiled static step, from this run's figures."""
    return (
        "**What bounds it.** The static step is a few dozen small kernels (a 32-64-10 target, "
        f"batch 128; the leanest eager step takes {fmt_time(lean, 1e6, 'µs')}), so its time "
        "goes to per-operator dispatch and Python, not to arithmetic. Compiling takes the "
        "dispatch out of the forward and the backward but puts its own call path in (dynamo's "
        "guards, AOTAutograd's runtime wrapper), and leaves the optimiser step (eager Adam in "
        "every row) as it was. The leanest hand-written step, compiled, runs at "
        f"{fmt_ratio(per_step['leanest hand-written, compiled'], lean)} of itself eager: "
        "compiling does not make even the leanest step faster, so compiling hyperloom's step "
        "cannot bring it to the leanest eager step either. What separates them is hyperloom's "
        "own work per step (task-embedding lookup, generator trunk and readout, the "
        f"RMS normalisation): {fmt_ratio(per_step['hyperloom, eager'], lean)} eager, "
        f"{fmt_ratio(per_step['hyperloom norm=False, compiled'], lean)} compiled without the "
        "normalisation (`norm=False`)."
    )


# ---------------------------------------------------------------------------------------------
# 4. cached static inference


def bench_cached(rounds: int, calls: int) -> tuple[str, dict]:
    rows, summary = [], {}
    for sizes, batch, n_calls in (([32, 64, 10], 128, calls), ([784, 100, 10], 256, calls // 10)):
        torch.manual_seed(0)
        plain = _mlp(sizes).eval()
        hnet = hl.HyperNetwork(
            _mlp(sizes), hl.TaskEmbedding(4, 8), hl.FlatGenerator.factory()
        ).eval()
        fast = hnet.cached(task=2)
        x = torch.randn(batch, sizes[0])
        torch.testing.assert_close(fast(x), hnet(x, task=2))

        def loop(f: Callable[[Tensor], Tensor], x: Tensor = x, n: int = n_calls) -> Callable:
            def run() -> None:
                with torch.no_grad():
                    for _ in range(n):
                        f(x)

            return run

        times = interleave(
            {
                "plain module": loop(plain),
                "hyperloom cached (hnet.cached(task=2))": loop(fast),
                "hyperloom uncached (hnet(x, task=2))": loop(partial(hnet, task=2)),
            },
            rounds,
        )
        name = "-".join(map(str, sizes))
        for k, v in times.items():
            rows.append(
                [
                    f"MLP {name}, batch {batch}",
                    k,
                    fmt_time([t / n_calls for t in v], 1e6, "µs"),
                    fmt_ratio(v, times["plain module"]),
                ]
            )
        cached = times["hyperloom cached (hnet.cached(task=2))"]
        summary[name] = ratio(cached, times["plain module"])
    text = table(["target", "contender", "time per forward", "this / plain"], rows)
    lines = [text, ""]
    for name, (lo, med, hi) in summary.items():
        lines.append(
            f"- MLP {name}: cached / plain = **{med:.3f}** [{lo:.3f}, {hi:.3f}] "
            f"(target <= 1.05: {verdict(med, 1.05)})"
        )
    return "\n".join(lines), {k: v[1] for k, v in summary.items()}


# ---------------------------------------------------------------------------------------------
# main


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        names = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln]
        model = names[0] if names else "?"
    except OSError:
        model = platform.processor() or "?"
    return f"{model}, {os.cpu_count()} logical CPUs"


def _peers() -> dict[str, str]:
    """Peer libraries that failed to import, with the error."""
    failed = {}
    for name, stmt in (
        ("hypnettorch", "from hypnettorch.hnets import HMLP; from hypnettorch.mnets import MLP"),
        ("hyperlight", "import hyperlight; hyperlight.hypernetize"),
    ):
        try:
            exec(stmt, {})
        except Exception as e:  # recorded in results.md
            failed[name] = f"{type(e).__name__}: {e}"
    return failed


def notes(summary: dict) -> str:
    """What bounds each target, with this run's figures (``summary`` of every section)."""
    st, ps = summary.get("static", {}), summary.get("per_sample", {})
    fb = ps.get("forward+backward", {})
    out = [
        "## What bounds each target",
        "",
        "Read with the tables above (figures from this run); profiled with the tables' own tools.",
        "",
        "- **Static train step.** The two like-for-like ratios "
        f"(`norm=False` / leanest: {st.get('norm=False/leanest', float('nan')):.3f}; default / "
        f"leanest + RMS norm: {st.get('hyperloom/leanest+rms', float('nan')):.3f}) are what the "
        "abstraction costs; the default against the plain leanest "
        f"({st.get('hyperloom/leanest', float('nan')):.3f}) adds the RMS normalisation, "
        "hyperloom's maths (several small operations forward and backward on a 64-vector). "
        "The forward-stage table compares the stages of the default with their lean twins "
        "(no_grad): together they take "
        f"{st.get('stage gap s', float('nan')) * 1e6:.0f} µs more per step (the conditioner, "
        "the generator's Python around the same matmuls, `call`'s name-and-shape check and "
        "layer loop), of a whole-step difference of "
        f"{st.get('step gap s', float('nan')) * 1e6:.0f} µs against the leanest + RMS norm "
        f"({st.get('step gap norm=False s', float('nan')) * 1e6:.0f} µs for `norm=False` "
        "against the leanest). A step runs fewer operators than the leanest's (torch.profiler, "
        "one step of `norm=False`: 355 operator events against the leanest's 366), so the "
        "rest is Python time that this table does not separate: grad-mode forward "
        "(autograd bookkeeping of the same operators, called from more Python frames), "
        "backward and Adam. On a shared machine the per-round ratios spread widely (the brackets).",
        "- **Per-sample step.** `HyperNetwork` never forms the per-sample weights of a "
        "`Linear` layer that reads one row per weight set when its generator is one linear "
        "readout (`FlatGenerator`): there `W_i = (R h_i + r).view(out, in)`, so "
        "`W_i x_i = sum_k h_ik (R_k x_i) + r x_i`, and `hl.functional.call_from_readout` "
        "computes every `R_k x_i` in one batched matmul (`(B x in) @ (in x K)` per output row, "
        "`aten::bmm` in the profile), contracts with `h`, and in the backward gets the readout's "
        "gradient in its own layout from one more such matmul. That is the generation's "
        "forward FLOPs without the `B x out x in` weights written and read, and one large matmul "
        "in the backward instead of two. The floors are those of forming the weights (what "
        "the other contenders do, and hyperloom when the weights are asked for: the "
        "'weights formed' row); the readout path does fewer FLOPs than they count (the line "
        "above), so it can run below them. What bounds it is those two matmuls at the "
        "machine's rate, and the readout weight's gradient assembled from its per-tensor "
        "parts (`aten::cat`, the split's backward). "
        f"This run: {fb.get('floor_x', float('nan')):.2f}x the floor, hyperloom / naive "
        f"loop = 1/{1 / fb.get('naive', float('nan')):.0f}, hyperloom / einsum = "
        f"{fb.get('einsum', float('nan')):.3f}.",
        "- **Peak memory while building.** Hyperfan initialisation probes the generator with "
        "256 contexts but stops once every readout has seen its input (`init.py`: the hooks "
        "reduce the features to their second moment and end the probe), so the probe's "
        "cost is the trunk's features, not 256 full weight sets: compare the building column "
        "with the training column.",
        "",
    ]
    return "\n".join(out)


_CLAIM = re.compile(
    r"(?P<claim>[^;]+?) = \*\*(?P<ours>[^*]+)\*\*[^(;]*?\(target (?P<target>[<>]=? [^:]+): "
    r"(?P<verdict>met|NOT met)\)"
)


def with_claims(text: str) -> str:
    """``text`` (a results file) with its "## Claims" table rebuilt from the targets it states.

    Every ``claim = **figure** (target <= limit: met|NOT met)`` in the file's bullet lines
    becomes one row (claim, ours, target, held / not held), under the section it comes from;
    the table goes right after the file's header, replacing an older one.
    """
    rows, section = [], ""
    for line in text.splitlines():
        if line.startswith("## ") and not line.startswith("## Claims"):
            section = line[3:].split(":")[0]
        if not line.startswith("- ") or "(target" not in line:
            continue
        for m in _CLAIM.finditer(line[2:]):
            claim = m["claim"].strip().lstrip("-").strip()
            held = "held" if m["verdict"] == "met" else "**not held**"
            rows.append(f"| {section}: {claim} | {m['ours'].strip()} | {m['target']} | {held} |")
    head, _, rest = text.partition("\n- machine:")
    head = re.sub(r"\n## Claims\n.*", "", head, flags=re.S).rstrip("\n")
    if not rows:
        return text
    table = "\n".join(
        ["## Claims", "", "| claim | ours | target | held / not held |", "|---|---|---|---|", *rows]
    )
    return f"{head}\n\n{table}\n\nThe details follow, section by section.\n\n- machine:{rest}"


def _splice(old: str, parts: list[str]) -> list[str]:
    """The old results file with the sections of this run put in (same title: replaced; new
    ones before "What bounds each target"); its header notes this run's machine and load."""
    new_sections: dict[str, list[str]] = {}
    current: str | None = None
    for part in parts:
        if part.startswith("## "):
            current = part
            new_sections[current] = []
        elif current is not None and not part.startswith("`uptime` after"):
            new_sections[current].append(part)
    blocks: list[tuple[str, list[str]]] = [("", [])]
    for line in old.splitlines():
        if line.startswith("## "):
            blocks.append((line, []))
        else:
            blocks[-1][1].append(line)
    out: list[str] = []
    for title, body in blocks:
        if title.startswith("## What bounds"):
            for t, b in new_sections.items():
                if not any(t.split(":")[0] == bt.split(":")[0] for bt, _ in blocks):
                    out += [t, *b, ""]
        same = [t for t in new_sections if t.split(":")[0] == title.split(":")[0]]
        if title and same:
            out += [same[0], *new_sections[same[0]], ""]
        else:
            out += ([title] if title else []) + body
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few rounds, small sizes (smoke test)")
    ap.add_argument("--sections", default="static,per_sample,scaling,ddp,compiled,cached")
    ap.add_argument(
        "--update",
        action="store_true",
        help="replace only the sections run in an existing --out file, keep the others",
    )
    ap.add_argument("--out", default=str(HERE / "results.md"))
    ap.add_argument("--probe", nargs=3, metavar=("KIND", "GEN", "BATCH"), help=argparse.SUPPRESS)
    ap.add_argument("--ddp-probe", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ddp_probe:
        kind, gen, batch, steps = args.ddp_probe
        got = ddp_probe(kind, None if gen == "plain" else gen, int(batch), int(steps))
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(got), flush=True)
        return
    if args.probe:
        kind, gen, batch = args.probe
        print(json.dumps(probe(kind, None if gen == "plain" else gen, int(batch))))
        return
    torch.set_num_threads(1)
    q = args.quick
    sections = args.sections.split(",")
    started = time.time()
    load_before = _uptime()
    peers = _peers()
    parts = [
        "# hyperloom benchmarks",
        "",
        "Written by `make bench` (`benchmarks/bench.py`); do not edit by hand.",
        "",
        f"- machine: {_cpu()}; torch {torch.__version__}, 1 thread "
        f"(`torch.set_num_threads(1)`); Python {platform.python_version()}",
        f"- load (other jobs on the machine slow every contender alike): `uptime` before: "
        f"`{load_before}`",
        "- every timing interleaves its contenders round-robin in one process; figures are "
        "medians [25th, 75th percentile] over rounds, ratios are medians of per-round ratios",
    ]
    if q:
        parts.append("- **--quick run: few rounds, small sizes; not the reported figures**")
    for name, err in peers.items():
        parts.append(f"- peer library {name} could not be used: `{err}`")
    summary: dict = {}
    for section in sections:
        t0 = time.time()
        print(f"[bench] {section} ...", flush=True)
        try:
            if section == "static":
                text, s = bench_static(3 if q else 15, 50 if q else 200, peers)
                title = (
                    "## Static train step (one task per step): 200 Adam steps per round, batch "
                    "128, target MLP 32-64-10, task embedding 8, hypernetwork hidden 64"
                )
            elif section == "per_sample":
                text, s = bench_per_sample(3 if q else 9, 64 if q else 256, 2 if q else 3)
                title = (
                    "## Per-sample weights: batch 256, target MLP 784-100-10, every sample its "
                    "own generated weights (data-conditioned: Linear(784, 8) encoder, generator "
                    "hidden 64), generation included"
                )
            elif section == "scaling":
                kinds = ["1e4", "1e5"] if q else ["1e4", "1e5", "1e6", "1e7", "resnet18"]
                text, s = bench_scaling(2 if q else 5, kinds, 1 if q else 3)
                title = (
                    "## Scaling: generators against target size (static task, Adam; MLP "
                    "256-w-w-10 batch 64, ResNet-18 on 32x32 batch 8)"
                )
            elif section == "ddp":
                kinds = ["1e4", "1e5"] if q else DDP_KINDS
                text, s = bench_ddp(kinds, 2 if q else 5, 1)
                title = (
                    "## Scaling over processes: data-parallel training on gloo (static task, "
                    "Adam; MLP 256-w-w-10 global batch 64, ResNet-18 on 32x32 global batch 8)"
                )
            elif section == "compiled":
                text, s = bench_compiled(3 if q else 7, 20 if q else 100, 64 if q else 256)
                title = (
                    "## torch.compile: the static step and the per-sample step, eager against "
                    "compiled"
                )
            elif section == "cached":
                text, s = bench_cached(3 if q else 11, 200 if q else 2000)
                title = "## Cached static inference against the plain module (no_grad)"
            else:
                raise ValueError(f"unknown section {section!r}")
        except Exception:  # one failing section must not hide the others
            text, s = "```\n" + traceback.format_exc() + "```", {"error": True}
            title = f"## {section}: FAILED"
        summary[section] = s
        took = f"({time.time() - t0:.0f} s)"
        if args.update:  # the file's header describes another run: say when this one ran
            took = took[:-1] + f"; run alone with --update, `uptime` before: `{load_before}`)"
        parts += ["", title, "", text, "", took]
        print(f"[bench] {section} done in {time.time() - t0:.0f} s", flush=True)
    if not q and set(sections) >= {"static", "per_sample", "scaling", "cached"}:
        parts += ["", notes(summary)]
    parts += [
        "",
        f"`uptime` after: `{_uptime()}`; total {time.time() - started:.0f} s.",
        "",
    ]
    if args.update and Path(args.out).exists():
        parts = _splice(Path(args.out).read_text(), parts)
    text = with_claims("\n".join(parts))
    Path(args.out).write_text(text)
    print(text)
    print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
