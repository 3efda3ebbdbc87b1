"""HyperNetwork: oracles against plain copies, invariants, describe(), and errors."""

import copy

import pytest
import torch
from torch import nn

import hyperloom as hl

SMALL = {
    "once": {"hidden": (16,)},
    "heads": {"hidden": (16,)},
    "chunked": {"chunk_size": 64, "chunk_dim": 4, "hidden": (16,)},
    "component": {"component_dim": 4, "hidden": (16,)},
    "lowrank": {"rank": 2, "hidden": (16,)},
    "attention": {"token_dim": 8, "depth": 1, "num_heads": 2, "ff_dim": 16},
    "conv": {"block_out": 2, "block_in": 2, "hidden": (16,)},
}


def _gen(name):
    return hl.get_generator(name).factory(**SMALL.get(name, {}))


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, x):  # (B, L, 8)
        h = self.norm(x)
        return self.out(self.mha(h, h, h)[0].mean(1))


class Recurrent(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(4, 6, batch_first=True)
        self.out = nn.Linear(6, 2)

    def forward(self, x):  # (B, T, 4)
        return self.out(self.rnn(x)[0][:, -1])


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.out = nn.Linear(6, 11)
        self.out.weight = self.emb.weight

    def forward(self, tokens):  # (B, L)
        return self.out(self.emb(tokens).mean(1))


TARGETS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)), (5,)),
    "cnn-bn": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4)
        ),
        (1, 6, 6),
    ),
    "attention": (Attn, (5, 8)),
    "gru": (lambda: Recurrent(nn.GRU), (7, 4)),
    "lstm": (lambda: Recurrent(nn.LSTM), (7, 4)),
    "tied": (Tied, None),
}


def _input(key, batch):
    shape = TARGETS[key][1]
    if shape is None:
        return torch.randint(0, 11, (batch, 5))
    return torch.randn(batch, *shape)


def _snapshot(module):
    return (
        {k: v.detach().clone() for k, v in module.state_dict().items()},
        {n: id(p) for n, p in module.named_parameters()},
    )


def _assert_unchanged(module, snap, *, buffers=True):
    state, ids = snap
    for k, v in module.state_dict().items():
        if buffers or ("running" not in k and "num_batches" not in k):
            assert torch.equal(v, state[k]), k
    assert {n: id(p) for n, p in module.named_parameters()} == ids


@pytest.mark.parametrize("gen_name", hl.list_generators())
@pytest.mark.parametrize("target_key", list(TARGETS))
def test_oracle_generated_weights_in_a_plain_copy(gen_name, target_key):
    """hnet(x) == plain copy holding the generated weights; same gradients w.r.t. them."""
    target = TARGETS[target_key][0]()
    target.eval()  # BatchNorm: the same running statistics on both sides
    hnet = hl.HyperNetwork(target, hl.TaskEmbedding(3, 6), _gen(gen_name))
    snap = _snapshot(target)
    x = _input(target_key, 4)

    weights = hnet.generate(task=1)
    out = hl.call(target, weights, x)
    torch.testing.assert_close(out, hnet(x, task=1))
    grads = torch.autograd.grad(out.square().sum(), list(weights.values()))

    plain = copy.deepcopy(target)
    with torch.no_grad():
        for name, w in weights.items():
            plain.get_parameter(name).copy_(w)
    plain_out = plain(x)
    plain_out.square().sum().backward()
    torch.testing.assert_close(out, plain_out, rtol=1e-5, atol=1e-5)
    for (name, _), g in zip(weights.items(), grads, strict=True):
        torch.testing.assert_close(g, plain.get_parameter(name).grad, rtol=1e-4, atol=1e-5)

    exported = hnet.export(task=1)
    torch.testing.assert_close(exported(x), out, rtol=1e-5, atol=1e-5)
    _assert_unchanged(target, snap)


@pytest.mark.parametrize("gen_name", hl.list_generators())
@pytest.mark.parametrize("target_key", ["mlp", "attention", "gru", "lstm", "tied"])
def test_per_sample_tasks_equal_one_task_at_a_time(gen_name, target_key):
    target = TARGETS[target_key][0]()
    hnet = hl.HyperNetwork(target, hl.TaskEmbedding(3, 6), _gen(gen_name))
    x = _input(target_key, 5)
    tasks = torch.tensor([2, 0, 2, 1, 0])
    batched = hnet(x, task=tasks)
    looped = torch.cat([hnet(x[i : i + 1], task=tasks[i]) for i in range(5)])
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)

    # gradients reach the hypernetwork the same way
    g_batched = torch.autograd.grad(batched.square().sum(), list(hnet.parameters()))
    looped = torch.cat([hnet(x[i : i + 1], task=tasks[i]) for i in range(5)])
    g_looped = torch.autograd.grad(looped.square().sum(), list(hnet.parameters()))
    for a, b in zip(g_batched, g_looped, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_readme_example_shapes():
    target = nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 10))
    hnet = hl.HyperNetwork(
        target,
        conditioner=hl.TaskEmbedding(num=5, dim=32),
        generator=hl.ChunkedGenerator.factory(chunk_size=1024, hidden=(128,)),
        generate=nn.Linear,
    )
    x = torch.randn(8, 64)
    assert hnet(x, task=torch.tensor(3)).shape == (8, 10)
    assert hnet(x, task=torch.randint(0, 5, (8,))).shape == (8, 10)
    w = hnet.generate(task=torch.tensor(3))
    assert w["0.weight"].shape == (100, 64)
    plain = hnet.export(task=torch.tensor(3))
    assert isinstance(plain, nn.Sequential)
    torch.testing.assert_close(plain(x), hnet(x, task=3))


