"""The performance paths of the generators, conditioners and initialisation (issue 4).

Oracles: each fast path against the plain path it replaces, on random weights, outputs and
gradients (first and second order); each test also checks that the fast path was taken (or, where
it must not be, that it was not), so a silent fall-back fails it. Nothing here is timed.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.testing import assert_close

import hyperloom as hl
from hyperloom.functional.swap import call_batched_vmap
from hyperloom.generators import once
from hyperloom.generators.once import readout_parts


@pytest.fixture
def parts_always(monkeypatch):
    """Every readout large enough for the concatenation-free backward."""
    monkeypatch.setattr(once, "PARTS_MIN_ELEMENTS", 0)


@pytest.fixture
def parts_never(monkeypatch):
    monkeypatch.setattr(once, "PARTS_MIN_ELEMENTS", 1 << 62)


def _took_parts(t: Tensor) -> bool:
    """Whether ``t`` (a generated tensor) comes out of ``_ReadoutParts``, through views."""
    fn, seen = t.grad_fn, 0
    while fn is not None and seen < 4:
        if "_ReadoutParts" in type(fn).__name__:
            return True
        fn = fn.next_functions[0][0] if fn.next_functions else None
        seen += 1
    return False


SIZES = [12, 3, 7, 5]


def _readout_case(bias: bool = True):
    readout = nn.Linear(6, sum(SIZES), bias=bias)
    h = torch.randn(4, 6, requires_grad=True)
    cot = [torch.randn(4, n) for n in SIZES]
    return readout, h, cot


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("unused", [None, 1])
def test_readout_parts_equal_split_outputs_and_gradients(parts_always, bias, unused):
    readout, h, cot = _readout_case(bias)
    wrt = [h, *readout.parameters()]
    fast = readout_parts(readout, h, SIZES)
    assert all(_took_parts(t) for t in fast)
    ref = list(readout(h).split(SIZES, dim=-1))
    assert_close(fast, ref)

    def loss(parts):  # a part nobody uses gets no gradient at all
        return sum(
            (p * c).sum() for i, (p, c) in enumerate(zip(parts, cot, strict=True)) if i != unused
        )

    assert_close(torch.autograd.grad(loss(fast), wrt), torch.autograd.grad(loss(ref), wrt))


def test_readout_parts_second_order_gradients(parts_always):
    readout, h, cot = _readout_case()
    wrt = [h, *readout.parameters()]

    def grad_of_grad(parts):
        out = sum((torch.tanh(p) * c).sum() for p, c in zip(parts, cot, strict=True))
        g = torch.autograd.grad(out, wrt, create_graph=True)
        return torch.autograd.grad(sum(gi.pow(2).sum() for gi in g), wrt)

    fast = readout_parts(readout, h, SIZES)
    assert _took_parts(fast[0])
    assert_close(grad_of_grad(fast), grad_of_grad(list(readout(h).split(SIZES, dim=-1))))


def test_readout_parts_keeps_to_the_module_where_it_must(parts_always):
    readout, h, _ = _readout_case()
    with torch.no_grad():  # inference: nothing to save
        assert readout_parts(readout, h, SIZES)[0].grad_fn is None
    assert not _took_parts(readout_parts(readout, h[0], SIZES)[0])  # one context, 1-D
    calls = []
    hook = readout.register_forward_hook(lambda *a: calls.append(1))
    assert not _took_parts(readout_parts(readout, h, SIZES)[0])  # hooks see the module run
    hook.remove()
    assert calls == [1]
    # under torch.func transforms the plain ops run (the function has no vmap rule)
    out = torch.vmap(lambda hi: readout_parts(readout, hi, SIZES)[0])(h[:, None].expand(4, 2, 6))
    assert_close(out, readout(h)[:, None, :12].expand(4, 2, 12))


def test_readout_parts_threshold(parts_never):
    readout, h, _ = _readout_case()
    assert not _took_parts(readout_parts(readout, h, SIZES)[0])
    once.PARTS_MIN_ELEMENTS = h.shape[0] * sum(SIZES)  # monkeypatch restores it
    assert _took_parts(readout_parts(readout, h, SIZES)[0])


def _target() -> nn.Module:
    # a constant-initialised tensor (LayerNorm scale) exercises the generator's offsets
    return nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.ReLU(), nn.Linear(4, 3))


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("lead", [(6,), (3, 2)])
def test_flat_generator_parts_equal_generic_path(monkeypatch, parts_always, norm, lead):
    gen = hl.FlatGenerator(hl.select(_target()), 6, hidden=(8,), norm=norm)
    for p in gen.parameters():  # hyperfan-free random readout, biases included
        nn.init.normal_(p)
    cond = torch.randn(*lead, 6, requires_grad=True)
    wrt = [cond, *gen.parameters()]
    cot = {p.name: torch.randn(*lead, *p.shape) for p in gen.spec}

    def run() -> tuple[dict[str, Tensor], tuple[Tensor, ...]]:
        w = gen(cond)
        return w, torch.autograd.grad(sum((w[k] * c).sum() for k, c in cot.items()), wrt)

    fast, g_fast = run()
    # 2-D conditioning runs the parts function; more leading dimensions, the module and split
    assert _took_parts(fast["0.weight"]) == (len(lead) == 1)
    monkeypatch.setattr(type(gen), "_generate_parts", lambda self, c: None)
    ref, g_ref = run()  # the generic path: _generate, then reshape
    for p in gen.spec:
        assert fast[p.name].shape == (*lead, *p.shape)
    assert_close(fast, ref)
    assert_close(g_fast, g_ref)


def test_per_sample_hypernetwork_with_parts_equals_vmap_path(parts_always):
    # float64: the maths is the point, so the comparison must not depend on the CPU's kernels
    target = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    hnet = hl.HyperNetwork(
        target, hl.SampleEncoder(nn.Linear(6, 4), 4), hl.FlatGenerator.factory(hidden=(8,))
    ).double()
    x = torch.randn(7, 6, dtype=torch.float64)
    params = list(hnet.parameters())
    out = hnet(x)
    g_fast = torch.autograd.grad(out.pow(2).sum(), params)
    weights = hnet.generate(x=x)
    assert _took_parts(weights["0.weight"])
    ref = call_batched_vmap(target, weights, 7, ((0,), {}), (x.unsqueeze(1),), {}).flatten(
        0, 1
    )  # vmap over functional_call
    g_ref = torch.autograd.grad(ref.pow(2).sum(), params)
    assert_close(out, ref)
    assert_close(g_fast, g_ref)


def test_flat_generator_norm_option():
    spec = hl.select(nn.Linear(4, 3))
    gen = hl.FlatGenerator(spec, 8, hidden=(16,), norm=False)
    assert gen.config()["options"]["norm"] is False
    assert hl.get_generator("once")(spec, 8, **gen.config()["options"]).trunk.norm is False
    c = torch.randn(5, 8)
    layer = gen.trunk.layers[0]
    assert_close(gen.trunk(c), F.relu(layer(c)))  # no normalisation
    normed = hl.FlatGenerator(spec, 8, hidden=(16,))
    assert normed.trunk.norm and normed.config()["options"]["norm"] is True
    feats = normed.trunk(c)
    assert_close(feats.pow(2).mean(-1), torch.ones(5))  # RMS 1 per context


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_hyperfan_without_trunk_norm_hits_the_fan_variance_on_average(mode):
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 128))
    spec = hl.select(net, "*.weight")
    gen = hl.FlatGenerator(spec, 16, hidden=(64,), norm=False)
    (hl.hyperfan_in_ if mode == "fan_in" else hl.hyperfan_out_)(gen)
    weights = gen(torch.randn(256, 16))
    for p in spec:
        want = 1 / (p.fan_in if mode == "fan_in" else p.fan_out)
        assert weights[p.name].var().item() == pytest.approx(want, rel=0.2)


# ---------------------------------------------------------------------------------------------
# TaskEmbedding: one Python int


def test_task_int_is_the_row_itself_and_checked():
    emb = hl.TaskEmbedding(4, 3)
    cond, index = emb.from_call((), {"task": 2})
    assert cond is emb.rows[2] and index is None
    same, _ = emb.from_call((), {"task": torch.tensor(2)})  # the tensor path agrees
    assert_close(cond, same)
    for bad in (4, -1):
        with pytest.raises(IndexError, match=rf"task id {bad} is out of range: .* 0\.\.3"):
            emb.from_call((), {"task": bad})
    with pytest.raises(TypeError, match="task ids must be"):
        emb.from_call((), {"task": True})  # a bool is not a task id
    emb.add(1)
    assert emb.from_call((), {"task": 4})[0] is emb.rows[4]


# ---------------------------------------------------------------------------------------------
# Hyperfan: the probe stops at the readouts' inputs


def _hyperfan_reference(gen, probe=256):
    """The initialisation computed the long way: the whole generator on the probe batch."""
    spec = gen.spec
    variance = {p.name: hl.target_variance(p, "fan_in", 1.0) for p in spec}
    readouts = gen._readouts(variance)
    seen = {}
    hooks = [
        lin.register_forward_pre_hook(lambda m, a: seen.__setitem__(id(m), a[0]))
        for lin, _ in readouts
    ]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        gen(torch.randn(probe, gen.cond_dim, generator=g))
    for hook in hooks:
        hook.remove()
    stds = []
    for lin, row_var in readouts:
        feats = seen[id(lin)]
        moment = feats.pow(2).reshape(-1, feats.shape[-1]).mean(0).sum().item()
        stds.append((row_var / moment).sqrt())
    return readouts, stds


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("once", {"hidden": (16,)}),
        ("chunked", {"chunk_size": 32, "hidden": (16,)}),
        ("component", {"hidden": (16,)}),
        ("lowrank", {"rank": 2, "hidden": (16,)}),
        ("heads", {"hidden": (16,)}),
    ],
)
def test_hyperfan_probe_skips_the_last_readout_and_matches_the_full_probe(name, options):
    spec = hl.select(nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4)))
    gen = hl.get_generator(name)(spec, 6, **options)
    readouts, stds = _hyperfan_reference(gen)
    outputs = []
    hooks = [lin.register_forward_hook(lambda m, a, o: outputs.append(m)) for lin, _ in readouts]
    torch.manual_seed(3)
    hl.hyperfan_in_(gen)
    for hook in hooks:
        hook.remove()
    assert readouts[-1][0] not in outputs  # its (probe x outputs) result was never computed
    assert len(outputs) == len(readouts) - 1
    torch.manual_seed(3)
    for (lin, _), std in zip(
        readouts, stds, strict=True
    ):  # the same draws, scaled by the full probe's std
        want = torch.randn_like(lin.weight) * std[:, None]
        assert_close(lin.weight, want)
        if lin.bias is not None:
            assert not lin.bias.any()


def test_hyperfan_dead_features_still_raise():
    gen = hl.FlatGenerator(hl.select(nn.Linear(3, 2)), 4, hidden=(8,), norm=False)
    with torch.no_grad():
        gen.trunk.layers[0].weight.zero_()
        gen.trunk.layers[0].bias.fill_(-1.0)  # ReLU: every feature 0
    with pytest.raises(ValueError, match="all zero on the probe batch"):
        hl.hyperfan_in_(gen)


# ---------------------------------------------------------------------------------------------
# call_batched, one row per weight set: the weight gradient as an outer product


def test_per_sample_linear_gradients_first_and_second_order_equal_vmap_path():
    target = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    weights = {
        n: torch.randn(3, *p.shape, requires_grad=True) for n, p in target.named_parameters()
    }
    x = torch.randn(3, 1, 4, requires_grad=True)  # (N, 1, in): the outer-product backward
    wrt = [*weights.values(), x]

    def grads(out):
        g = torch.autograd.grad(out.pow(2).sum(), wrt, create_graph=True)
        return g, torch.autograd.grad(sum(gi.pow(2).sum() for gi in g), wrt)

    fast = hl.call_batched(target, weights, x)
    assert "BatchedLinear" in type(fast.grad_fn.next_functions[0][0]).__name__  # under a view
    ref = call_batched_vmap(target, weights, 3, ((0,), {}), (x,), {})
    assert_close(fast, ref)
    assert_close(grads(fast), grads(ref), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Per-sample calls straight from the readout: Linear layers never form their weights


@pytest.fixture
def count_readout_linear(monkeypatch):
    """How many times ``ReadoutLinear`` ran (a silent fall-back leaves it at 0)."""
    from hyperloom.functional.autograd import ReadoutLinear

    calls = []
    apply = ReadoutLinear.apply
    monkeypatch.setattr(ReadoutLinear, "apply", lambda *a: calls.append(1) or apply(*a))
    return calls


def _general_path(monkeypatch, hnet, x):
    """The same call with weights generated first (``call_batched`` on ``(B, *shape)``)."""
    with monkeypatch.context() as m:
        m.setattr(hl.HyperNetwork, "_from_readout", lambda *a: None)
        return hnet(x)


READOUT_TARGETS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)), (7, 6), 2),
    "cnn": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4), nn.Sigmoid()
        ),
        (5, 2, 6, 6),
        1,
    ),
    "no bias": (lambda: nn.Sequential(nn.Linear(6, 4, bias=False), nn.ReLU()), (3, 6), 1),
}


@pytest.mark.parametrize("case", sorted(READOUT_TARGETS))
def test_call_from_readout_equals_generated_weights_first_and_second_order(
    monkeypatch, count_readout_linear, case
):
    make, shape, fused = READOUT_TARGETS[case]
    target = make().double()
    d = torch.Size(shape[1:]).numel()
    hnet = hl.HyperNetwork(
        target,
        hl.SampleEncoder(nn.Sequential(nn.Flatten(), nn.Linear(d, 4)), 4),
        hl.FlatGenerator.factory(hidden=(8,)),
    ).double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    wrt = [x, *hnet.parameters()]

    def grads(out):
        g = torch.autograd.grad(out.pow(2).sum(), wrt, create_graph=True)
        return g, torch.autograd.grad(sum(gi.pow(2).sum() for gi in g), wrt)

    out = hnet(x)
    assert len(count_readout_linear) == fused  # every Linear of the stack, once
    ref = _general_path(monkeypatch, hnet, x)
    assert len(count_readout_linear) == fused  # the reference did not take it
    assert_close(out, ref)
    assert_close(grads(out), grads(ref))


def test_call_from_readout_shared_bias_and_rows_per_sample(monkeypatch, count_readout_linear):
    # Only the weights generated: the bias is the target's own, shared by every sample.
    target = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    hnet = hl.HyperNetwork(
        target,
        hl.SampleEncoder(nn.Linear(6, 3), 3),
        hl.FlatGenerator.factory(),
        generate="*.weight",
    )
    x = torch.randn(5, 6)
    out = hnet(x)
    assert len(count_readout_linear) == 2
    assert_close(out, _general_path(monkeypatch, hnet, x))
    g = torch.autograd.grad(out.sum(), target[0].bias)[0]  # the shared bias trains
    assert g.abs().sum() > 0
    # Several rows per sample (a sequence each): those weights are formed, as before.
    count_readout_linear.clear()
    seq = hl.HyperNetwork(
        nn.Linear(6, 2),
        hl.SampleEncoder(nn.Sequential(nn.Flatten(), nn.Linear(18, 3)), 3),
        hl.FlatGenerator.factory(),
    )
    xs = torch.randn(4, 3, 6)
    assert_close(seq(xs), _general_path(monkeypatch, seq, xs))
    assert seq(xs).shape == (4, 3, 2)
    assert not count_readout_linear


def test_call_from_readout_is_skipped_where_it_must_be(monkeypatch, count_readout_linear):
    def hnet_with(gen, **kw):
        target = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
        return hl.HyperNetwork(target, hl.SampleEncoder(nn.Linear(6, 3), 3), gen, **kw)

    x = torch.randn(5, 6)
    for hnet in (
        hnet_with(hl.ChunkedGenerator.factory(chunk_size=8)),  # not one linear readout
        hnet_with(hl.FlatGenerator.factory(), check_finite=True),  # the weights must be looked at
    ):
        hnet(x)
    hooked = hnet_with(hl.FlatGenerator.factory())
    seen = []
    hooked.generator.register_forward_hook(lambda *a: seen.append(1))
    hooked(x)
    assert seen  # a hook on the generator sees it run
    plain = hnet_with(hl.FlatGenerator.factory())
    g = torch.func.grad(lambda xx: plain(xx).pow(2).sum())(x)  # a torch.func transform
    assert not count_readout_linear
    xr = x.clone().requires_grad_()
    out = plain(xr)
    assert len(count_readout_linear) == 2
    assert_close(g, torch.autograd.grad(out.pow(2).sum(), xr)[0])


def test_call_from_readout_docstring_example():
    import doctest

    from hyperloom import functional

    test = doctest.DocTestFinder().find(functional.call_from_readout, globs=vars(functional))[0]
    result = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE).run(test)
    assert result.attempted >= 6 and result.failed == 0
