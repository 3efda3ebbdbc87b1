"""hyperloom.causal: HyperITE learners against plain ones, metrics, checked data, the recipe."""

import doctest
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import hyperloom as hl
from hyperloom import causal
from hyperloom.causal import _data, _learners, _metrics

DOCS = Path(__file__).resolve().parents[1] / "docs" / "causal.md"


def small(name, hyper, d=5, **kw):
    return causal.build_learner(name, d, hyper=hyper, hidden=(8, 8), head=(6,), **kw)


# --- learners -----------------------------------------------------------------------------------


@pytest.mark.parametrize("hyper", [False, True])
@pytest.mark.parametrize("name", list(causal.LEARNERS))
def test_every_learner_gives_both_potential_outcomes(name, hyper):
    m = small(name, hyper)
    po = m(torch.randn(7, 5))
    assert po.shape == (7, 2)
    assert type(m) is causal.LEARNERS[name][int(hyper)]
    with pytest.raises(ValueError, match=r"x must be \(n, 5\), got shape \(7, 4\)"):
        m(torch.randn(7, 4))


@pytest.mark.parametrize(
    "generator",
    [
        hl.FlatGenerator.factory(hidden=(8,)),
        hl.HeadsGenerator.factory(hidden=(8,)),
        hl.ChunkedGenerator.factory(chunk_size=32),
    ],
)
def test_hyper_t_learner_equals_its_exported_arm_networks(generator):
    """Oracle: each column is the arm's generated weights loaded into a plain copy of the MLP."""
    m = causal.HyperTLearner(5, hidden=(8, 8), generator=generator)
    x = torch.randn(9, 5)
    po = m(x)
    for arm in (0, 1):
        plain = m.hnet.export(task=torch.tensor(arm))
        torch.testing.assert_close(po[:, arm], plain(x).squeeze(1))


def test_hyper_tarnet_shares_phi_and_generates_the_heads():
    m = causal.HyperTARNet(5, hidden=(8, 8), head=(6,))
    assert set(m.hnet.spec.names) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    x = torch.randn(9, 5)
    h = m.phi(x)
    for arm in (0, 1):
        torch.testing.assert_close(m(x)[:, arm], m.hnet.export(task=torch.tensor(arm))(h)[:, 0])


def test_s_learners_read_the_treatment_as_an_input():
    x = torch.randn(6, 5)
    for m in (causal.SLearner(5, hidden=(8,)), causal.HyperSLearner(5, hidden=(8,))):
        net = m.net if isinstance(m, causal.SLearner) else m.hnet.export(task=torch.tensor(0))
        for arm in (0, 1):
            xt = torch.cat([x, torch.full((6, 1), float(arm))], dim=1)
            torch.testing.assert_close(m(x)[:, arm], net(xt)[:, 0])


def test_hypernetwork_shares_information_between_arms_where_the_t_learner_cannot():
    """A loss on treated units only: the plain T-learner's control network gets no gradient,
    the HyperTLearner's shared generator does (soft weight sharing), its control embedding not."""
    x, t, y = torch.randn(10, 5), torch.ones(10, dtype=torch.long), torch.randn(10)
    plain = causal.TLearner(5, hidden=(8,))
    causal.factual_loss(plain(x), t, y).backward()
    assert all(float(p.grad.abs().sum()) == 0.0 for p in plain.arms[0].parameters())
    hyper = causal.HyperTLearner(5, hidden=(8,))
    causal.factual_loss(hyper(x), t, y).backward()
    rows = hyper.hnet.conditioner.rows
    assert rows[0].grad is None or float(rows[0].grad.abs().sum()) == 0.0
    assert float(rows[1].grad.abs().sum()) > 0
    assert all(float(p.grad.abs().sum()) > 0 for p in hyper.hnet.generator.parameters())


