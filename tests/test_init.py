"""Hyperfan initialisation: generated variances against the targets' fans and own init."""

import math
import statistics

import pytest
import torch
from torch import nn

import hyperloom as hl

DRAWS = 256


def _variance(gen, name, cond_dim=16):
    w = gen(torch.randn(DRAWS, cond_dim))[name]
    return w.var().item()


EXACT = {
    "once": {"hidden": (64,)},
    "heads": {"hidden": (64,)},
    "component": {"hidden": (64,)},
    "chunked": {"chunk_size": 64, "hidden": (64,)},
    "lowrank": {"rank": 8, "hidden": (64,)},
    "attention": {"token_dim": 32},
    "conv": {"hidden": (64,)},
}


@pytest.mark.parametrize("name", list(EXACT))
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_hyperfan_hits_the_fan_variance(name, mode):
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 128))
    if name == "chunked":  # a shared chunk head is exact when the generated weights share fans
        net = nn.ModuleList([nn.Linear(48, 96), nn.Linear(48, 96)])
    spec = hl.select(net, "*.weight")
    gen = hl.get_generator(name)(spec, 16, **EXACT[name])
    (hl.hyperfan_in_ if mode == "fan_in" else hl.hyperfan_out_)(gen)
    for p in spec:
        want = 1 / (p.fan_in if mode == "fan_in" else p.fan_out)
        got = _variance(gen, p.name)
        assert got == pytest.approx(want, rel=0.2), (p.name, got, want)


@pytest.mark.parametrize("name", list(EXACT))
def test_gain_reproduces_the_targets_own_default_init(name):
    # PyTorch's default nn.Linear weight init is U(-1/sqrt(fan_in), 1/sqrt(fan_in)):
    # variance 1 / (3 fan_in), i.e. hyperfan-in with gain 1/sqrt(3).
    net = nn.Linear(128, 64)
    own = torch.stack([nn.Linear(128, 64).weight for _ in range(20)]).var().item()
    spec = hl.select(net, "weight")
    gen = hl.hyperfan_in_(hl.get_generator(name)(spec, 16, **EXACT[name]), gain=3**-0.5)
    assert _variance(gen, "weight") == pytest.approx(own, rel=0.2)


def test_biases_get_pytorchs_default_bias_variance():
    net = nn.Linear(50, 400)
    gen = hl.hyperfan_in_(hl.HeadsGenerator(hl.select(net), 16))
    own = torch.stack([nn.Linear(50, 400).bias for _ in range(50)]).var().item()
    assert _variance(gen, "bias") == pytest.approx(own, rel=0.2)


def test_without_hyperfan_the_variance_is_off():
    # the test above could fail: the default nn.Linear init of the output layer is far off
    spec = hl.select(nn.Linear(64, 32), "weight")
    gen = hl.FlatGenerator(spec, 16)
    assert not 0.5 < _variance(gen, "weight") * 64 < 2


def _deep(depth=10, width=128):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers)


def _scale_ratio(hnet, width=128):
    """Second moment of the last pre-activation over the first's, inputs ~ N(0, I)."""
    weights = hnet.generate(task=0)
    h = torch.randn(256, width)
    moments = []
    for i in range(0, len(hnet.target), 2):
        h = torch.nn.functional.linear(h, weights[f"{i}.weight"], weights[f"{i}.bias"])
        moments.append(h.pow(2).mean().item())
        h = torch.relu(h)
    return moments[-1] / moments[0]


# A single random 10-layer ReLU network, even He-initialised by hand, ends anywhere between
# about 0.4x and 2.5x its first layer's scale: the median of 5 independent hypernetworks is
# the statistic. Low-rank generators are left out: a rank-4 128x128 matrix has the right
# element variance but passes only a 4-dimensional subspace, so a deep stack of them shrinks.
ONE_CHUNK_PER_LAYER = 128 * 128 + 128


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("once", {}),
        ("heads", {}),
        ("component", {}),
        ("chunked", {"chunk_size": ONE_CHUNK_PER_LAYER}),
    ],
)
def test_activations_keep_their_scale_through_ten_layers(name, options):
    ratios = []
    for _ in range(5):
        gen = hl.get_generator(name).factory(**options)
        hnet = hl.HyperNetwork(_deep(), hl.TaskEmbedding(1, 16), gen, gain=math.sqrt(2))
        with torch.no_grad():
            ratios.append(_scale_ratio(hnet))
    assert 0.5 < statistics.median(ratios) < 2, ratios


def test_activations_explode_without_hyperfan():
    ratios = []
    for _ in range(5):
        hnet = hl.HyperNetwork(
            _deep(), hl.TaskEmbedding(1, 16), hl.FlatGenerator.factory(), init=None
        )
        with torch.no_grad():
            ratios.append(_scale_ratio(hnet))
    assert statistics.median(ratios) > 100, ratios


def test_target_variance_rules():
    spec = hl.select(nn.Sequential(nn.Conv2d(3, 8, 3), nn.LayerNorm(4)))
    assert hl.target_variance(spec["0.weight"], "fan_in", 1.0) == pytest.approx(1 / 27)
    assert hl.target_variance(spec["0.weight"], "fan_out", 2.0) == pytest.approx(4 / 72)
    assert hl.target_variance(spec["0.bias"], "fan_in", 1.0) == pytest.approx(1 / 81)
    assert hl.target_variance(spec["1.weight"], "fan_in", 1.0) == 0.0
    with pytest.raises(ValueError, match="mode must be"):
        hl.target_variance(spec["0.weight"], "fan_avg", 1.0)


def test_hyperfan_needs_a_generator():
    with pytest.raises(TypeError, match="takes a Generator"):
        hl.hyperfan_in_(nn.Linear(2, 2))


@pytest.mark.parametrize(
    "make",
    [
        lambda: hl.ChunkedGenerator.factory(chunk_size=64),
        lambda: hl.AttentionGenerator.factory(output="chunked", chunk_size=64),
    ],
    ids=["chunked", "attention-chunked"],
)
def test_one_chunk_longer_than_the_target_initialises_finitely(make):
    # 10 weights, 64 per chunk: 54 readout rows serve no element and must be zeros, not NaN
    hnet = hl.HyperNetwork(nn.Linear(4, 2), hl.TaskEmbedding(2, 4), make())
    assert all(bool(torch.isfinite(p).all()) for p in hnet.generator.parameters())
    hnet(torch.randn(3, 4), task=0).sum().backward()
    assert all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in hnet.parameters())
