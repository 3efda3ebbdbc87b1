"""The hyperloom command: every subcommand, typed options and bad arguments."""

import dataclasses
import json

import pytest

import hyperloom as hl
from hyperloom.cli import main
from hyperloom.recipes.config import parse_config


def _exit_code(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr()


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [*hl.list_generators(), "TaskEmbedding", "Noise", "illustrative"]:
        assert name in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["demo", "--help"],
        ["train", "illustrative", "--help"],
        ["list", "--help"],
        ["describe", "--help"],
        ["export", "--help"],
    ],
)
def test_help_everywhere(capsys, argv):
    code, out = _exit_code(capsys, argv)
    assert code == 0 and "usage:" in out.out


def test_train_without_recipe(capsys):
    assert main(["train", "--help"]) == 0
    assert "illustrative" in capsys.readouterr().out
    assert main(["train"]) == 2
    assert "name a recipe" in capsys.readouterr().err


def test_train_help_lists_the_recipe_options(capsys):
    _, out = _exit_code(capsys, ["train", "illustrative", "--help"])
    assert "--shared-epochs" in out.out and "--chunk_size" in out.out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--epochs=three"], "argument --epochs: invalid int value: 'three'"),
        (["demo", "--dataset=cifar"], "--dataset: invalid choice: 'cifar'"),
        (["demo", "--epoch=3"], "did you mean --epochs"),
        (["demo", "--quiet=maybe"], "expected true or false, got 'maybe'"),
        (["demo", "--hidden=1,x"], "expected comma-separated int values, got '1,x'"),
        (["train", "nope"], "invalid choice: 'nope'"),
        (["export", "x.safetensors", "--out", "y"], "the following arguments are required: --task"),
        (["list", "--verbose"], "unrecognized arguments: --verbose"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(capsys, argv, message):
    code, out = _exit_code(capsys, argv)
    assert code == 2
    assert message in out.err
    if "--dataset" in message:  # the accepted values are named too
        assert "fashion-mnist" in out.err.split("error:")[1]


def test_typed_overrides():
    from hyperloom.recipes.illustrative import Config

    cfg = parse_config(Config, ["--hidden=400,400", "--quiet", "--max-train=none", "--lr=0.01"])
    assert cfg.hidden == (400, 400) and cfg.quiet is True and cfg.max_train is None
    assert cfg.lr == 0.01
    assert parse_config(Config, ["--quiet=false", "--max_train=100"]).max_train == 100
    assert parse_config(Config, []) == Config()
    assert all(f.metadata.get("help") for f in dataclasses.fields(Config))


def test_missing_checkpoint_exits_2(capsys, tmp_path):
    assert main(["describe", str(tmp_path / "none.safetensors")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_demo_describe_export_end_to_end(capsys, tmp_path):
    """The whole main job on digits, one epoch, then describe and export its checkpoint."""
    argv = [
        "demo",
        "--dataset=digits",
        "--epochs=1",
        "--shared-epochs=1",
        "--quiet",
        f"--out={tmp_path}",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / out.strip().splitlines()[-1].split("run folder: ")[1].split("/")[-1]
    assert "plain DNN" in out and "HyperDNN (component)" in out and "1. inputs" not in out
    assert "budget: 1 epochs = 11 steps for every single-task model" in out  # 1,347 / 128
    for model in ("plain DNN", "HyperDNN (once)", "HyperDNN (component)", "shared HyperDNN"):
        assert f"  {model}: " in out  # one line per finished model
    assert "input variability" in out
    assert {p.name for p in run_dir.iterdir()} == {
        "results.json",
        "results.csv",
        "curves.png",
        "shared_hypernetwork.safetensors",
    }
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dataset"] == "digits"
    assert len(results["single_task"]) == 5 and len(results["soft_weight_sharing"]) == 2
    for row in results["single_task"]:
        assert 0 <= row["test_acc"] <= 100 and row["trainable_params"] > 0

    ckpt = run_dir / "shared_hypernetwork.safetensors"
    assert main(["describe", str(ckpt)]) == 0
    described = capsys.readouterr().out
    assert ("chunk-wise" in described and "0: digit 0 vs digit 1" in described) or "0:" in described
    assert (
        main(["export", str(ckpt), "--task", "4", "--out", str(tmp_path / "t4.safetensors")]) == 0
    )
    assert (tmp_path / "t4.safetensors").is_file()
    assert (
        main(["export", str(ckpt), "--task", "9", "--out", str(tmp_path / "t9.safetensors")]) == 2
    )
    assert "task id 9 is out of range" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Hostile and careless input (issue 19)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "uncertainty", "--epochs=-1"], "argument --epochs: must be >= 1, got -1"),
        (["train", "federated", "--inner-lr=-1"], "--inner-lr: must be > 0, got -1.0"),
        (["train", "federated", "--max-grad-norm=-1"], "--max-grad-norm: must be > 0, got -1.0"),
        (["train", "federated", "--trust-bound=0"], "--trust-bound: must be > 0, got 0.0"),
        (["demo", "--epochs=0"], "argument --epochs: must be >= 1, got 0"),
        (["demo", "--batch-size=0"], "--batch-size: must be >= 1, got 0"),
        (["demo", "--hidden=100,0"], "argument --hidden: must be >= 1, got 0"),
        (["demo", "--lr=nan"], "argument --lr: must be a finite number, got nan"),
        (["demo", "--seed=100000000000000000000000"], "argument --seed: must be within +-2**62"),
    ],
)
def test_numeric_options_are_checked_before_any_work(capsys, tmp_path, argv, message):
    code, out = _exit_code(capsys, [*argv, f"--out={tmp_path / 'runs'}"])
    assert code == 2 and message in out.err
    assert not (tmp_path / "runs").exists()  # no work, no folder


