"""Data-parallel training, devices and mixed precision (hyperloom.recipes.distributed).

The oracle: two gloo processes, each on its half of every global batch, end with the same
parameters as one process on the whole batches.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

import hyperloom as hl
from hyperloom.recipes import distributed as D

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"),
    ),
]

STEPS, BATCH, LR = 3, 8, 1e-2
TASKS = 4  # the batches use tasks 0..2: task 3's embedding never gets a gradient


def _hnet() -> hl.HyperNetwork:
    torch.manual_seed(0)
    target = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    gen = hl.ChunkedGenerator.factory(chunk_size=16, chunk_dim=4, hidden=(8,))
    return hl.HyperNetwork(target, hl.TaskEmbedding(TASKS, 5), gen).double()


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n = STEPS * BATCH
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    # rank 0's halves hold tasks 0 and 1 only, rank 1's task 2 only: embeddings one rank uses
    t = torch.tensor([0, 1, 0, 1, 2, 2, 2, 2] * STEPS)
    return x, y, t


def _train(rt: D.Runtime, mode: str) -> dict[str, torch.Tensor]:
    """The loop a recipe runs: the same global batches on every rank, each rank its slice."""
    hnet = _hnet()
    rt.broadcast(hnet)
    model: nn.Module = hnet
    if mode == "ddp":  # task embeddings only some ranks use: DDP must look for unused ones
        model = DistributedDataParallel(hnet, find_unused_parameters=True)
    elif mode == "fsdp":  # the generator's parameters (its readout) sharded over the ranks
        fully_shard(hnet.generator)
        fully_shard(hnet)
    params = list(hnet.parameters())
    opt = torch.optim.Adam(params, lr=LR)
    x, y, t = _data()
    for idx in rt.shard(torch.arange(len(x)).split(BATCH)):
        opt.zero_grad(set_to_none=True)
        with rt.autocast():
            loss = F.cross_entropy(model(x[idx], task=t[idx]), y[idx])
        loss.backward()
        if mode == "sync":
            rt.sync_grads(params)
        opt.step()
    return {k: _full(v).detach().clone() for k, v in hnet.state_dict().items()}


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def _worker(rank: int, port: int, mode: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    rt = D.start(device="cpu", amp="none")
    try:
        state = _train(rt, mode)
        mean_rank = rt.average(float(rank))  # what a logged loss goes through
        if rt.is_main:
            torch.save({"state": state, "mean_rank": mean_rank}, out)
    finally:
        D.stop(rt)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("mode", ["sync", "ddp", "fsdp"])
def test_two_gloo_processes_equal_one_process_on_the_whole_batches(tmp_path, mode):
    out = str(tmp_path / "rank0.pt")
    mp.start_processes(_worker, args=(_free_port(), mode, out), nprocs=2, start_method="fork")
    saved = torch.load(out)
    two = saved["state"]
    assert saved["mean_rank"] == 0.5
    one = _train(D.Runtime(torch.device("cpu")), "single")
    before = _hnet().state_dict()
    # Tolerance: the two runs differ only in how each gradient's sum over the 8 samples is
    # ordered (two means of 4, averaged, against one mean of 8): a relative difference of a few
    # float64 units in the last place (~1e-15). Adam's step lr * m / (sqrt(v) + eps) is a ratio
    # of two quantities each perturbed by that relative amount, so each step moves a parameter
    # by at most ~2 * lr * 1e-15 more or less; over 3 steps (through the next gradients too)
    # that is far below 1e-12, the tolerance asserted. float32 would need ~1e-6.
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-12, atol=1e-12, msg=name)
    moved = [n for n in one if not torch.equal(one[n], before[n])]
    assert "conditioner.rows.3" not in moved  # no process had task 3: Adam skipped it in both
    assert {"conditioner.rows.0", "conditioner.rows.2"} <= set(moved)
    assert any(n.startswith("generator.") for n in moved)


def test_shard_cuts_every_global_batch_into_equal_contiguous_slices():
    batches = torch.arange(11).split(5)  # 5, 5, 1
    got = [
        [i.tolist() for i in D.Runtime(torch.device("cpu"), rank=r, world_size=2).shard(batches)]
        for r in range(2)
    ]
    assert got == [[[0, 1], [5, 6]], [[2, 3], [7, 8]]]  # remainders 4, 9 and the batch [10] dropped
    one = D.Runtime(torch.device("cpu"))
    assert [i.tolist() for i in one.shard(batches)] == [b.tolist() for b in batches]
    with pytest.raises(ValueError, match=r"1-D index tensors, got shape \(2, 2\)"):
        next(one.shard([torch.zeros(2, 2, dtype=torch.long)]))


def test_single_process_sync_grads_and_broadcast_change_nothing():
    rt = D.Runtime(torch.device("cpu"))
    hnet = _hnet()
    hnet(torch.randn(2, 6, dtype=torch.float64), task=0).sum().backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in hnet.named_parameters()}
    rt.sync_grads(hnet.parameters())
    rt.broadcast(hnet)
    for n, p in hnet.named_parameters():
        assert (p.grad is None) == (grads[n] is None)
        if p.grad is not None:
            assert torch.equal(p.grad, grads[n])


def test_bad_device_and_amp_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        D.resolve_device("gpu0")
    with pytest.raises(ValueError, match="unknown amp 'int8'"):
        D.start(device="cpu", amp="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:1' asked for, but torch sees no CUDA"):
            D.resolve_device("cuda:1")
    assert not dist.is_initialized()


@pytest.mark.parametrize("device", DEVICES)
def test_training_step_stays_on_the_device_it_is_given(device):
    """The core moves nothing: weights, outputs and gradients live where the user put them."""
    rt = D.start(device=device, amp="none")
    hnet = _hnet().float().to(rt.device)
    x = torch.randn(4, 6, device=rt.device)
    ids = torch.tensor([0, 1, 1, 2], device=rt.device)
    y = hnet(x, task=ids)
    assert y.device == rt.device
    assert all(w.device == rt.device for w in hnet.generate(task=torch.tensor(1)).values())
    y.square().mean().backward()
    assert all(p.grad is None or p.grad.device == rt.device for p in hnet.parameters())
    D.stop(rt)


@pytest.mark.parametrize("device", DEVICES)
def test_amp_bf16_runs_forward_in_bf16_and_keeps_float32_gradients(device):
    rt = D.start(device=device, amp="bf16")
    hnet = _hnet().float().to(rt.device)
    x = torch.randn(4, 6, device=rt.device)
    with rt.autocast():
        y = hnet(x, task=torch.tensor([0, 1, 1, 2], device=rt.device))
        loss = y.float().square().mean()
    assert y.dtype == torch.bfloat16
    loss.backward()
    grads = [p.grad for p in hnet.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and g.isfinite().all() for g in grads)
    D.stop(rt)


def test_compiled_hypernetwork_static_path_is_one_graph_and_matches_eager():
    """torch.compile(hnet) traces the static path without a graph break (fullgraph=True)."""
    torch._dynamo.reset()
    hnet = _hnet().float()
    compiled = torch.compile(hnet, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 6)
    y = compiled(x, task=1)
    torch.testing.assert_close(y, hnet(x, task=1))
    y.square().mean().backward()
    assert all(p.grad is not None for p in hnet.generator.parameters())


def test_launch_reruns_the_command_under_torchrun_without_nproc(monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(D.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert D.launch(2, ["train", "hyperconv", "--nproc=2", "--epochs=1", "--nproc", "2"]) == 0
    assert calls[0][1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "hyperloom",
        "train",
        "hyperconv",
        "--epochs=1",
    ]
    with pytest.raises(ValueError, match="nproc must be >= 1, got 0"):
        D.launch(0, [])
