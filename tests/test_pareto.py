"""Pareto hypernetworks: preference rays, scalarisations, fronts, hypervolume, data, recipe."""

import doctest
import itertools
import json
import math

import pytest
import torch
from torch import nn

import hyperloom as hl
from hyperloom import pareto


def _hnet(m: int = 2, dim: int | None = 8) -> hl.HyperNetwork:
    target = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    return hl.HyperNetwork(
        target,
        pareto.Preference(m, dim=dim),
        hl.ChunkedGenerator.factory(chunk_size=16, hidden=(12,)),
    )


def _mse(out, y):
    return ((out - y) ** 2).mean(-2)  # (R, B, 2) vs (B, 2) -> (R, 2)


# Preference rays -----------------------------------------------------------------------------
def test_one_ray_gives_the_network_generated_for_it():
    hnet = _hnet()
    x, ray = torch.randn(5, 3), torch.tensor([0.3, 0.7])
    expected = hl.call(hnet.target, hnet.generate(ray=ray), x)
    torch.testing.assert_close(hnet(x, ray=ray), expected)
    torch.testing.assert_close(hnet.export(ray=ray)(x), expected)


def test_per_sample_rays_equal_one_call_per_ray():
    hnet = _hnet(dim=None)
    x = torch.randn(4, 3)
    rays = pareto.ray_grid(4)
    expected = torch.cat([hnet(x[i : i + 1], ray=rays[i]) for i in range(4)])
    torch.testing.assert_close(hnet(x, ray=rays), expected)


def test_preference_conditioner_describes_itself():
    hnet = _hnet()
    assert hnet.describe().inputs == "preference-conditioned"
    assert hnet.describe().input_variability == "dynamic"
    assert pareto.Preference(3).dim == 3 and pareto.Preference(3, dim=5).dim == 5
    assert pareto.Preference(2, dim=4).config() == {
        "type": "preference",
        "num_objectives": 2,
        "dim": 4,
    }


def test_checkpoint_round_trip_with_the_conditioner_passed(tmp_path):
    target = hl.networks.build_target("mlp", in_features=3, hidden=[6], out_features=2)
    hnet = hl.HyperNetwork(
        target, pareto.Preference(2, dim=4), hl.ChunkedGenerator.factory(chunk_size=8)
    )
    hl.save(hnet, tmp_path / "phn.safetensors")
    back = hl.load(tmp_path / "phn.safetensors", conditioner=pareto.Preference(2, dim=4))
    x, ray = torch.randn(5, 3), torch.tensor([0.6, 0.4])
    torch.testing.assert_close(back(x, ray=ray), hnet(x, ray=ray))


@pytest.mark.parametrize(
    ("ray", "words"),
    [
        (torch.tensor([0.5, 0.6]), "off the simplex"),
        (torch.tensor([-0.2, 1.2]), "[-0.2, 1.2]"),
        (torch.tensor([0.2, 0.3, 0.5]), "2 objectives"),
        (torch.tensor([[0.5, 0.5], [0.9, 0.2]]), "[0.9, 0.2]"),
        (torch.tensor([float("nan"), 1.0]), "off the simplex"),
    ],
)
def test_bad_rays_are_named_errors(ray, words):
    hnet = _hnet()
    with pytest.raises(ValueError, match="preference ray") as info:
        hnet(torch.randn(2, 3), ray=ray)
    assert words in str(info.value)
    with pytest.raises(ValueError, match="preference ray"):
        pareto.linear_scalarization(torch.ones(2), ray) if ray.shape[-1] == 2 else (
            pareto.check_preference(ray, 2)
        )


def test_ray_of_wrong_type_or_missing_is_a_type_error():
    hnet = _hnet()
    with pytest.raises(TypeError, match="floating-point"):
        hnet(torch.randn(2, 3), ray=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="ray="):
        hnet(torch.randn(2, 3))
    with pytest.raises(TypeError, match="list"):
        pareto.check_preference([0.5, 0.5], 2)


def test_wrong_number_of_objectives_is_named():
    with pytest.raises(ValueError, match="3 objectives"):
        pareto.chebyshev(torch.ones(3), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="num_objectives"):
        pareto.Preference(1)
    with pytest.raises(ValueError, match="num_objectives"):
        pareto.dirichlet_rays(3, 1)
    with pytest.raises(ValueError, match="alpha"):
        pareto.dirichlet_rays(3, 2, alpha=0.0)
    with pytest.raises(ValueError, match="'max'"):
        pareto.scalarize("max", torch.ones(2), torch.tensor([0.5, 0.5]))


