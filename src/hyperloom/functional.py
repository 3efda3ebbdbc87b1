"""Calling an unmodified module with weights it does not own.

:func:`call` runs ``target`` with one weight set; :func:`call_batched` runs it with a batch of
weight sets, slice ``i`` of the weights on slice ``i`` of the inputs, through ``torch.func.vmap``.
Both swap tensors in for one call (``torch.func.functional_call``) and leave the module's own
tensors as they were, also when the call raises.

:func:`call_from_readout` is the per-sample call of a hypernetwork whose weights are one linear
readout of features (``FlatGenerator``): its ``Linear`` layers read their weights from the
readout without forming them (``docs/performance.md``); ``HyperNetwork`` uses it by itself.

Fast paths. When a target is built only from layers this module knows (``nn.Sequential`` of
``Linear``, ``Conv1d/2d/3d``, element-wise activations, ``Dropout``, ``Flatten``; or one
``nn.RNN``/``nn.GRU``/``nn.LSTM``, or one ``nn.RNNCell``/``nn.GRUCell``/``nn.LSTMCell``), exact
types, no hooks, the same results are computed without ``functional_call``'s reparametrisation:
:func:`call` runs ``F.linear``/``_conv_forward`` on the given tensors directly, and
:func:`call_batched` runs hand-batched kernels (``bmm`` for linear maps, one grouped convolution
for a batch of convolutions, batched recurrent steps) instead of ``vmap``. Anything else goes
through ``functional_call`` (and ``vmap``) as before. ``tests/test_fastpaths.py`` checks every
fast path against that general path, outputs and gradients.
"""

from __future__ import annotations

import copy
import difflib
import functools
import threading
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.utils import _pytree as pytree

Weights = Mapping[str, Tensor]


def check_weights(target: nn.Module, weights: Weights, *, batch_dims: int = 0) -> None:
    """Check that every key of ``weights`` names a parameter of ``target``, with its shape.

    Parameters that ``weights`` does not name keep the module's own values when called.

    Args:
        target: the module the weights are for.
        weights: ``name -> tensor``; a tensor has ``batch_dims`` leading dimensions before the
            parameter's own shape, the same ones for every tensor.
        batch_dims: 0 for :func:`call`, 1 for :func:`call_batched`.

    Raises:
        TypeError: a value is not a tensor.
        ValueError: unexpected names (with close matches) and wrong shapes, all listed at once.
    """
    own = dict(target.named_parameters(remove_duplicate=False))
    problems = []
    unexpected = [n for n in weights if n not in own]
    if unexpected:
        hints = []
        for n in unexpected:
            close = difflib.get_close_matches(n, list(own), n=1)
            hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        problems.append(f"unexpected names {', '.join(hints)}")
    lead = None
    for name, t in weights.items():
        if name not in own:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"weights[{name!r}] must be a Tensor, got {type(t).__name__}")
        want = tuple(own[name].shape)
        got = tuple(t.shape)
        if len(got) != batch_dims + len(want) or got[batch_dims:] != want:
            what = f"{batch_dims} batch dim(s) then {want}" if batch_dims else f"{want}"
            problems.append(f"{name!r} has shape {got}, expected {what}")
        elif lead is None:
            lead = got[:batch_dims]
        elif got[:batch_dims] != lead:
            problems.append(f"{name!r} has batch shape {got[:batch_dims]}, others have {lead}")
    if problems:
        raise ValueError(f"weights for {type(target).__name__} do not fit: " + "; ".join(problems))


def call(target: nn.Module, weights: Weights, *args: Any, **kwargs: Any) -> Any:
    """Run ``target(*args, **kwargs)`` with the named parameters replaced by ``weights``.

    The module is not mutated: the tensors are swapped in for this call only, inside
    ``try/finally``. Parameters not named in ``weights`` keep their own values (and stay
    trainable). Tied parameters are replaced together.

    Args:
        target: any ``nn.Module``.
        weights: ``name -> tensor`` with exactly the parameters' shapes.
        *args: positional inputs of ``target.forward``.
        **kwargs: keyword inputs of ``target.forward``.

    Returns:
        Whatever ``target.forward`` returns.

    Raises:
        ValueError: unexpected names or wrong shapes (see :func:`check_weights`).

    Example:
        >>> net = nn.Linear(3, 2)
        >>> w = {"weight": torch.zeros(2, 3), "bias": torch.ones(2)}
        >>> call(net, w, torch.randn(4, 3))
        tensor([[1., 1.],
                [1., 1.],
                [1., 1.],
                [1., 1.]])
    """
    by_id = _resolve(target, weights, 0)
    if by_id is None:
        check_weights(target, weights, batch_dims=0)  # raises, naming the problems
    elif not kwargs and len(args) == 1 and isinstance(args[0], Tensor):
        layers = _layers(target)
        if layers is not None:
            return _run_direct(layers, by_id, args[0])
    return swapped_call(target, weights, args, kwargs)