def test_hyper_t_learner_leaves_its_target_untouched():
    m = causal.HyperTLearner(5, hidden=(8,))
    before = {k: v.clone() for k, v in m.hnet.target.state_dict().items()}
    causal.factual_loss(m(torch.randn(4, 5)), torch.tensor([0, 1, 0, 1]), torch.zeros(4)).backward()
    for k, v in m.hnet.target.state_dict().items():
        assert torch.equal(v, before[k])


def test_build_learner_errors_name_the_value():
    with pytest.raises(ValueError, match="unknown learner 'x'"):
        causal.build_learner("x", 5)
    with pytest.raises(ValueError, match="generator is for hypernetwork learners"):
        causal.build_learner("t", 5, generator=hl.FlatGenerator.factory())
    with pytest.raises(TypeError, match="must be a hyperloom Generator or its factory, got Linear"):
        causal.HyperTLearner(5, generator=nn.Linear(2, 2))
    # one chunk longer than the 57 generated weights (5*8+8+9) initialises finitely (core fix)
    m = causal.HyperTLearner(5, hidden=(8,), generator=hl.ChunkedGenerator.factory(chunk_size=64))
    assert all(bool(torch.isfinite(p).all()) for p in m.parameters())
    with pytest.raises(ValueError, match=r"hidden=\(\)"):
        causal.TARNet(5, hidden=())


