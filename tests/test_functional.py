"""call / call_batched / rnn_forward against plain PyTorch, and the module left as it was.

Oracles: ``call(target, w, *args)`` must equal a deep copy of ``target`` with ``w`` copied into
its parameters, in outputs and in gradients; ``call_batched`` must equal a loop of ``call``;
``rnn_forward`` must equal the recurrent module's own forward. Invariant: the target's state,
and the identity of each of its tensors, is the same after every call, failing ones included.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import assert_close
from torch.utils import _pytree as pytree

from hyperloom import call, call_batched, check_weights, rnn_forward, select

N = 3  # weight sets in call_batched
G = 4  # samples sharing one weight set

# ---------------------------------------------------------------------------------------------
# helpers


def _random_weights(target: nn.Module, *batch: int) -> dict[str, Tensor]:
    """One random tensor per selected parameter (tied ones once), leaves that require grad."""
    return {p.name: (0.5 * torch.randn(*batch, *p.shape)).requires_grad_() for p in select(target)}


def _plain_copy(target: nn.Module, weights: dict[str, Tensor]) -> nn.Module:
    """A deep copy of ``target`` whose parameters hold ``weights`` (the oracle)."""
    ref = copy.deepcopy(target)
    params = dict(ref.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, w in weights.items():
            params[name].copy_(w)
    return ref


def _tensors(tree) -> list[Tensor]:
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, Tensor)]


def _fresh(args: tuple) -> tuple:
    """Detached copies of the tensor leaves; floating ones require grad."""

    def fresh(t):
        if not isinstance(t, Tensor):
            return t
        return t.detach().clone().requires_grad_(t.is_floating_point())

    return pytree.tree_map(fresh, args)


def _grad_inputs(args: tuple) -> list[Tensor]:
    return [t for t in _tensors(args) if t.requires_grad]


def _loss(out, cotangents: list[Tensor]) -> Tensor:
    return sum((o * c).sum() for o, c in zip(_tensors(out), cotangents, strict=True))


def _snapshot(target: nn.Module) -> tuple[dict[str, Tensor], dict[str, int]]:
    state = {k: v.clone() for k, v in target.state_dict().items()}
    ids = {n: id(p) for n, p in target.named_parameters(remove_duplicate=False)}
    ids |= {f"buffer:{n}": id(b) for n, b in target.named_buffers(remove_duplicate=False)}
    return state, ids


def _assert_unchanged(target: nn.Module, snap, *, skip_buffers: bool = False) -> None:
    state, ids = snap
    now = target.state_dict()
    assert now.keys() == state.keys()
    buffers = {n for n, _ in target.named_buffers(remove_duplicate=False)}
    for k, v in state.items():
        if skip_buffers and k in buffers:
            continue
        assert_close(now[k], v, rtol=0, atol=0, msg=f"{k} changed")
    ids_now = {n: id(p) for n, p in target.named_parameters(remove_duplicate=False)}
    ids_now |= {f"buffer:{n}": id(b) for n, b in target.named_buffers(remove_duplicate=False)}
    assert ids_now == ids
    assert all(p.grad is None for p in target.parameters())


def _assert_no_forward_attribute(target: nn.Module) -> None:
    assert not [m for m in target.modules() if "forward" in vars(m)]


def _updates_buffers(target: nn.Module) -> bool:
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
        for m in target.modules()
    )


# ---------------------------------------------------------------------------------------------
# targets


class SelfAttention(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.mha(x, x, x)[0]


class TiedLM(nn.Module):
    def __init__(self, vocab: int = 7, dim: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self.emb(idx))


class Boom(nn.Module):
    """Uses its weights, then raises."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.gru = nn.GRU(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.gru(self.lin(x))
        raise RuntimeError(f"boom after {tuple(y.shape)}")


