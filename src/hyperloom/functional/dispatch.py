"""THE dispatch table: every fast path, listed in one place.

A fast path computes what the general path (``functional_call``, and ``vmap`` over it) computes,
without reparametrising the module: :func:`run_direct` for one weight set, :func:`batched_plan`
for a batch of them. Which path a call takes is decided here and nowhere else:

==========================================  ================================================
target (exact types, no hooks)              ``call`` / ``call_batched``
==========================================  ================================================
``nn.Sequential`` (nested) of :data:`LAYERS`  each layer's maths on the given tensors / one
                                            ``bmm`` per ``Linear``, one grouped convolution
                                            per ``Conv*d``
one module of :data:`RECURRENT`             ``functional_call`` / batched recurrent steps
one module of :data:`CELLS`                 ``functional_call`` / batched cell steps
anything else                               ``functional_call`` / ``vmap`` over it
==========================================  ================================================

A hypernetwork's call first chooses how many weight sets it forms (:func:`route`): one for the
whole batch, one per task's group of samples, or one per sample (straight from the generator's
linear readout where :func:`readout_applies`). ``tests/test_dispatch.py`` iterates
:data:`DISPATCH` and :data:`ROUTES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.utils import _pytree as pytree

from .autograd import batched_linear
from .recurrent import cell_step, run_rnn

Weights = Mapping[str, Tensor]


ELEMENTWISE = frozenset(
    {
        nn.Identity,
        nn.ReLU,
        nn.ReLU6,
        nn.LeakyReLU,
        nn.ELU,
        nn.SELU,
        nn.CELU,
        nn.GELU,
        nn.SiLU,
        nn.Mish,
        nn.Sigmoid,
        nn.LogSigmoid,
        nn.Tanh,
        nn.Softplus,
        nn.Softsign,
        nn.Tanhshrink,
        nn.Hardtanh,
        nn.Hardswish,
        nn.Hardsigmoid,
        nn.Dropout,  # element-wise masks: under vmap(randomness="different") too
    }
)
CONVS = frozenset({nn.Conv1d, nn.Conv2d, nn.Conv3d})
CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
LAYERS = ELEMENTWISE | CONVS | {nn.Linear, nn.Flatten}
CELLS = frozenset({nn.RNNCell, nn.GRUCell, nn.LSTMCell})
RECURRENT = frozenset({nn.RNN, nn.GRU, nn.LSTM})
# Every module type some fast path runs (the tests iterate this table): stacks of LAYERS,
# or one recurrent module, or one recurrent cell.
DISPATCH = LAYERS | CELLS | RECURRENT


def resolve(target: nn.Module, weights: Weights, batch_dims: int) -> dict[int, Tensor] | None:
    """``id(own parameter) -> given tensor`` when every name and shape fits, else ``None``.

    The cheap form of :func:`check_weights`: each name is looked up along the module tree
    instead of listing ``named_parameters()``, and ``None`` sends the caller to
    :func:`check_weights` for the full error message (or to ``functional_call``, which decides
    what two names of one tied parameter mean).
    """
    by_id: dict[int, Tensor] = {}
    lead = None
    for name, t in weights.items():
        if not isinstance(name, str) or not isinstance(t, Tensor):
            return None
        path, _, local = name.rpartition(".")
        owner: nn.Module | None = target
        if path:
            for part in path.split("."):
                owner = owner._modules.get(part)  # type: ignore[union-attr]
                if owner is None:
                    return None
        own = owner._parameters.get(local)  # type: ignore[union-attr]
        if own is None or id(own) in by_id:
            return None
        shape = t.shape
        if len(shape) != batch_dims + own.dim() or shape[batch_dims:] != own.shape:
            return None
        if batch_dims:
            if lead is None:
                lead = shape[:batch_dims]
            elif shape[:batch_dims] != lead:
                return None
        by_id[id(own)] = t
    return by_id


def _plain(m: nn.Module) -> bool:
    """No hooks and no instance-level ``forward``: running the layer's maths skips nothing."""
    return not (
        m._forward_hooks
        or m._forward_pre_hooks
        or m._backward_hooks
        or m._backward_pre_hooks
        or "forward" in m.__dict__
    )