def test_a_hyper_learner_learns_effects_from_factual_outcomes_alone():
    """Synthetic data with a known heterogeneous effect: training on the factual outcomes brings
    sqrt(PEHE) far below that of predicting no effect at all."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g)
    t = torch.randint(0, 2, (400,), generator=g)
    mu0, mu1 = x[:, 0], x[:, 0] + 2 * x[:, 1]
    y = torch.where(t == 1, mu1, mu0) + 0.05 * torch.randn(400, generator=g)
    m = causal.HyperTLearner(3, hidden=(32,), generator=hl.FlatGenerator.factory(hidden=(16,)))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(300):
        loss = causal.factual_loss(m(x), t, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        tau = causal.effects(m(x))
    assert causal.pehe(tau, mu1 - mu0) < 0.25 * causal.pehe(torch.zeros(400), mu1 - mu0)
    assert causal.ate_error(tau, mu1 - mu0) < 0.2


# --- metrics ------------------------------------------------------------------------------------


def test_metrics_against_hand_computed_values():
    est, true = torch.tensor([1.0, 2.0, 5.0]), torch.tensor([1.0, 4.0, 2.0])
    assert causal.pehe(est, true) == pytest.approx(((0 + 4 + 9) / 3) ** 0.5)
    assert causal.ate_error(est, true) == pytest.approx(abs(8 / 3 - 7 / 3))
    po = torch.tensor([[0.0, 1.0], [2.0, 0.5]])
    assert float(causal.factual_loss(po, torch.tensor([1, 1]), torch.tensor([1.0, 1.5]))) == 0.5
    torch.testing.assert_close(causal.effects(po), torch.tensor([1.0, -1.5]))
    with pytest.raises(ValueError, match=r"must be non-empty \(n,\) tensors of one shape"):
        causal.pehe(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"potential outcomes must be \(n, 2\), got shape \(3,\)"):
        causal.effects(torch.zeros(3))
    with pytest.raises(ValueError, match=r"t and y must have shape \(2,\)"):
        causal.factual_loss(po, torch.tensor([1]), torch.zeros(2))


# --- data ---------------------------------------------------------------------------------------


def test_bad_data_raises_named_errors():
    x, t, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1]), torch.zeros(6)
    causal.check_causal_data(x, t, y)
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"inst: covariates contain NaN in column\(s\) \['b'\]"):
        causal.CausalData(bad, t, y, name="inst", columns=("a", "b", "c"))
    with pytest.raises(ValueError, match=r"treatment must be binary \(0 or 1\), got the values"):
        causal.check_causal_data(x, torch.tensor([0, 1, 2, 1, 0, 1]), y)
    with pytest.raises(ValueError, match=r"got the values \[0, 0.5, 1\]"):
        causal.check_causal_data(x, torch.tensor([0, 1, 0.5, 1, 0, 1]), y)
    with pytest.raises(ValueError, match=r"the treated arm \(t = 1\) is empty: all 6 units"):
        causal.check_causal_data(x, torch.zeros(6, dtype=torch.long), y, name="instance 4")
    with pytest.raises(ValueError, match=r"the control arm \(t = 0\) is empty"):
        causal.check_causal_data(x, torch.ones(6, dtype=torch.long), y)
    with pytest.raises(ValueError, match=r"x has 6 units but t has shape \(5,\)"):
        causal.check_causal_data(x, t[:5], y)
    with pytest.raises(TypeError, match=r"t must be a torch\.Tensor, got list"):
        causal.check_causal_data(x, [0, 1], y)
    with pytest.raises(ValueError, match="give both mu0 and mu1"):
        causal.CausalData(x, t, y, mu0=y)
    with pytest.raises(ValueError, match=r"ACIC 2016 instance must be one of 1\.\.10, got 11"):
        causal.load_acic16(11)
    d = causal.CausalData(x, t, y)
    with pytest.raises(ValueError, match="true potential outcomes are not known"):
        _ = d.ite
    with pytest.raises(ValueError, match=r"treated arm \(t = 1\) is empty"):
        d.subset(torch.tensor([0, 2, 4]))


def test_stratified_split_is_a_partition_keeping_both_arms():
    t = torch.tensor([0] * 30 + [1] * 10)
    a, b = causal.stratified_split(t, 0.3, torch.Generator().manual_seed(1))
    assert sorted(torch.cat([a, b]).tolist()) == list(range(40))
    assert int(t[b].sum()) == 3 and int((t[b] == 0).sum()) == 9
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\), got 1.5"):
        causal.stratified_split(t, 1.5)
    with pytest.raises(ValueError, match="arm t = 1 has 1 unit"):
        causal.stratified_split(torch.tensor([0, 0, 1]), 0.5)


def test_acic16_instance_from_causallib():
    pytest.importorskip("causallib")
    d = causal.load_acic16(3)
    assert (d.n, d.name) == (4802, "acic16-3")
    assert d.d == len(d.columns) and d.x.dtype == torch.float32
    assert set(d.t.unique().tolist()) == {0, 1}
    assert torch.isfinite(d.ite).all()


def test_import_needs_neither_causallib_nor_econml():
    code = (
        "import sys, hyperloom, hyperloom.causal; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'causallib', 'econml', 'pandas', 'sklearn'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert hl.causal is causal


def test_docstring_examples_run():
    for module in (_data, _learners, _metrics, causal):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, module.__name__


def test_docs_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)


# --- recipe -------------------------------------------------------------------------------------


def tiny(tmp_path, **kw):
    from hyperloom.recipes import causal as recipe

    options = dict(
        instances=(2,),
        learners=("t", "tarnet"),
        baselines=(),
        n_train=120,
        hidden=(8,),
        head=(4,),
        gen_hidden=(8,),
        chunk_size=32,
        epochs=3,
        patience=2,
        repeats=2,
        out=str(tmp_path),
        quiet=True,
    )
    return recipe, recipe.Config(**(options | kw))


def test_recipe_runs_and_writes_its_folder(tmp_path):
    pytest.importorskip("causallib")
    recipe, config = tiny(tmp_path)
    results = recipe.run(config)
    (folder,) = tmp_path.iterdir()
    saved = json.loads((folder / "results.json").read_text())
    assert (folder / "pehe.png").stat().st_size > 0
    assert (folder / "results.csv").exists()
    methods = ["T-learner", "HyperT-learner", "TARNet", "HyperTARNet"]
    assert [r["method"] for r in saved["rows"]] == methods * 2
    assert [r["seed"] for r in saved["rows"]] == [0] * 4 + [1] * 4
    assert all(r["pehe_out"] > 0 and 1 <= r["best_epoch"] <= 3 for r in saved["rows"])
    assert [p["learner"] for p in results["summary"]["pairs"]] == ["T-learner", "TARNet"]
    # the early-stopped models are scored again from the rows: the summary is their mean
    seed0 = [r["pehe_out"] for r in saved["rows"] if r["method"] == "TARNet" and r["seed"] == 0]
    assert results["summary"]["means"]["TARNet"]["pehe_out_seeds"][0] == pytest.approx(seed0[0])


def test_recipe_splits_are_disjoint_and_never_use_true_effects_for_stopping(tmp_path):
    pytest.importorskip("causallib")
    recipe, config = tiny(tmp_path)
    data = causal.load_acic16(2)
    ins, train, val, test = recipe.split_units(data, config, seed=0)
    assert len(ins) == 120 and len(set(ins.tolist()) & set(test.tolist())) == 0
    assert sorted(torch.cat([train, val]).tolist()) == sorted(ins.tolist())
    assert abs(len(test) / data.n - config.test_size) < 0.01


def test_recipe_econml_baselines(tmp_path):
    pytest.importorskip("econml")
    recipe, config = tiny(
        tmp_path, learners=(), baselines=("xlearner", "causal_forest"), forest_trees=8, repeats=1
    )
    results = recipe.run(config)
    rows = results["rows"]
    assert [r["method"] for r in rows] == ["X-learner (econml)", "causal forest (econml)"]
    assert all(r["pehe_out"] > 0 for r in rows)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"instances": (0,)}, "instances must be among 1..10"),
        ({"learners": ("q",)}, r"unknown learners \['q'\]"),
        ({"baselines": ("bart",)}, r"unknown baselines \['bart'\]"),
        ({"learners": (), "baselines": ()}, "nothing to run"),
        ({"test_size": 1.0}, r"test_size must be in \(0, 1\), got 1.0"),
        ({"patience": 0}, "patience must be >= 1, got 0"),
        ({"n_train": 3}, "n_train must be >= 8"),
        ({"generator": "lowrank"}, "generator must be one of"),
    ],
)
def test_recipe_config_errors_name_the_option(tmp_path, override, message):
    recipe, config = tiny(tmp_path, **override)
    with pytest.raises(ValueError, match=message):
        recipe.check_config(config)


def test_recipe_from_runs_equals_one_run_over_the_same_seeds(tmp_path):
    pytest.importorskip("causallib")
    recipe, config = tiny(tmp_path / "both", learners=("t",))
    both = recipe.run(config)
    folders = []
    for seed in (0, 1):
        _, one = tiny(tmp_path / f"s{seed}", learners=("t",), seed=seed, repeats=1)
        recipe.run(one)
        folders += [str(p) for p in (tmp_path / f"s{seed}").iterdir()]
    _, merged = tiny(tmp_path / "merged", learners=("t",), from_runs=tuple(folders))
    result = recipe.run(merged)

    def strip(rows):  # wall times differ between runs; everything else is deterministic
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert strip(result["rows"]) == strip(both["rows"])
    assert result["summary"]["table"] == both["summary"]["table"]
    _, other = tiny(tmp_path / "other", learners=("t",), n_train=100, repeats=1)
    recipe.run(other)
    mixed = (folders[0], str(next((tmp_path / "other").iterdir())))
    with pytest.raises(ValueError, match=r"differs from .* in \['n_train'\]"):
        recipe.load_runs(mixed)
    with pytest.raises(ValueError, match="rows appear twice"):
        recipe.load_runs((folders[0], folders[0]))
    with pytest.raises(ValueError, match=r"no results\.json in"):
        recipe.load_runs((str(tmp_path),))


def test_standardise_keeps_columns_constant_in_sample_finite():
    """A rare category absent from the fitted units must not blow up the others' values."""
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [5.0, 0.0], [7.0, 1.0]])
    z = causal.standardise(x, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(z[:3, 0], torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(z[:, 1], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="at least 2 units to fit on, got 1"):
        causal.standardise(x, torch.tensor([0]))