def test_static_contexts_are_generated_once():
    hnet = hl.HyperNetwork(nn.Linear(4, 2), hl.TaskEmbedding(5, 3), hl.FlatGenerator.factory())
    seen = []
    hnet.generator.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    hnet(torch.randn(64, 4), task=torch.tensor([1, 3] * 32))
    hnet(torch.randn(64, 4), task=torch.full((64,), 4))
    hnet(torch.randn(64, 4), task=2)
    assert seen == [(2, 3), (1, 3), (3,)]


def test_parameters_hold_the_hypernetwork_and_non_generated_target_parameters():
    target = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    hnet = hl.HyperNetwork(
        target, hl.TaskEmbedding(2, 3), hl.FlatGenerator.factory(), generate=nn.Linear
    )
    names = {n for n, _ in hnet.named_parameters()}
    assert "target.1.weight" in names and "target.1.bias" in names
    assert not any(n.startswith(("target.0", "target.2")) for n in names)
    ids = {id(p) for p in hnet.parameters()}
    assert id(target[1].weight) in ids and id(target[0].weight) not in ids
    # the LayerNorm stays trainable: it receives gradients through the call
    hnet(torch.randn(3, 4), task=1).sum().backward()
    assert target[1].weight.grad is not None
    assert target[0].weight.grad is None


def test_data_conditioned_gives_each_sample_its_own_weights():
    target = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))
    enc = hl.SampleEncoder(nn.Sequential(nn.Linear(6, 4), nn.Tanh()), dim=4)
    hnet = hl.HyperNetwork(target, enc, hl.ChunkedGenerator.factory(chunk_size=16))
    x = torch.randn(7, 6)
    out = hnet(x)
    looped = torch.cat([hnet(x[i : i + 1]) for i in range(7)])
    torch.testing.assert_close(out, looped, rtol=1e-5, atol=1e-6)
    w = hnet.generate(x=x)
    assert w["0.weight"].shape == (7, 5, 6)
    assert not torch.allclose(w["0.weight"][0], w["0.weight"][1])


def test_noise_conditioned():
    hnet = hl.HyperNetwork(nn.Linear(3, 2), hl.Noise(5, seed=0), hl.HeadsGenerator.factory())
    x = torch.randn(6, 3)
    assert hnet(x).shape == (6, 2)
    z = torch.randn(5)
    torch.testing.assert_close(hnet(x, z=z), hnet.export(z=z)(x))
    assert hnet.generate(z=torch.randn(4, 5))["weight"].shape == (4, 2, 3)


CONDITIONERS = {
    "task": (lambda: hl.TaskEmbedding(3, 4), "task-conditioned", "static"),
    "data": (lambda: hl.SampleEncoder(nn.Linear(5, 4), 4), "data-conditioned", "dynamic"),
    "noise": (lambda: hl.Noise(4), "noise-conditioned", "dynamic"),
    "task+noise": (
        lambda: hl.Concat(hl.TaskEmbedding(3, 2), hl.Noise(2)),
        "mixture (task + noise)",
        "dynamic",
    ),
    "task+data": (
        lambda: hl.Concat(hl.TaskEmbedding(3, 2), hl.SampleEncoder(nn.Linear(5, 2), 2)),
        "mixture (task + data)",
        "dynamic",
    ),
}
STRATEGIES = {
    "once": "generate-once",
    "heads": "multiple heads",
    "chunked": "chunk-wise",
    "component": "component-wise",
    "lowrank": "low-rank",
    "attention": "component-wise",
    "conv": "component-wise",
}


