"""Calling an unmodified module with weights it does not own.

:func:`call` runs ``target`` with one weight set; :func:`call_batched` runs it with a batch of
weight sets, slice ``i`` of the weights on slice ``i`` of the inputs, through ``torch.func.vmap``.
Both swap tensors in for one call (``torch.func.functional_call``) and leave the module's own
tensors as they were, also when the call raises.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Mapping
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
    check_weights(target, weights, batch_dims=0)
    return functional_call(target, dict(weights), args, kwargs, tie_weights=True, strict=False)


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
    check_weights(target, weights, batch_dims=1)
    if not weights:
        raise ValueError("call_batched needs at least one weight tensor to batch over")
    n = next(iter(weights.values())).shape[0]
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
    in_dims_inputs = pytree.tree_unflatten(in_leaves, spec)
    buffers = _batch_norm_buffers(target, n)

    def one(w: dict[str, Tensor], b: dict[str, Tensor], inputs: tuple) -> Any:
        a, kw = inputs
        return functional_call(target, {**w, **b}, a, kw, tie_weights=True, strict=False)

    with _functional_recurrent(target):
        return vmap(one, in_dims=(0, 0, in_dims_inputs), randomness="different")(
            dict(weights), buffers, (args, kwargs)
        )


def _batch_norm_buffers(target: nn.Module, n: int) -> dict[str, Tensor]:
    """Per-slice copies of the running statistics that BatchNorm updates in place in training."""
    out: dict[str, Tensor] = {}
    for prefix, m in target.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            for local in ("running_mean", "running_var", "num_batches_tracked"):
                buf = getattr(m, local)
                if buf is not None:
                    name = f"{prefix}.{local}" if prefix else local
                    out[name] = buf.detach().unsqueeze(0).expand(n, *buf.shape).clone()
    return out


@contextlib.contextmanager
def _functional_recurrent(target: nn.Module) -> Iterator[None]:
    """Route the recurrent modules of ``target`` through :func:`rnn_forward` for one call."""
    patched = []
    try:
        for m in target.modules():
            if isinstance(m, nn.RNNBase) and "forward" not in vars(m):
                m.forward = _bound_rnn_forward(m)  # instance attribute, removed below
                patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward


def _bound_rnn_forward(module: nn.RNNBase):
    def forward(input: Tensor, hx: Any = None) -> Any:
        return rnn_forward(module, input, hx)

    return forward


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
    mode = module.mode  # 'LSTM', 'GRU', 'RNN_TANH', 'RNN_RELU'
    is_lstm = mode == "LSTM"
    unbatched = input.dim() == 2
    if unbatched:
        x = input.unsqueeze(1)  # (T, 1, in)
    else:
        x = input.transpose(0, 1) if module.batch_first else input  # (T, B, in)
    n_dir = 2 if module.bidirectional else 1
    n_layers, hidden = module.num_layers, module.hidden_size
    batch = x.shape[1]
    if hx is None:
        h0 = x.new_zeros(n_layers * n_dir, batch, hidden)
        c0 = h0 if is_lstm else None
    else:
        h0, c0 = hx if is_lstm else (hx, None)
        if unbatched:
            h0 = h0.unsqueeze(1)
            c0 = c0.unsqueeze(1) if c0 is not None else None
    h_last, c_last = [], []
    for layer in range(n_layers):
        outs = []
        for direction in range(n_dir):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih = getattr(module, "weight_ih" + suffix)
            w_hh = getattr(module, "weight_hh" + suffix)
            b_ih = getattr(module, "bias_ih" + suffix) if module.bias else None
            b_hh = getattr(module, "bias_hh" + suffix) if module.bias else None
            k = layer * n_dir + direction
            h = h0[k]
            c = c0[k] if c0 is not None else None
            seq = x.flip(0) if direction else x
            gates_x = F.linear(seq, w_ih, b_ih)  # (T, B, G*H)
            steps = []
            for t in range(seq.shape[0]):
                gx = gates_x[t]
                gh = F.linear(h, w_hh, b_hh)  # (B, G*H)
                if is_lstm:
                    i, f, g, o = (gx + gh).chunk(4, dim=-1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                elif mode == "GRU":
                    xr, xz, xn = gx.chunk(3, dim=-1)
                    hr, hz, hn = gh.chunk(3, dim=-1)
                    r = torch.sigmoid(xr + hr)
                    z = torch.sigmoid(xz + hz)
                    n = torch.tanh(xn + r * hn)
                    h = (1 - z) * n + z * h
                else:
                    pre = gx + gh
                    h = torch.tanh(pre) if mode == "RNN_TANH" else torch.relu(pre)
                steps.append(h)
            out = torch.stack(steps)  # (T, B, H)
            outs.append(out.flip(0) if direction else out)
            h_last.append(h)
            if is_lstm:
                c_last.append(c)
        x = torch.cat(outs, dim=-1) if n_dir == 2 else outs[0]  # (T, B, D*H)
        if module.dropout and module.training and layer < n_layers - 1:
            x = F.dropout(x, module.dropout, training=True)
    h_n = torch.stack(h_last)  # (L*D, B, H)
    c_n = torch.stack(c_last) if is_lstm else None
    if unbatched:
        output = x.squeeze(1)
        h_n = h_n.squeeze(1)
        c_n = c_n.squeeze(1) if c_n is not None else None
    else:
        output = x.transpose(0, 1) if module.batch_first else x
    return (output, (h_n, c_n)) if is_lstm else (output, h_n)