# One lock for every call that swaps tensors into a module: two threads calling one target (or
# a target and one of its submodules) would otherwise run with each other's tensors. The fast
# paths swap nothing and run without it.
_SWAP_LOCK = threading.RLock()


def swapped_call(
    target: nn.Module,
    weights: Weights,
    args: tuple,
    kwargs: dict,
    statistics: Mapping[str, Tensor] | None = None,
) -> Any:
    """``functional_call`` with ``weights`` (already checked), safe under threads and errors.

    BatchNorm layers in training mode update copies of their running statistics, which are
    written back only when the call returns: a call that raises leaves them as they were.

    Args:
        target: the module.
        weights: ``name -> tensor``, names and shapes already checked.
        args: positional inputs.
        kwargs: keyword inputs.
        statistics: where the BatchNorm statistics live, ``buffer name -> tensor``; ``None``:
            the module's own buffers. Read in eval mode, updated in training mode.

    Returns:
        What ``target`` returns.
    """
    own = _norm_statistics(target)
    homes = dict(own) if statistics is None else dict(statistics)
    if set(homes) != set(own):
        raise ValueError(
            f"statistics must name the BatchNorm buffers {sorted(own)}, got {sorted(homes)}"
        )
    training = _norm_statistics(target, updated=True)
    work = {n: t.clone() if n in training else t for n, t in homes.items()}
    with _SWAP_LOCK:
        out = functional_call(
            target, {**weights, **work}, args, kwargs, tie_weights=True, strict=False
        )
        with torch.no_grad():
            for n in training:
                homes[n].copy_(work[n])
    return out


def _norm_statistics(target: nn.Module, *, updated: bool = False) -> dict[str, Tensor]:
    """``name -> buffer`` for the running statistics of every BatchNorm layer that keeps them.

    With ``updated``, only those a call in the current mode updates (layers in training mode).
    """
    out = {}
    for prefix, m in target.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or not m.track_running_stats:
            continue
        if updated and not m.training:
            continue
        for local in ("running_mean", "running_var", "num_batches_tracked"):
            buf = m._buffers.get(local)
            if buf is not None:
                out[f"{prefix}.{local}" if prefix else local] = buf
    return out


def call_batched(target: nn.Module, weights: Weights, *args: Any, **kwargs: Any) -> Any:
    """Run ``target`` once per weight set: slice ``i`` of the weights on slice ``i`` of the inputs.

    Every weight tensor has a leading dimension ``N`` and so does every tensor input; the target
    sees ``weights[name][i]`` and ``x[i]``, as in ``torch.func.vmap``. Non-tensor inputs are passed
    unchanged. To let a group of ``G`` samples share one weight set, give inputs of shape
    ``(N, G, ...)``; for one weight set per sample with modules that expect a batch dimension,
    ``x.unsqueeze(1)``. The result equals ``torch.stack([call(target, w_i, x_i) for ...])``.

    Recurrent modules (``nn.RNN``, ``nn.GRU``, ``nn.LSTM``), which have no vmap rule, run through
    the functional cells of :func:`rnn_forward` for the duration of the call. BatchNorm in
    training mode normalises each slice with its own batch statistics; its running statistics
    are not updated (each weight set would need its own), so evaluate with per-slice
    ``eval()``-mode statistics only after training them another way.

    Targets built only from known layers (``nn.Sequential`` of ``Linear``/``Conv*d``/element-wise
    activations/``Dropout``/``Flatten``, a recurrent module, or a recurrent cell, exact types
    without hooks) skip vmap: linear maps run as one ``bmm`` with a backward that returns the
    weight gradient in the weights' own layout, convolutions as one grouped convolution,
    recurrent steps as batched matmuls; the results are the vmap path's (see
    ``docs/performance.md``). ``nn.LSTMCell``, which vmap cannot batch, works through this path.

    Args:
        target: any ``nn.Module``.
        weights: ``name -> (N, *shape)``.
        *args: positional inputs, tensors with leading dimension ``N``.
        **kwargs: keyword inputs, likewise.

    Returns:
        The target's outputs, each stacked along a new leading dimension ``N``.

    Raises:
        ValueError: unexpected names, wrong shapes, or inputs whose leading dimension is not N.

    Example:
        >>> net = nn.Linear(3, 2)
        >>> ws = {"weight": torch.randn(5, 2, 3), "bias": torch.randn(5, 2)}
        >>> call_batched(net, ws, torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """
    by_id = _resolve(target, weights, 1)
    if by_id is None:
        check_weights(target, weights, batch_dims=1)  # raises, naming the problems
    if not weights:
        raise ValueError("call_batched needs at least one weight tensor to batch over")
    n = next(iter(weights.values())).shape[0]
    if n == 0:
        return _call_batched_empty(target, weights, args, kwargs)
    leaves, spec = pytree.tree_flatten((args, kwargs))
    in_leaves = []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, Tensor):
            if leaf.dim() == 0 or leaf.shape[0] != n:
                raise ValueError(
                    f"input {i} has shape {tuple(leaf.shape)}; call_batched needs a leading "
                    f"dimension of {n}, one slice per weight set"
                )
            in_leaves.append(0)
        else:
            in_leaves.append(None)
    if by_id is not None:
        run = _batched_plan(target, args, kwargs)
        if run is not None:
            return run(by_id)
    return _call_batched_vmap(
        target, weights, n, pytree.tree_unflatten(in_leaves, spec), args, kwargs
    )


