"""The core off the happy path: dtypes, autocast, BatchNorm with per-sample tasks, threads, misuse.

Each test here failed on the version before these behaviours were defined (see
docs/core.md, "Dtypes, autocast, BatchNorm and threads").
"""

from __future__ import annotations

import copy
import math
import threading

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import hyperloom as hl
from hyperloom.functional.swap import call_batched_vmap


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


# ---------------------------------------------------------------------------------------------
# Dtypes


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gen", ["chunked", "once", "heads"])
def test_generated_weights_follow_the_hypernetwork_dtype(dtype, gen):
    make = {
        "chunked": lambda: hl.ChunkedGenerator.factory(chunk_size=16),
        "once": hl.FlatGenerator.factory,
        "heads": hl.HeadsGenerator.factory,
    }[gen]
    hnet = hl.HyperNetwork(_mlp(), hl.TaskEmbedding(3, 4), make()).to(dtype)
    x = torch.randn(5, 6, dtype=dtype)
    assert all(w.dtype == dtype for w in hnet.generate(task=1).values())
    assert hnet(x, task=1).dtype == dtype
    assert hnet(x, task=torch.tensor([0, 1, 2, 0, 1])).dtype == dtype
    assert hnet.export(task=2)(x).dtype == dtype


def test_double_hypernetwork_matches_float_one_and_data_conditioned_paths():
    torch.manual_seed(0)
    hnet = hl.HyperNetwork(_mlp(), hl.SampleEncoder(nn.Linear(6, 4), 4), hl.FlatGenerator.factory())
    x = torch.randn(7, 6)
    y32 = hnet(x)
    y64 = hnet.double()(x.double())  # the readout route, in float64
    assert y64.dtype == torch.float64
    assert_close(y64.float(), y32, rtol=1e-4, atol=1e-5)


def test_a_double_target_gives_a_double_hypernetwork():
    hnet = hl.HyperNetwork(_mlp().double(), hl.TaskEmbedding(3, 4), hl.FlatGenerator.factory())
    assert {p.dtype for p in hnet.parameters()} == {torch.float64}
    assert hnet(torch.randn(2, 6, dtype=torch.float64), task=0).dtype == torch.float64


def test_noise_follows_the_dtype():
    hnet = hl.HyperNetwork(_mlp(), hl.Noise(4, seed=0), hl.FlatGenerator.factory()).double()
    assert hnet(torch.randn(3, 6, dtype=torch.float64)).dtype == torch.float64


# ---------------------------------------------------------------------------------------------
# Autocast: the per-sample fast paths (custom autograd Functions) against the vmap path


def _bf16_tolerance(ref: torch.Tensor, fan_in: int) -> float:
    """An absolute bound for bfloat16 matmuls of ``fan_in`` terms: eps * sqrt(fan_in) * scale."""
    eps = torch.finfo(torch.bfloat16).eps
    return 8 * eps * math.sqrt(fan_in) * max(1.0, float(ref.detach().abs().max()))


@pytest.mark.parametrize("conditioner", ["task", "data"])
def test_per_sample_fast_paths_under_autocast_forward_and_backward(conditioner):
    torch.manual_seed(0)
    target = _mlp()
    if conditioner == "task":  # weights generated, then BatchedLinear
        cond, kw = hl.TaskEmbedding(4, 4), {"task": torch.tensor([0, 1, 2, 3, 1, 0])}
        gen = hl.ChunkedGenerator.factory(chunk_size=16)
    else:  # the readout route, ReadoutLinear
        cond, kw = hl.SampleEncoder(nn.Linear(6, 4), 4), {}
        gen = hl.FlatGenerator.factory()
    hnet = hl.HyperNetwork(target, cond, gen)
    x = torch.randn(6, 6)
    params = [p for p in hnet.parameters() if p.requires_grad]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = hnet(x, **kw)
        weights = hnet.generate(**(kw or {"x": x}))
        if conditioner == "task":
            weights = {k: v[kw["task"].unique(return_inverse=True)[1]] for k, v in weights.items()}
        ref = call_batched_vmap(target, weights, 6, ((0,), {}), (x.unsqueeze(1),), {})
        ref = ref.flatten(0, 1)
    assert out.dtype == torch.bfloat16
    # backward outside autocast, as autocast's documentation has it
    grads = torch.autograd.grad(out.float().pow(2).sum(), params)
    grads_ref = torch.autograd.grad(ref.float().pow(2).sum(), params)
    assert_close(out.float(), ref.float(), rtol=0, atol=_bf16_tolerance(ref.float(), 8))
    for g, r in zip(grads, grads_ref, strict=True):
        assert g.dtype == r.dtype == torch.float32  # each parameter's own dtype
        assert_close(g, r, rtol=0, atol=_bf16_tolerance(r, 64))


