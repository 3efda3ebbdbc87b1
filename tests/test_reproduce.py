"""``hyperloom reproduce``: every recipe has a smoke run and its recorded results, and runs."""

import dataclasses
import json
import math
import sys
import types
from pathlib import Path

import pytest

from hyperloom.cli import main
from hyperloom.recipes import RECIPES, load_recipe
from hyperloom.recipes import distributed as D
from hyperloom.recipes.reproduce import Recorded, lookup, recipe_entries, reproduce


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_declares_a_smoke_run_and_its_recorded_results(name):
    smoke, recorded = recipe_entries(load_recipe(name))  # raises for a recipe without them
    assert smoke.get("quiet") is True
    for entry in recorded:
        assert entry.values, f"{name}: {entry.name} records no figure"
        assert Path(__file__).parents[1].joinpath(entry.page).is_file(), entry.page


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_smoke_run_of_every_recipe(name, tmp_path, capsys, monkeypatch):
    """Every recipe's smoke run, under ``--amp=bf16 --device=cpu``: the options every recipe
    takes (its loop enters the runtime's autocast) run without an extra run per option."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    module = load_recipe(name)
    smoke, recorded = recipe_entries(module)
    monkeypatch.setattr(module, "SMOKE", {**smoke, "amp": "bf16", "device": "cpu"})
    entered: list[str] = []
    autocast = D.Runtime.autocast

    def counted(rt):
        entered.append(rt.amp)
        return autocast(rt)

    monkeypatch.setattr(D.Runtime, "autocast", counted)
    rows = reproduce(name, smoke=True, out=str(tmp_path))
    assert entered and set(entered) == {"bf16"}, f"{name}: its loop never entered bf16 autocast"
    # every figure the recorded result names is produced, as a number
    assert [r["metric"] for r in rows] == list(recorded[0].metrics)
    assert all(isinstance(r["new"], float) and not math.isinf(r["new"]) for r in rows)
    assert all(r["seed"] == "smoke" and r["recorded"] is None for r in rows)
    assert len(list(tmp_path.glob("*/results.json"))) == 1
    assert "smoke run" in capsys.readouterr().out


def _fake_recipe(monkeypatch, tmp_path):
    """A registered recipe whose run returns its config's figures: comparisons checked exactly."""

    @dataclasses.dataclass
    class Config:
        scale: float = 1.0
        seeds: tuple[int, ...] = (0,)
        out: str = "runs"
        quiet: bool = False

    def run(config):
        run_dir = Path(config.out) / f"fake-{config.seeds[0]}"
        run_dir.mkdir(parents=True)
        result = {"rows": [{"model": "a", "acc": config.scale * (10 + config.seeds[0])}]}
        (run_dir / "results.json").write_text(json.dumps(result))
        return result

    module = types.ModuleType("fake_recipe")
    module.Config, module.run = Config, run
    module.SMOKE = {"scale": 0.5, "quiet": True}
    module.RECORDED = (
        Recorded("x2", {"scale": 2.0}, {"acc": "rows.model=a.acc"}, {0: {"acc": 20.5}}, "seeds"),
    )
    monkeypatch.setitem(sys.modules, "fake_recipe", module)
    monkeypatch.setitem(RECIPES, "fake", "fake_recipe")
    return module


def test_reproduce_prints_recorded_new_and_difference(monkeypatch, tmp_path, capsys):
    _fake_recipe(monkeypatch, tmp_path)
    rows = reproduce("fake", out=str(tmp_path))
    assert rows == [
        {"result": "x2", "seed": 0, "metric": "acc", "recorded": 20.5, "new": 20.0, "diff": -0.5}
    ]
    out = capsys.readouterr().out
    assert "recorded vs new" in out and "-0.50" in out
    # seeds without a record run too, with nothing to compare against
    rows = reproduce("fake", seeds=[1], out=str(tmp_path))
    assert rows[0]["new"] == 22.0 and rows[0]["recorded"] is None and rows[0]["diff"] is None
    # the smoke run puts SMOKE over the first recorded configuration
    assert reproduce("fake", smoke=True, out=str(tmp_path / "s"))[0]["new"] == 5.0