def _global_hooks() -> bool:
    g = nn.modules.module
    return bool(
        g._global_forward_hooks
        or g._global_forward_pre_hooks
        or g._global_backward_hooks
        or g._global_backward_pre_hooks
    )


def known_layers(target: nn.Module) -> list[nn.Module] | None:
    """The layers ``target`` runs one after another, when the fast paths know every one.

    ``target`` is one known layer or an ``nn.Sequential`` (nested ones included) of them, all of
    their exact types (a subclass may override ``forward``) and without hooks.
    """
    if _global_hooks():
        return None
    out: list[nn.Module] = []
    stack = [target]
    while stack:
        m = stack.pop()
        if not _plain(m):
            return None
        kind = type(m)
        if kind is nn.Sequential:
            children = [c for c in m._modules.values() if c is not None]
            if len(children) != len(m._modules):
                return None  # a child set to None: the module's own forward decides
            stack.extend(reversed(children))
        elif kind in LAYERS:
            out.append(m)
        else:
            return None
    return out


def _pick(by_id: dict[int, Tensor], own: Tensor | None) -> Tensor | None:
    """The given tensor for a parameter (tied names share one id), else the module's own."""
    return None if own is None else by_id.get(id(own), own)


def _given(by_id: dict[int, Tensor], own: Tensor) -> Tensor:
    """:func:`_pick` for a parameter that is never ``None`` (a weight)."""
    return by_id.get(id(own), own)


def run_direct(layers: list[nn.Module], by_id: dict[int, Tensor], x: Tensor) -> Tensor:
    """:func:`call` for a stack of known layers: each layer's own maths on the given tensors."""
    for m in layers:
        if type(m) is nn.Linear:
            own = m._parameters  # not m.weight: skips nn.Module.__getattr__
            weight = cast(Tensor, own["weight"])  # a Linear always has its weight
            x = F.linear(x, _given(by_id, weight), _pick(by_id, own["bias"]))
        elif type(m) in CONVS:
            conv = cast(_ConvNd, m)
            x = conv._conv_forward(x, _given(by_id, conv.weight), _pick(by_id, conv.bias))
        else:  # parameter-free: element-wise or Flatten
            x = m.forward(x)
    return x


def batched_plan(target: nn.Module, args: tuple, kwargs: dict) -> Any:
    """A function ``by_id -> outputs`` computing :func:`call_batched` without vmap, or ``None``.

    Only for inputs already checked by :func:`call_batched` (leading dimension ``N``).
    """
    if kwargs or not args or not isinstance(args[0], Tensor):
        return None
    x = args[0]
    kind = type(target)
    if kind in RECURRENT:
        if len(args) > 2 or target.proj_size or _global_hooks() or not _plain(target):
            return None
        if x.dim() not in (3, 4):
            return None  # the general path raises the module's own error
        hx = args[1] if len(args) == 2 else None

        rnn = cast(nn.RNNBase, target)

        def run_recurrent(by_id: dict[int, Tensor]) -> Any:
            return run_rnn(rnn, x, hx, lambda n: _pick(by_id, getattr(rnn, n)), lead=1)

        return run_recurrent
    if kind in CELLS:
        if len(args) > 2 or _global_hooks() or not _plain(target) or x.dim() not in (2, 3):
            return None
        hx = args[1] if len(args) == 2 else None
        return lambda by_id: _cell_batched(target, by_id, x, hx)
    if len(args) != 1:
        return None
    layers = known_layers(target)
    if layers is None:
        return None
    return lambda by_id: _run_batched(layers, by_id, x)


