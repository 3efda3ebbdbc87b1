"""Every recipe takes ``--device``, ``--amp`` and ``--nproc``; several processes equal one.

The bf16 smoke run of every recipe is ``tests/test_reproduce.py::test_smoke_run_of_every_recipe``
(the smoke runs themselves run under ``--amp=bf16 --device=cpu``, at no extra cost). Here: the
options on every registered recipe's ``Config``, and for the three loops that differ most (a
batch recipe, the federated client split, PPO's rollouts) two gloo processes against one.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from hyperloom.recipes import RECIPES, load_recipe
from hyperloom.recipes import distributed as D
from hyperloom.recipes.reproduce import recipe_entries

SHARED = {"device": D.device_field(), "amp": D.amp_field(), "nproc": D.nproc_field()}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_config_has_the_runtime_options(name):
    fields = {f.name: f for f in dataclasses.fields(load_recipe(name).Config)}
    for key, shared in SHARED.items():
        assert key in fields, f"recipe {name}: Config has no {key!r} option"
        assert fields[key].default == shared.default, (name, key)
        assert dict(fields[key].metadata) == dict(shared.metadata), (name, key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _smoke(name: str, **extra: Any) -> dict[str, Any]:
    smoke, recorded = recipe_entries(load_recipe(name))
    return {**recorded[0].overrides, **smoke, **extra}


def _worker(rank: int, port: int, name: str, overrides: dict, out: str, same: bool) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    if overrides.pop("float64", False):
        torch.set_default_dtype(torch.float64)
    module = load_recipe(name)
    if same:  # every process collects the rollouts of rank 0 (the oracle below)
        module.rollout_seed = lambda seed, rank: 1000 * seed
    result = module.run(module.Config(**overrides))
    torch.save(result, Path(out) / f"rank{rank}.pt")


def _two_processes(tmp_path: Path, name: str, overrides: dict, same: bool = False) -> list[dict]:
    args = (_free_port(), name, dict(overrides), str(tmp_path), same)
    mp.start_processes(_worker, args=args, nprocs=2, start_method="fork")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _one_process(name: str, overrides: dict) -> dict:
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)  # as in the workers: the same kernels, the same sums
    if overrides.get("float64"):
        torch.set_default_dtype(torch.float64)
    try:
        module = load_recipe(name)
        config = {k: v for k, v in overrides.items() if k != "float64"}
        return module.run(module.Config(**config))
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)


def test_pareto_two_processes_on_half_batches_equal_one_process(tmp_path):
    """A batch recipe: each process trains on its half of every global batch.

    In float64 the runs can differ only in how each gradient's sum over a batch is ordered (two
    means of half the batch, averaged, against one mean of the batch): a few units in the last
    place, ~1e-16 relative per step, over the smoke run's 6 Adam steps per model. The test
    losses are asserted equal to 1e-9 relative, far above that and far below any difference a
    wrong shard or a missing all-reduce makes (measured on this machine: equal to the bit).
    """
    overrides = _smoke("pareto", out=str(tmp_path / "runs"), float64=True)
    two = _two_processes(tmp_path, "pareto", overrides)
    assert "run_dir" in two[0] and "run_dir" not in two[1]  # rank 0 alone wrote a run folder
    assert len(list((tmp_path / "runs").glob("*/results.json"))) == 1
    one = _one_process("pareto", overrides)
    for rank in two:
        for got, want in zip(rank["seeds"], one["seeds"], strict=True):
            for method, res in want["results"].items():
                torch.testing.assert_close(
                    torch.tensor(got["results"][method]["points"]),
                    torch.tensor(res["points"]),
                    rtol=1e-9,
                    atol=1e-12,
                    msg=method,
                )


def test_federated_two_processes_split_the_clients_and_equal_one_process(tmp_path):
    """Each process trains its share of every round's clients; the replies are gathered and
    every process applies the same server update in the same client order, so the accuracies
    of every client under every method are exactly those of one process."""
    overrides = _smoke("federated", out=str(tmp_path / "runs"))
    two = _two_processes(tmp_path, "federated", overrides)
    one = _one_process("federated", overrides)
    assert set(one["results"]) == {"pfedhn", "pfedhn-pc", "fedavg", "fedavg-ft", "local"}
    for rank in two:
        for method, res in one["results"].items():
            got = rank["results"][method]
            assert got["client_accs"] == res["client_accs"], method
            assert got["new_client_accs"] == res["new_client_accs"], method
            assert got["skipped"] == res["skipped"], method


def test_rl_two_processes_collect_their_own_rollouts_and_average_gradients(tmp_path):
    """PPO: each process its own environments (seeded by rank) and action noise; the averaged
    gradients keep the networks equal, so both processes evaluate to the same returns."""
    overrides = _smoke("rl", out=str(tmp_path / "runs"), methods=("hyper",))
    two = _two_processes(tmp_path, "rl", overrides)
    (key,) = two[0]["runs"]
    run0, run1 = two[0]["runs"][key], two[1]["runs"][key]
    assert run0["final"] == run1["final"]  # the same parameters on both processes
    assert run0["train_returns"] != run1["train_returns"]  # but their own rollouts


def test_rl_two_processes_on_the_same_rollouts_equal_one_process(tmp_path):
    """The oracle for the gradient average: when both processes collect rank 0's rollouts, the
    global batch is that rollout twice, whose mean gradient is exactly one process's."""
    overrides = _smoke("rl", out=str(tmp_path / "runs"), methods=("hyper",))
    two = _two_processes(tmp_path, "rl", overrides, same=True)
    one = _one_process("rl", overrides)
    (key,) = one["runs"]
    for name in ("final", "curve", "train_returns"):
        assert two[0]["runs"][key][name] == one["runs"][key][name], name