def test_every_recipe_default_is_in_its_range():
    import typing

    from hyperloom.recipes import RECIPES, load_recipe
    from hyperloom.recipes.config import check_ranges, field_range

    for name in RECIPES:
        config = load_recipe(name).Config
        check_ranges(config())
        hints = typing.get_type_hints(config)
        numeric = [f for f in dataclasses.fields(config) if field_range(f, hints[f.name])]
        assert numeric, name


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_bad_out_exits_2_naming_the_option(capsys, tmp_path, kind):
    import os

    out = tmp_path / "out"
    if kind == "file":
        out.write_text("not a folder")
    else:
        out.mkdir()
        os.chmod(out, 0o500)
        if os.access(out, os.W_OK):  # root ignores the mode bits
            out = tmp_path / "out" / "x\0y"  # a path the OS refuses
    code, err = _exit_code(capsys, ["demo", "--dataset=digits", f"--out={out}"])
    assert code == 2 and "argument --out:" in err.err and "Traceback" not in err.err


def test_a_failing_run_leaves_no_empty_run_folder(capsys, tmp_path, monkeypatch):
    from hyperloom.recipes import illustrative
    from hyperloom.recipes.runs import make_run_dir

    def failing(config):
        make_run_dir(config.out, "illustrative")
        raise ValueError("something went wrong after the folder was made")

    monkeypatch.setattr(illustrative, "run", failing)
    keep = tmp_path / "earlier-run"
    keep.mkdir()
    assert main(["demo", f"--out={tmp_path}"]) == 2
    assert "something went wrong" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["earlier-run"]


def _tiny_checkpoint(tmp_path, tasks=("a", "b")):
    hnet = hl.HyperNetwork(
        hl.networks.build_target("mlp", in_features=4, hidden=[3], out_features=2),
        hl.TaskEmbedding(2, 3),
        hl.FlatGenerator.factory(),
    )
    return hl.save(hnet, tmp_path / "h.safetensors", tasks=list(tasks))


def test_export_refuses_to_overwrite_its_input(capsys, tmp_path):
    path = _tiny_checkpoint(tmp_path)
    before = path.read_bytes()
    assert main(["export", str(path), "--task", "0", "--out", str(path)]) == 2
    assert "is the checkpoint itself" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_huge_task_id_names_the_option(capsys, tmp_path):
    path = _tiny_checkpoint(tmp_path)
    code, out = _exit_code(capsys, ["export", str(path), "--task", str(10**23), "--out", "x"])
    assert code == 2 and "argument --task: must be a task id" in out.err
    assert main(["export", str(path), "--task", "5", "--out", str(tmp_path / "y.safetensors")]) == 2
    assert "task id 5 is out of range" in capsys.readouterr().err


def test_describe_and_export_of_a_broken_file_print_one_line(capsys, tmp_path):
    path = _tiny_checkpoint(tmp_path, tasks=("a", "\x1b]0;pwned\x07"))
    assert main(["describe", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b]0;pwned\\x07" in out
    data = bytearray(path.read_bytes())
    data[200] ^= 0x01  # inside the JSON header
    path.write_bytes(bytes(data))
    for argv in (["describe", str(path)], ["export", str(path), "--task=0", "--out=o.safetensors"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("hyperloom ")


def test_python_dash_m_is_the_command():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "hyperloom", "list"], capture_output=True, text=True, check=True
    )
    assert "generators:" in out.stdout and "<property" not in out.stdout
    assert "Concat" in out.stdout and "mixture" in out.stdout


@pytest.mark.parametrize(
    "module", ["hyperloom.recipes.config", "hyperloom.checkpoint", "hyperloom.conditioning.noise"]
)
def test_docstring_examples_run(module):
    import doctest
    import importlib

    import torch
    from torch import nn

    result = doctest.testmod(
        importlib.import_module(module),
        extraglobs={"torch": torch, "nn": nn},
        optionflags=doctest.NORMALIZE_WHITESPACE,
    )
    assert result.attempted > 0 and result.failed == 0


def test_progress_draws_nothing_off_a_terminal(capsys):
    from hyperloom.recipes.runs import progress

    assert list(progress(range(30), desc="model 1/3")) == list(range(30))
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""  # no empty 0% bars in CI logs


def test_demo_on_digits_uses_the_digits_budget(capsys, tmp_path, monkeypatch):
    from hyperloom.recipes import illustrative

    monkeypatch.setitem(illustrative.BUDGETS, "digits", (2, 1))  # a small preset, same path
    argv = ["demo", "--dataset=digits", "--tasks=2", "--quiet", f"--out={tmp_path}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "data: digits" in out
    assert "budget: 2 epochs = 22 steps for every single-task model, 1 epochs for the soft " in out
    assert "(digits's preset)" in out
    assert out.count(": 22 steps,") == 5  # the plain DNN and the 4 HyperDNNs: the same steps