def _call_batched_empty(target: nn.Module, weights: Weights, args: tuple, kwargs: dict) -> Any:
    """:func:`call_batched` with zero weight sets: empty outputs of the right shapes.

    Runs one weight set of zeros on one input slice of zeros, appended to the (empty) given
    ones, and keeps none of it: the outputs have a leading dimension of 0 and the shapes that
    ``N`` weight sets would give, and stay connected to the given tensors for autograd.
    """

    def pad(t: Any) -> Any:
        if not isinstance(t, Tensor):
            return t
        if t.dim() == 0 or t.shape[0] != 0:
            raise ValueError(
                f"an input has shape {tuple(t.shape)}; call_batched with 0 weight sets needs a "
                "leading dimension of 0"
            )
        return torch.cat([t, t.new_zeros(1, *t.shape[1:])])

    padded = {k: pad(v) for k, v in weights.items()}
    a, kw = pytree.tree_map(pad, (args, kwargs))
    out = call_batched(target, padded, *a, **kw)
    return pytree.tree_map(lambda t: t[:0] if isinstance(t, Tensor) else t, out)


def _call_batched_vmap(
    target: nn.Module, weights: Weights, n: int, in_dims_inputs: Any, args: tuple, kwargs: dict
) -> Any:
    """The general path of :func:`call_batched`: ``vmap`` over ``functional_call``."""
    stats, counts = _running_statistics(target, n)
    module = _recurrent_stand_in(target)

    def one(w: dict[str, Tensor], s: dict[str, Tensor], c: dict[str, Tensor], inputs: tuple):
        a, kw = inputs
        return functional_call(module, {**w, **s, **c}, a, kw, tie_weights=True, strict=False)

    with _SWAP_LOCK:
        return vmap(one, in_dims=(0, 0, None, in_dims_inputs), randomness="different")(
            dict(weights), stats, counts, (args, kwargs)
        )


