"""Dynamic outputs: the tiled generator on unseen specs, graph tracing, the graph hypernetwork."""

import copy
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import hyperloom as hl
from hyperloom.generators.tiled import tensor_role


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:
            h = h.relu()
        return self.b(h)


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 5, padding=2),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(5, 3),
    )


def resnet():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), Residual(8), Residual(8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip


# Tiled generator -----------------------------------------------------------------------------
def test_tiled_fills_every_parameter_of_specs_it_never_saw():
    gen = hl.TiledGenerator(hl.select(mlp()), 6, tile=(4, 4), hidden=(16,))
    unseen = [
        nn.Linear(37, 5),
        nn.Conv2d(3, 11, (7, 2)),
        nn.Conv1d(2, 9, 4),
        nn.LayerNorm(13),
        nn.GRU(5, 7),
        nn.Embedding(30, 4),
        resnet(),
    ]
    c = torch.randn(2, 6)
    for module in unseen:
        spec = hl.select(module)
        out = gen(c, spec=spec)
        assert list(out) == list(spec.names)
        for p in spec:
            assert out[p.name].shape == (2, *p.shape), (type(module).__name__, p.name)
            assert torch.isfinite(out[p.name]).all()
        for p in spec:  # distinct contexts give distinct weights (unless constant-initialised)
            if p.init_const is None:
                assert not torch.allclose(out[p.name][0], out[p.name][1])


def test_tiled_is_the_same_function_whatever_spec_it_is_bound_to():
    a = hl.TiledGenerator(hl.select(mlp()), 6, tile=(4, 4), hidden=(16,))
    b = hl.TiledGenerator(hl.TargetSpec(()), 6, tile=(4, 4), hidden=(16,))
    b.load_state_dict(a.state_dict())
    spec = hl.select(cnn())
    c = torch.randn(3, 6)
    for k, v in a(c, spec=spec).items():
        torch.testing.assert_close(b(c, spec=spec)[k], v)
    assert b(c) == {}  # an empty spec of its own: every call passes one
    built = hl.TiledGenerator(spec, 6, tile=(4, 4), hidden=(16,))
    built.load_state_dict(a.state_dict())
    torch.testing.assert_close(built(c)["0.weight"], a(c, spec=spec)["0.weight"])


def test_tiled_fan_in_normalisation_scales_unseen_shapes():
    gen = hl.TiledGenerator(hl.select(nn.Linear(8, 8)), 16, tile=(8, 8))
    hl.hyperfan_in_(gen, gain=2**0.5)
    for fan_in in (20, 200, 2000):
        w = gen(torch.randn(64, 16), spec=hl.select(nn.Linear(fan_in, 40)))["weight"]
        assert w.var().item() == pytest.approx(2 / fan_in, rel=0.3), fan_in


def test_tiled_per_tensor_conditioning():
    spec = hl.select(mlp())
    gen = hl.TiledGenerator(hl.TargetSpec(()), 4, tile=(4, 4), hidden=(8,))
    conds = {n: torch.randn(4) for n in spec.names}
    out = gen(conds, spec=spec)
    shared = gen(conds["1.weight"], spec=spec)
    torch.testing.assert_close(out["1.weight"], shared["1.weight"])  # same vector: same tensor
    assert not torch.allclose(out["3.weight"], shared["3.weight"])
    with pytest.raises(ValueError, match=r"missing \['3.bias'\], unexpected \['nope'\]"):
        gen({**{n: conds[n] for n in spec.names[:-1]}, "nope": conds["1.bias"]}, spec=spec)
    with pytest.raises(ValueError, match="one shape"):
        gen({**conds, "1.bias": torch.randn(2, 4)}, spec=spec)


def test_tiled_integrated_positions_average_each_frequency_over_the_tile():
    from hyperloom.generators.tiled import _positions

    for n in (1, 2, 3, 7):
        got = _positions(n, 4, integrated=True)
        torch.testing.assert_close(got[:, 0], _positions(n, 4)[:, 0])  # the same centres
        fine = torch.linspace(0, 1, 200_001, dtype=torch.float64)[:-1] + 0.5 / 200_000
        dense = torch.cat([fine[:, None], *(f(fine[:, None] * math.pi * 2.0**k) for f in (
            torch.sin, torch.cos) for k in range(4))], 1)  # fmt: skip
        tile = (fine * n).long()
        for i in range(n):  # numerical mean over the tile's span
            want = dense[tile == i, 1:].mean(0)
            torch.testing.assert_close(got[i, 1:], want, atol=1e-4, rtol=0)
    # frequencies finer than a grid of 2^m tiles vanish; with point samples they alias
    two = _positions(2, 6, integrated=True)
    assert two[:, 3:7].abs().max() < 1e-12 and two[:, 9:].abs().max() < 1e-12
    torch.testing.assert_close(_positions(2, 6)[:, 9:].abs(), torch.ones(2, 4, dtype=torch.float64))


def test_tiled_standardize_gives_every_row_zero_mean_and_the_learned_gain():
    spec = hl.select(nn.Sequential(nn.Conv2d(3, 20, 3), nn.Linear(30, 7), nn.Linear(1, 4)))
    torch.manual_seed(0)
    gen = hl.TiledGenerator(spec, 6, tile=(4, 4), hidden=(16,), standardize=True)
    with torch.no_grad():
        gen.matrix_gain.fill_(math.log(3.0))
    w = gen(torch.randn(2, 6))  # a batch of two conditionings
    for name, fan_in in (("0.weight", 27), ("1.weight", 30)):
        rows = w[name].flatten(2)  # (2, out, fan_in)
        torch.testing.assert_close(rows.mean(-1), torch.zeros(rows.shape[:2]), atol=1e-6, rtol=0)
        got = rows.std(-1, unbiased=False) * fan_in**0.5
        torch.testing.assert_close(got, torch.full(rows.shape[:2], 3.0), atol=1e-4, rtol=0)
    plain = hl.TiledGenerator(spec, 6, tile=(4, 4), hidden=(16,))
    plain.load_state_dict({k: v for k, v in gen.state_dict().items() if k != "matrix_gain"})
    c = torch.randn(6)
    a, b = gen(c), plain(c)
    for name in ("0.bias", "1.bias", "2.weight", "2.bias"):  # vectors and fan-in 1: as generated
        torch.testing.assert_close(a[name], b[name])
    assert "matrix_gain" not in plain.state_dict()  # off by default: old checkpoints load
    again = hl.TiledGenerator(spec, 6, **gen.options)  # options and state rebuild it
    again.load_state_dict(gen.state_dict())
    torch.testing.assert_close(again(c)["0.weight"], a["0.weight"])
    gen(c)["1.weight"].pow(2).sum().backward()
    assert gen.matrix_gain.grad is not None and gen.matrix_gain.grad.abs() > 0
    ghn = hl.architectures.GraphHyperNetwork(
        hidden=8, decoder_hidden=(8,), tile=(4, 4), standardize=True
    )
    assert ghn.config()["standardize"] is True and ghn.decoder.options["standardize"] is True
    torch.testing.assert_close(ghn.decoder.matrix_gain.exp(), torch.tensor(2**0.5))


def test_tiled_integrated_option_keeps_the_parameters_and_is_passed_on():
    spec = hl.select(cnn())
    a = hl.TiledGenerator(spec, 6, tile=(4, 4), hidden=(16,))
    b = hl.TiledGenerator(spec, 6, tile=(4, 4), hidden=(16,), integrated=True)
    b.load_state_dict(a.state_dict())
    c = torch.randn(2, 6)
    assert a.options["integrated"] is False and b.options["integrated"] is True
    assert not torch.allclose(a(c)["0.weight"], b(c)["0.weight"])
    ghn = hl.architectures.GraphHyperNetwork(
        hidden=8, decoder_hidden=(8,), tile=(4, 4), integrated=True
    )
    assert ghn.config()["integrated"] is True and ghn.decoder.options["integrated"] is True
    assert ghn(cnn())["0.weight"].shape == (6, 1, 3, 3)


def test_tiled_rejects_bad_options_and_oversized_tensors():
    with pytest.raises(ValueError, match="tile must be two sizes"):
        hl.TiledGenerator(hl.TargetSpec(()), 4, tile=(4,))
    with pytest.raises(ValueError, match="hidden"):
        hl.TiledGenerator(hl.TargetSpec(()), 4, hidden=())
    with pytest.raises(ValueError, match="cond_dim"):
        hl.TiledGenerator(hl.TargetSpec(()), 0)
    gen = hl.TiledGenerator(hl.TargetSpec(()), 4, max_numel=100)
    with pytest.raises(ValueError, match=r"\['weight'\] have more than max_numel=100"):
        gen(torch.randn(4), spec=hl.select(nn.Linear(20, 10)))
    with pytest.raises(TypeError, match="spec must be a TargetSpec"):
        gen(torch.randn(4), spec="weight")


def test_tensor_roles():
    spec = hl.select(resnet())
    roles = {p.name: tensor_role(p) for p in spec}
    assert roles["0.weight"] == "conv" and roles["0.bias"] == "bias"
    assert roles["1.weight"] == "scale" and roles["1.bias"] == "shift"
    assert roles["7.weight"] == "linear"


def test_hypernetwork_with_tiled_reports_dynamic_outputs():
    hnet = hl.HyperNetwork(mlp(), hl.TaskEmbedding(2, 4), hl.TiledGenerator.factory(tile=(4, 4)))
    c = hnet.describe()
    assert c.output_variability == "dynamic" and c.outputs == "tiled (shape-agnostic)"
    assert hnet(torch.randn(5, 1, 4, 4), task=1).shape == (5, 3)


# Graph tracing -------------------------------------------------------------------------------
def _ops(graph):
    return [n.op for n in graph.nodes]


def test_trace_sequential_mlp():
    g = hl.architectures.trace_graph(mlp())
    assert g.method == "fx"
    assert _ops(g) == ["input", "reshape", "linear", "relu", "linear", "output"]
    assert g.edges == ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5))
    assert g.params == {"1.weight": 2, "1.bias": 2, "3.weight": 4, "3.bias": 4}
    assert g.nodes[2].shape == (12, 16, 0, 0)


