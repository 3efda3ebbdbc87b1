"""Continual learning: the output regulariser, task inference, EWC/SI helpers and the recipe."""

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hyperloom as hl
from hyperloom.continual import (
    factored_output_regularizer,
    fisher_diagonal,
    fit_temperature,
    generate_tasks,
    infer_task,
    log_predictive_entropy,
    lookahead_delta,
    output_regularizer,
    predictive_entropy,
    quadratic_penalty,
    si_importance,
    snapshot_factors,
    snapshot_outputs,
    task_logits,
)


def _hnet(num_tasks=3, generator=None):
    target = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    generator = generator or hl.ChunkedGenerator.factory(chunk_size=64, chunk_dim=4, hidden=(16,))
    return hl.HyperNetwork(target, hl.TaskEmbedding(num_tasks, 8), generator)


def _flat(weights):
    return torch.cat([w.flatten(1) for w in weights.values()], dim=1)  # (n, numel)


# ---- output regulariser ---------------------------------------------------------------------
def test_regularizer_is_zero_when_outputs_unchanged():
    hnet = _hnet()
    old = snapshot_outputs(hnet, task=[0, 1])
    reg = output_regularizer(hnet, old, task=[0, 1], beta=0.3)
    assert reg.item() == 0.0
    assert output_regularizer(hnet, {}, task=[], beta=0.3).item() == 0.0  # no earlier task


def test_regularizer_value_and_gradient_oracle():
    # FlatGenerator: outputs = readout(trunk(e)); adding c to the readout bias moves every
    # output by c, so the value is beta * numel * c^2 (averaged over tasks) and the gradient
    # on the bias is 2 beta / n * sum_t (now_t - old_t) = 2 beta c.
    hnet = _hnet(generator=hl.FlatGenerator.factory(hidden=(8,)))
    old = snapshot_outputs(hnet, task=[0, 2])
    with torch.no_grad():
        hnet.generator.readout.bias.add_(0.5)
    beta = 0.2
    reg = output_regularizer(hnet, old, task=[0, 2], beta=beta)
    numel = hnet.spec.numel
    assert reg.item() == pytest.approx(beta * numel * 0.25, rel=1e-5)
    reg.backward()
    expected = torch.full((numel,), 2 * beta * 0.5)
    torch.testing.assert_close(hnet.generator.readout.bias.grad, expected)


def test_regularizer_gradient_moves_outputs_back():
    hnet = _hnet()
    tasks = [0, 1]
    old = snapshot_outputs(hnet, task=tasks)
    with torch.no_grad():  # disturb the hypernetwork as training a new task would
        for p in hnet.generator.parameters():
            p.add_(0.05 * torch.randn_like(p))
    params = list(hnet.generator.parameters())
    opt = torch.optim.SGD(params, lr=3e-3)
    distances = []
    for _ in range(20):
        opt.zero_grad()
        reg = output_regularizer(hnet, old, task=tasks, beta=1.0)
        distances.append(reg.item())
        reg.backward()
        opt.step()
    assert distances[0] > 0
    assert distances[-1] < 0.2 * distances[0]
    assert all(b <= a for a, b in itertools.pairwise(distances))


def test_regularizer_lookahead():
    hnet = _hnet(generator=hl.FlatGenerator.factory(hidden=(8,)))
    old = snapshot_outputs(hnet, task=[1])
    with torch.no_grad():
        hnet.generator.readout.bias.add_(1.0)
    plain = output_regularizer(hnet, old, task=[1])
    zero = {"generator.readout.bias": torch.zeros_like(hnet.generator.readout.bias)}
    assert output_regularizer(hnet, old, task=[1], delta=zero).item() == pytest.approx(plain.item())
    back = {"generator.readout.bias": -torch.ones_like(hnet.generator.readout.bias)}
    assert output_regularizer(hnet, old, task=[1], delta=back).item() == pytest.approx(
        0.0, abs=1e-8
    )
    # the parameter itself is not moved by the lookahead evaluation
    assert torch.all(hnet.generator.readout.bias != 0)
    with pytest.raises(ValueError, match="not parameters"):
        output_regularizer(hnet, old, task=[1], delta={"nope": torch.zeros(1)})


