"""The hyperloom command: every subcommand, typed options and bad arguments."""

import dataclasses
import json

import pytest

import hyperloom as hl
from hyperloom.cli import main
from hyperloom.config import parse_config


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