def test_trace_cnn_with_pooling():
    g = hl.architectures.trace_graph(cnn())
    assert _ops(g) == [
        "input", "conv", "relu", "maxpool", "conv", "avgpool", "reshape", "linear", "output",
    ]  # fmt: skip
    assert g.nodes[4].shape == (5, 6, 5, 5)
    assert g.features().shape == (len(g), hl.architectures.FEATURES)


def test_trace_residual_blocks_and_batchnorm():
    net = resnet()
    g = hl.architectures.trace_graph(net)
    adds = [i for i, n in enumerate(g.nodes) if n.op == "add"]
    assert len(adds) == 2
    preds = {i: sorted(s for s, d in g.edges if d == i) for i in adds}
    for i in adds:  # a skip connection: two inputs, one of them several nodes back
        assert len(preds[i]) == 2 and preds[i][1] - preds[i][0] > 2
    assert sum(n.op == "batchnorm" for n in g.nodes) == 5
    assert set(g.params) == {n for n, _ in net.named_parameters()}
    depth = g.depths()
    assert depth[-1] == max(depth) and all(depth[d] > depth[s] for s, d in g.edges)


def test_trace_falls_back_to_the_module_tree():
    net = Branchy()
    g = hl.architectures.trace_graph(net)
    assert g.method == "module-tree"
    assert _ops(g) == ["input", "linear", "linear", "output"]
    assert set(g.params) == {"a.weight", "a.bias", "b.weight", "b.bias"}
    with pytest.raises(ValueError, match=r"torch\.fx cannot trace Branchy"):
        hl.architectures.trace_graph(net, method="fx")
    with pytest.raises(ValueError, match="method must be"):
        hl.architectures.trace_graph(net, method="jit")
    with pytest.raises(TypeError, match=r"takes an nn\.Module"):
        hl.architectures.trace_graph("net")