def test_regularizer_sampled_tasks_is_unbiased():
    hnet = _hnet(num_tasks=4, generator=hl.FlatGenerator.factory(hidden=(8,)))
    old = snapshot_outputs(hnet, task=[0, 1, 2])
    with torch.no_grad():
        for p in hnet.generator.parameters():
            p.add_(0.1 * torch.randn_like(p))
        full = output_regularizer(hnet, old, task=[0, 1, 2], beta=0.5).item()
        per_task = [
            output_regularizer(hnet, {k: v[i : i + 1] for k, v in old.items()}, task=[i], beta=0.5)
            for i in range(3)
        ]
        g = torch.Generator().manual_seed(0)
        draws = [
            output_regularizer(hnet, old, task=[0, 1, 2], beta=0.5, sample=1, generator=g).item()
            for _ in range(30)
        ]
    assert full == pytest.approx(sum(v.item() for v in per_task) / 3, rel=1e-5)
    assert {round(d, 4) for d in draws} == {round(v.item(), 4) for v in per_task}
    same = output_regularizer(hnet, old, task=[0, 1, 2], beta=0.5, sample=3).item()
    assert same == pytest.approx(full, rel=1e-6)
    with pytest.raises(ValueError, match="sample"):
        output_regularizer(hnet, old, task=[0, 1, 2], sample=0)


def test_generate_tasks_matches_generate_and_skips_the_gather():
    hnet = _hnet(num_tasks=4)
    for ids in ([0, 1, 2], [3, 1], [2]):  # increasing ids take the direct path, others not
        out = generate_tasks(hnet, task=ids)
        ref = hnet.generate(task=torch.tensor(ids))
        assert set(out) == set(ref)
        for name in ref:
            torch.testing.assert_close(out[name], ref[name])
    calls = []
    hook = hnet.generator.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    generate_tasks(hnet, task=range(3))
    hook.remove()
    assert calls == [3]  # one batched call for all three tasks
    checked = hl.HyperNetwork(
        nn.Linear(3, 2), hl.TaskEmbedding(2, 4), hl.FlatGenerator.factory(), check_finite=True
    )
    with torch.no_grad():
        checked.generator.readout.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="not finite"):  # check_finite still honoured
        generate_tasks(checked, task=[0, 1])
    with pytest.raises(ValueError, match="repeat"):
        generate_tasks(hnet, task=[1, 1])


