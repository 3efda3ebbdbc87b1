"""Recurrent modules written with tensor ops that vmap can batch: :func:`rnn_forward`.

``nn.RNN``/``nn.GRU``/``nn.LSTM`` have no vmap rule; :func:`run_rnn` is their forward for one
weight set or for a leading batch of them (the fast path of ``call_batched``), from the cell
maths of :func:`cell_step`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .autograd import batched_linear


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
    return run_rnn(module, input, hx, lambda name: getattr(module, name), lead=0)


def run_rnn(module: nn.RNNBase, input: Tensor, hx: Any, get: Any, *, lead: int) -> Any:
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
    h_last: list[Tensor] = []
    c_last: list[Tensor] = []
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
            gates_x = batched_linear(seq, w_ih, b_ih, lead)  # (*N, T, B, G*H)
            steps = []
            for t in range(seq.shape[t_dim]):
                gh = batched_linear(h, w_hh, b_hh, lead)  # (*N, B, G*H)
                h, c = cell_step(mode, gates_x.select(t_dim, t), gh, h, c)
                steps.append(h)
            out = torch.stack(steps, dim=t_dim)  # (*N, T, B, H)
            outs.append(out.flip(t_dim) if direction else out)
            h_last.append(h)
            if c is not None:
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


def cell_step(
    mode: str, gx: Tensor, gh: Tensor, h: Tensor, c: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """One recurrent step from the input and hidden pre-activations ``(*, G*H)``."""
    if mode == "LSTM":
        if c is None:
            raise ValueError("an LSTM step needs the cell state c, got None")
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