def test_trace_shared_module_owns_its_parameters_once():
    lin = nn.Linear(4, 4)
    net = nn.Sequential(lin, nn.ReLU(), lin)
    g = hl.architectures.trace_graph(net)
    assert g.params == {"0.weight": 1, "0.bias": 1}
    assert _ops(g) == ["input", "linear", "relu", "linear", "output"]


# Graph hypernetwork --------------------------------------------------------------------------
@pytest.mark.parametrize("make", [mlp, cnn, resnet, Branchy])
def test_ghn_predicts_every_parameter_and_exports_a_plain_module(make):
    ghn = hl.architectures.GraphHyperNetwork(hidden=16, tile=(4, 4), decoder_hidden=(16,))
    net = make()
    before = copy.deepcopy(net.state_dict())
    weights = ghn(net)
    assert set(weights) == {n for n, _ in net.named_parameters()}
    for name, t in weights.items():
        assert t.shape == net.get_parameter(name).shape
    x = torch.randn(3, 1, 4, 4) if make is not Branchy else torch.randn(3, 4)
    plain = ghn.export(net)
    net.eval(), plain.eval()
    torch.testing.assert_close(plain(x), hl.call(net, weights, x))
    for k, v in net.state_dict().items():  # the target itself is untouched
        torch.testing.assert_close(v, before[k])


