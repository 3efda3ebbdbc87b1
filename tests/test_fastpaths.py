"""Fast paths of call / call_batched against the general paths, and HyperNetwork.cached.

Oracles: ``call_batched`` on a target the fast paths know must equal the ``vmap`` path
(``call_batched_vmap``) in outputs and in gradients (weights, inputs, the target's own
parameters); ``call`` must equal ``torch.func.functional_call``; recurrent cells, which vmap cannot
batch, must equal a loop of the module's own forward. Each case also checks that the fast path
was taken, so a silent fall-back fails the test.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.testing import assert_close
from torch.utils import _pytree as pytree

import hyperloom as hl
from hyperloom import call, call_batched, select
from hyperloom.functional.dispatch import batched_plan, known_layers
from hyperloom.functional.swap import call_batched_vmap

N = 3  # weight sets
G = 2  # samples per weight set


def _weights(target: nn.Module, *batch: int, only: tuple[str, ...] | None = None):
    names = [p.name for p in select(target) if only is None or p.name in only]
    shapes = dict(target.named_parameters())
    return {n: (0.5 * torch.randn(*batch, *shapes[n].shape)).requires_grad_() for n in names}


def _leaves(tree) -> list[Tensor]:
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, Tensor)]


def _fresh(args: tuple) -> tuple:
    def fresh(t):
        if not isinstance(t, Tensor):
            return t
        return t.detach().clone().requires_grad_(t.is_floating_point())

    return pytree.tree_map(fresh, args)


def _vmap_path(target: nn.Module, weights: dict[str, Tensor], args: tuple):
    in_dims = pytree.tree_map(lambda t: 0 if isinstance(t, Tensor) else None, (args, {}))
    return call_batched_vmap(target, weights, N, in_dims, args, {})


def _grads(out, cot, weights, args, own):
    loss = sum((o * c).sum() for o, c in zip(_leaves(out), cot, strict=True))
    wrt = [*weights.values(), *(t for t in _leaves(args) if t.requires_grad), *own]
    return torch.autograd.grad(loss, wrt, allow_unused=True)


class Hooked(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * 2


def _tied() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    net[2].weight = net[0].weight
    return net


BATCHED = {
    "linear_per_sample": lambda: (nn.Linear(4, 3), (torch.randn(N, 1, 4),), None),
    "linear_unbatched_slices": lambda: (nn.Linear(4, 3), (torch.randn(N, 4),), None),
    "linear_groups_3d": lambda: (nn.Linear(4, 3), (torch.randn(N, G, 5, 4),), None),
    "linear_no_bias": lambda: (nn.Linear(4, 3, bias=False), (torch.randn(N, G, 4),), None),
    "linear_weight_only": lambda: (nn.Linear(4, 3), (torch.randn(N, G, 4),), ("weight",)),
    "linear_bias_only": lambda: (nn.Linear(4, 3), (torch.randn(N, G, 4),), ("bias",)),
    "mlp": lambda: (
        nn.Sequential(
            nn.Flatten(), nn.Linear(12, 8), nn.GELU(), nn.Dropout(0.0), nn.Linear(8, 3), nn.Tanh()
        ),
        (torch.randn(N, G, 3, 4),),
        None,
    ),
    "mlp_partial": lambda: (
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)),
        (torch.randn(N, 1, 4),),
        ("0.weight", "2.bias"),
    ),
    "nested_sequential": lambda: (
        nn.Sequential(nn.Sequential(nn.Linear(4, 5), nn.SiLU()), nn.Linear(5, 2)),
        (torch.randn(N, G, 4),),
        None,
    ),
    "tied": lambda: (_tied(), (torch.randn(N, G, 4),), None),
    "conv1d": lambda: (nn.Conv1d(2, 4, 3, padding=1), (torch.randn(N, G, 2, 7),), None),
    "conv1d_unbatched_slices": lambda: (nn.Conv1d(2, 3, 3), (torch.randn(N, 2, 7),), None),
    "conv2d_stride_dilation_groups": lambda: (
        nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2),
        (torch.randn(N, G, 4, 7, 6),),
        None,
    ),
    "conv2d_reflect_no_bias": lambda: (
        nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect", bias=False),
        (torch.randn(N, G, 2, 5, 5),),
        None,
    ),
    "conv2d_same_circular": lambda: (
        nn.Conv2d(2, 3, (3, 2), padding="same", padding_mode="circular"),
        (torch.randn(N, G, 2, 5, 4),),
        None,
    ),
    "conv2d_bias_only": lambda: (nn.Conv2d(2, 3, 3), (torch.randn(N, G, 2, 5, 5),), ("bias",)),
    "conv2d_weight_only": lambda: (
        nn.Conv2d(2, 3, 3),
        (torch.randn(N, G, 2, 5, 5),),
        ("weight",),
    ),
    "cnn": lambda: (
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, stride=2),
            nn.Flatten(),
            nn.Linear(16, 5),
        ),
        (torch.randn(N, G, 1, 6, 6),),
        None,
    ),
    "gru": lambda: (nn.GRU(3, 4), (torch.randn(N, 5, 2, 3), torch.randn(N, 1, 2, 4)), None),
    "lstm_2layer_bidir_batch_first": lambda: (
        nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True),
        (torch.randn(N, 2, 5, 3),),
        None,
    ),
    "lstm_hx": lambda: (
        nn.LSTM(3, 4, num_layers=2),
        (torch.randn(N, 5, 2, 3), (torch.randn(N, 2, 2, 4), torch.randn(N, 2, 2, 4))),
        None,
    ),
    "lstm_unbatched_slices": lambda: (nn.LSTM(3, 4), (torch.randn(N, 5, 3),), None),
    "rnn_relu_no_bias": lambda: (
        nn.RNN(3, 4, nonlinearity="relu", bias=False),
        (torch.randn(N, 5, 2, 3),),
        None,
    ),
    "gru_partial": lambda: (
        nn.GRU(3, 4, batch_first=True),
        (torch.randn(N, 2, 5, 3),),
        ("weight_hh_l0", "bias_ih_l0"),
    ),
}


@pytest.mark.parametrize("case", list(BATCHED))
def test_fast_path_equals_vmap_path(case):
    target, args, only = BATCHED[case]()
    state = copy.deepcopy(target.state_dict())
    weights = _weights(target, N, only=only)
    assert batched_plan(target, args, {}) is not None  # the fast path is the one taken
    given = {id(target.get_parameter(n)) for n in weights}
    own = [p for p in target.parameters() if id(p) not in given]

    args_a = _fresh(args)
    out = call_batched(target, weights, *args_a)
    args_b = _fresh(args)
    ref = _vmap_path(target, weights, args_b)
    assert pytree.tree_structure(out) == pytree.tree_structure(ref)
    assert_close(_leaves(out), _leaves(ref), rtol=1e-4, atol=1e-5)

    cot = [torch.randn_like(t) for t in _leaves(out)]
    grads = _grads(out, cot, weights, args_a, own)
    grads_ref = _grads(ref, cot, weights, args_b, own)
    assert len(grads) == len(grads_ref)
    for g, r in zip(grads, grads_ref, strict=True):
        assert (g is None) == (r is None)
        if g is not None:
            assert_close(g, r, rtol=1e-4, atol=1e-5)
    for k, v in target.state_dict().items():
        assert_close(v, state[k], rtol=0, atol=0)


CELLS = {
    "lstm_cell": lambda: nn.LSTMCell(3, 4),
    "gru_cell": lambda: nn.GRUCell(3, 4),
    "rnn_cell_tanh": lambda: nn.RNNCell(3, 4),
    "rnn_cell_relu_no_bias": lambda: nn.RNNCell(3, 4, bias=False, nonlinearity="relu"),
}


def _cell_hx(name: str, *shape: int):
    h = torch.randn(*shape)
    return (h, torch.randn(*shape)) if name == "lstm_cell" else h


@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("name", list(CELLS))
def test_recurrent_cell_equals_loop_of_module(name, unbatched, with_hx):
    cell = CELLS[name]()
    lead = (N,) if unbatched else (N, G)
    args = (torch.randn(*lead, 3),)
    if with_hx:
        args = (*args, _cell_hx(name, *lead, 4))
    weights = _weights(cell, N)
    assert batched_plan(cell, args, {}) is not None

    args_a = _fresh(args)
    out = call_batched(cell, weights, *args_a)
    args_b = _fresh(args)
    refs = []
    for i in range(N):
        plain = copy.deepcopy(cell)
        for n, w in weights.items():
            plain.get_parameter(n).data = w[i]  # the oracle: the module's own forward
        one = pytree.tree_map(lambda t, i=i: t[i] if isinstance(t, Tensor) else t, args_b)
        refs.append(functional_call(cell, {n: w[i] for n, w in weights.items()}, one))
        assert_close(_leaves(refs[-1]), _leaves(plain(*one)))
    ref = pytree.tree_map(lambda *ts: torch.stack(ts), *refs)
    assert pytree.tree_structure(out) == pytree.tree_structure(ref)
    assert_close(_leaves(out), _leaves(ref), rtol=1e-4, atol=1e-5)
    cot = [torch.randn_like(t) for t in _leaves(out)]
    grads = _grads(out, cot, weights, args_a, [])
    grads_ref = _grads(ref, cot, weights, args_b, [])
    assert_close(grads, grads_ref, rtol=1e-4, atol=1e-5)


STATIC = {
    "mlp": lambda: (
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Flatten(0, -1), nn.Linear(40, 3)),
        torch.randn(5, 4),
    ),
    "cnn": lambda: (
        nn.Sequential(nn.Conv2d(2, 3, 3, padding_mode="reflect", padding=1), nn.ELU()),
        torch.randn(2, 2, 5, 5),
    ),
    "tied": lambda: (_tied(), torch.randn(3, 4)),
    "single_linear": lambda: (nn.Linear(4, 3), torch.randn(3, 4)),
}


@pytest.mark.parametrize("partial", [False, True], ids=["all", "partial"])
@pytest.mark.parametrize("case", list(STATIC))
def test_call_direct_path_equals_functional_call(case, partial):
    target, x = STATIC[case]()
    assert known_layers(target) is not None
    names = select(target).names
    weights = _weights(target, only=names[:1] if partial else None)
    out = call(target, weights, x)
    ref = functional_call(target, dict(weights), (x,), tie_weights=True)
    assert_close(out, ref)
    cot = torch.randn_like(out)
    own = [p for n, p in target.named_parameters() if n not in weights]
    wrt = [*weights.values(), *own]
    assert_close(
        torch.autograd.grad((out * cot).sum(), wrt), torch.autograd.grad((ref * cot).sum(), wrt)
    )


def test_hooks_subclasses_and_patched_forward_take_the_general_path():
    x = torch.randn(2, 4)
    hooked = nn.Sequential(nn.Linear(4, 3))
    hooked[0].register_forward_hook(lambda m, i, o: o + 100.0)
    sub = nn.Sequential(Hooked(4, 3))
    patched = nn.Sequential(nn.Linear(4, 3))
    patched[0].forward = lambda inp: torch.zeros(inp.shape[0], 3)
    for target in (hooked, sub, patched):
        assert known_layers(target) is None
        assert batched_plan(target, (x.unsqueeze(0),), {}) is None
        w = _weights(target)
        assert_close(call(target, w, x), functional_call(target, w, (x,)))
        wb = {k: v.unsqueeze(0) for k, v in w.items()}
        assert_close(call_batched(target, wb, x.unsqueeze(0))[0], call(target, w, x))
    assert (call(hooked, _weights(hooked), x) > 50).all()  # the hook ran


def test_tied_parameter_given_twice_behaves_like_functional_call():
    target = _tied()
    w = torch.randn(4, 4)
    x = torch.randn(3, 4)
    same = call(target, {"0.weight": w, "2.weight": w}, x)
    assert_close(same, call(target, {"0.weight": w}, x))
    with pytest.raises(ValueError):
        functional_call(target, {"0.weight": w, "2.weight": w + 1}, (x,), tie_weights=True)
    with pytest.raises(ValueError):
        call(target, {"0.weight": w, "2.weight": w + 1}, x)


def test_strict_errors_unchanged_on_fast_targets():
    net = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"did you mean '0\.weight'"):
        call(net, {"0.wieght": torch.randn(3, 4)}, torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"\(3, 4, 3\).*\(3, 4\)"):
        call_batched(net, {"0.weight": torch.randn(N, 4, 3)}, torch.randn(N, 1, 4))
    with pytest.raises(TypeError, match=r"'0\.weight'"):
        call(net, {"0.weight": [[0.0] * 4] * 3}, torch.randn(2, 4))


def test_per_sample_hypernetwork_uses_fast_path_and_matches_loop():
    target = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    hnet = hl.HyperNetwork(target, hl.Noise(4), hl.FlatGenerator.factory(hidden=(8,)))
    x, z = torch.randn(7, 6), torch.randn(7, 4)
    out = hnet(x, z=z)
    weights = hnet.generate(z=z)
    loop = torch.stack(
        [call(target, {k: v[i] for k, v in weights.items()}, x[i]) for i in range(7)]
    )
    assert_close(out, loop)
    assert batched_plan(target, (x.unsqueeze(1),), {}) is not None


# ---------------------------------------------------------------------------------------------
# HyperNetwork.cached


GENERATORS = {
    "once": {"hidden": (16,)},
    "chunked": {"chunk_size": 64, "chunk_dim": 4, "hidden": (16,)},
    "component": {"component_dim": 4, "hidden": (16,)},
}


@pytest.mark.parametrize("gen", list(GENERATORS))
def test_cached_equals_hypernetwork_and_shares_the_rest(gen):
    target = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4)
    )
    hnet = hl.HyperNetwork(
        target,
        hl.TaskEmbedding(3, 8),
        hl.get_generator(gen).factory(**GENERATORS[gen]),
        generate="0.*",
    )
    hnet.eval()
    state = copy.deepcopy(target.state_dict())
    fast = hnet.cached(task=2)
    x = torch.randn(5, 1, 6, 6)
    assert_close(fast(x), hnet(x, task=2))
    assert not torch.allclose(fast(x), hnet(x, task=1))
    assert not fast[0].weight.requires_grad and not fast[0].bias.requires_grad
    assert fast[4].weight is target[4].weight  # not generated: shared
    assert fast[1].running_mean is target[1].running_mean  # buffers: shared
    for k, v in target.state_dict().items():
        assert_close(v, state[k], rtol=0, atol=0)


def test_cached_is_a_snapshot_and_needs_one_context():
    target = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    hnet = hl.HyperNetwork(target, hl.TaskEmbedding(3, 8), hl.FlatGenerator.factory(hidden=(16,)))
    x = torch.randn(5, 4)
    fast = hnet.cached(task=0)
    before = fast(x)
    with torch.no_grad():
        for p in hnet.generator.parameters():
            p.add_(0.1)
    assert_close(fast(x), before)  # a snapshot ...
    assert not torch.allclose(hnet.cached(task=0)(x), before)  # ... taken again on request
    with pytest.raises(ValueError, match="one context"):
        hnet.cached(task=torch.tensor([0, 1]))


def test_batched_linear_second_order_gradients_and_transforms():
    target = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    weights = _weights(target, N)
    x = torch.randn(N, G, 4, requires_grad=True)

    def grad_of_grad(out):
        wrt = [*weights.values(), x]
        g = torch.autograd.grad(out.pow(2).sum(), wrt, create_graph=True)
        return torch.autograd.grad(sum(gi.pow(2).sum() for gi in g), wrt)

    fast = grad_of_grad(call_batched(target, weights, x))
    ref = grad_of_grad(_vmap_path(target, weights, (x,)))
    assert_close(fast, ref, rtol=1e-4, atol=1e-5)

    # vmap over call_batched: batches of batches of weight sets.
    outer = {k: torch.randn(2, *v.shape) for k, v in weights.items()}
    xs = torch.randn(2, N, G, 4)
    out = torch.vmap(lambda w, xi: call_batched(target, w, xi))(outer, xs)
    loop = [call_batched(target, {k: v[i] for k, v in outer.items()}, xs[i]) for i in range(2)]
    assert_close(out, torch.stack(loop))