class Scaled(nn.Module):
    """Takes non-tensor positional and keyword inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: Tensor, scale: float, mode: str, *, shift: Tensor | None = None):
        y = self.lin(x) * scale
        y = y.relu() if mode == "relu" else y.tanh()
        return y if shift is None else y + shift


def _bn_eval() -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn.eval()


def _lstm_hx(n_dir: int, layers: int, batch: int, hidden: int, *lead: int):
    shape = (*lead, layers * n_dir, batch, hidden)
    return (torch.randn(shape), torch.randn(shape))


CALL_CASES = {
    "linear": lambda: (nn.Linear(4, 3), (torch.randn(5, 4),)),
    "conv1d": lambda: (nn.Conv1d(2, 3, 3), (torch.randn(2, 2, 7),)),
    "conv2d": lambda: (nn.Conv2d(2, 3, 3, padding=1), (torch.randn(2, 2, 5, 5),)),
    "layernorm": lambda: (nn.LayerNorm(4), (torch.randn(3, 4),)),
    "embedding": lambda: (nn.Embedding(10, 4), (torch.randint(0, 10, (3, 5)),)),
    "mha": lambda: (SelfAttention(), (torch.randn(2, 3, 8),)),
    "gru": lambda: (nn.GRU(3, 4), (torch.randn(5, 2, 3),)),
    "lstm_2layer": lambda: (nn.LSTM(3, 4, num_layers=2), (torch.randn(5, 2, 3),)),
    "lstm_bidirectional": lambda: (
        nn.LSTM(3, 4, num_layers=2, bidirectional=True),
        (torch.randn(5, 2, 3), _lstm_hx(2, 2, 2, 4)),
    ),
    "lstm_batch_first": lambda: (
        nn.LSTM(3, 4, num_layers=2, batch_first=True),
        (torch.randn(2, 5, 3),),
    ),
    "batchnorm2d_train": lambda: (nn.BatchNorm2d(3), (torch.randn(4, 3, 2, 2),)),
    "batchnorm2d_eval": lambda: (_bn_eval(), (torch.randn(4, 3, 2, 2),)),
    "tied": lambda: (TiedLM(), (torch.randint(0, 7, (2, 5)),)),
}


# ---------------------------------------------------------------------------------------------
# call: the plain-module oracle


@pytest.mark.parametrize("case", list(CALL_CASES))
def test_call_matches_plain_module(case):
    target, args = CALL_CASES[case]()
    with torch.no_grad():
        before = _tensors(target(*args))  # the module's own behaviour, to compare after
    snap = _snapshot(target)
    weights = _random_weights(target)
    ref = _plain_copy(target, weights)

    args_a = _fresh(args)
    out = call(target, weights, *args_a)
    args_b = _fresh(args)
    out_ref = ref(*args_b)

    assert pytree.tree_structure(out) == pytree.tree_structure(out_ref)
    assert_close(_tensors(out), _tensors(out_ref))
    cot = [torch.randn_like(t) for t in _tensors(out)]
    grads = torch.autograd.grad(_loss(out, cot), [*weights.values(), *_grad_inputs(args_a)])
    ref_params = dict(ref.named_parameters(remove_duplicate=False))
    grads_ref = torch.autograd.grad(
        _loss(out_ref, cot), [*(ref_params[k] for k in weights), *_grad_inputs(args_b)]
    )
    assert len(grads) == len(grads_ref)
    assert_close(grads, grads_ref)

    # The target's parameters are untouched, its buffers are what the plain module left.
    _assert_unchanged(target, snap, skip_buffers=True)
    ref_buffers = dict(ref.named_buffers())
    for name, buf in target.named_buffers():
        assert_close(buf, ref_buffers[name], rtol=0, atol=0)
    if not _updates_buffers(target):
        _assert_unchanged(target, snap)
    with torch.no_grad():
        assert_close(_tensors(target(*args)), before, rtol=0, atol=0)


def test_call_batchnorm_train_updates_running_stats_like_plain_module():
    bn = nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 2, 2) * 3 + 1
    weights = _random_weights(bn)
    ref = _plain_copy(bn, weights)
    call(bn, weights, x)
    ref(x)
    assert not torch.equal(bn.running_mean, torch.zeros(3))  # it did update
    assert int(bn.num_batches_tracked) == 1
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert_close(getattr(bn, name), getattr(ref, name), rtol=0, atol=0)


def test_call_tied_first_name_replaces_both_uses():
    target = TiedLM()
    assert select(target).names == ("emb.weight",)
    idx = torch.randint(0, 7, (2, 5))
    w = torch.randn(7, 4)
    out = call(target, {"emb.weight": w}, idx)
    assert_close(out, F.embedding(idx, w) @ w.T)


def test_call_tied_second_name_replaces_both_uses():
    target = TiedLM()
    idx = torch.randint(0, 7, (2, 5))
    w = torch.randn(7, 4)
    out = call(target, {"head.weight": w}, idx)
    assert_close(out, F.embedding(idx, w) @ w.T)


def test_call_partial_dict_keeps_own_values_trainable():
    lin = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    w = torch.randn(3, 4, requires_grad=True)
    out = call(lin, {"weight": w}, x)
    assert_close(out, F.linear(x, w, lin.bias))
    out.sum().backward()
    assert w.grad is not None
    assert lin.bias.grad is not None and lin.weight.grad is None


def test_call_doctest_example():
    net = nn.Linear(3, 2)
    out = call(net, {"weight": torch.zeros(2, 3), "bias": torch.ones(2)}, torch.randn(4, 3))
    assert_close(out, torch.ones(4, 2))


# ---------------------------------------------------------------------------------------------
# the target is unchanged after failing calls


def test_call_raising_in_forward_leaves_target_unchanged():
    target = Boom()
    snap = _snapshot(target)
    weights = _random_weights(target)
    with pytest.raises(RuntimeError, match="boom"):
        call(target, weights, torch.randn(5, 2, 3))
    _assert_unchanged(target, snap)
    _assert_no_forward_attribute(target)
    x = torch.randn(4, 3)
    assert_close(target.lin(x), F.linear(x, snap[0]["lin.weight"], snap[0]["lin.bias"]))


def test_call_batched_raising_in_forward_leaves_target_unchanged():
    target = Boom()
    snap = _snapshot(target)
    weights = _random_weights(target, N)
    with pytest.raises(RuntimeError, match="boom"):
        call_batched(target, weights, torch.randn(N, 5, 2, 3))
    _assert_unchanged(target, snap)
    _assert_no_forward_attribute(target)


def test_call_batched_raising_inside_recurrent_module_removes_patch():
    lstm = nn.LSTM(3, 4)
    snap = _snapshot(lstm)
    weights = _random_weights(lstm, N)
    with pytest.raises(RuntimeError):
        call_batched(lstm, weights, torch.randn(N, 5, 2, 7))  # 7 input features, not 3
    _assert_unchanged(lstm, snap)
    _assert_no_forward_attribute(lstm)
    out, _ = lstm(torch.randn(5, 2, 3))  # its own forward again
    assert out.shape == (5, 2, 4)


# ---------------------------------------------------------------------------------------------
# strict names, shapes and types


@pytest.mark.parametrize("fn", [call, call_batched])
def test_misspelt_name_is_named_with_close_match(fn):
    lin = nn.Linear(4, 3)
    snap = _snapshot(lin)
    lead = (N,) if fn is call_batched else ()
    with pytest.raises(ValueError) as err:
        fn(lin, {"wieght": torch.randn(*lead, 3, 4)}, torch.randn(*lead, 4))
    assert "'wieght'" in str(err.value)
    assert "did you mean 'weight'" in str(err.value)
    _assert_unchanged(lin, snap)


@pytest.mark.parametrize("fn", [call, call_batched])
def test_wrong_shape_names_parameter_and_both_shapes(fn):
    lin = nn.Linear(4, 3)
    snap = _snapshot(lin)
    lead = (N,) if fn is call_batched else ()
    with pytest.raises(ValueError) as err:
        fn(lin, {"weight": torch.randn(*lead, 4, 3)}, torch.randn(*lead, 4))
    msg = str(err.value)
    assert "'weight'" in msg
    assert str((*lead, 4, 3)) in msg and "(3, 4)" in msg
    _assert_unchanged(lin, snap)


def test_call_batched_rejects_unbatched_weights():
    lin = nn.Linear(4, 3)
    snap = _snapshot(lin)
    with pytest.raises(ValueError, match="'weight'"):
        call_batched(lin, {"weight": torch.randn(3, 4)}, torch.randn(3, 4))
    _assert_unchanged(lin, snap)


def test_all_problems_listed_at_once():
    lin = nn.Linear(4, 3)
    with pytest.raises(ValueError) as err:
        check_weights(lin, {"bais": torch.randn(3), "weight": torch.randn(2, 2)})
    assert "'bais'" in str(err.value) and "'weight'" in str(err.value)


@pytest.mark.parametrize("fn", [call, call_batched])
def test_non_tensor_value_raises_type_error(fn):
    lin = nn.Linear(4, 3)
    snap = _snapshot(lin)
    lead = (N,) if fn is call_batched else ()
    with pytest.raises(TypeError, match="'weight'"):
        fn(lin, {"weight": torch.randn(*lead, 3, 4).tolist()}, torch.randn(*lead, 4))
    _assert_unchanged(lin, snap)


def test_call_batched_inconsistent_leading_dims():
    lin = nn.Linear(4, 3)
    snap = _snapshot(lin)
    with pytest.raises(ValueError) as err:
        call_batched(
            lin, {"weight": torch.randn(2, 3, 4), "bias": torch.randn(3, 3)}, torch.randn(2, 4)
        )
    msg = str(err.value)
    assert "'bias'" in msg and "(3,)" in msg and "(2,)" in msg
    _assert_unchanged(lin, snap)


@pytest.mark.parametrize("x_shape", [(N + 1, 4), ()])
def test_call_batched_input_leading_dim_must_be_n(x_shape):
    lin = nn.Linear(4, 3)
    snap = _snapshot(lin)
    weights = _random_weights(lin, N)
    with pytest.raises(ValueError) as err:
        call_batched(lin, weights, torch.randn(x_shape))
    assert str(tuple(x_shape)) in str(err.value)
    _assert_unchanged(lin, snap)


def test_call_batched_input_leading_dim_checked_in_kwargs():
    target = Scaled()
    weights = _random_weights(target, N)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        call_batched(target, weights, torch.randn(N, 4), 1.0, "relu", shift=torch.randn(2, 3))


def test_call_batched_needs_a_weight():
    with pytest.raises(ValueError):
        call_batched(nn.Linear(4, 3), {}, torch.randn(N, 4))


def test_call_batched_partial_dict_keeps_own_values():
    lin = nn.Linear(4, 3)
    x = torch.randn(N, 5, 4)
    ws = torch.randn(N, 3, 4)
    out = call_batched(lin, {"weight": ws}, x)
    assert_close(out, torch.stack([F.linear(x[i], ws[i], lin.bias) for i in range(N)]))


# ---------------------------------------------------------------------------------------------
# call_batched == a loop of call


BATCHED_CASES = {
    "linear_per_sample": lambda: (nn.Linear(4, 3), (torch.randn(N, 4),)),
    "linear_groups": lambda: (nn.Linear(4, 3), (torch.randn(N, G, 4),)),
    "conv1d": lambda: (nn.Conv1d(2, 3, 3), (torch.randn(N, G, 2, 7),)),
    "conv2d": lambda: (nn.Conv2d(2, 3, 3, padding=1), (torch.randn(N, G, 2, 5, 5),)),
    "layernorm": lambda: (nn.LayerNorm(4), (torch.randn(N, G, 4),)),
    "embedding": lambda: (nn.Embedding(10, 4), (torch.randint(0, 10, (N, G, 5)),)),
    "mha": lambda: (SelfAttention(), (torch.randn(N, 2, 3, 8),)),
    "gru": lambda: (nn.GRU(3, 4), (torch.randn(N, 5, 2, 3), torch.randn(N, 1, 2, 4))),
    "lstm_2layer_bidir_batch_first": lambda: (
        nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True),
        (torch.randn(N, 2, 5, 3),),
    ),
    "lstm_hx": lambda: (
        nn.LSTM(3, 4, num_layers=2, bidirectional=True),
        (torch.randn(N, 5, 2, 3), _lstm_hx(2, 2, 2, 4, N)),
    ),
    "rnn_relu": lambda: (nn.RNN(3, 4, nonlinearity="relu"), (torch.randn(N, 5, 2, 3),)),
    "batchnorm2d_eval": lambda: (_bn_eval(), (torch.randn(N, G, 3, 2, 2),)),
    "batchnorm2d_train": lambda: (nn.BatchNorm2d(3), (torch.randn(N, G, 3, 2, 2),)),
    "sequential": lambda: (
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3 * 4 * 4, 5),
        ),
        (torch.randn(N, G, 2, 4, 4),),
    ),
    "sequential_eval": lambda: (
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), _bn_eval(), nn.ReLU(), nn.Flatten(), nn.Linear(48, 5)
        ),
        (torch.randn(N, G, 2, 4, 4),),
    ),
    "tied": lambda: (TiedLM(), (torch.randint(0, 7, (N, 2, 5)),)),
}


def _slice(args: tuple, i: int) -> tuple:
    return pytree.tree_map(lambda t: t[i] if isinstance(t, Tensor) else t, args)


def _loop(target: nn.Module, weights: dict[str, Tensor], args: tuple, **kwargs):
    """The oracle: ``call`` once per weight set, on a deep copy, outputs stacked."""
    ref = copy.deepcopy(target)
    outs = [
        call(ref, {k: v[i] for k, v in weights.items()}, *_slice(args, i), **_slice(kwargs, i))
        for i in range(next(iter(weights.values())).shape[0])
    ]
    stacked = [torch.stack(leaves) for leaves in zip(*map(_tensors, outs), strict=True)]
    return pytree.tree_unflatten(stacked, pytree.tree_structure(outs[0]))


@pytest.mark.parametrize("case", list(BATCHED_CASES))
def test_call_batched_equals_loop_of_call(case):
    target, args = BATCHED_CASES[case]()
    snap = _snapshot(target)
    weights = _random_weights(target, N)

    args_a = _fresh(args)
    out = call_batched(target, weights, *args_a)
    _assert_unchanged(target, snap)  # BatchNorm running stats included
    _assert_no_forward_attribute(target)
    args_b = _fresh(args)
    out_ref = _loop(target, weights, args_b)

    assert pytree.tree_structure(out) == pytree.tree_structure(out_ref)
    assert_close(_tensors(out), _tensors(out_ref), rtol=1e-4, atol=1e-5)
    cot = [torch.randn_like(t) for t in _tensors(out)]
    grads = torch.autograd.grad(_loss(out, cot), [*weights.values(), *_grad_inputs(args_a)])
    grads_ref = torch.autograd.grad(_loss(out_ref, cot), [*weights.values(), *_grad_inputs(args_b)])
    assert_close(grads, grads_ref, rtol=1e-4, atol=1e-5)
    _assert_unchanged(target, snap)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: nn.BatchNorm1d(4, momentum=None), id="batchnorm_momentum_none"),
        pytest.param(
            lambda: nn.InstanceNorm1d(4, affine=True, track_running_stats=True),
            id="instancenorm_tracked",
        ),
    ],
)
def test_call_batched_normalisation_in_training_equals_loop(make):
    target = make()
    snap = _snapshot(target)
    weights = _random_weights(target, N)
    x = torch.randn(N, G, 4, 5)
    out = call_batched(target, weights, x)
    _assert_unchanged(target, snap)
    assert_close(out, _loop(target, weights, (x,)), rtol=1e-4, atol=1e-5)


def test_call_batched_non_tensor_args_pass_through():
    target = Scaled()
    weights = _random_weights(target, N)
    x, shift = torch.randn(N, G, 4), torch.randn(N, G, 3)
    for scale, mode in [(2.0, "relu"), (-0.5, "tanh")]:
        out = call_batched(target, weights, x, scale, mode, shift=shift)
        assert_close(out, _loop(target, weights, (x, scale, mode), shift=shift))
        out = call_batched(target, weights, x, scale, mode, shift=None)
        assert_close(out, _loop(target, weights, (x, scale, mode), shift=None))
    # The non-tensor arguments did reach forward: they change the result.
    relu = call_batched(target, weights, x, 2.0, "relu")
    tanh = call_batched(target, weights, x, 2.0, "tanh")
    assert not torch.allclose(relu, tanh)


def test_call_batched_doctest_example():
    ws = {"weight": torch.randn(5, 2, 3), "bias": torch.randn(5, 2)}
    x = torch.randn(5, 3)
    out = call_batched(nn.Linear(3, 2), ws, x)
    assert_close(out, torch.einsum("noi,ni->no", ws["weight"], x) + ws["bias"])


# ---------------------------------------------------------------------------------------------
# dropout: one mask per slice


def test_call_batched_dropout_masks_differ_per_slice():
    target = nn.Sequential(nn.Linear(4, 512), nn.Dropout(0.5))
    one = _random_weights(target)
    weights = {k: v.detach().unsqueeze(0).expand(2, *v.shape).clone() for k, v in one.items()}
    x = torch.randn(1, 4).expand(2, 4).clone()

    target.eval()  # without dropout the two identical slices agree ...
    out = call_batched(target, weights, x)
    assert_close(out[0], out[1], rtol=0, atol=0)

    target.train()  # ... with it, each slice draws its own mask
    out = call_batched(target, weights, x)
    assert not torch.equal(out[0] == 0, out[1] == 0)
    assert 0.3 < (out == 0).float().mean().item() < 0.7


# ---------------------------------------------------------------------------------------------
# rnn_forward == the module's own forward

RNN_KINDS = {
    "lstm": lambda *a, **k: nn.LSTM(*a, **k),
    "gru": lambda *a, **k: nn.GRU(*a, **k),
    "rnn_tanh": lambda *a, **k: nn.RNN(*a, nonlinearity="tanh", **k),
    "rnn_relu": lambda *a, **k: nn.RNN(*a, nonlinearity="relu", **k),
}
T, B, IN, H = 4, 2, 3, 5


def _clone(tree):
    return pytree.tree_map(lambda t: t.clone() if isinstance(t, Tensor) else t, tree)


def _hx(kind: str, layers: int, n_dir: int, *batch: int):
    h = torch.randn(layers * n_dir, *batch, H)
    return (h, torch.randn_like(h)) if kind == "lstm" else h


@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidir"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("kind", list(RNN_KINDS))
def test_rnn_forward_matches_module(kind, num_layers, bidirectional, batch_first, bias, with_hx):
    module = RNN_KINDS[kind](
        IN,
        H,
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        bias=bias,
    )
    x = torch.randn(B, T, IN) if batch_first else torch.randn(T, B, IN)
    hx = _hx(kind, num_layers, 2 if bidirectional else 1, B) if with_hx else None
    saved = _clone(hx)
    ref = module(x, _clone(hx))
    out = rnn_forward(module, x, hx)
    assert pytree.tree_structure(out) == pytree.tree_structure(ref)
    assert_close(_tensors(hx), _tensors(saved), rtol=0, atol=0)  # hx is not written to
    assert_close(_tensors(out), _tensors(ref), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidir"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("kind", list(RNN_KINDS))
def test_rnn_forward_unbatched_matches_module(kind, num_layers, bidirectional, with_hx):
    module = RNN_KINDS[kind](IN, H, num_layers=num_layers, bidirectional=bidirectional)
    x = torch.randn(T, IN)
    hx = _hx(kind, num_layers, 2 if bidirectional else 1) if with_hx else None
    saved = _clone(hx)
    ref = module(x, _clone(hx))
    out = rnn_forward(module, x, hx)
    assert pytree.tree_structure(out) == pytree.tree_structure(ref)
    assert_close(_tensors(hx), _tensors(saved), rtol=0, atol=0)  # hx is not written to
    assert_close(_tensors(out), _tensors(ref), atol=1e-5, rtol=1e-5)


def test_rnn_forward_rejects_proj_size():
    with pytest.raises(ValueError, match="proj_size"):
        rnn_forward(nn.LSTM(3, 5, proj_size=2), torch.randn(T, B, 3))


def test_rnn_forward_rejects_packed_sequence():
    lstm = nn.LSTM(3, 5)
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(T, B, 3), torch.tensor([4, 2]))
    with pytest.raises(TypeError, match="PackedSequence"):
        rnn_forward(lstm, packed)