def test_ghn_gradients_reach_every_parameter():
    ghn = hl.architectures.GraphHyperNetwork(hidden=16, rounds=2, tile=(4, 4), decoder_hidden=(16,))
    net = resnet()
    loss = hl.call(net, ghn(net), torch.randn(4, 1, 4, 4)).square().mean()
    loss.backward()
    for name, p in ghn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_ghn_message_passing_sees_the_whole_graph():
    ghn = hl.architectures.GraphHyperNetwork(hidden=8, tile=(4, 4))
    short = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    longer = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    # the first layer's embedding depends on what comes after it (backward sweep)
    a = ghn.embed_nodes(hl.architectures.trace_graph(short))[1]
    b = ghn.embed_nodes(hl.architectures.trace_graph(longer))[1]
    assert not torch.allclose(a, b)
    no_rounds = hl.architectures.GraphHyperNetwork(hidden=8, rounds=0, tile=(4, 4))
    no_rounds.load_state_dict(ghn.state_dict())
    g = hl.architectures.trace_graph(
        longer
    )  # without message passing: each node's own features only
    torch.testing.assert_close(no_rounds.embed_nodes(g), no_rounds.embed(g.features()))


def test_ghn_initial_weights_have_the_fan_in_scale():
    ghn = hl.architectures.GraphHyperNetwork(hidden=32, tile=(16, 16))
    net = nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 10))
    w = ghn(net)
    assert w["0.weight"].var().item() == pytest.approx(2 / 300, rel=0.35)
    assert w["2.weight"].var().item() == pytest.approx(2 / 200, rel=0.35)


def test_ghn_describe_and_errors():
    ghn = hl.architectures.GraphHyperNetwork(hidden=8, tile=(4, 4))
    c = ghn.describe()
    assert c.output_variability == "dynamic" and c.inputs == "architecture graph"
    assert c.architecture.startswith("graph")
    assert ghn.config()["tile"] == [4, 4]
    with pytest.raises(TypeError, match=r"takes an nn\.Module"):
        ghn("resnet")
    with pytest.raises(ValueError, match="rounds"):
        hl.architectures.GraphHyperNetwork(rounds=-1)
    with pytest.raises(ValueError, match="method"):
        hl.architectures.GraphHyperNetwork(method="jit")