def test_batched_linear_backward_under_autocast():
    w = torch.randn(4, 3, 5, requires_grad=True)
    b = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(4, 2, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = hl.call_batched(nn.Linear(5, 3), {"weight": w, "bias": b}, x)
    y.float().sum().backward()  # outside autocast
    assert w.grad.dtype == b.grad.dtype == x.grad.dtype == torch.float32
    ref = torch.ones(4, 2, 3).transpose(1, 2) @ x.detach()
    assert_close(w.grad, ref, rtol=0, atol=_bf16_tolerance(ref, 2))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("task_statistics", [False, True])
def test_generated_batchnorm_under_autocast_equals_the_plain_module(training, task_statistics):
    # A plain module under CPU autocast keeps its BatchNorm affine weights in float32; generated
    # ones come out bfloat16 and must go in as the module's own would (batch_norm refuses them).
    torch.manual_seed(0)
    target = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    hnet = hl.HyperNetwork(
        target, hl.TaskEmbedding(2, 4), hl.FlatGenerator.factory(), task_statistics=task_statistics
    )
    hnet.train(training)
    x = torch.randn(5, 6)
    plain = copy.deepcopy(target).train(training)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = hnet(x, task=1)
        weights = {k: v.detach().float() for k, v in hnet.generate(task=1).items()}
        plain.load_state_dict(weights, strict=False)  # the generated values, as float32 params
        ref = plain(x)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert_close(out, ref, rtol=0, atol=0)
    grads = torch.autograd.grad(out.float().sum(), list(hnet.generator.parameters()))
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------------------------
# BatchNorm with per-sample tasks


def _bn_target(dims: int) -> nn.Sequential:
    if dims == 1:
        return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2)
    )


@pytest.mark.parametrize("dims", [1, 2])
def test_per_sample_tasks_normalise_each_task_as_one_batch(dims):
    torch.manual_seed(0)
    target, twin = _bn_target(dims).double(), _bn_target(dims).double()
    twin.load_state_dict(target.state_dict())
    hnet = hl.HyperNetwork(target, hl.TaskEmbedding(3, 4), hl.HeadsGenerator.factory())
    x = torch.randn(9, 4, dtype=torch.float64)
    if dims == 2:
        x = torch.randn(9, 2, 4, 4, dtype=torch.float64)
    ids = torch.tensor([2, 0, 1, 0, 2, 1, 0, 0, 2])
    out = hnet(x, task=ids)
    ref = torch.empty_like(out)
    for t in range(3):  # each task's samples as one batch, in task order
        ref[ids == t] = hl.call(twin, hnet.generate(task=t), x[ids == t])
    assert_close(out, ref)
    bn, bn_twin = target[1], twin[1]
    assert_close(bn.running_mean, bn_twin.running_mean)
    assert_close(bn.running_var, bn_twin.running_var)
    assert int(bn.num_batches_tracked) == 3


def test_task_statistics_keep_one_set_per_task():
    torch.manual_seed(0)
    target = _bn_target(1)
    own = {k: v.clone() for k, v in target.state_dict().items() if "running" in k}
    hnet = hl.HyperNetwork(
        target, hl.TaskEmbedding(3, 4), hl.HeadsGenerator.factory(), task_statistics=True
    )
    x = torch.randn(8, 4) * 3 + 1
    hnet(x, task=1)
    stats = hnet.task_statistics.rows(1, 3)
    untouched = hnet.task_statistics.rows(0, 3)
    assert int(stats["1.num_batches_tracked"]) == 1
    assert int(untouched["1.num_batches_tracked"]) == 0
    for k, v in own.items():  # the target's own buffers are never updated
        assert torch.equal(target.state_dict()[k], v)
    hnet(x, task=torch.tensor([0, 0, 2, 2, 0, 2, 0, 2]))
    assert int(hnet.task_statistics.rows(0, 3)["1.num_batches_tracked"]) == 1
    # eval: each task is normalised with its own statistics
    hnet.eval()
    plain = hnet.export(task=1)
    assert torch.equal(plain[1].running_mean, hnet.task_statistics.rows(1, 3)["1.running_mean"])
    assert_close(hnet(x, task=1), plain(x))
    mixed = hnet(x[:4], task=torch.tensor([1, 0, 1, 2]))
    assert_close(mixed[0], plain(x[:1])[0])
    assert_close(hnet.cached(task=1)(x), plain(x))
    # a new task gets statistics starting as the target's own
    hnet.train()
    hnet.conditioner.add(1)
    hnet(x, task=3)
    assert int(hnet.task_statistics.rows(3, 4)["1.num_batches_tracked"]) == 1


def test_task_statistics_are_refused_where_they_mean_nothing():
    with pytest.raises(ValueError, match="task-conditioned"):
        hl.HyperNetwork(
            _bn_target(1), hl.Noise(4), hl.FlatGenerator.factory(), task_statistics=True
        )
    with pytest.raises(ValueError, match="BatchNorm"):
        hl.HyperNetwork(
            _mlp(), hl.TaskEmbedding(2, 4), hl.FlatGenerator.factory(), task_statistics=True
        )