@pytest.mark.parametrize("gen_name", list(STRATEGIES))
@pytest.mark.parametrize("cond_key", list(CONDITIONERS))
def test_describe_reports_the_five_criteria(gen_name, cond_key):
    make, inputs, variability = CONDITIONERS[cond_key]
    hnet = hl.HyperNetwork(nn.Linear(5, 3), make(), _gen(gen_name))
    c = hnet.describe()
    architecture = {"attention": "attention", "conv": "convolutional"}.get(gen_name, "MLP")
    assert c == hl.Criteria(inputs, STRATEGIES[gen_name], variability, "static", architecture)
    text = str(c)
    assert "1. inputs" in text and inputs in text and "5. architecture" in text
    assert c.to_dict()["outputs"] == STRATEGIES[gen_name]


def test_generator_given_bound_or_by_options_is_the_same_mechanism():
    target = nn.Linear(4, 3)
    spec = hl.select(target)
    torch.manual_seed(1)
    a = hl.HyperNetwork(
        target, hl.TaskEmbedding(2, 5), hl.ChunkedGenerator.factory(chunk_size=4), init=None
    )
    torch.manual_seed(1)
    cond = hl.TaskEmbedding(2, 5)
    # a generator given built keeps its parameters (no hyperfan over them), like init=None
    b = hl.HyperNetwork(target, cond, hl.ChunkedGenerator(spec, 5, chunk_size=4))
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    with pytest.raises(ValueError, match="was built for a spec of 2 tensors and cond_dim=5"):
        hl.HyperNetwork(target, hl.TaskEmbedding(2, 6), hl.ChunkedGenerator(spec, 5))


def test_bad_inputs_raise_clear_errors():
    target = nn.Sequential(nn.Linear(4, 3))
    hnet = hl.HyperNetwork(target, hl.TaskEmbedding(2, 5), hl.FlatGenerator.factory())
    x = torch.randn(3, 4)
    snap = _snapshot(target)
    with pytest.raises(IndexError, match=r"task id 2 is out of range"):
        hnet(x, task=2)
    with pytest.raises(TypeError, match="task-conditioned"):
        hnet(x)
    with pytest.raises(ValueError, match=r"leading dimension of 2"):
        hnet(x, task=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"unknown context \['z'\]"):
        hnet.generate(task=0, z=torch.zeros(2))
    with pytest.raises(ValueError, match="export\\(\\) needs one context"):
        hnet.export(task=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"filters GRU select no parameter"):
        hl.HyperNetwork(target, hl.TaskEmbedding(2, 5), hl.FlatGenerator.factory(), generate=nn.GRU)
    with pytest.raises(ValueError, match="init must be one of"):
        hl.HyperNetwork(target, hl.TaskEmbedding(2, 5), hl.FlatGenerator.factory(), init="xavier")
    with pytest.raises(TypeError, match="conditioner must be a Conditioner"):
        hl.HyperNetwork(target, nn.Linear(2, 2), hl.FlatGenerator.factory())
    noisy = hl.HyperNetwork(target, hl.Noise(3), hl.FlatGenerator.factory())
    with pytest.raises(ValueError, match=r"z must be \(3,\) or \(B, 3\), got \(4,\)"):
        noisy(x, z=torch.zeros(4))
    _assert_unchanged(target, snap)


def test_check_finite_names_the_tensor():
    target = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    hnet = hl.HyperNetwork(
        target, hl.TaskEmbedding(2, 5), hl.HeadsGenerator.factory(), check_finite=True
    )
    with torch.no_grad():
        hnet.generator.heads[2].bias[0] = float("nan")
    with pytest.raises(ValueError, match=r"'1.weight' are not finite: 1 NaN and 0 inf of 6 values"):
        hnet(torch.randn(2, 4), task=0)
    hnet.check_finite = False
    assert torch.isnan(hnet(torch.randn(2, 4), task=0)).any()


def test_target_unchanged_after_training_steps_and_failing_calls():
    target = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    hnet = hl.HyperNetwork(
        target, hl.TaskEmbedding(3, 4), hl.ChunkedGenerator.factory(chunk_size=10)
    )
    snap = _snapshot(target)
    opt = torch.optim.Adam(hnet.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        hnet(torch.randn(5, 4), task=torch.tensor([0, 1, 2, 0, 1])).sum().backward()
        opt.step()
    with pytest.raises(RuntimeError):
        hnet(torch.randn(5, 3), task=0)  # wrong input size fails inside the target
    _assert_unchanged(target, snap)


def test_batchnorm_target_trains_with_a_static_context():
    target = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(32, 2))
    hnet = hl.HyperNetwork(target, hl.TaskEmbedding(2, 4), hl.FlatGenerator.factory())
    x = torch.randn(8, 1, 6, 6)
    before = target[1].running_mean.clone()
    hnet(x, task=1).sum().backward()
    assert not torch.equal(target[1].running_mean, before)  # as a plain BatchNorm would
    # per-sample weights: each sample is a batch of one, BatchNorm2d normalises over H x W
    out = hnet(x, task=torch.tensor([0, 1] * 4))
    assert out.shape == (8, 2)