def _conv_batched(m: _ConvNd, by_id: dict[int, Tensor], x: Tensor) -> Tensor:
    """Slice ``i`` of ``x`` through conv ``m`` with weight set ``i``: one grouped convolution.

    ``x`` is ``(N, G, C, *S)`` (or ``(N, C, *S)`` when each slice is unbatched); the ``N`` weight
    sets become ``N * groups`` groups of one convolution over ``(G, N * C, *S)``.
    """
    w, b = _given(by_id, m.weight), _pick(by_id, m.bias)
    d = m.weight.dim() - 2  # spatial dimensions
    unbatched = x.dim() == d + 2
    if unbatched:
        x = x.unsqueeze(1)  # (N, 1, C, *S)
    n, g = x.shape[:2]
    if w.dim() == d + 2:  # shared weight: one ordinary convolution over N * G samples
        y = m._conv_forward(x.flatten(0, 1), w, b if b is None or b.dim() == 1 else None)
        y = y.unflatten(0, (n, g))  # (N, G, O, *S')
        if b is not None and b.dim() == 2:
            y = y + b.view(n, 1, -1, *[1] * d)
    else:
        xs = x.transpose(0, 1).flatten(1, 2)  # (G, N*C, *S)
        if m.padding_mode != "zeros":
            pads = cast(list[int], m._reversed_padding_repeated_twice)
            xs = F.pad(xs, pads, mode=m.padding_mode)
            padding: Any = 0
        else:
            padding = m.padding
        bias = None
        if b is not None:
            bias = b.flatten() if b.dim() == 2 else b.repeat(n)  # (N*O,)
        conv_fn: Any = CONV_FN[d]  # conv1d/2d/3d: the stubs' overloads differ only in dims
        y = conv_fn(
            xs, w.flatten(0, 1), bias, m.stride, padding, m.dilation, m.groups * n
        )  # (G, N*O, *S')
        y = y.unflatten(1, (n, w.shape[1])).transpose(0, 1)  # (N, G, O, *S')
    return y.squeeze(1) if unbatched else y


def _run_batched(layers: list[nn.Module], by_id: dict[int, Tensor], x: Tensor) -> Tensor:
    """:func:`call_batched` for a stack of known layers, hand-batched over the leading ``N``."""
    for m in layers:
        x = layer_batched(m, by_id, x)
    return x


def layer_batched(m: nn.Module, by_id: dict[int, Tensor], x: Tensor) -> Tensor:
    """One known layer of :func:`_run_batched` on ``x`` with leading ``N``."""
    kind = type(m)
    if isinstance(m, nn.Linear) and kind is nn.Linear:
        return batched_linear(x, _given(by_id, m.weight), _pick(by_id, m.bias), 1)
    if kind in CONVS:
        return _conv_batched(cast(_ConvNd, m), by_id, x)
    if isinstance(m, nn.Flatten) and kind is nn.Flatten:  # dims within a slice: shift past N
        start, end = m.start_dim, m.end_dim
        return x.flatten(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end)
    return m.forward(x)  # element-wise: the same on the whole batch


def _cell_batched(m: nn.Module, by_id: dict[int, Tensor], x: Tensor, hx: Any) -> Any:
    """``nn.RNNCell``/``GRUCell``/``LSTMCell`` with one weight set per slice of ``x``.

    ``x`` is ``(N, B, in)`` or ``(N, in)`` (unbatched slices); ``hx`` likewise, or ``None``.
    """
    kind = type(m)
    cell = cast(nn.RNNCellBase, m)
    unbatched = x.dim() == 2
    if unbatched:
        x = x.unsqueeze(1)  # (N, 1, in)
        hx = pytree.tree_map(lambda t: t.unsqueeze(1) if isinstance(t, Tensor) else t, hx)
    if hx is None:
        zeros = x.new_zeros(x.shape[0], x.shape[1], cell.hidden_size)  # (N, B, H)
        hx = (zeros, zeros) if kind is nn.LSTMCell else zeros
    h, c = hx if kind is nn.LSTMCell else (hx, None)
    gx = batched_linear(x, _given(by_id, cell.weight_ih), _pick(by_id, cell.bias_ih), 1)
    gh = batched_linear(h, _given(by_id, cell.weight_hh), _pick(by_id, cell.bias_hh), 1)
    if kind is nn.LSTMCell:
        mode = "LSTM"
    elif kind is nn.GRUCell:
        mode = "GRU"
    else:
        mode = "RNN_TANH" if cell.nonlinearity == "tanh" else "RNN_RELU"
    h, c = cell_step(mode, gx, gh, h, c)
    out: Any = (h, c) if kind is nn.LSTMCell else h
    if unbatched:
        out = pytree.tree_map(lambda t: t.squeeze(1), out)
    return out


