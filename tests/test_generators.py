"""Every registered generator: shapes, dtypes, gradients, batched equals looped, config round trip.

Parametrized over ``hl.list_generators()``, so a newly registered generator is tested without
anyone listing it here.
"""

import pytest
import torch
from torch import nn

import hyperloom as hl

# Options that keep each generator small for a small target; generators not listed use their
# defaults, which must work too.
SMALL = {
    "once": {"hidden": (16,)},
    "heads": {"hidden": (16,)},
    "chunked": {"chunk_size": 37, "chunk_dim": 4, "hidden": (16,)},
    "component": {"component_dim": 4, "hidden": (16,)},
    "lowrank": {"rank": 2, "hidden": (16,)},
    "attention": {"token_dim": 8, "depth": 1, "num_heads": 2, "ff_dim": 16},
    "conv": {"block_out": 2, "block_in": 2, "hidden": (16,)},
}
COND = 6


def _target():
    return nn.Sequential(
        nn.Linear(5, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)
    )


def _gen(name, spec, cond_dim=COND):
    cls = hl.get_generator(name)
    return cls(spec, cond_dim, **SMALL.get(name, {}))


NAMES = hl.list_generators()


def test_registry_lists_the_five_strategies():
    assert {"once", "heads", "chunked", "component", "lowrank"} <= set(NAMES)
    with pytest.raises(ValueError, match="unknown generator 'nope'; registered: once"):
        hl.get_generator("nope")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lead", [(), (4,), (2, 3)])
def test_shapes_keep_leading_dims(name, lead):
    spec = hl.select(_target())
    out = _gen(name, spec)(torch.randn(*lead, COND))
    assert list(out) == list(spec.names)
    for p in spec:
        assert out[p.name].shape == (*lead, *p.shape)
        assert out[p.name].dtype == p.dtype


@pytest.mark.parametrize("name", NAMES)
def test_float64(name):
    spec = hl.select(_target().double())
    gen = _gen(name, spec).double()
    out = gen(torch.randn(3, COND, dtype=torch.float64))
    assert all(t.dtype == torch.float64 for t in out.values())


@pytest.mark.parametrize("name", NAMES)
def test_batched_equals_looped(name):
    spec = hl.select(_target())
    gen = _gen(name, spec)
    hl.hyperfan_in_(gen)
    c = torch.randn(5, COND)
    batched = gen(c)
    for i in range(5):
        one = gen(c[i])
        for k in spec.names:
            torch.testing.assert_close(batched[k][i], one[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter_and_the_context(name):
    spec = hl.select(_target())
    gen = _gen(name, spec)
    hl.hyperfan_in_(gen)
    c = torch.randn(3, COND, requires_grad=True)
    out = gen(c)
    loss = sum((t * torch.randn_like(t)).sum() for t in out.values())
    loss.backward()
    for pname, p in gen.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    assert c.grad is not None and c.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_constant_initialised_tensors_start_at_their_constant(name):
    spec = hl.select(_target())
    gen = hl.hyperfan_in_(_gen(name, spec))
    out = gen(torch.randn(64, COND))
    if name == "chunked":  # a shared chunk row also serves weights: centred, not exact
        assert out["1.weight"].mean().item() == pytest.approx(1.0, abs=0.1)
        assert out["1.weight"].std().item() < 0.5
        return
    torch.testing.assert_close(out["1.weight"], torch.ones(64, 8))
    torch.testing.assert_close(out["1.bias"], torch.zeros(64, 8))


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    spec = hl.select(_target())
    gen = _gen(name, spec)
    rebuilt = hl.build_generator(gen.config(), spec, COND)
    assert type(rebuilt) is type(gen) and rebuilt.options == gen.options
    rebuilt.load_state_dict(gen.state_dict())
    c = torch.randn(2, COND)
    for k, v in gen(c).items():
        torch.testing.assert_close(rebuilt(c)[k], v)


@pytest.mark.parametrize("name", NAMES)
def test_built_eagerly_and_by_factory(name):
    spec = hl.select(_target())
    cls = hl.get_generator(name)
    make = cls.factory(**SMALL.get(name, {}))
    assert repr(make).startswith(f"{cls.__name__}.factory(")
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.get(name, {}).items()}
    assert make.config() == {"name": name, "options": options}
    torch.manual_seed(1)
    gen = make(spec, COND)
    torch.manual_seed(1)
    eager = _gen(name, spec)
    assert type(gen) is cls and gen.spec == spec and gen.cond_dim == COND
    for (k, v), (k2, v2) in zip(gen.state_dict().items(), eager.state_dict().items(), strict=True):
        assert k == k2
        torch.testing.assert_close(v, v2)  # the same parameters, created in the constructor
    with pytest.raises(ValueError, match="cond_dim"):
        make(spec, 0)
    with pytest.raises(TypeError, match="takes a TargetSpec"):
        cls(None, COND, **SMALL.get(name, {}))
    with pytest.raises(TypeError, match="no option 'hiden'"):
        cls.factory(hiden=(4,))


@pytest.mark.parametrize("name", NAMES)
def test_a_generator_given_built_keeps_its_parameters(name):
    target = _target()
    gen = _gen(name, hl.select(target))
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    hnet = hl.HyperNetwork(target, hl.TaskEmbedding(2, COND), gen)
    assert hnet.generator is gen
    for k, v in gen.state_dict().items():
        torch.testing.assert_close(v, before[k])  # no hyperfan re-initialisation
    with pytest.raises(ValueError, match="was built for a spec of"):
        hl.HyperNetwork(nn.Linear(2, 2), hl.TaskEmbedding(2, COND), gen)
    with pytest.raises(ValueError, match="cond_dim=4"):
        hl.HyperNetwork(target, hl.TaskEmbedding(2, 4), gen)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_conditioning_size(name):
    gen = _gen(name, hl.select(_target()))
    with pytest.raises(ValueError, match=r"expects conditioning of shape \(\*, 6\), got \(4, 5\)"):
        gen(torch.randn(4, 5))


def test_chunked_covers_the_spec_and_cuts_the_last_chunk():
    spec = hl.select(_target())
    gen = hl.ChunkedGenerator(spec, COND, chunk_size=37)
    assert gen.num_chunks == -(-spec.numel // 37)
    assert gen.chunk_embeddings.shape == (gen.num_chunks, 8)


def test_component_groups_same_shapes():
    net = nn.Sequential(*[nn.Linear(8, 8) for _ in range(6)])
    gen = hl.ComponentGenerator(hl.select(net), COND)
    assert len(gen.heads) == 2  # (8, 8) weights and (8,) biases
    # one head per shape: the hypernetwork does not grow with depth past the embeddings
    deeper = hl.ComponentGenerator(
        hl.select(nn.Sequential(*[nn.Linear(8, 8) for _ in range(12)])), COND
    )
    grown = sum(p.numel() for p in deeper.parameters()) - sum(p.numel() for p in gen.parameters())
    assert grown == 12 * 8  # 12 more tensors x component_dim 8


def test_lowrank_rank():
    gen = hl.LowRankGenerator(hl.select(nn.Linear(20, 30)), COND, rank=3)
    w = gen(torch.randn(COND))["weight"]
    assert torch.linalg.matrix_rank(w).item() == 3