def test_dirichlet_rays_are_on_the_simplex_reproducible_and_have_the_dirichlet_moments():
    g = torch.Generator().manual_seed(1)
    r = pareto.dirichlet_rays(40_000, 2, alpha=0.2, generator=g)
    assert (r >= 0).all() and torch.allclose(r.sum(-1), torch.ones(len(r)))
    again = pareto.dirichlet_rays(40_000, 2, alpha=0.2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(r, again)
    # Dir(a, a): mean 1/2, variance (1/4) / (2a + 1)
    assert abs(float(r[:, 0].mean()) - 0.5) < 0.01
    assert abs(float(r[:, 0].var()) - 0.25 / 1.4) < 0.01
    r3 = pareto.dirichlet_rays(40_000, 3, alpha=1.0, generator=g)  # uniform: var 2/36
    assert abs(float(r3[:, 1].var()) - 2 / 36) < 0.005


def test_ray_grid_two_and_three_objectives():
    g = pareto.ray_grid(5, margin=0.1)
    torch.testing.assert_close(g[:, 0], torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9]))
    g3 = pareto.ray_grid(4, 3, margin=0.05)
    assert g3.shape == (10, 3) and float(g3.min()) == pytest.approx(0.05)
    torch.testing.assert_close(g3.sum(-1), torch.ones(10))
    with pytest.raises(ValueError, match="margin"):
        pareto.ray_grid(3, margin=0.5)


# Scalarisations ------------------------------------------------------------------------------
def test_scalarisations_by_hand_and_their_gradients():
    losses = torch.tensor([1.0, 3.0], requires_grad=True)
    ray = torch.tensor([0.8, 0.2])
    pareto.linear_scalarization(losses, ray).backward()
    torch.testing.assert_close(losses.grad, ray)
    losses.grad = None
    value = pareto.chebyshev(losses, ray)  # max(0.8, 0.6)
    value.backward()
    assert float(value.detach()) == pytest.approx(0.8)
    torch.testing.assert_close(losses.grad, torch.tensor([0.8, 0.0]))
    ideal = torch.tensor([0.5, 0.0])  # max(0.4, 0.6)
    assert float(pareto.chebyshev(losses.detach(), ray, ideal=ideal)) == pytest.approx(0.6)
    batch = pareto.linear_scalarization(torch.ones(4, 2), pareto.ray_grid(4))
    torch.testing.assert_close(batch, torch.ones(4))


# Fronts and hypervolume ----------------------------------------------------------------------
def test_front_equals_one_evaluation_per_ray():
    hnet = _hnet()
    x, y = torch.randn(23, 3), torch.randn(23, 2)
    rays = pareto.ray_grid(6, margin=0.05)
    got = pareto.front(hnet, x, y, _mse, ray=rays, batch_size=5)
    with torch.no_grad():
        expected = torch.cat([_mse(hnet(x, ray=r)[None], y) for r in rays])
    torch.testing.assert_close(got, expected)
    with pytest.raises(TypeError, match="Preference"):
        noise = hl.HyperNetwork(nn.Linear(3, 2), hl.Noise(4), hl.FlatGenerator.factory())
        pareto.front(noise, x, y, _mse, ray=rays)


def test_non_dominated_against_brute_force():
    points = torch.rand(40, 3)
    mask = pareto.non_dominated(points)
    for i, p in enumerate(points):
        dominated = any(bool((q <= p).all() and (q < p).any()) for q in points)
        assert bool(mask[i]) is not dominated


def _staircase_hv(points, ref):
    """Exact 2-D hypervolume: sort by the first objective, add the rectangles."""
    pts = sorted((float(a), float(b)) for a, b in points if a < ref[0] and b < ref[1])
    total, best_b = 0.0, ref[1]
    for a, b in pts:
        if b < best_b:
            total += (ref[0] - a) * (best_b - b)
            best_b = b
    return total