# ---------------------------------------------------------------------------------------------
# A hypernetwork's call: how many weight sets it forms, and how they reach the target.

ROUTES = {
    "one": "one context: one weight set for the whole batch (call)",
    "one_task": "per-sample task ids naming one task: its weight set for the whole batch (call)",
    "per_task": "per-sample task ids with batch statistics (BatchNorm in training mode, or "
    "task_statistics): each task's samples as one batch with its weight set (swapped_call)",
    "readout": "one weight set per sample, never formed: Linear layers read the generator's "
    "linear readout (call_from_readout); per_sample when the generator has none",
    "per_sample": "one weight set per sample (call_batched, each sample a batch of one)",
}
"""Every route of :meth:`HyperNetwork.forward <hyperloom.HyperNetwork.forward>`, by name."""


def functorch_active() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, ...) is running: keep to plain ops."""
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return peek is None or peek() is not None


def normalises_batches(target: nn.Module) -> bool:
    """Whether a BatchNorm layer of ``target`` is in training mode (batch statistics)."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in target.modules()
    )


def readout_applies(
    target: nn.Module, generator: nn.Module, args: tuple, kwargs: dict, *, check_finite: bool
) -> bool:
    """Whether a per-sample call may take the readout route (before any feature is computed).

    One tensor input, no keywords, no hooks on the generator, no ``torch.func`` transform
    running, no finiteness check (it needs the weights formed), and a target of known layers.
    """
    return not (
        check_finite
        or kwargs
        or len(args) != 1
        or not isinstance(args[0], Tensor)
        or generator._forward_hooks
        or generator._forward_pre_hooks
        or functorch_active()
        or known_layers(target) is None
    )


def route(
    cond: Tensor,
    index: Tensor | None,
    target: nn.Module,
    generator: nn.Module,
    args: tuple,
    kwargs: dict,
    *,
    check_finite: bool,
    task_statistics: bool,
) -> str:
    """The :data:`ROUTES` entry a hypernetwork's call takes.

    Args:
        cond: the conditioning, ``(d,)`` for one context or ``(M, d)``.
        index: per-sample rows of ``cond`` (static contexts: task ids), or ``None`` when row
            ``i`` of ``cond`` is sample ``i``'s own.
        target: the target module.
        generator: the generator.
        args: the target's positional inputs.
        kwargs: its keyword inputs.
        check_finite: whether generated weights are checked for NaN and infinity.
        task_statistics: whether BatchNorm statistics are kept per task.

    Returns:
        A key of :data:`ROUTES`.

    Example:
        >>> route(torch.zeros(4), None, nn.Linear(3, 2), nn.Linear(4, 8), (torch.zeros(5, 3),),
        ...       {}, check_finite=False, task_statistics=False)
        'one'
    """
    if cond.dim() == 1:
        return "one"
    if index is None:
        if readout_applies(target, generator, args, kwargs, check_finite=check_finite):
            return "readout"
        return "per_sample"
    if task_statistics or normalises_batches(target):
        return "per_task"
    if cond.shape[0] == 1:
        return "one_task"
    return "per_sample"