def test_ghn_trains_to_fit_a_small_task():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] + x[:, 1] > 0).long()
    ghn = hl.architectures.GraphHyperNetwork(hidden=16, tile=(8, 8), decoder_hidden=(32,))
    nets = [
        nn.Sequential(nn.Linear(8, w), nn.ReLU(), nn.Linear(w, 2)) for w in (8, 16, 24)
    ]  # fmt: skip
    opt = torch.optim.Adam(ghn.parameters(), lr=3e-3)
    for step in range(150):
        net = nets[step % 3]
        loss = F.cross_entropy(hl.call(net, ghn(net), x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    unseen = nn.Sequential(nn.Linear(8, 40), nn.ReLU(), nn.Linear(40, 2))  # wider than any
    acc = (hl.call(unseen, ghn(unseen), x).argmax(-1) == y).float().mean().item()
    assert acc > 0.85


# Recipe -------------------------------------------------------------------------------------
def test_recipe_families_keep_held_out_architectures_out_of_training():
    import random

    from hyperloom.recipes import ghn as recipe

    for pooling in recipe.POOLINGS:
        rng = random.Random(0)
        sampled = {recipe.sample_arch(rng, pooling) for _ in range(2000)}
        assert not sampled & set(recipe.HELD_OUT)
        assert set(recipe.IN_FAMILY) <= sampled
        assert not {a.name for a in sampled} & {a.name for a in recipe.HELD_OUT}
    for arch in recipe.HELD_OUT:  # each held-out one is outside the family on some axis
        if arch.kind == "mlp":
            assert len(arch.widths) > max(recipe.MLP_DEPTHS) or min(arch.widths) > max(
                recipe.MLP_WIDTHS
            )
        else:
            assert (
                len(arch.channels) > max(recipe.CNN_DEPTHS)
                or min(arch.channels) > max(recipe.CNN_CHANNELS)
                or arch.kernel not in recipe.CNN_KERNELS
            )
    for arch in (*recipe.HELD_OUT, *recipe.IN_FAMILY):
        net = arch.build((1, 28, 28), 10)
        assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
        assert hl.architectures.trace_graph(net).method == "fx"


def test_recipe_pooling_placement():
    import random

    from hyperloom.recipes import ghn as recipe

    first = recipe.Arch("cnn", channels=(8, 8, 8), kernel=3)
    placed = recipe.Arch("cnn", channels=(8, 8, 8), kernel=3, pools=(1, 2))
    assert first.pooled == (0, 1) and first.name == "cnn-8-8-8-k3"
    assert placed.name == "cnn-8-8-8-k3-p12"
    assert recipe.Arch("cnn", channels=(8, 8, 8), pools=(1, 0)) == first  # the default, as None
    with pytest.raises(ValueError, match=r"\(0, 3\)"):
        recipe.Arch("cnn", channels=(8, 8, 8), pools=(0, 3))
    kinds = [type(m).__name__ for m in placed.build((1, 28, 28), 10)]
    assert kinds[:7] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU"]
    assert kinds[7] == "MaxPool2d"
    rng = random.Random(0)
    three = [a for a in (recipe.sample_arch(rng, "random") for _ in range(3000)) if a.kind == "cnn"]
    assert {a.pooled for a in three if len(a.channels) == 3} == {(0, 1), (0, 2), (1, 2)}
    assert {a.pooled for a in three if len(a.channels) == 2} == {(0, 1)}
    with pytest.raises(ValueError, match="'middle'"):
        recipe.sample_arch(rng, "middle")


def test_recipe_batchnorm_family():
    import random

    from hyperloom.recipes import ghn as recipe

    plain, normed = random.Random(3), random.Random(3)
    for _ in range(200):  # the flag draws no random number: the same family, normalised
        a, b = recipe.sample_arch(plain, "random"), recipe.sample_arch(normed, "random", True)
        assert b == replace(a, batchnorm=True) and b.name == a.name + "-bn"
        assert b not in {replace(h, batchnorm=True) for h in recipe.HELD_OUT}
    cnn = recipe.Arch("cnn", channels=(8, 8, 8), kernel=3, batchnorm=True).build((1, 28, 28), 10)
    kinds = [type(m).__name__ for m in cnn]
    assert kinds[:4] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert kinds.count("BatchNorm2d") == 3
    assert all(m.bias is None for m in cnn if isinstance(m, nn.Conv2d))
    assert cnn[-1].bias is not None  # the classifier keeps its bias
    mlp = recipe.Arch("mlp", widths=(16, 16), batchnorm=True).build((1, 8, 8), 10)
    assert [type(m).__name__ for m in mlp][1:4] == ["Linear", "BatchNorm1d", "ReLU"]
    assert hl.architectures.trace_graph(cnn).method == "fx"
    ops = [n.op for n in hl.architectures.trace_graph(cnn).nodes]
    assert ops.count("batchnorm") == 3


def test_bn_statistics_are_averages_over_the_given_images():
    from hyperloom.recipes import ghn as recipe

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(64, 5) * 3 + 1
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k}
    with torch.no_grad():
        h = net[0](x)
    assert recipe.bn_statistics_(net, x, batch=64) is net and not net.training
    torch.testing.assert_close(net[1].running_mean, h.mean(0))
    torch.testing.assert_close(net[1].running_var, h.var(0))  # one batch: its unbiased variance
    recipe.bn_statistics_(net, x, batch=16)  # four equal batches: the mean of their statistics
    torch.testing.assert_close(net[1].running_mean, h.mean(0))
    var = torch.stack([h[i : i + 16].var(0) for i in range(0, 64, 16)]).mean(0)
    torch.testing.assert_close(net[1].running_var, var)
    assert net[1].momentum == 0.1  # restored
    after = {k: v for k, v in net.state_dict().items() if "running" not in k}
    for k, v in before.items():
        if k.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(after[k], v, rtol=0, atol=0)
    plain = nn.Sequential(nn.Linear(5, 2))
    calls = []
    plain.register_forward_hook(lambda *_: calls.append(1))
    assert recipe.bn_statistics_(plain, x) is plain and not plain.training
    assert not calls  # nothing to average: no forward pass
    with pytest.raises(ValueError, match="got 1 images"):
        recipe.bn_statistics_(net, x[:1])
    with pytest.raises(ValueError, match="got 33 images in batches of 16"):  # a last batch of 1
        recipe.bn_statistics_(net, torch.randn(33, 5), batch=16)
    assert net[1].momentum == 0.1


def test_recipe_runs_on_a_tiny_scenario(tmp_path):
    from hyperloom.recipes import ghn as recipe

    config = recipe.Config(
        dataset="digits", steps=20, hidden=16, decoder_hidden=(16,), tile=(8, 8),
        finetune_steps=2, eval_images=100, out=str(tmp_path), quiet=True,
    )  # fmt: skip
    result = recipe.run(config)
    rows = result["results"]
    assert [r["architecture"] for r in rows] == [  # batch norm is on by default
        a.name + "-bn" for a in (*recipe.HELD_OUT, *recipe.IN_FAMILY)
    ]
    for r in rows:
        for key in ("predicted_0", "predicted_1", "predicted_2", "random_0", "random_2"):
            assert 0.0 <= r[key] <= 100.0
    s = result["summary"]
    assert s["held_out_count"] == len(recipe.HELD_OUT)
    run_dir = Path(result["run_dir"])
    ghn_config = json.loads((run_dir / "ghn.json").read_text())
    assert s["ghn_params"] == sum(  # the GHN's size, not the frozen averaged copy's 0
        p.numel() for p in hl.architectures.GraphHyperNetwork(**ghn_config).parameters()
    )
    for name in ("results.json", "results.csv", "finetune.png", "ghn.safetensors", "ghn.json"):
        assert (run_dir / name).exists(), name
    # the saved GHN reloads and predicts weights for a network it never saw
    ghn = hl.architectures.GraphHyperNetwork(**json.loads((run_dir / "ghn.json").read_text()))
    ghn.load_state_dict(load_file(run_dir / "ghn.safetensors"))
    net = recipe.Arch("mlp", widths=(20,)).build((1, 8, 8), 10)
    assert set(ghn(net)) == {"1.weight", "1.bias", "3.weight", "3.bias"}


def test_recipe_runs_with_the_first_default_setting(tmp_path):
    from hyperloom.recipes import ghn as recipe

    config = recipe.Config(
        dataset="digits", steps=10, hidden=16, decoder_hidden=(16,), tile=(8, 8),
        pooling="first", archs_per_step=2, integrated=False, standardize=False, batchnorm=False,
        finetune_steps=2, eval_images=100, out=str(tmp_path), quiet=True,
    )  # fmt: skip
    result = recipe.run(config)
    rows = result["results"]
    assert [r["architecture"] for r in rows] == [
        a.name for a in (*recipe.HELD_OUT, *recipe.IN_FAMILY)
    ]
    saved = json.loads((Path(result["run_dir"]) / "ghn.json").read_text())
    assert not saved["standardize"] and not saved["integrated"]
    assert all(0.0 <= r[k] <= 100.0 for r in rows for k in ("predicted_0", "random_2"))


def test_recipe_rejects_bad_options(tmp_path):
    from hyperloom.recipes import ghn as recipe

    with pytest.raises(ValueError, match="archs_per_step"):
        recipe.run(recipe.Config(dataset="digits", archs_per_step=0, out=str(tmp_path)))
    for bad in ({"warmup": 1.0}, {"ema": -0.1}, {"ema": 1.0}):
        with pytest.raises(ValueError, match="warmup and ema"):
            recipe.run(recipe.Config(dataset="digits", out=str(tmp_path), **bad))
    with pytest.raises(ValueError, match="kind must be"):
        recipe.Arch("rnn").build((1, 8, 8), 10)


def test_tiled_hyperfan_with_only_matrices_or_only_vectors():
    for module, name in ((nn.Linear(30, 20, bias=False), "weight"), (nn.LayerNorm(7), "bias")):
        gen = hl.hyperfan_in_(hl.TiledGenerator(hl.select(module), 4, tile=(4, 4)))
        assert gen(torch.randn(4))[name].shape == module.get_parameter(name).shape


# Relative kernel offsets and width-aware tiling (issue #27) ----------------------------------
def test_relative_offsets_are_fractions_of_the_kernel_and_agree_at_3x3():
    from hyperloom.generators.tiled import _offsets

    torch.testing.assert_close(_offsets(3, "relative"), _offsets(3, "absolute"))
    for k in (1, 5, 7, 11):
        rel = _offsets(k, "relative")
        torch.testing.assert_close(rel, (torch.arange(k, dtype=torch.float64) + 0.5) / k - 0.5)
        assert rel.abs().max() < 0.5 and rel.sum().abs() < 1e-12
    assert _offsets(7, "absolute").abs().max() == 1.0  # outside any 3x3 or 5x5 kernel's range
    spec3, spec7 = (hl.select(nn.Conv2d(2, 5, k)) for k in (3, 7))
    a = hl.TiledGenerator(hl.TargetSpec(()), 6, tile=(4, 4), hidden=(16,))
    b = hl.TiledGenerator(hl.TargetSpec(()), 6, tile=(4, 4), hidden=(16,), offsets="relative")
    b.load_state_dict(a.state_dict())  # the option adds no parameter
    c = torch.randn(6)
    torch.testing.assert_close(a(c, spec=spec3), b(c, spec=spec3))
    assert not torch.allclose(a(c, spec=spec7)["weight"], b(c, spec=spec7)["weight"])
    ghn = hl.architectures.GraphHyperNetwork(hidden=8, tile=(4, 4), offsets="relative")
    assert ghn.config()["offsets"] == "relative" == ghn.decoder.options["offsets"]
    with pytest.raises(ValueError, match="'centred'"):
        hl.TiledGenerator(hl.TargetSpec(()), 6, offsets="centred")


def bn_cnn(c):
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * c, 3),
    )  # fmt: skip


