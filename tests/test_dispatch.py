"""Every entry of the fast paths' dispatch table against the general paths, in float64.

``hyperloom.functional.dispatch.DISPATCH`` lists every module type a fast path runs. Each test
here is parametrized over that table, so a new entry without a case fails
``test_every_entry_has_a_case`` instead of going untested. The oracles: ``call_batched`` on the
fast path equals a loop of ``functional_call`` over the weight sets (outputs, first- and
second-order gradients), ``call`` equals ``functional_call``, and zero weight sets give empty
outputs of the right shape. The maths is compared in float64, so the tolerances do not depend
on the CPU's kernels. The routes of a hypernetwork's call (``dispatch.ROUTES``) are iterated
likewise.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.testing import assert_close
from torch.utils import _pytree as pytree

from hyperloom import call, call_batched
from hyperloom.functional.dispatch import DISPATCH, ROUTES, batched_plan, known_layers, route

N, G = 3, 2  # weight sets, samples per weight set


def _elementwise(layer: nn.Module):
    return lambda: (nn.Sequential(nn.Linear(4, 5), layer), (N, G, 4))


CASES = {
    nn.Linear: lambda: (nn.Linear(4, 3), (N, G, 4)),
    nn.Flatten: lambda: (nn.Sequential(nn.Flatten(), nn.Linear(6, 2)), (N, G, 2, 3)),
    nn.Conv1d: lambda: (nn.Conv1d(2, 3, 3, padding=1), (N, G, 2, 6)),
    nn.Conv2d: lambda: (nn.Conv2d(2, 3, 3, stride=2, groups=1), (N, G, 2, 5, 5)),
    nn.Conv3d: lambda: (nn.Conv3d(2, 2, 2, padding=1, groups=2), (N, G, 2, 3, 3, 3)),
    nn.RNN: lambda: (nn.RNN(3, 4, num_layers=2), (N, 5, G, 3)),
    nn.GRU: lambda: (nn.GRU(3, 4, batch_first=True, bidirectional=True), (N, G, 5, 3)),
    nn.LSTM: lambda: (nn.LSTM(3, 4), (N, 5, G, 3)),
    nn.RNNCell: lambda: (nn.RNNCell(3, 4, nonlinearity="relu"), (N, G, 3)),
    nn.GRUCell: lambda: (nn.GRUCell(3, 4), (N, G, 3)),
    nn.LSTMCell: lambda: (nn.LSTMCell(3, 4), (N, G, 3)),
    nn.Identity: _elementwise(nn.Identity()),
    nn.ReLU: _elementwise(nn.ReLU()),
    nn.ReLU6: _elementwise(nn.ReLU6()),
    nn.LeakyReLU: _elementwise(nn.LeakyReLU(0.2)),
    nn.ELU: _elementwise(nn.ELU()),
    nn.SELU: _elementwise(nn.SELU()),
    nn.CELU: _elementwise(nn.CELU(0.5)),
    nn.GELU: _elementwise(nn.GELU(approximate="tanh")),
    nn.SiLU: _elementwise(nn.SiLU()),
    nn.Mish: _elementwise(nn.Mish()),
    nn.Sigmoid: _elementwise(nn.Sigmoid()),
    nn.LogSigmoid: _elementwise(nn.LogSigmoid()),
    nn.Tanh: _elementwise(nn.Tanh()),
    nn.Softplus: _elementwise(nn.Softplus(beta=2.0)),
    nn.Softsign: _elementwise(nn.Softsign()),
    nn.Tanhshrink: _elementwise(nn.Tanhshrink()),
    nn.Hardtanh: _elementwise(nn.Hardtanh(-0.5, 0.5)),
    nn.Hardswish: _elementwise(nn.Hardswish()),
    nn.Hardsigmoid: _elementwise(nn.Hardsigmoid()),
    nn.Dropout: _elementwise(nn.Dropout(0.0)),
}
TABLE = sorted(DISPATCH, key=lambda t: t.__name__)


def _build(kind: type, n: int = N):
    target, shape = CASES[kind]()
    target = target.double()
    x = torch.randn(n, *shape[1:], dtype=torch.float64)
    weights = {
        name: (0.5 * torch.randn(n, *p.shape, dtype=torch.float64)).requires_grad_()
        for name, p in target.named_parameters()
    }
    return target, weights, x


def _leaves(tree) -> list[Tensor]:
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, Tensor)]


def _loop(target: nn.Module, weights: dict, x: Tensor):
    """The definition of ``call_batched``: weight set ``i`` on slice ``i``, one at a time."""
    outs = [
        functional_call(target, {k: v[i] for k, v in weights.items()}, (x[i],))
        for i in range(x.shape[0])
    ]
    return pytree.tree_map(lambda *ts: torch.stack(ts), *outs)


def test_every_entry_has_a_case():
    assert set(CASES) == set(DISPATCH)


@pytest.mark.parametrize("kind", TABLE, ids=lambda t: t.__name__)
def test_fast_path_equals_vmap_path_to_second_order(kind):
    target, weights, x = _build(kind)
    assert batched_plan(target, (x,), {}) is not None  # the fast path is the one taken
    x_fast = x.clone().requires_grad_()
    x_ref = x.clone().requires_grad_()
    out = _leaves(call_batched(target, weights, x_fast))
    ref = _leaves(_loop(target, weights, x_ref))
    assert_close(out, ref)

    cot = [torch.randn_like(t) for t in out]
    wrt = list(weights.values())

    def grads(outs, xin):
        loss = sum((o * c).sum() for o, c in zip(outs, cot, strict=True))
        return torch.autograd.grad(loss, [*wrt, xin], create_graph=True)

    g, g_ref = grads(out, x_fast), grads(ref, x_ref)
    assert_close(g, g_ref)
    # second order: the gradient of the squared first-order gradients
    try:
        h_ref = torch.autograd.grad(sum(t.pow(2).sum() for t in g_ref), wrt, allow_unused=True)
    except RuntimeError as e:  # torch has no second derivative for this layer (Hardsigmoid)
        assert "not implemented" in str(e)
        with pytest.raises(RuntimeError, match="not implemented"):
            torch.autograd.grad(sum(t.pow(2).sum() for t in g), wrt, allow_unused=True)
        return
    h = torch.autograd.grad(sum(t.pow(2).sum() for t in g), wrt, allow_unused=True)
    for a, b in zip(h, h_ref, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b)


@pytest.mark.parametrize("kind", TABLE, ids=lambda t: t.__name__)
def test_call_equals_functional_call(kind):
    target, weights, x = _build(kind)
    one = {k: v[0] for k, v in weights.items()}
    out = _leaves(call(target, one, x[0]))
    ref = _leaves(functional_call(target, one, (x[0],)))
    assert_close(out, ref)


@pytest.mark.parametrize("kind", TABLE, ids=lambda t: t.__name__)
def test_zero_weight_sets_give_empty_outputs(kind):
    target, weights, x = _build(kind)
    empty_w = {k: v[:0] for k, v in weights.items()}
    out = _leaves(call_batched(target, empty_w, x[:0]))
    full = _leaves(call_batched(target, weights, x))
    assert [t.shape[1:] for t in out] == [t.shape[1:] for t in full]
    assert all(t.shape[0] == 0 for t in out)


def test_element_wise_entries_are_stacks_the_fast_path_knows():
    for kind in TABLE:
        target, _, _ = _build(kind)
        if kind not in (nn.RNN, nn.GRU, nn.LSTM, nn.RNNCell, nn.GRUCell, nn.LSTMCell):
            assert known_layers(target) is not None, kind


# A hypernetwork's routes (dispatch.ROUTES): each one taken by a case, and equal to running each
# group of samples that shares a weight set through hl.call with the weights hnet.generate gives.


def _route_case(name: str):
    import hyperloom as hl

    mlp = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    ids = torch.tensor([0, 1, 0, 2, 1, 0])
    if name == "readout":
        hnet = hl.HyperNetwork(
            mlp, hl.SampleEncoder(nn.Linear(4, 3), 3), hl.FlatGenerator.factory()
        )
        return hnet.double(), x, {}, [[i] for i in range(6)], lambda i: {"x": x[i : i + 1]}
    if name == "per_task":
        bn = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).double()
        hnet = hl.HyperNetwork(
            bn, hl.TaskEmbedding(3, 4), hl.FlatGenerator.factory(), generate=nn.Linear
        )
        ids = torch.tensor([0, 1, 0, 2, 1, 2])  # two samples a task: BatchNorm needs them
        groups = [[i for i in range(6) if ids[i] == t] for t in range(3)]
        return hnet, x, {"task": ids}, groups, lambda i: {"task": int(ids[i])}
    gen = hl.ChunkedGenerator.factory(chunk_size=8)
    hnet = hl.HyperNetwork(mlp, hl.TaskEmbedding(3, 4), gen)
    if name == "one":
        return hnet, x, {"task": 2}, [list(range(6))], lambda i: {"task": 2}
    if name == "one_task":
        same = torch.full((6,), 1)
        return hnet, x, {"task": same}, [list(range(6))], lambda i: {"task": 1}
    return hnet, x, {"task": ids}, [[i] for i in range(6)], lambda i: {"task": int(ids[i])}


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_every_route_is_taken_and_equals_the_groups_one_by_one(name, monkeypatch):
    import hyperloom as hl
    from hyperloom import hypernet

    taken = []
    monkeypatch.setattr(
        hypernet, "route", lambda *a, **k: taken.append(route(*a, **k)) or taken[-1]
    )
    hnet, x, context, groups, context_of = _route_case(name)
    out = hnet(x, **context)
    assert taken == [name]
    for rows in groups:
        weights = hnet.generate(**context_of(rows[0]))
        if weights[next(iter(weights))].shape != hnet.spec[next(iter(weights))].shape:
            weights = {k: v[0] for k, v in weights.items()}  # one sample's own: (1, *shape)
        assert_close(out[rows], hl.call(hnet.target, weights, x[rows]))