def test_reproduce_command_line(monkeypatch, tmp_path, capsys):
    _fake_recipe(monkeypatch, tmp_path)
    assert main(["reproduce", "fake", "--seeds", "0", f"--out={tmp_path}"]) == 0
    assert "20.50" in capsys.readouterr().out
    assert main(["reproduce", "fake", "--only", "nope", f"--out={tmp_path}"]) == 2
    assert "records no result ['nope']; recorded: x2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--help"])
    assert e.value.code == 0 and "--smoke" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "continual", "--seeds", "a"])
    assert (
        e.value.code == 2 and "expected comma-separated seeds, got 'a'" in capsys.readouterr().err
    )


def test_a_recipe_without_smoke_or_records_is_named(monkeypatch, tmp_path):
    module = _fake_recipe(monkeypatch, tmp_path)
    monkeypatch.delattr(module, "SMOKE")
    with pytest.raises(TypeError, match="fake_recipe defines no SMOKE"):
        recipe_entries(module)
    module.SMOKE, module.RECORDED = {"scael": 1.0}, ()
    with pytest.raises(ValueError, match=r"SMOKE names unknown Config fields \['scael'\]"):
        recipe_entries(module)
    module.SMOKE, module.RECORDED = {}, [("not", "a record")]
    with pytest.raises(TypeError, match="no RECORDED tuple"):
        recipe_entries(module)


def test_recorded_and_lookup_errors_name_the_value():
    with pytest.raises(ValueError, match=r"figures \['loss'\] have no metric path"):
        Recorded("r", {}, {"acc": "acc"}, {0: {"loss": 1.0}})
    data = {"rows": [{"model": "a", "acc": [1.0, 2.0]}]}
    assert lookup(data, "rows.0.acc.1") == 2.0
    with pytest.raises(KeyError, match="no 'model=b' under rows"):
        lookup(data, "rows.model=b.acc")
    with pytest.raises(KeyError, match=r"no 'nll' under rows\.0"):
        lookup(data, "rows.0.nll")


def test_a_portable_record_is_rerun_under_the_portable_numerics(monkeypatch, tmp_path, capsys):
    from hyperloom.recipes import reproduce as rep

    module = _fake_recipe(monkeypatch, tmp_path)
    module.RECORDED = (dataclasses.replace(module.RECORDED[0], numerics="portable"),)
    for key in rep.PORTABLE_NUMERICS:
        monkeypatch.delenv(key, raising=False)
    assert not rep.portable_numerics()
    launched = []

    def fake_run(cmd, env, check):
        launched.append((cmd, env))
        return types.SimpleNamespace(returncode=0)

    monkeypatch.setattr(rep.subprocess, "run", fake_run)
    assert main(["reproduce", "fake", "--seeds", "0", f"--out={tmp_path}"]) == 0
    [(cmd, env)] = launched  # one child process, with the same arguments and the pins set
    assert cmd == [sys.executable, "-m", "hyperloom", "reproduce", "fake", "--seeds", "0",
                   f"--out={tmp_path}"]  # fmt: skip
    assert all(env[k] == v for k, v in rep.PORTABLE_NUMERICS.items())
    assert "rerunning under" in capsys.readouterr().out
    # a smoke run, or a process already pinned, runs in place
    assert main(["reproduce", "fake", "--smoke", f"--out={tmp_path / 's'}"]) == 0
    for key, value in rep.PORTABLE_NUMERICS.items():
        monkeypatch.setenv(key, value)
    assert main(["reproduce", "fake", "--seeds", "0", f"--out={tmp_path / 'p'}"]) == 0
    assert len(launched) == 1
    # called as a function without them, it warns that the figures may differ by CPU
    for key in rep.PORTABLE_NUMERICS:
        monkeypatch.delenv(key)
    with pytest.warns(UserWarning, match="PORTABLE_NUMERICS"):
        reproduce("fake", out=str(tmp_path / "w"))
    with pytest.raises(ValueError, match="numerics must be"):
        Recorded("r", {}, {}, numerics="exact")