def test_hypervolume_matches_the_exact_staircase_and_boxes():
    assert pareto.hypervolume([[1.0, 2.0], [2.0, 1.0]], ref=[3.0, 3.0]) == pytest.approx(3.0)
    g = torch.Generator().manual_seed(0)
    points = torch.rand(30, 2, generator=g) * 1.2
    expected = _staircase_hv(points, (1.0, 1.0))
    assert pareto.hypervolume(points, (1.0, 1.0)) == pytest.approx(expected, rel=1e-9)
    box = pareto.hypervolume(torch.tensor([[0.5, 0.5, 0.5]]), (1.0, 2.0, 1.0))
    assert box == pytest.approx(0.5 * 1.5 * 0.5)
    assert pareto.hypervolume([[4.0, 0.0]], (3.0, 3.0)) == 0.0
    with pytest.raises(ValueError, match="one value per objective"):
        pareto.hypervolume([[1.0, 2.0]], ref=(3.0, 3.0, 3.0))
    with pytest.raises(ValueError, match="finite"):
        pareto.hypervolume([[float("nan"), 2.0]], ref=(3.0, 3.0))


# Data ------------------------------------------------------------------------------------------
def test_overlay_puts_the_first_image_top_left_and_the_second_bottom_right():
    ones = torch.ones(8, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    a = pareto.overlay_pairs(ones, torch.zeros_like(ones), size=36, generator=g)
    b = pareto.overlay_pairs(torch.zeros_like(ones), ones, size=36, generator=g)
    # moved by 0..4 pixels: the first covers rows/columns 4..27, never 32..35; the second
    # covers 8..31, never 0..3
    assert (a[:, :, 4:28, 4:28] == 1).all() and (a[:, :, 32:, 32:] == 0).all()
    assert (b[:, :, 8:32, 8:32] == 1).all() and (b[:, :, :4, :4] == 0).all()
    assert len({tuple(row) for row in a.sum(2).squeeze(1).tolist()}) > 1  # the moves differ
    assert (a.sum((1, 2, 3)) == 28 * 28).all()  # every item whole on the canvas
    assert pareto.overlay_pairs(ones, ones).shape == (8, 1, 28, 28)
    with pytest.raises(ValueError, match="canvas"):
        pareto.overlay_pairs(ones, ones, canvas=30)


def test_multi_digits_is_deterministic_and_labelled():
    d = pareto.load_multi("multi-digits", n_train=40, n_test=10, seed=3)
    again = pareto.load_multi("multi-digits", n_train=40, n_test=10, seed=3)
    other = pareto.load_multi("multi-digits", n_train=40, n_test=10, seed=4)
    assert torch.equal(d.x_train, again.x_train) and torch.equal(d.y_test, again.y_test)
    assert not torch.equal(d.x_train, other.x_train)
    assert d.x_train.shape == (40, 1, 28, 28) and d.y_train.shape == (40, 2)
    assert d.y_train.dtype == torch.int64 and int(d.y_train.max()) < 10
    assert d.num_objectives == 2 and d.kind == "classification"
    with pytest.raises(ValueError, match="'mnist'"):
        pareto.load_multi("mnist")


def test_regression_toy_optimum_has_the_stated_losses():
    d = pareto.regression_toy(50_000, 10, noise=0.1, seed=0)
    t = pareto.toy_functions(d.x_train)  # (N, 2)
    for r1 in (0.2, 0.5, 0.9):
        pred = r1 * t[:, :1] + (1 - r1) * t[:, 1:]  # (N, 1)
        losses = ((pred - d.y_train) ** 2).mean(0)
        expected = torch.tensor([(1 - r1) ** 2 + 0.01, r1**2 + 0.01])
        torch.testing.assert_close(losses, expected, atol=0.02, rtol=0)


@pytest.mark.parametrize("name", ["_preference", "_losses", "_front", "_data"])
def test_docstring_examples(name):
    import importlib

    module = importlib.import_module(f"hyperloom.pareto.{name}")
    result = doctest.testmod(
        module, extraglobs={"torch": torch, "nn": nn}, optionflags=doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted > 0 and result.failed == 0
    assert doctest.testmod(pareto).failed == 0


# Recipe ------------------------------------------------------------------------------------------
def _tiny(**options):
    from hyperloom.recipes import pareto as recipe

    base = dict(
        seeds=(0,), n_train=96, n_test=40, epochs=2, phn_epochs=2, batch_size=32, rays=3,
        eval_rays=4, target_hidden=(8,), hnet_hidden=(8,), pref_dim=4, chunk_size=64, quiet=True,
    )  # fmt: skip
    return recipe.Config(**(base | options))


@pytest.mark.parametrize(("dataset", "loss"), [("regression", "ls"), ("multi-digits", "chebyshev")])
def test_recipe_runs_and_reports(tmp_path, dataset, loss):
    from hyperloom.recipes import pareto as recipe

    out = recipe.run(_tiny(dataset=dataset, loss=loss, out=str(tmp_path), seeds=(0, 1)))
    saved = json.loads((tmp_path / out["run_dir"].split("/")[-1] / "results.json").read_text())
    seed0 = saved["seeds"][0]["results"]
    assert len(seed0["phn"]["points"]) == 3 and len(seed0["phn"]["sweep_points"]) == 4
    assert len(seed0["per-ray"]["points"]) == 3 and len(seed0["multitask"]["points"]) == 1
    assert seed0["per-ray"]["trainable_params"] == 3 * seed0["multitask"]["trainable_params"]
    for method in ("phn", "per-ray", "multitask"):
        assert math.isfinite(seed0[method]["hv"]) and seed0[method]["hv"] >= 0
        assert seed0[method]["steps"] == (3 if method == "per-ray" else 1) * 2 * 3
    assert ("optimum" in seed0) == (dataset == "regression")
    assert "±" in out["summary"]["phn"]["hv"]
    versus = saved["seeds"][1]["phn_vs_per_ray"]
    assert len(versus["scalarized_gap"]) == 3 and len(versus["spread_objective1"]) == 2
    hv = {k: saved["seeds"][1]["results"][k]["hv"] for k in ("phn", "per-ray")}
    if hv["per-ray"] > 0:
        assert versus["hv_ratio"] == pytest.approx(hv["phn"] / hv["per-ray"])
    else:  # tiny runs may leave every point beyond the reference point
        assert versus["hv_ratio"] is None  # NaN, written as null
    assert "±" in out["summary"]["phn"]["time_ratio"]
    png = (tmp_path / out["run_dir"].split("/")[-1] / "front.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_recipe_shares_the_first_layers_when_asked(tmp_path):
    from hyperloom.recipes import pareto as recipe

    runs = [
        recipe.run(
            _tiny(dataset="regression", methods=("phn",), shared_layers=k, out=str(tmp_path))
        )
        for k in (0, 1)
    ]
    params = [r["seeds"][0]["results"]["phn"]["trainable_params"] for r in runs]
    # shared: the first Linear(1, 8) (16 numbers) becomes an ordinary parameter, and the
    # generator's chunks cover the remaining 8 * 1 + 1 = 9 numbers instead of 25
    assert params[0] != params[1]
    assert all(math.isfinite(r["seeds"][0]["results"]["phn"]["hv"]) for r in runs)


def test_recipe_validation_split_and_bad_options(tmp_path):
    from hyperloom.recipes import pareto as recipe

    config = recipe.resolve(_tiny(dataset="regression", valid=30))
    data = recipe.load_data(config)
    assert len(data.x_train) == 66 and len(data.x_test) == 30
    full = pareto.regression_toy(96, 40, seed=0)
    assert torch.equal(data.x_test, full.x_train[66:])
    for bad, words in [
        (dict(methods=("phn", "epo")), "'epo'"),
        (dict(ref=(1.0, 1.0, 1.0)), "ref"),
        (dict(valid=96), "valid"),
        (dict(seeds=()), "seeds"),
        (dict(epochs=0), "epochs"),
        (dict(shared_layers=2), "shared_layers"),
    ]:
        with pytest.raises(ValueError, match=words):
            recipe.resolve(_tiny(dataset="regression", **bad))


def test_recipe_is_registered_and_parses_options():
    from hyperloom.recipes import load_recipe
    from hyperloom.recipes.config import parse_config

    recipe = load_recipe("pareto")
    config = parse_config(
        recipe.Config, ["--dataset=regression", "--seeds=0,1,2", "--loss=chebyshev"]
    )
    assert config.seeds == (0, 1, 2) and config.loss == "chebyshev"
    assert list(itertools.islice(recipe.PRESETS, 1)) == ["multi-fashion"]