def test_width_tiling_predicts_a_wide_net_as_a_narrow_one_with_repeated_channels():
    torch.manual_seed(0)
    opts = {"hidden": 8, "decoder_hidden": (8,), "tile": (4, 4), "standardize": True}
    plain = hl.architectures.GraphHyperNetwork(**opts)
    tiled = hl.architectures.GraphHyperNetwork(**opts, max_width={"conv": 8})
    tiled.load_state_dict(plain.state_dict())
    narrow, wide = bn_cnn(6), bn_cnn(12)  # 12 channels > 8: predicted as 6, each repeated
    w6, w12 = plain(narrow), tiled(wide)
    rep = torch.arange(12) % 6
    torch.testing.assert_close(w12["0.weight"], w6["0.weight"][rep])
    torch.testing.assert_close(w12["1.weight"], w6["1.weight"][rep])  # batch norm follows
    torch.testing.assert_close(w12["4.weight"], w6["4.weight"][rep][:, rep] * 0.5**0.5)
    cols = torch.arange(48) % 24  # the classifier reads the flattened (12, 2, 2) as 2 x (6, 2, 2)
    torch.testing.assert_close(w12["9.weight"], w6["9.weight"][:, cols] * 0.5**0.5)
    torch.testing.assert_close(w12["9.bias"], w6["9.bias"])
    x = torch.randn(16, 1, 8, 8)  # in training mode batch norm removes the sqrt(2) of layer 2
    y6, y12 = hl.call(narrow, w6, x), hl.call(wide, w12, x)
    b = w6["9.bias"]
    torch.testing.assert_close(y12 - b, (y6 - b) * 2**0.5, atol=1e-4, rtol=1e-4)
    # within the widths, width tiling changes nothing; an MLP's 64 pixels are never repeated
    for net in (bn_cnn(8), mlp(), resnet()):
        for name, w in tiled(net).items():
            torch.testing.assert_close(w, plain(net)[name])
    odd = tiled(bn_cnn(9))  # 9 > 8: 5 channels, repeated to 9 (0-4, 0-3)
    assert odd["0.weight"].shape == (9, 1, 3, 3)
    torch.testing.assert_close(odd["0.weight"][5:], odd["0.weight"][:4])
    torch.testing.assert_close(odd["4.weight"][:, 5:], odd["4.weight"][:, :4])
    wide_mlp = nn.Sequential(nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 3))
    w = hl.architectures.GraphHyperNetwork(**opts, max_width={"linear": 10})(wide_mlp)
    torch.testing.assert_close(w["0.weight"][10:], w["0.weight"][:10])  # inputs: as they are
    assert not torch.allclose(w["0.weight"][:, 8:], w["0.weight"][:, :8])
    assert w["2.weight"].shape == (3, 20)
    torch.testing.assert_close(w["2.weight"][:, 10:], w["2.weight"][:, :10])
    for bad in ({"lstm": 8}, {"conv": 0}):
        with pytest.raises(ValueError, match="max_width"):
            hl.architectures.GraphHyperNetwork(max_width=bad)


