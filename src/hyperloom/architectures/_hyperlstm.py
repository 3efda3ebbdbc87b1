r"""HyperLSTM: an LSTM whose weights are rescaled at every time step by a small auxiliary LSTM.

Ha, Dai and Le, *HyperNetworks* (ICLR 2017), section 3.2: a data-conditioned, dynamic
hypernetwork (criterion 3) with a recurrent architecture (criterion 5). At step :math:`t` an
auxiliary LSTM of ``hyper_size`` units reads :math:`\hat x_t = [x_t; h_{t-1}]` and emits
:math:`\hat h_t`; for each gate :math:`y \in \{i, f, g, o\}` three small embeddings

.. math:: z^y_h = W^y_{\hat h h} \hat h_t + b^y_{\hat h h}, \quad
          z^y_x = W^y_{\hat h x} \hat h_t + b^y_{\hat h x}, \quad
          z^y_b = W^y_{\hat h b} \hat h_t

(``embedding_size`` each) are projected to the vectors that scale the rows of the main weights,
:math:`d^y_h = W^y_{hz} z^y_h`, :math:`d^y_x = W^y_{xz} z^y_x`, :math:`d^y_b = W^y_{bz} z^y_b`:

.. math:: y_t = \mathrm{LN}\big(d^y_h \odot W^y_h h_{t-1} + d^y_x \odot W^y_x x_t
          + d^y_b + b^y\big),

since :math:`d \odot (W v) = (\operatorname{diag}(d) W) v`, the main weights are
:math:`\operatorname{diag}(d_t) W`: a new weight matrix at every step without ever forming one.
Then :math:`c_t = \sigma(f_t) c_{t-1} + \sigma(i_t) \tanh(g_t)` and
:math:`h_t = \sigma(o_t) \tanh(\mathrm{LN}(c_t))`.

Initialisation follows Ha et al.'s released code: the :math:`z_h, z_x` projections start at
weights 0 and bias 1, the :math:`d_h, d_x` projections at :math:`1 / N_z` (so every scale starts
at exactly 1), and the :math:`d_b` projection at 0: a fresh HyperLSTM computes what an LSTM
with the same main weights computes (exactly so with ``layer_norm=False``), and the auxiliary
network learns to move away from it.

The whole step is written with tensor operations in one loop over time (no vmap): the input
projections of all steps are one matrix product before the loop.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_GATES = 4  # i, f, g, o in PyTorch's order
_SOURCES = 3  # the h, x and bias scales


class HyperLSTM(nn.Module):
    """A drop-in for :class:`torch.nn.LSTM` whose weights change at every step (Ha et al., 2017).

    The main LSTM's parameters have ``nn.LSTM``'s names and shapes (``weight_ih_l0``,
    ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ...), so an ``nn.LSTM`` state dict loads
    with ``load_state_dict(..., strict=False)``; the auxiliary networks live in ``hyper``.

    Args:
        input_size: features of the input.
        hidden_size: units of the main LSTM.
        num_layers: stacked layers, each with its own auxiliary LSTM.
        bias: whether the main LSTM has biases.
        batch_first: inputs and outputs are ``(B, T, *)`` instead of ``(T, B, *)``.
        dropout: dropout on the outputs of every layer but the last (in training), as nn.LSTM.
        bidirectional: must be ``False`` (accepted for nn.LSTM's signature).
        proj_size: must be 0 (accepted for nn.LSTM's signature).
        hyper_size: units of each auxiliary LSTM (Ha et al. use 128 for 1000 main units).
        embedding_size: size :math:`N_z` of each :math:`z` (Ha et al. use 4 to 16).
        layer_norm: layer normalisation of each gate and of the cell (Ha et al.'s model).

    Shapes:
        ``forward(input, hx=None) -> (output, (h_n, c_n))`` exactly as ``nn.LSTM``: input
        ``(T, B, input_size)`` (``(B, T, input_size)`` with ``batch_first``) or unbatched
        ``(T, input_size)``; ``hx = (h_0, c_0)`` of ``(num_layers, B, hidden_size)`` each;
        output ``(T, B, hidden_size)``. The auxiliary LSTMs start from zero at every call.

    Example:
        >>> lstm = HyperLSTM(10, 32, num_layers=2, batch_first=True)
        >>> out, (h, c) = lstm(torch.randn(4, 7, 10))
        >>> out.shape, h.shape
        (torch.Size([4, 7, 32]), torch.Size([2, 4, 32]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        hyper_size: int = 64,
        embedding_size: int = 8,
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
            ("hyper_size", hyper_size),
            ("embedding_size", embedding_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if bidirectional:
            raise ValueError("HyperLSTM is unidirectional; bidirectional=True is not supported")
        if proj_size:
            raise ValueError(f"HyperLSTM does not support proj_size={proj_size}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.hyper_size = hyper_size
        self.embedding_size = embedding_size
        self.layer_norm = layer_norm
        h = hidden_size
        for layer in range(num_layers):
            n_in = input_size if layer == 0 else h
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(4 * h, n_in)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(4 * h, h)))
            if bias:
                self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(4 * h)))
                self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(4 * h)))
        self.hyper = nn.ModuleList(
            _HyperCell(input_size if layer == 0 else h, h, hyper_size, embedding_size, layer_norm)
            for layer in range(num_layers)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.LSTM's initialisation for the main weights, Ha et al.'s for the auxiliary ones."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for layer in range(self.num_layers):
            for name in self._main_names(layer):
                nn.init.uniform_(getattr(self, name), -bound, bound)
            self._cell(layer).reset_parameters()

    def _cell(self, layer: int) -> _HyperCell:
        """The auxiliary network of ``layer`` (``nn.ModuleList`` indexing is typed Module)."""
        return cast(_HyperCell, self.hyper[layer])

    def _main_names(self, layer: int) -> list[str]:
        names = [f"weight_ih_l{layer}", f"weight_hh_l{layer}"]
        return names + ([f"bias_ih_l{layer}", f"bias_hh_l{layer}"] if self.bias else [])

    def forward(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if input.dim() not in (2, 3) or input.shape[-1] != self.input_size:
            raise ValueError(
                f"HyperLSTM expects input of shape (T, B, {self.input_size}) "
                f"{'(batch_first: (B, T, ...)) ' if self.batch_first else ''}"
                f"or (T, {self.input_size}), got {tuple(input.shape)}"
            )
        unbatched = input.dim() == 2
        if unbatched:
            x = input.unsqueeze(1)  # (T, 1, in)
        else:
            x = input.transpose(0, 1) if self.batch_first else input  # (T, B, in)
        batch, h = x.shape[1], self.hidden_size
        if hx is None:
            h0 = c0 = x.new_zeros(self.num_layers, batch, h)
        else:
            h0, c0 = hx
            if unbatched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)  # (L, 1, H)
            want = (self.num_layers, batch, h)
            if tuple(h0.shape) != want or tuple(c0.shape) != want:
                raise ValueError(
                    f"hx must be two tensors of shape {want}, got {tuple(h0.shape)} and "
                    f"{tuple(c0.shape)}"
                )
        h_last, c_last = [], []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout and self.training:
                x = F.dropout(x, self.dropout, training=True)
            w_ih = getattr(self, f"weight_ih_l{layer}")
            w_hh = getattr(self, f"weight_hh_l{layer}")
            b = None
            if self.bias:
                b = getattr(self, f"bias_ih_l{layer}") + getattr(self, f"bias_hh_l{layer}")
            x, (h_n, c_n) = self._cell(layer).run(x, w_ih, w_hh, b, h0[layer], c0[layer])
            h_last.append(h_n)
            c_last.append(c_n)
        out = x.squeeze(1) if unbatched else (x.transpose(0, 1) if self.batch_first else x)
        h_n, c_n = torch.stack(h_last), torch.stack(c_last)  # (L, B, H)
        if unbatched:
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return out, (h_n, c_n)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"batch_first={self.batch_first}, hyper_size={self.hyper_size}, "
            f"embedding_size={self.embedding_size}, layer_norm={self.layer_norm}"
        )


class _HyperCell(nn.Module):
    """One layer's auxiliary LSTM, its ``z`` and ``d`` projections and the layer norms."""

    def __init__(self, n_in: int, hidden: int, hyper: int, emb: int, layer_norm: bool) -> None:
        super().__init__()
        self.hidden, self.emb, self.layer_norm = hidden, emb, layer_norm
        self.cell = nn.LSTMCell(n_in + hidden, hyper)  # reads [x_t; h_{t-1}]
        # z: (h, x, b) x (i, f, g, o) embeddings of size emb each; z_b has no bias (Ha et al.)
        self.z_weight = nn.Parameter(torch.empty(_SOURCES * _GATES * emb, hyper))
        self.z_bias = nn.Parameter(torch.empty(2 * _GATES * emb))
        # d: one (emb -> hidden) projection per source and gate, no bias
        self.d_weight = nn.Parameter(torch.empty(_SOURCES * _GATES, emb, hidden))
        if layer_norm:
            self.gate_gain = nn.Parameter(torch.empty(_GATES, hidden))
            self.gate_shift = nn.Parameter(torch.empty(_GATES, hidden))
            self.cell_gain = nn.Parameter(torch.empty(hidden))
            self.cell_shift = nn.Parameter(torch.empty(hidden))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.cell.reset_parameters()
        n_hx = 2 * _GATES * self.emb
        self.z_weight[:n_hx].zero_()  # z_h, z_x start at their bias, 1
        self.z_weight[n_hx:].normal_(0.0, 0.01)  # z_b
        self.z_bias.fill_(1.0)
        self.d_weight[: 2 * _GATES].fill_(1.0 / self.emb)  # d_h = d_x = 1 at the start
        self.d_weight[2 * _GATES :].zero_()  # d_b = 0 at the start
        if self.layer_norm:
            self.gate_gain.fill_(1.0)
            self.gate_shift.zero_()
            self.cell_gain.fill_(1.0)
            self.cell_shift.zero_()

    def run(
        self,
        x: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b: Tensor | None,
        h: Tensor,
        c: Tensor,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One layer over the sequence ``x`` of shape ``(T, B, in)``; returns ``(T, B, H)``."""
        batch = x.shape[1]
        H, E = self.hidden, self.emb
        gates_x = F.linear(x, w_ih).view(-1, batch, _GATES, H)  # every step at once
        b4 = None if b is None else b.view(_GATES, H)
        hh = hc = x.new_zeros(batch, self.cell.hidden_size)
        z_bias = torch.cat([self.z_bias, self.z_bias.new_zeros(_GATES * E)])  # (12E,)
        outs = []
        # unbind, not x[t]: the backward of indexing would build a (T, ...) zero tensor per step
        for x_t, gx_t in zip(x.unbind(0), gates_x.unbind(0), strict=True):
            hh, hc = self.cell(torch.cat([x_t, h], dim=-1), (hh, hc))  # (B, N_h)
            z = F.linear(hh, self.z_weight, z_bias).view(batch, _SOURCES * _GATES, E)
            d = torch.bmm(z.transpose(0, 1), self.d_weight)  # (12, B, H)
            d_h, d_x, d_b = d.view(_SOURCES, _GATES, batch, H).transpose(1, 2).unbind(0)
            gh = F.linear(h, w_hh).view(batch, _GATES, H)
            gates = d_h * gh + d_x * gx_t + d_b  # (B, 4, H)
            if b4 is not None:
                gates = gates + b4
            if self.layer_norm:
                gates = F.layer_norm(gates, (H,)) * self.gate_gain + self.gate_shift
            i, f, g, o = gates.unbind(1)  # (B, H) each
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            cn = F.layer_norm(c, (H,), self.cell_gain, self.cell_shift) if self.layer_norm else c
            h = torch.sigmoid(o) * torch.tanh(cn)
            outs.append(h)
        return torch.stack(outs), (h, c)