def test_regularizer_with_precomputed_outputs():
    hnet = _hnet(num_tasks=4)
    old = snapshot_outputs(hnet, task=[0, 1, 2])
    with torch.no_grad():
        for p in hnet.generator.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = output_regularizer(hnet, old, task=[0, 1, 2], beta=0.3)
    ref.backward()
    grads = [p.grad.clone() for p in hnet.generator.parameters()]
    hnet.zero_grad()
    out = generate_tasks(hnet, task=range(4))  # the current task 3 and the three earlier ones
    current = {k: v[:3] for k, v in out.items()}
    reg = output_regularizer(hnet, old, task=[0, 1, 2], beta=0.3, current=current)
    assert reg.item() == pytest.approx(ref.item(), rel=1e-6)
    reg.backward()
    for g, p in zip(grads, hnet.generator.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g)
    g = torch.Generator().manual_seed(1)
    draws = {
        round(
            output_regularizer(
                hnet, old, task=[0, 1, 2], sample=1, generator=g, current=current
            ).item(),
            5,
        )
        for _ in range(30)
    }
    singles = {
        round(
            output_regularizer(hnet, {k: v[i : i + 1] for k, v in old.items()}, task=[i]).item(), 5
        )
        for i in range(3)
    }
    assert draws == singles  # sampling picks matching rows of current and snapshot
    with pytest.raises(ValueError, match="not both"):
        output_regularizer(hnet, old, task=[0, 1, 2], current=current, delta={"x": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        output_regularizer(hnet, old, task=[0, 1, 2], current={k: v[:2] for k, v in out.items()})


@pytest.mark.parametrize("bias", [True, False])
def test_factored_regularizer_matches_generated_outputs(bias):
    # 16*6 + 16 + 2*16 + 2 = 146 generated numbers in 3 chunks of 64: the last 46 positions of
    # the last chunk are unused and must not count
    hnet = _hnet(num_tasks=5)
    if not bias:
        gen = hnet.generator
        gen.readout = nn.Linear(gen.readout.in_features, gen.readout.out_features, bias=False)
    assert hnet.generator.num_chunks * 64 - hnet.spec.numel == 46
    tasks = [0, 1, 3]
    old, factors = snapshot_outputs(hnet, task=tasks), snapshot_factors(hnet, task=tasks)
    assert factored_output_regularizer(hnet, factors, task=tasks, beta=0.3).item() == 0.0
    with torch.no_grad():  # move readout, trunk, chunk and task embeddings alike
        for p in hnet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    params = list(hnet.parameters())
    ref = output_regularizer(hnet, old, task=tasks, beta=0.3)
    ref_grads = torch.autograd.grad(ref, params, allow_unused=True)
    fast = factored_output_regularizer(hnet, factors, task=tasks, beta=0.3)
    fast_grads = torch.autograd.grad(fast, params, allow_unused=True)
    assert ref.item() > 0
    assert fast.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, b in zip(ref_grads, fast_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)
    g_ref, g_fast = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(5):  # the same draws as output_regularizer's for the same generator
        drawn = output_regularizer(hnet, old, task=tasks, sample=2, generator=g_ref)
        same = factored_output_regularizer(hnet, factors, task=tasks, sample=2, generator=g_fast)
        assert same.item() == pytest.approx(drawn.item(), rel=1e-5)


def test_factored_regularizer_errors():
    hnet = _hnet()
    factors = snapshot_factors(hnet, task=[0, 1])
    assert factored_output_regularizer(hnet, {}, task=[], beta=0.3).item() == 0.0  # no earlier task
    with pytest.raises(ValueError, match="do not match"):
        factored_output_regularizer(hnet, factors, task=[0])
    with pytest.raises(ValueError, match="lacks"):
        factored_output_regularizer(hnet, snapshot_outputs(hnet, task=[0, 1]), task=[0, 1])
    with pytest.raises(ValueError, match="sample"):
        factored_output_regularizer(hnet, factors, task=[0, 1], sample=0)
    flat = _hnet(generator=hl.FlatGenerator.factory(hidden=(8,)))
    with pytest.raises(TypeError, match="ChunkedGenerator"):
        snapshot_factors(flat, task=[0])


def test_lookahead_delta_is_minus_lr_grad():
    hnet = _hnet()
    loss = hnet(torch.randn(4, 6), task=0).pow(2).sum()
    loss.backward()
    delta = lookahead_delta(hnet.generator.named_parameters("generator"), lr=0.1)
    p = hnet.generator.readout.weight
    torch.testing.assert_close(delta["generator.readout.weight"], -0.1 * p.grad)
    assert not delta["generator.readout.weight"].requires_grad


def test_regularizer_errors():
    hnet = _hnet()
    old = snapshot_outputs(hnet, task=[0, 1])
    with pytest.raises(ValueError, match="shape"):
        output_regularizer(hnet, old, task=[0])
    with pytest.raises(ValueError, match="repeat"):
        snapshot_outputs(hnet, task=[1, 1])


def _train_tasks(beta, steps=150, factored=False):
    """Train task 0, snapshot, train task 1 with the regulariser; return task 0's drift."""
    torch.manual_seed(0)
    hnet = _hnet(num_tasks=2)
    xs = [torch.randn(64, 6) for _ in range(2)]
    ys = [(x[:, 0] > 0).long() for x in xs]
    ys[1] = 1 - ys[1]  # task 1 wants the opposite mapping: it pulls the shared weights away
    params = list(hnet.generator.parameters())
    old: dict = {}
    factors: dict = {}
    for t in range(2):
        opt = torch.optim.Adam([*params, hnet.conditioner.rows[t]], lr=1e-2)
        for _ in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(hnet(xs[t], task=t), ys[t])
            if t == 1 and factored:
                loss = loss + factored_output_regularizer(hnet, factors, task=[0], beta=beta)
            elif t == 1:
                loss = loss + output_regularizer(hnet, old, task=[0], beta=beta)
            loss.backward()
            opt.step()
        if t == 0:
            old, factors = snapshot_outputs(hnet, task=[0]), snapshot_factors(hnet, task=[0])
    with torch.no_grad():
        now = _flat(hnet.generate(task=torch.tensor([0])))
        acc0 = (hnet(xs[0], task=0).argmax(-1) == ys[0]).float().mean().item()
        acc1 = (hnet(xs[1], task=1).argmax(-1) == ys[1]).float().mean().item()
    drift = ((now - _flat(old)).norm() / _flat(old).norm()).item()
    return drift, acc0, acc1


def test_old_task_weights_barely_move_with_beta_and_drift_without():
    drift_reg, acc0_reg, acc1_reg = _train_tasks(beta=0.5)
    drift_free, _, acc1_free = _train_tasks(beta=0.0)
    assert drift_reg < 0.02, drift_reg
    assert drift_free > 10 * drift_reg, (drift_free, drift_reg)
    assert acc0_reg > 0.95 and acc1_reg > 0.95  # both tasks solved with the regulariser
    assert acc1_free > 0.95
    drift_factored, acc0_f, acc1_f = _train_tasks(beta=0.5, factored=True)  # the same loss
    assert drift_factored < 0.02 and drift_free > 10 * drift_factored, drift_factored
    assert acc0_f > 0.95 and acc1_f > 0.95


# ---- task inference -------------------------------------------------------------------------
def test_predictive_entropy():
    h = predictive_entropy(torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(h, torch.tensor([math.log(4), 0.0]))


def test_infer_task_picks_lowest_entropy():
    torch.manual_seed(0)
    n_tasks, batch, classes = 4, 12, 3
    truth = torch.randint(0, n_tasks, (batch,))
    logits = 0.1 * torch.randn(n_tasks, batch, classes)  # every head unsure...
    logits[truth, torch.arange(batch), torch.randint(0, classes, (batch,))] += 8.0  # ...but one
    assert torch.equal(infer_task(logits), truth)
    with pytest.raises(ValueError, match="shape"):
        infer_task(logits[0])


def test_log_predictive_entropy_is_the_log_of_the_entropy_and_orders_underflows():
    torch.manual_seed(0)
    logits = 4 * torch.randn(50, 3, dtype=torch.float64)
    torch.testing.assert_close(
        log_predictive_entropy(logits), predictive_entropy(logits).log(), rtol=1e-9, atol=1e-9
    )
    # float32 entropies of margins 120, 200, 300 all underflow to 0; in log space, -log H is
    # the margin minus log(1 + margin) (the 2-class entropy is e^-m (1 + m) to first order)
    margins = torch.tensor([120.0, 200.0, 300.0])
    sure = torch.stack([margins, torch.zeros(3)], dim=1)
    assert predictive_entropy(sure).tolist() == [0.0, 0.0, 0.0]
    expected = -margins + torch.log1p(margins)
    torch.testing.assert_close(log_predictive_entropy(sure), expected)
    with pytest.raises(ValueError, match=r"\(4, 1\)"):
        log_predictive_entropy(torch.zeros(4, 1))


def test_infer_task_rules_and_temperatures():
    sure = torch.tensor([[[150.0, 0.0]], [[300.0, 0.0]], [[120.0, 0.0]]])  # (T=3, B=1, 2)
    assert infer_task(sure).tolist() == [0]  # three entropies of exactly 0: the first
    assert infer_task(sure, rule="log-entropy").tolist() == [1]  # the largest margin
    # a temperature per task rescales that task's margin: task 1's 300 / 4 is now the least sure
    t = torch.tensor([1.0, 4.0, 1.0])
    assert infer_task(sure, temperature=t, rule="log-entropy").tolist() == [0]
    with pytest.raises(ValueError, match="'lowest'"):
        infer_task(sure, rule="lowest")
    with pytest.raises(ValueError, match=r"3 positive numbers.*\[1.0, -1.0, 1.0\]"):
        infer_task(sure, temperature=torch.tensor([1.0, -1.0, 1.0]))


def test_fit_temperature_recovers_the_temperature_of_the_labels():
    gen = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(4000, 3, generator=gen)
    y = torch.multinomial(F.softmax(z / 2.5, dim=1), 1, generator=gen).squeeze(1)
    assert fit_temperature(z, y) == pytest.approx(2.5, rel=0.05)
    assert fit_temperature(z, z.argmax(1), bounds=(0.5, 8.0)) == pytest.approx(0.5, rel=1e-6)
    with pytest.raises(ValueError, match=r"\(5,\)"):
        fit_temperature(z, y[:5])
    with pytest.raises(ValueError, match=r"\(2.0, 1.0\)"):
        fit_temperature(z, y, bounds=(2.0, 1.0))


def test_task_logits_match_per_task_calls():
    hnet = _hnet()
    x = torch.randn(5, 6)
    out = task_logits(hnet, x, task=[2, 0])
    assert out.shape == (2, 5, 2)
    torch.testing.assert_close(out[0], hnet(x, task=2))
    torch.testing.assert_close(out[1], hnet(x, task=0))


# ---- EWC / SI helpers -----------------------------------------------------------------------
def test_quadratic_penalty():
    p = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor(2.0)}
    anchor = {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor(0.0)}
    importance = {"a": torch.tensor([2.0, 0.5]), "b": torch.tensor(0.25)}
    assert quadratic_penalty(p, anchor, importance).item() == pytest.approx(2 + 2 + 1)
    assert quadratic_penalty(p, anchor, {}).item() == 0.0
    with pytest.raises(ValueError, match="missing"):
        quadratic_penalty(p, anchor, {"c": torch.tensor(1.0)})


def test_fisher_diagonal_matches_per_sample_loop():
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    params = dict(net.named_parameters())
    x, y = torch.randn(7, 4), torch.randint(0, 3, (7,))
    fisher = fisher_diagonal(
        lambda p, xb: torch.func.functional_call(net, p, (xb,)), params, x, y, batch_size=3
    )
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(7):
        net.zero_grad()
        F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
        for n, p in params.items():
            expected[n] += p.grad.pow(2) / 7
    for n in params:
        torch.testing.assert_close(fisher[n], expected[n])


def test_si_importance():
    out = si_importance(
        {"w": torch.tensor([1.0, -1.0, 0.5])}, {"w": torch.tensor([1.0, 1.0, 0.0])}, xi=1.0
    )
    torch.testing.assert_close(out["w"], torch.tensor([0.5, 0.0, 0.5]))
    with pytest.raises(ValueError, match="xi"):
        si_importance({}, {}, xi=0.0)


# ---- the recipe -----------------------------------------------------------------------------
def test_recipe_runs_end_to_end(tmp_path):
    from hyperloom.recipes import continual

    config = continual.Config(iters=4, max_train=64, test_limit=30, out=str(tmp_path), quiet=True)
    out = continual.run(config)
    results = out["results"]
    assert list(results) == list(continual.METHODS)
    for r in results.values():
        acc = torch.tensor(r["acc_matrix"])
        assert acc.shape == (5, 5)
        done = torch.ones(5, 5, dtype=torch.bool).triu()  # acc[i, j] exists for i <= j
        assert torch.isnan(acc[~done]).all()
        assert ((acc[done] >= 0) & (acc[done] <= 100)).all()
        assert r["forgetting"] == pytest.approx(-r["bwt"])
        assert 0 <= r["ci_acc"] <= r["task_inference_acc"] <= 100
        assert r["ci_acc"] == r["ci_acc_by_rule"]["entropy"]  # the default rule
        confusion = torch.tensor(r["task_confusion"])  # % of task i's images given to task j
        torch.testing.assert_close(confusion.sum(1), torch.full((5,), 100.0))
        assert confusion.diagonal().mean().item() == pytest.approx(r["task_inference_acc"])
        assert torch.tensor(r["mean_entropy"]).shape == (5, 5)
        assert 0 <= r["entropy_ties"] <= 100 and r["temperature"] is None
    assert results["separate"]["trainable_params"] == 5 * results["separate"]["params_per_task"]
    assert results["hnet"]["params_per_task"] == 32
    run_dir = tmp_path / next(p.name for p in tmp_path.iterdir())
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["results"]["hnet"]["avg_acc"] == pytest.approx(results["hnet"]["avg_acc"])
    for name in ("heatmap.png", "average_accuracy.png", "results.csv", "hypernetwork.safetensors"):
        assert (run_dir / name).stat().st_size > 0


def test_recipe_lookahead_and_errors(tmp_path):
    from hyperloom.recipes import continual

    config = continual.Config(
        methods=("hnet",),
        iters=3,
        max_train=32,
        test_limit=10,
        lookahead=True,
        calibration=10,  # a temperature per task, from its last 10 training images
        task_inference="log-entropy",
        out=str(tmp_path),
        quiet=True,
    )
    r = continual.run(config)["results"]["hnet"]
    assert math.isfinite(r["avg_acc"])
    assert len(r["temperature"]) == 5 and all(t > 0 for t in r["temperature"])
    assert r["ci_acc"] == r["ci_acc_by_rule"]["log-entropy/T"]  # the rule asked, with T
    assert r["task_inference_acc"] == r["task_inference_by_rule"]["log-entropy/T"]
    assert set(r["ci_acc_by_rule"]) == {"entropy", "log-entropy", "entropy/T", "log-entropy/T"}
    with pytest.raises(ValueError, match="unknown methods"):
        continual.resolve(continual.Config(methods=("hnet", "replay")))


def test_recipe_validation_split_holds_out_training_images(tmp_path):
    from hyperloom.recipes import continual

    config = continual.resolve(continual.Config(valid=40, max_train=100))
    tasks = continual.load_tasks(config)
    full = continual.load_tasks(continual.resolve(continual.Config()))
    for t, f in zip(tasks, full, strict=True):
        n = len(f.x_train)
        assert len(t.x_test) == 40 and len(t.x_train) == min(100, n - 40)
        torch.testing.assert_close(t.x_test, f.x_train[n - 40 :])  # the last 40 training images
        torch.testing.assert_close(t.x_train, f.x_train[: len(t.x_train)])
    with pytest.raises(ValueError, match="valid"):
        continual.resolve(continual.Config(valid=-1))
    with pytest.raises(ValueError, match="no training images"):
        continual.load_tasks(continual.resolve(continual.Config(valid=100_000)))
    r = continual.run(
        continual.Config(
            methods=("hnet", "si"), iters=3, valid=20, max_train=32, out=str(tmp_path), quiet=True
        )
    )
    assert set(r["results"]) == {"hnet", "si"}
    assert r["config"]["valid"] == 20


def test_recipe_calibration_holds_out_the_last_training_images():
    from hyperloom.recipes import continual

    full = continual.load_tasks(continual.resolve(continual.Config(max_train=60)))
    tasks, held = continual.split_calibration(full, 25)
    for t, (x, y), f in zip(tasks, held, full, strict=True):
        assert len(t.y_train) == 35 and len(y) == 25
        torch.testing.assert_close(x, f.x_train[35:])
        torch.testing.assert_close(t.x_train, f.x_train[:35])
    with pytest.raises(ValueError, match="calibration must be >= 0, got -1"):
        continual.resolve(continual.Config(calibration=-1))
    with pytest.raises(ValueError, match="'margin'"):
        continual.resolve(continual.Config(task_inference="margin"))
    with pytest.raises(ValueError, match="calibration=60 leaves no training images"):
        continual.split_calibration(tasks, 60)


def test_summary_metrics():
    from hyperloom.recipes.continual import _summary

    nan = float("nan")
    acc = torch.tensor([[90.0, 80.0, 70.0], [nan, 95.0, 93.0], [nan, nan, 99.0]])
    s = _summary(acc)
    assert s["avg_acc"] == pytest.approx((70 + 93 + 99) / 3)
    assert s["bwt"] == pytest.approx(((70 - 90) + (93 - 95)) / 2)
    assert s["forgetting"] == pytest.approx(11.0)
    assert s["avg_acc_curve"] == pytest.approx([90.0, 87.5, (70 + 93 + 99) / 3])


def test_helpers_take_task_ids_by_keyword_only():
    hnet = _hnet()
    x = torch.randn(3, 6)
    for call in (
        lambda: snapshot_outputs(hnet, [0]),
        lambda: snapshot_factors(hnet, [0]),
        lambda: output_regularizer(hnet, {}, [0]),
        lambda: factored_output_regularizer(hnet, {}, [0]),
        lambda: generate_tasks(hnet, [0]),
    ):
        with pytest.raises(TypeError, match="positional"):
            call()
    # task_logits passes its positional extras to the target; the ids go by keyword
    assert task_logits(hnet, x, task=[0, 2]).shape[:2] == (2, 3)


def test_every_method_has_a_learner_and_presets_fill_every_option():
    from hyperloom.recipes import continual

    assert set(continual.LEARNERS) == set(continual.METHODS)
    for scenario in continual.SCENARIOS:
        s = continual.settings(continual.resolve(continual.Config(scenario=scenario)))
        assert s == continual.PRESETS[scenario]  # nothing given: the preset, every field
    given = continual.resolve(continual.Config(scenario="split-digits", n_tasks=2, beta=0.5))
    assert (given.n_tasks, given.beta, given.iters) == (2, 0.5, 200)
    with pytest.raises(ValueError, match="unset"):
        continual.settings(continual.Config())