def test_recipe_sweep_and_loading_a_saved_ghn(tmp_path):
    from hyperloom.recipes import ghn as recipe

    config = recipe.Config(
        dataset="digits", steps=5, hidden=8, decoder_hidden=(8,), tile=(8, 8), archs_per_step=1,
        offsets="relative", finetune_steps=1, eval_images=60, out=str(tmp_path), quiet=True,
    )  # fmt: skip
    first = recipe.run(config)
    run_dir = Path(first["run_dir"])
    assert json.loads((run_dir / "ghn.json").read_text())["offsets"] == "relative"
    again = recipe.run(replace(config, ghn=str(run_dir), steps=1000, sweep=True))
    assert again["summary"]["architectures_seen"] == 0  # evaluated as saved, not trained
    for a, b in zip(first["results"], again["results"], strict=True):
        assert a["predicted_0"] == b["predicted_0"]
    sweep = json.loads((Path(again["run_dir"]) / "results.json").read_text())["sweep"]
    assert [(r["axis"], r["value"]) for r in sweep] == [(a, v) for a, v, _ in recipe.SWEEP]
    for r in sweep:
        wider = r["axis"] in ("cnn width", "mlp width") and r["value"] > (
            32 if r["axis"] == "cnn width" else 128
        )
        assert 0.0 <= r["untiled"] <= 100.0 and (wider or r["tiled"] == r["untiled"])
    assert (Path(again["run_dir"]) / "sweep.png").exists()
    with pytest.raises(ValueError, match="holds no ghn"):
        recipe.load_ghn(tmp_path)