def test_a_call_that_raises_leaves_running_statistics_as_they_were():
    target = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(5, 2))  # 6 != 5
    before = {k: v.clone() for k, v in target.state_dict().items()}
    weights = {"0.weight": torch.randn(6, 4)}
    with pytest.raises(RuntimeError):
        hl.call(target, weights, torch.randn(8, 4))
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), k
    target[2] = nn.Linear(6, 2)
    hl.call(target, weights, torch.randn(8, 4))  # a successful training-mode call updates them
    assert int(target[1].num_batches_tracked) == 1
    assert not torch.equal(target[1].running_mean, before["1.running_mean"])


# ---------------------------------------------------------------------------------------------
# Threads


class _WithLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


@pytest.mark.parametrize("kind", ["general", "recurrent"])
def test_calls_from_eight_threads_on_one_target(kind):
    torch.manual_seed(0)
    if kind == "general":  # LayerNorm: not a fast-path layer, so tensors are swapped in
        target = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
        x = torch.randn(16, 4)
    else:
        target = _WithLSTM()
        x = torch.randn(2, 16, 5, 3)
    own = {k: v.clone() for k, v in target.state_dict().items()}
    sets = []
    for _ in range(8):
        if kind == "general":
            sets.append({k: torch.randn_like(v) for k, v in target.named_parameters()})
        else:
            sets.append({k: torch.randn(2, *v.shape) for k, v in target.named_parameters()})
    run = hl.call if kind == "general" else hl.call_batched
    refs = [run(target, w, x) for w in sets]
    wrong, errors = [], []

    def hammer(i: int) -> None:
        try:
            for _ in range(30 if kind == "general" else 5):
                if not torch.equal(run(target, sets[i], x), refs[i]):
                    wrong.append(i)
                if kind == "recurrent" and "forward" in vars(target.lstm):
                    wrong.append("patched")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not wrong
    for k, v in target.state_dict().items():
        assert torch.equal(v, own[k]), k


def test_the_recurrent_route_never_patches_the_users_modules():
    target = _WithLSTM()
    lstm = target.lstm
    seen = []
    lstm.register_forward_pre_hook(lambda m, a: seen.append("forward" in vars(lstm)))
    weights = {k: torch.randn(2, *v.shape) for k, v in target.named_parameters()}
    hl.call_batched(target, weights, torch.randn(2, 3, 5, 3))
    assert seen == [False]  # the hook ran once, and the user's module had no forward of its own
    assert "forward" not in vars(lstm)


# ---------------------------------------------------------------------------------------------
# Silent misuse


def test_sample_encoder_with_its_own_key_needs_it():
    hnet = hl.HyperNetwork(
        _mlp(), hl.SampleEncoder(nn.Linear(5, 4), 4, key="h"), hl.FlatGenerator.factory()
    )
    with pytest.raises(TypeError, match="h="):
        hnet(torch.randn(3, 6))
    assert hnet(torch.randn(3, 6), h=torch.randn(3, 5)).shape == (3, 3)


def test_unknown_keywords_are_refused_by_name():
    hnet = hl.HyperNetwork(_mlp(), hl.TaskEmbedding(3, 4), hl.FlatGenerator.factory())
    with pytest.raises(TypeError, match=r"unknown keyword 'tsk'.*context is \['task'\]"):
        hnet(torch.randn(3, 6), task=1, tsk=2)
    with pytest.raises(TypeError, match="task="):  # the context itself is missing
        hnet(torch.randn(3, 6))


def test_keywords_of_the_target_still_reach_it():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(6, 3)

        def forward(self, x, *, scale: float = 1.0):
            return self.lin(x) * scale

    hnet = hl.HyperNetwork(Scaled(), hl.TaskEmbedding(2, 4), hl.FlatGenerator.factory())
    x = torch.randn(2, 6)
    assert_close(hnet(x, task=0, scale=2.0), 2 * hnet(x, task=0))


def test_describe_names_the_tensors_generated_as_constant_plus_output():
    class FiLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.gamma = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return self.lin(x) * self.gamma

    hnet = hl.HyperNetwork(FiLM(), hl.TaskEmbedding(2, 4), hl.FlatGenerator.factory())
    criteria = hnet.describe()
    assert criteria.constant_offsets == {"gamma": 1.0}
    assert "gamma (1)" in str(criteria)
    assert criteria.to_dict()["constant_offsets"] == {"gamma": 1.0}


@pytest.mark.parametrize(
    "make",
    [
        lambda: hl.FlatGenerator(hl.select(nn.Linear(2, 2)), 4, activation="relux"),
        lambda: hl.HeadsGenerator(hl.select(nn.Linear(2, 2)), 4, activation="sigmoidal"),
        lambda: hl.ChunkedGenerator(hl.select(nn.Linear(2, 2)), 4, chunk_size=8, activation=""),
        lambda: hl.ComponentGenerator(hl.select(nn.Linear(2, 2)), 4, activation="Relu"),
    ],
)
def test_bad_activation_is_refused_at_construction(make):
    with pytest.raises(ValueError, match="activation"):
        make()


@pytest.mark.parametrize("norm", ["layer", 1, None, "rms"])
def test_norm_accepts_only_what_it_implements(norm):
    with pytest.raises(ValueError, match="norm"):
        hl.FlatGenerator(hl.select(nn.Linear(2, 2)), 4, norm=norm)
