"""API gaps found by porting the peers' research code (hypnettorch, hyperlight, pFedHN)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import hyperloom as hl
from hyperloom.generators.registry import _GENERATORS, register_generator
from hyperloom.generators.trunk import MLPTrunk, activation_config, activation_module

MLP_GENERATORS = {
    "once": lambda **kw: hl.FlatGenerator.factory(**kw),
    "heads": lambda **kw: hl.HeadsGenerator.factory(**kw),
    "chunked": lambda **kw: hl.ChunkedGenerator.factory(chunk_size=32, **kw),
    "component": lambda **kw: hl.ComponentGenerator.factory(**kw),
    "lowrank": lambda **kw: hl.LowRankGenerator.factory(rank=2, **kw),
}


def _target() -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


@pytest.mark.parametrize("activation", ["leaky_relu", nn.LeakyReLU(0.2), nn.Softplus(beta=2.0)])
@pytest.mark.parametrize("name", list(MLP_GENERATORS))
def test_activation_as_a_name_or_module_round_trips_through_config(name, activation):
    gen = MLP_GENERATORS[name](activation=activation, hidden=(16,))
    hnet = hl.HyperNetwork(_target(), hl.TaskEmbedding(2, 4), gen)
    act = hnet.generator.trunk.act
    assert type(act) is (nn.LeakyReLU if activation == "leaky_relu" else type(activation))
    if isinstance(activation, nn.Module):
        assert act is not activation  # a copy: the trunk owns its module
    rebuilt = hl.build_generator(hnet.generator.config(), hnet.spec, 4)
    assert repr(rebuilt.trunk.act) == repr(act)
    rebuilt.load_state_dict(hnet.generator.state_dict())
    c = torch.randn(3, 4)
    for k, v in hnet.generator(c).items():
        assert_close(rebuilt(c)[k], v)


def test_leaky_relu_slope_is_kept():
    cfg = activation_config(nn.LeakyReLU(0.3))
    assert cfg == {"name": "LeakyReLU", "kwargs": {"negative_slope": 0.3}}
    assert activation_module(cfg).negative_slope == 0.3


@pytest.mark.parametrize("bad", [nn.Linear(2, 2), {"name": "Linear", "kwargs": {}}, 3])
def test_activation_must_be_a_torch_activation(bad):
    with pytest.raises(ValueError, match="activation"):
        hl.HeadsGenerator(hl.select(nn.Linear(2, 2)), 4, activation=bad)


@pytest.mark.parametrize("name", list(MLP_GENERATORS))
def test_norm_option_on_every_mlp_generator(name):
    gen = MLP_GENERATORS[name](norm=False, hidden=(16,))
    gen = hl.HyperNetwork(_target(), hl.TaskEmbedding(2, 4), gen).generator
    assert gen.trunk.norm is False
    assert gen.config()["options"]["norm"] is False
    normed = MLP_GENERATORS[name](hidden=(16,))
    normed = hl.HyperNetwork(_target(), hl.TaskEmbedding(2, 4), normed).generator
    assert normed.trunk.norm is True


@pytest.mark.parametrize("name", list(MLP_GENERATORS))
def test_trunk_can_end_without_a_final_activation(name):
    gen = MLP_GENERATORS[name](final_activation=False, hidden=(8, 8), norm=False)
    gen = hl.HyperNetwork(_target(), hl.TaskEmbedding(2, 4), gen).generator
    trunk = gen.trunk
    x = torch.randn(6, trunk.layers[0].in_features)
    ref = trunk.layers[1](torch.relu(trunk.layers[0](x)))  # pFedHN: Linear, ReLU, Linear
    assert_close(trunk(x), ref)
    assert (trunk(x) < 0).any()  # no ReLU at the end
    assert gen.config()["options"]["final_activation"] is False


def test_trunk_forward_pair_respects_final_activation():
    trunk = MLPTrunk(6, (5, 4), final_activation=False, norm=False)
    c, e = torch.randn(3, 2), torch.randn(7, 4)
    full = torch.cat([c[:, None].expand(3, 7, 2), e[None].expand(3, 7, 4)], dim=-1)
    assert_close(trunk.forward_pair(c, e), trunk(full))


def test_registering_the_same_class_again_replaces_it():
    class Rerun(hl.FlatGenerator):
        pass

    try:
        register_generator("rerun_cell")(Rerun)

        class Rerun(hl.FlatGenerator):  # the cell run a second time
            pass

        register_generator("rerun_cell")(Rerun)
        assert hl.get_generator("rerun_cell") is Rerun

        class Other(hl.FlatGenerator):
            pass

        with pytest.raises(ValueError, match="already registered"):
            register_generator("rerun_cell")(Other)
    finally:
        _GENERATORS.pop("rerun_cell", None)


def test_a_trained_generator_is_not_reinitialised():
    target = _target()
    spec = hl.select(target)
    gen = hl.HeadsGenerator(spec, 4)
    with torch.no_grad():
        for p in gen.parameters():
            p.fill_(0.123)  # stands for trained weights
    hnet = hl.HyperNetwork(target, hl.TaskEmbedding(2, 4), gen)
    assert all(bool((p == 0.123).all()) for p in hnet.generator.parameters())
    hl.hyperfan_in_(hnet.generator)  # explicitly, when wanted
    assert not all(bool((p == 0.123).all()) for p in hnet.generator.parameters())


@pytest.mark.parametrize("gen", ["once", "heads"])
def test_pretrained_init_starts_at_the_target(gen):
    torch.manual_seed(0)
    target = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))
    with torch.no_grad():
        target[1].weight.uniform_(0.5, 1.5)  # "pretrained": no longer its constant
    x = torch.randn(4, 5)
    expected = target(x)
    hnet = hl.HyperNetwork(target, hl.TaskEmbedding(3, 4), MLP_GENERATORS[gen](), init="pretrained")
    for t in range(3):
        assert_close(hnet(x, task=t), expected)
    assert_close(hnet(x, task=torch.tensor([0, 2, 1, 0])), expected)
    loss = hnet(x, task=1).pow(2).sum()
    loss.backward()  # trainable from there
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in hnet.parameters())


def test_pretrained_init_needs_one_row_per_element():
    with pytest.raises(ValueError, match="FlatGenerator or HeadsGenerator"):
        hl.HyperNetwork(
            _target(),
            hl.TaskEmbedding(2, 4),
            hl.ChunkedGenerator.factory(chunk_size=8),
            init="pretrained",
        )


def test_train_local_takes_a_loss_and_a_data_iterator():
    torch.manual_seed(0)
    net = nn.Linear(4, 1)
    w = {k: v.detach() for k, v in net.named_parameters()}
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    new, _ = hl.federated.train_local(
        net, w, steps=100, lr=0.05, momentum=0.0, weight_decay=0.0,
        loss=nn.functional.mse_loss, batches=loader,
    )  # fmt: skip
    # the loader has 4 batches: 4 steps of plain SGD on the MSE, by hand
    ref = {k: v.clone().requires_grad_() for k, v in w.items()}
    for xb, yb in loader:
        value = nn.functional.mse_loss(nn.functional.linear(xb, ref["weight"], ref["bias"]), yb)
        grads = torch.autograd.grad(value, list(ref.values()))
        with torch.no_grad():
            for p, g in zip(ref.values(), grads, strict=True):
                p -= 0.05 * g
    for k in w:
        assert_close(new[k], ref[k].detach())
    with pytest.raises(ValueError, match="not both"):
        hl.federated.train_local(net, w, x, y, steps=1, lr=0.1, batches=loader)
    with pytest.raises(ValueError, match="x and y, or batches"):
        hl.federated.train_local(net, w, steps=1, lr=0.1)


def test_train_local_default_draws_are_unchanged():
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    w = {k: v.detach() for k, v in net.named_parameters()}
    x, y = torch.randn(20, 4), torch.randint(3, (20,))
    new, _ = hl.federated.train_local(net, w, x, y, steps=3, lr=0.1, momentum=0.0, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    ref = {k: v.clone().requires_grad_() for k, v in w.items()}
    for _ in range(3):
        idx = torch.randint(20, (20,), generator=g)
        out = nn.functional.linear(x[idx], ref["weight"], ref["bias"])
        grads = torch.autograd.grad(nn.functional.cross_entropy(out, y[idx]), list(ref.values()))
        with torch.no_grad():
            for p, gr in zip(ref.values(), grads, strict=True):
                p -= 0.1 * gr
    for k in w:
        assert_close(new[k], ref[k].detach())


def test_lookahead_through_adam_is_adams_step_and_leaves_everything_as_it_was():
    torch.manual_seed(0)
    hnet = hl.HyperNetwork(_target(), hl.TaskEmbedding(2, 4), hl.FlatGenerator.factory(hidden=(8,)))
    opt = torch.optim.Adam(hnet.parameters(), lr=0.01)
    x = torch.randn(6, 5)
    for _ in range(3):  # Adam has moments by now
        opt.zero_grad()
        hnet(x, task=0).pow(2).sum().backward()
        opt.step()
    opt.zero_grad()
    hnet(x, task=1).pow(2).sum().backward()
    params = dict(hnet.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    state = {
        k: {s: t.clone() if torch.is_tensor(t) else t for s, t in v.items()}
        for k, v in opt.state.items()
    }
    step = hl.continual.lookahead_delta(hnet.named_parameters(), optimizer=opt)
    for k, v in params.items():  # nothing moved
        assert torch.equal(v, before[k])
    for p, st in opt.state.items():
        for s, t in state[p].items():
            assert torch.equal(st[s], t) if torch.is_tensor(t) else st[s] == t
    opt.step()  # the real step is the one predicted
    for k, v in params.items():
        if k in step:
            assert_close(v.detach() - before[k], step[k])
    assert step.keys() == {k for k, v in params.items() if v.grad is not None}
    with pytest.raises(ValueError, match="exactly one"):
        hl.continual.lookahead_delta(hnet.named_parameters())


def test_masked_and_fisher_weighted_output_regularizers():
    torch.manual_seed(0)
    hnet = hl.HyperNetwork(_target(), hl.TaskEmbedding(3, 4), hl.FlatGenerator.factory(hidden=(8,)))
    old = hl.continual.snapshot_outputs(hnet, task=[0, 1])
    with torch.no_grad():
        hnet.generator.readout.bias.add_(0.5)  # every generated number moves by 0.5
    plain = hl.continual.output_regularizer(hnet, old, task=[0, 1])
    numel = sum(p.numel for p in hnet.spec)
    assert_close(plain, torch.tensor(0.25 * numel))
    # a mask keeping only the output layer's weights of task 1
    mask = {name: torch.zeros(2, *hnet.spec[name].shape) for name in hnet.spec.names}
    mask["2.weight"][1] = 1.0
    masked = hl.continual.output_regularizer(hnet, old, task=[0, 1], importance=mask)
    assert_close(masked, torch.tensor(0.25 * 21 / 2))
    # Fisher-weighted: the importance is each task's diagonal Fisher
    x, y = torch.randn(16, 5), torch.randint(3, (16,))
    fisher = [hl.continual.output_fisher(hnet, t, x, y) for t in (0, 1)]
    stacked = {k: torch.stack([f[k] for f in fisher]) for k in fisher[0]}
    weighted = hl.continual.output_regularizer(hnet, old, task=[0, 1], importance=stacked)
    expected = sum(0.25 * v.sum() for v in stacked.values()) / 2
    assert_close(weighted, expected)
    with pytest.raises(ValueError, match="importance"):
        hl.continual.output_regularizer(
            hnet, old, task=[0, 1], importance={"2.weight": torch.ones(5)}
        )


def test_output_fisher_matches_a_loop_of_squared_gradients():
    torch.manual_seed(0)
    hnet = hl.HyperNetwork(_target(), hl.TaskEmbedding(2, 4), hl.HeadsGenerator.factory()).double()
    x, y = torch.randn(5, 5, dtype=torch.float64), torch.randint(3, (5,))
    fisher = hl.continual.output_fisher(hnet, 1, x, y, batch_size=2)
    weights = {k: v.detach().requires_grad_() for k, v in hnet.generate(task=1).items()}
    ref = {k: torch.zeros_like(v) for k, v in weights.items()}
    for i in range(5):
        nll = nn.functional.cross_entropy(hl.call(hnet.target, weights, x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(nll, list(weights.values()))
        for k, g in zip(weights, grads, strict=True):
            ref[k] += g.pow(2) / 5
    for k in ref:
        assert_close(fisher[k], ref[k])


def test_per_task_chunk_embeddings():
    torch.manual_seed(0)
    target = _target()
    spec = hl.select(target)
    dim = hl.ChunkedGenerator.context_size(spec, 4, chunk_size=16, chunk_dim=3)
    assert dim == 4 + -(-spec.numel // 16) * 3
    gen = hl.ChunkedGenerator.factory(
        chunk_size=16, chunk_dim=3, per_context_chunks=True, hidden=(8,)
    )
    hnet = hl.HyperNetwork(target, hl.TaskEmbedding(3, dim), gen)
    gen = hnet.generator  # built by the factory for this target
    assert not hasattr(gen, "chunk_embeddings")  # no shared chunk embeddings
    # task t's chunks come from its own row: the trunk reads [e_t; c_t,j] for chunk j
    row = hnet.conditioner.rows[2]
    k = gen.num_chunks
    full = torch.cat([row[:4].expand(k, 4), row[4:].view(k, 3)], dim=-1)
    flat = gen.readout(gen.trunk(full)).flatten()[: spec.numel]
    ref = dict(zip(spec.names, flat.split([p.numel for p in spec]), strict=True))
    for name, w in hnet.generate(task=2).items():
        assert_close(w.flatten(), ref[name])
    # a gradient step on task 1 leaves the chunk embeddings of tasks 0 and 2 as they were
    before = [r.detach().clone() for r in hnet.conditioner.rows]
    opt = torch.optim.SGD(hnet.parameters(), lr=0.1)
    hnet(torch.randn(4, 5), task=1).pow(2).sum().backward()
    opt.step()
    assert torch.equal(hnet.conditioner.rows[0], before[0])
    assert not torch.equal(hnet.conditioner.rows[1], before[1])
    # the factored regulariser reads the same features
    old = hl.continual.snapshot_outputs(hnet, task=[0, 2])
    factors = hl.continual.snapshot_factors(hnet, task=[0, 2])
    with torch.no_grad():
        hnet.generator.readout.weight.mul_(1.1)
    assert_close(
        hl.continual.factored_output_regularizer(hnet, factors, task=[0, 2]),
        hl.continual.output_regularizer(hnet, old, task=[0, 2]),
    )
    with pytest.raises(ValueError, match="context_size"):
        hl.HyperNetwork(_target(), hl.TaskEmbedding(3, 4), hl.ChunkedGenerator.factory(
            chunk_size=16, chunk_dim=3, per_context_chunks=True))  # fmt: skip