def _running_statistics(target: nn.Module, n: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Copies of the statistics that normalisation layers update in place in training.

    Running means and variances get one copy per slice (each weight set would need its own);
    the batch counter, the same for every slice and read with ``float()`` by BatchNorm with
    ``momentum=None``, gets one unbatched copy. The module's own buffers are never written.
    """
    stats: dict[str, Tensor] = {}
    counts: dict[str, Tensor] = {}
    for prefix, m in target.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats:
            for local in ("running_mean", "running_var", "num_batches_tracked"):
                buf = getattr(m, local, None)
                if buf is None:
                    continue
                name = f"{prefix}.{local}" if prefix else local
                if local == "num_batches_tracked":
                    counts[name] = buf.detach().clone()
                else:
                    stats[name] = buf.detach().unsqueeze(0).expand(n, *buf.shape).clone()
    return stats, counts


def _recurrent_stand_in(target: nn.Module) -> nn.Module:
    """``target``, or a stand-in whose recurrent modules run through :func:`rnn_forward`.

    ``nn.RNN``/``nn.GRU``/``nn.LSTM`` have no vmap rule. Rather than patching the user's modules,
    the modules on the way to each recurrent one are shallow copies (their own dictionaries of
    parameters, buffers and children; the same tensors), and each recurrent copy runs
    :func:`rnn_forward` on its own parameters. The rest of the tree is shared, unchanged.
    """
    memo: dict[int, nn.Module] = {}

    def stand_in(m: nn.Module) -> nn.Module:
        if id(m) in memo:
            return memo[id(m)]
        if not any(isinstance(s, nn.RNNBase) for s in m.modules()):
            memo[id(m)] = m
            return m
        new = copy.copy(m)  # a new object; its dictionaries are replaced below
        memo[id(m)] = new
        object.__setattr__(new, "_parameters", dict(m._parameters))
        object.__setattr__(new, "_buffers", dict(m._buffers))
        object.__setattr__(new, "_modules", {k: stand_in(c) for k, c in m._modules.items()})
        if isinstance(m, nn.RNNBase) and "forward" not in vars(m):
            object.__setattr__(new, "_flat_weights", list(m._flat_weights))
            object.__setattr__(new, "forward", functools.partial(rnn_forward, new))
        return new

    return stand_in(target)


def rnn_forward(module: nn.RNNBase, input: Tensor, hx: Any = None) -> Any:
    """``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` forward written with tensor ops that vmap can batch.

    Reads the module's current parameters (so it sees the tensors swapped in by :func:`call`),
    and returns what the module's own forward returns, for batched or unbatched inputs,
    ``batch_first``, several layers, bidirectional, with or without bias, with inter-layer
    dropout in training.

    Args:
        module: an ``nn.RNN``, ``nn.GRU`` or ``nn.LSTM`` (``proj_size=0``).
        input: ``(B, T, in)`` if ``batch_first`` else ``(T, B, in)``, or unbatched ``(T, in)``.
        hx: initial state as the module takes it (a tuple ``(h0, c0)`` for LSTM), or ``None``.

    Returns:
        ``(output, h_n)``, or ``(output, (h_n, c_n))`` for LSTM.

    Example:
        >>> lstm = nn.LSTM(3, 4, batch_first=True)
        >>> out, (h, c) = rnn_forward(lstm, torch.randn(2, 5, 3))
        >>> out.shape, h.shape
        (torch.Size([2, 5, 4]), torch.Size([1, 2, 4]))
    """
    if isinstance(input, nn.utils.rnn.PackedSequence):
        raise TypeError("rnn_forward takes padded tensors, not a PackedSequence")
    if getattr(module, "proj_size", 0):
        raise ValueError(f"rnn_forward does not support proj_size={module.proj_size}")
    return _rnn(module, input, hx, lambda name: getattr(module, name), lead=0)


def _rnn(module: nn.RNNBase, input: Tensor, hx: Any, get: Any, *, lead: int) -> Any:
    """:func:`rnn_forward` for one weight set (``lead=0``) or a leading batch of them (``lead=1``).

    With ``lead=1`` the input, ``hx`` and every tensor that ``get(local_name)`` returns with one
    more dimension than the module's own parameter carry a leading dimension ``N``: slice ``i``
    of the result is ``rnn_forward`` with weight set ``i`` on input slice ``i``.
    """
    mode = module.mode  # 'LSTM', 'GRU', 'RNN_TANH', 'RNN_RELU'
    is_lstm = mode == "LSTM"
    t_dim = lead  # the time dimension once the input is time-major
    unbatched = input.dim() == lead + 2
    if unbatched:
        x = input.unsqueeze(lead + 1)  # (*N, T, 1, in)
    else:
        x = input.transpose(lead, lead + 1) if module.batch_first else input  # (*N, T, B, in)
    n_dir = 2 if module.bidirectional else 1
    n_layers, hidden = module.num_layers, module.hidden_size
    batch = x.shape[lead + 1]
    if hx is None:
        h0 = x.new_zeros(*x.shape[:lead], n_layers * n_dir, batch, hidden)  # (*N, L*D, B, H)
        c0 = h0 if is_lstm else None
    else:
        h0, c0 = hx if is_lstm else (hx, None)
        if unbatched:
            h0 = h0.unsqueeze(lead + 1)
            c0 = c0.unsqueeze(lead + 1) if c0 is not None else None
    h_last, c_last = [], []
    for layer in range(n_layers):
        outs = []
        for direction in range(n_dir):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih = get("weight_ih" + suffix)
            w_hh = get("weight_hh" + suffix)
            b_ih = get("bias_ih" + suffix) if module.bias else None
            b_hh = get("bias_hh" + suffix) if module.bias else None
            k = layer * n_dir + direction
            h = h0.select(lead, k)  # (*N, B, H)
            c = c0.select(lead, k) if c0 is not None else None
            seq = x.flip(t_dim) if direction else x
            gates_x = _linear(seq, w_ih, b_ih, lead)  # (*N, T, B, G*H)
            steps = []
            for t in range(seq.shape[t_dim]):
                gh = _linear(h, w_hh, b_hh, lead)  # (*N, B, G*H)
                h, c = _cell_step(mode, gates_x.select(t_dim, t), gh, h, c)
                steps.append(h)
            out = torch.stack(steps, dim=t_dim)  # (*N, T, B, H)
            outs.append(out.flip(t_dim) if direction else out)
            h_last.append(h)
            if is_lstm:
                c_last.append(c)
        x = torch.cat(outs, dim=-1) if n_dir == 2 else outs[0]  # (*N, T, B, D*H)
        if module.dropout and module.training and layer < n_layers - 1:
            x = F.dropout(x, module.dropout, training=True)
    h_n = torch.stack(h_last, dim=lead)  # (*N, L*D, B, H)
    c_n = torch.stack(c_last, dim=lead) if is_lstm else None
    if unbatched:
        output = x.squeeze(lead + 1)
        h_n = h_n.squeeze(lead + 1)
        c_n = c_n.squeeze(lead + 1) if c_n is not None else None
    else:
        output = x.transpose(lead, lead + 1) if module.batch_first else x
    return (output, (h_n, c_n)) if is_lstm else (output, h_n)


def _cell_step(
    mode: str, gx: Tensor, gh: Tensor, h: Tensor, c: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """One recurrent step from the input and hidden pre-activations ``(*, G*H)``."""
    if mode == "LSTM":
        i, f, g, o = (gx + gh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if mode == "GRU":
        xr, xz, xn = gx.chunk(3, dim=-1)
        hr, hz, hn = gh.chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h, None
    pre = gx + gh
    return (torch.tanh(pre) if mode == "RNN_TANH" else torch.relu(pre)), None


# ---------------------------------------------------------------------------------------------
# Fast paths: the same results as functional_call / vmap for targets built from known layers.

_ELEMENTWISE = frozenset(
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
_CONVS = frozenset({nn.Conv1d, nn.Conv2d, nn.Conv3d})
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_LAYERS = _ELEMENTWISE | _CONVS | {nn.Linear, nn.Flatten}
_CELLS = frozenset({nn.RNNCell, nn.GRUCell, nn.LSTMCell})
_RECURRENT = frozenset({nn.RNN, nn.GRU, nn.LSTM})
# Every module type some fast path runs (the tests iterate this table): stacks of _LAYERS,
# or one recurrent module, or one recurrent cell.
_DISPATCH = _LAYERS | _CELLS | _RECURRENT


def _resolve(target: nn.Module, weights: Weights, batch_dims: int) -> dict[int, Tensor] | None:
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


def _layers(target: nn.Module) -> list[nn.Module] | None:
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
            stack.extend(reversed(m._modules.values()))
        elif kind in _LAYERS:
            out.append(m)
        else:
            return None
    return out


def _pick(by_id: dict[int, Tensor], own: Tensor | None) -> Tensor | None:
    """The given tensor for a parameter (tied names share one id), else the module's own."""
    return None if own is None else by_id.get(id(own), own)


def _run_direct(layers: list[nn.Module], by_id: dict[int, Tensor], x: Tensor) -> Tensor:
    """:func:`call` for a stack of known layers: each layer's own maths on the given tensors."""
    for m in layers:
        if type(m) is nn.Linear:
            own = m._parameters  # not m.weight: skips nn.Module.__getattr__
            x = F.linear(x, _pick(by_id, own["weight"]), _pick(by_id, own["bias"]))
        elif type(m) in _CONVS:
            x = m._conv_forward(x, _pick(by_id, m.weight), _pick(by_id, m.bias))
        else:  # parameter-free: element-wise or Flatten
            x = m.forward(x)
    return x


def _batched_plan(target: nn.Module, args: tuple, kwargs: dict) -> Any:
    """A function ``by_id -> outputs`` computing :func:`call_batched` without vmap, or ``None``.

    Only for inputs already checked by :func:`call_batched` (leading dimension ``N``).
    """
    if kwargs or not args or not isinstance(args[0], Tensor):
        return None
    x = args[0]
    kind = type(target)
    if kind in _RECURRENT:
        if len(args) > 2 or target.proj_size or _global_hooks() or not _plain(target):
            return None
        if x.dim() not in (3, 4):
            return None  # the general path raises the module's own error
        hx = args[1] if len(args) == 2 else None

        def run_rnn(by_id: dict[int, Tensor]) -> Any:
            return _rnn(target, x, hx, lambda n: _pick(by_id, getattr(target, n)), lead=1)

        return run_rnn
    if kind in _CELLS:
        if len(args) > 2 or _global_hooks() or not _plain(target) or x.dim() not in (2, 3):
            return None
        hx = args[1] if len(args) == 2 else None
        return lambda by_id: _cell_batched(target, by_id, x, hx)
    if len(args) != 1:
        return None
    layers = _layers(target)
    if layers is None:
        return None
    return lambda by_id: _run_batched(layers, by_id, x)


def _linear(x: Tensor, w: Tensor, b: Tensor | None, lead: int) -> Tensor:
    """``F.linear`` where ``w`` (and ``b``) may carry a leading batch of weight sets.

    ``x`` is ``(*N, ..., in)``; ``w`` is ``(out, in)`` (shared) or, with ``lead=1``,
    ``(N, out, in)``, applied to slice ``i`` of ``x`` as one batched matmul.
    """
    if not lead or (w.dim() == 2 and (b is None or b.dim() == 1)):
        return F.linear(x, w, b)
    n = x.shape[0]
    if w.dim() == 2:  # shared weight, batched bias
        y = F.linear(x, w)  # (N, ..., out)
        return y + b.view(n, *[1] * (y.dim() - 2), b.shape[-1])  # type: ignore[union-attr]
    xs = x.reshape(n, -1, x.shape[-1])  # (N, M, in)
    y = _BatchedLinear.apply(xs, w, b)  # (N, M, out)
    return y.view(*x.shape[:-1], w.shape[1])


class _BatchedLinear(torch.autograd.Function):
    """``y[i] = x[i] @ w[i].T + b[i]``, forward and backward as ``bmm`` in fast layouts.

    ``x`` is ``(N, M, in)``, ``w`` is ``(N, out, in)``, ``b`` is ``(N, out)``, ``(out,)`` or
    ``None``. Forward reads ``w`` transposed in place; backward returns ``grad_w`` directly in
    ``w``'s own ``(out, in)`` layout (``gy^T @ x``). Autograd's formula for the same ``bmm`` gives
    ``(in, out)`` and transposes it, and that strided copy of every generated weight took longer
    than the rest of a per-sample training step (``benchmarks/results.md``). The backward is
    built from differentiable ops, so higher-order gradients work; ``vmap`` is generated.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:  # type: ignore[override]
        wt = w.transpose(1, 2)  # (N, in, out), a view
        if b is None:
            return torch.bmm(x, wt)
        return torch.baddbmm(b.unsqueeze(1) if b.dim() == 2 else b, x, wt)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, w, b = inputs
        ctx.save_for_backward(x, w)
        ctx.bias_dim = None if b is None else b.dim()
        ctx.amp = _autocast_state(x.device.type)

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, w = ctx.saved_tensors
        gx = gw = gb = None
        with _autocast_as(ctx.amp):
            if ctx.needs_input_grad[0]:
                gx = torch.bmm(gy, w)  # (N, M, in)
            if ctx.needs_input_grad[1]:
                if x.shape[1] == 1:  # one row per weight set: an outer product, element-wise
                    gw = gy.transpose(1, 2) * x  # (N, out, 1) * (N, 1, in) -> (N, out, in)
                else:
                    gw = torch.bmm(gy.transpose(1, 2), x)  # (N, out, in), w's own layout
            if ctx.bias_dim is not None and ctx.needs_input_grad[2]:
                gb = gy.sum(1) if ctx.bias_dim == 2 else gy.sum((0, 1))
        return gx, gw, gb


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype]:
    """The autocast state of a custom Function's forward, for its backward to run under."""
    return (
        device_type,
        torch.is_autocast_enabled(device_type),
        torch.get_autocast_dtype(device_type),
    )


def _autocast_as(state: tuple[str, bool, torch.dtype]) -> torch.autocast:
    """Run a backward under its forward's autocast state (what ``torch.amp.custom_bwd`` does).

    Under autocast a forward's matmuls ran in the lower precision; its backward, which autograd
    runs outside autocast, would otherwise meet ``bfloat16`` gradients and ``float32`` saved
    tensors in one matmul. Gradients are returned in the compute dtype; autograd casts each to
    its input's dtype.
    """
    device_type, enabled, dtype = state
    return torch.autocast(device_type, dtype=dtype, enabled=enabled)


def _conv_batched(m: nn.Module, by_id: dict[int, Tensor], x: Tensor) -> Tensor:
    """Slice ``i`` of ``x`` through conv ``m`` with weight set ``i``: one grouped convolution.

    ``x`` is ``(N, G, C, *S)`` (or ``(N, C, *S)`` when each slice is unbatched); the ``N`` weight
    sets become ``N * groups`` groups of one convolution over ``(G, N * C, *S)``.
    """
    w, b = _pick(by_id, m.weight), _pick(by_id, m.bias)
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
            xs = F.pad(xs, m._reversed_padding_repeated_twice, mode=m.padding_mode)
            padding: Any = 0
        else:
            padding = m.padding
        bias = None
        if b is not None:
            bias = b.flatten() if b.dim() == 2 else b.repeat(n)  # (N*O,)
        y = _CONV_FN[d](
            xs, w.flatten(0, 1), bias, m.stride, padding, m.dilation, m.groups * n
        )  # (G, N*O, *S')
        y = y.unflatten(1, (n, w.shape[1])).transpose(0, 1)  # (N, G, O, *S')
    return y.squeeze(1) if unbatched else y


def _run_batched(layers: list[nn.Module], by_id: dict[int, Tensor], x: Tensor) -> Tensor:
    """:func:`call_batched` for a stack of known layers, hand-batched over the leading ``N``."""
    for m in layers:
        x = _layer_batched(m, by_id, x)
    return x


def _layer_batched(m: nn.Module, by_id: dict[int, Tensor], x: Tensor) -> Tensor:
    """One known layer of :func:`_run_batched` on ``x`` with leading ``N``."""
    kind = type(m)
    if kind is nn.Linear:
        return _linear(x, _pick(by_id, m.weight), _pick(by_id, m.bias), 1)  # type: ignore[arg-type]
    if kind in _CONVS:
        return _conv_batched(m, by_id, x)
    if kind is nn.Flatten:  # its dims count within one slice: shift them past N
        start, end = m.start_dim, m.end_dim
        return x.flatten(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end)
    return m.forward(x)  # element-wise: the same on the whole batch


def _cell_batched(m: nn.Module, by_id: dict[int, Tensor], x: Tensor, hx: Any) -> Any:
    """``nn.RNNCell``/``GRUCell``/``LSTMCell`` with one weight set per slice of ``x``.

    ``x`` is ``(N, B, in)`` or ``(N, in)`` (unbatched slices); ``hx`` likewise, or ``None``.
    """
    kind = type(m)
    unbatched = x.dim() == 2
    if unbatched:
        x = x.unsqueeze(1)  # (N, 1, in)
        hx = pytree.tree_map(lambda t: t.unsqueeze(1) if isinstance(t, Tensor) else t, hx)
    if hx is None:
        zeros = x.new_zeros(x.shape[0], x.shape[1], m.hidden_size)  # (N, B, H)
        hx = (zeros, zeros) if kind is nn.LSTMCell else zeros
    h, c = hx if kind is nn.LSTMCell else (hx, None)
    gx = _linear(x, _pick(by_id, m.weight_ih), _pick(by_id, m.bias_ih), 1)  # type: ignore[arg-type]
    gh = _linear(h, _pick(by_id, m.weight_hh), _pick(by_id, m.bias_hh), 1)  # type: ignore[arg-type]
    if kind is nn.LSTMCell:
        mode = "LSTM"
    elif kind is nn.GRUCell:
        mode = "GRU"
    else:
        mode = "RNN_TANH" if m.nonlinearity == "tanh" else "RNN_RELU"
    h, c = _cell_step(mode, gx, gh, h, c)
    out: Any = (h, c) if kind is nn.LSTMCell else h
    if unbatched:
        out = pytree.tree_map(lambda t: t.squeeze(1), out)
    return out


# ---------------------------------------------------------------------------------------------
# Per-sample calls straight from a linear readout


def _functorch_active() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, ...) is running: keep to plain ops."""
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return peek is None or peek() is not None


def call_from_readout(
    target: nn.Module,
    names: list[str],
    sizes: list[int],
    h: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    x: Tensor,
    consts: list[float | None] | None = None,
) -> Tensor | None:
    """Sample ``i`` of ``x`` through ``target`` with the weights ``F.linear(h[i], weight, bias)``.

    The per-sample call of a hypernetwork whose generated weights are one linear readout of
    features ``h``, split in order into the tensors ``names`` of sizes ``sizes`` (plus each
    tensor's constant ``consts``): ``w_i = weight @ h_i + bias``. The result equals
    ``call_batched(target, weights, x.unsqueeze(1)).flatten(0, 1)`` with those weights
    generated, but a ``Linear`` layer that meets one row per weight set never forms its
    ``(B, out, in)`` weights: since ``W_i x_i = sum_k h_ik (R_k x_i) + r x_i`` (``R_k`` the
    readout's column ``k`` viewed as ``(out, in)``), it computes ``R_k x_i`` for every ``k`` in
    one batched matmul (:class:`_ReadoutLinear`). For per-sample weights that is the
    generation's FLOPs in a better-shaped matmul, no ``B x out x in`` weights written and read,
    and a backward of one such matmul instead of two. Other layers get their weights generated
    (only theirs) and run as in :func:`call_batched`.

    Args:
        target: the target module.
        names: the generated tensors, in the readout's order.
        sizes: their numbers of elements.
        h: ``(B, K)`` readout features, one row per sample.
        weight: ``(sum(sizes), K)`` readout weight.
        bias: ``(sum(sizes),)`` readout bias, or ``None``.
        x: ``(B, ...)`` the target's input, one sample per weight set.
        consts: a constant added to each generated tensor (``None``: zeros).

    Returns:
        ``(B, ...)`` outputs, or ``None`` when the target is not a stack of known layers (the
        caller then generates the weights and goes through :func:`call_batched`).

    Example:
        >>> target, readout = nn.Linear(3, 2), nn.Linear(4, 8)  # rows: weight (6), bias (2)
        >>> h, x = torch.randn(5, 4), torch.randn(5, 3)
        >>> y = call_from_readout(
        ...     target, ["weight", "bias"], [6, 2], h, readout.weight, readout.bias, x
        ... )
        >>> w = readout(h)  # (5, 8): the weights, formed
        >>> ref = call_batched(target, {"weight": w[:, :6].view(5, 2, 3), "bias": w[:, 6:]},
        ...                    x.unsqueeze(1))
        >>> torch.allclose(y, ref.flatten(0, 1), atol=1e-6)
        True
    """
    layers = _layers(target)
    if (
        layers is None
        or h.dim() != 2
        or h.shape[0] == 0
        or x.dim() < 2
        or x.shape[0] != h.shape[0]
        or weight.dtype != h.dtype
        or x.dtype != h.dtype
    ):
        return None
    n = h.shape[0]
    consts = consts if consts is not None else [0.0] * len(names)
    parts = weight.split(sizes)  # rows of each tensor, (numel_p, K) views
    bparts = bias.split(sizes) if bias is not None else [None] * len(names)
    where: dict[int, tuple[Tensor, Tensor | None, float | None, torch.Size]] = {}
    for name, w_p, b_p, c in zip(names, parts, bparts, consts, strict=True):
        own = target.get_parameter(name)
        if own.dtype != h.dtype:
            return None
        where[id(own)] = (w_p, b_p, c, own.shape)
    made: dict[int, Tensor] = {}

    def generated(param: Tensor | None) -> Tensor | None:
        """``param``'s per-sample weights ``(B, *shape)``, or the module's own when shared."""
        if param is None or id(param) not in where:
            return param
        key = id(param)
        if key not in made:
            w_p, b_p, c, shape = where[key]
            t = F.linear(h, w_p, b_p)  # (B, numel_p)
            made[key] = (t + c if c else t).view(n, *shape)
        return made[key]

    x = x.unsqueeze(1)  # (B, 1, ...): each sample a batch of one, as in a per-sample call
    for m in layers:
        entry = where.get(id(m.weight)) if type(m) is nn.Linear else None
        if entry is not None and not entry[2] and x.dim() == 3 and x.shape[1] == 1:
            w_p, b_p, _, _ = entry
            y = _ReadoutLinear.apply(x[:, 0], h, w_p, b_p)  # (B, out)
            b = generated(m.bias)
            x = (y if b is None else y + b).unsqueeze(1)  # bias (B, out) or shared (out,)
        else:  # its own weights formed, then as in call_batched
            by_id = {id(p): t for p in m._parameters.values() if (t := generated(p)) is not None}
            x = _layer_batched(m, by_id, x)
    return x.flatten(0, 1)


class _ReadoutLinear(torch.autograd.Function):
    """``y[i] = (R @ h[i] + r).view(out, in) @ x[i]`` without forming the per-sample weights.

    ``x`` is ``(B, in)``, ``h`` is ``(B, K)``, ``R`` is ``(out * in, K)`` (the readout rows of one
    weight, viewed as ``R3 = (out, in, K)``), ``r`` is ``(out * in,)`` or ``None``. Forward:
    ``U[o, i, k] = (R3[o] ^T x[i])[k]`` as one batched matmul over ``o`` (``(B, in) @ (in, K)``),
    then ``y[i, o] = sum_k U[o, i, k] h[i, k] + (r x[i])[o]``. Backward, with ``Z[o, i, k] =
    gy[i, o] h[i, k]``: ``grad_R3[o] = x^T Z[o]`` (one batched matmul, in ``R``'s own layout),
    ``grad_h[i] = sum_o gy[i, o] U[o, i]``, ``grad_r = gy^T x``, and only when asked
    ``grad_x = Z @ R3^T`` summed over ``o`` (one matmul over a transposed copy of ``R``). Under
    ``create_graph=True`` the backward recomputes ``U`` from differentiable ops, so
    higher-order gradients work.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, h: Tensor, R: Tensor, r: Tensor | None) -> Tensor:  # type: ignore[override]
        b, d_in = x.shape
        k = h.shape[1]
        r3 = R.view(-1, d_in, k)  # (out, in, K)
        u = torch.bmm(x.expand(r3.shape[0], b, d_in), r3)  # (out, B, K)
        y = torch.bmm(u.transpose(0, 1), h.unsqueeze(2)).squeeze(2)  # (B, out)
        if r is not None:
            y = torch.addmm(y, x, r.view(-1, d_in).t())  # out of place: autocast casts it
        ctx.save_for_backward(x, h, R, r)
        ctx.u = u if ctx.needs_input_grad[1] else None  # for grad_h; no graph of its own
        ctx.amp = _autocast_state(x.device.type)
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        with _autocast_as(ctx.amp):
            return _ReadoutLinear._backward(ctx, gy)

    @staticmethod
    def _backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        x, h, R, r = ctx.saved_tensors
        need_x, need_h, need_R, need_r = ctx.needs_input_grad
        b, d_in = x.shape
        k = h.shape[1]
        r3 = R.view(-1, d_in, k)  # (out, in, K)
        out = r3.shape[0]
        gx = gh = gR = gr = None
        if need_h:
            u = ctx.u
            if torch.is_grad_enabled():  # create_graph: U again, from differentiable ops
                u = torch.bmm(x.expand(out, b, d_in), r3)  # (out, B, K)
            gh = torch.bmm(gy.unsqueeze(1), u.transpose(0, 1)).squeeze(1)  # (B, K)
        if need_R or need_x:
            z = gy.t().unsqueeze(2) * h.unsqueeze(0)  # (out, B, K)
            if need_R:
                gR = torch.bmm(x.t().expand(out, d_in, b), z).view(out * d_in, k)  # R's layout
            if need_x:
                # sum_o Z[o] @ R3[o]^T as one matmul: (B, out*K) @ (out*K, in)
                gx = z.transpose(0, 1).reshape(b, out * k) @ r3.transpose(1, 2).reshape(-1, d_in)
                if r is not None:
                    gx = gx + gy @ r.view(out, d_in)
        if r is not None and need_r:
            gr = (gy.t() @ x).view(-1)  # (out * in,)
        return gx, gh, gR, gr
