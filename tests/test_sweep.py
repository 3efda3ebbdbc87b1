"""hyperloom sweep: grids parsed like the recipe's options, one run per point, selection by mean."""

import json

import pytest

from hyperloom.recipes import sweep as sw
from hyperloom.recipes.uncertainty import Config


def test_parse_grid_reads_values_like_the_option_and_names_bad_ones():
    assert sw.parse_grid(Config, "diversity=0,0.3,1") == ("diversity", (0.0, 0.3, 1.0))
    assert sw.parse_grid(Config, "train-samples=5,10") == ("train_samples", (5, 10))
    assert sw.parse_grid(Config, "fit=mean,mixture") == ("fit", ("mean", "mixture"))
    for text, match in [
        ("diversty=1,2", "diversty"),  # unknown option: the message lists the known ones
        ("diversity", "KEY=V1"),
        ("dropout=0.1,oops", "'oops'"),
        ("epochs=0,5", "must be >= 1"),
        ("fit=mean,median", "'median'"),
        ("diversity=1,1", "distinct"),
        ("hidden=8,16", "tuple option"),
    ]:
        with pytest.raises(ValueError, match=match):
            sw.parse_grid(Config, text)


def test_grid_points_and_selection_by_mean():
    points = sw.grid_points([("a", (1, 2)), ("b", (3,))])
    assert points == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]
    with pytest.raises(ValueError, match="one --grid"):
        sw.grid_points([("a", (1,)), ("a", (2,))])
    # means 0.40, 0.355, 0.40: the best single seed (2: 0.2) must not win
    assert sw.select_best({0: [0.5, 0.3], 1: [0.35, 0.36], 2: [0.2, 0.6]}) == 1
    assert sw.select_best({0: [0.4], 1: [0.4], 2: [0.5]}) == 0  # a tie: the first
    assert sw.select_best({0: [0.4], 1: [0.5]}, maximize=True) == 1
    with pytest.raises(ValueError, match="finite"):
        sw.select_best({0: [0.3], 1: [float("nan")]})


def test_sweep_runs_every_point_and_seed_and_selects_the_lowest_mean(tmp_path):
    seen = []

    def fake_run(config):  # a stand-in recipe: the figure is a function of the point and seed
        seen.append((config.diversity, config.seed, config.methods))
        return {
            "summary": [{"method": "hypernet", "val_nll": abs(config.diversity - 1) + config.seed}]
        }

    result = sw.sweep(
        "uncertainty",
        [("diversity", (0.0, 1.0, 3.0))],
        "summary.method=hypernet.val_nll",
        base={"methods": ("hypernet",)},
        seeds=(0, 1),
        out=str(tmp_path),
        run=fake_run,
    )
    assert seen == [(d, s, ("hypernet",)) for d in (0.0, 1.0, 3.0) for s in (0, 1)]
    assert result["selected"] == {"diversity": 1.0}
    saved = json.loads((tmp_path / result["sweep_dir"].split("/")[-1] / "sweep.json").read_text())
    assert [p["runs"] for p in saved["points"]] == [2, 2, 2]
    with pytest.raises(ValueError, match="no options"):
        sw.sweep("uncertainty", [("nope", (1,))], "x", out=str(tmp_path), run=fake_run)


def test_cli_sweep_passes_the_recipe_options_and_the_grid_to_every_run(
    tmp_path, capsys, monkeypatch
):
    from hyperloom.cli import main
    from hyperloom.recipes import uncertainty

    seen = []

    def fake_run(config):  # the recipe itself is run by the smoke tests; here only the wiring
        seen.append(config)
        figure = {0.1: 0.5, 0.3: 0.4}[config.dropout]
        return {"summary": [{"method": "mc dropout", "val_nll": figure}], "run_dir": "x"}

    monkeypatch.setattr(uncertainty, "run", fake_run)
    status = main(
        ["sweep", "uncertainty", "--grid", "dropout=0.1,0.3", "--seeds=0,1",
         "--select=summary.method=mc dropout.val_nll", f"--out={tmp_path}",
         "--methods=dropout", "--reg_steps=0", "--quiet"]
    )  # fmt: skip
    assert status == 0
    assert [(c.dropout, c.seed, c.methods, c.reg_steps) for c in seen] == [
        (d, s, ("dropout",), 0) for d in (0.1, 0.3) for s in (0, 1)
    ]
    assert all(c.out == str(tmp_path) and c.epochs == 10 for c in seen)  # the rest: defaults
    (folder,) = [p for p in tmp_path.iterdir() if p.name.endswith("sweep-uncertainty")]
    saved = json.loads((folder / "sweep.json").read_text())
    assert saved["selected"] == {"dropout": 0.3}
    assert "selected dropout=0.3" in capsys.readouterr().out
