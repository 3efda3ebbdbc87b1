"""The custom autograd Functions of the fast paths, and the batched ``F.linear`` built on one.

:class:`BatchedLinear` is a ``bmm`` whose backward returns the weight gradient in the weights'
own layout; :class:`ReadoutLinear` runs a ``Linear`` layer straight from a hypernetwork's linear
readout without forming the per-sample weights. Both run their backward under their forward's
autocast state and are built from differentiable ops (higher-order gradients work).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def batched_linear(x: Tensor, w: Tensor, b: Tensor | None, lead: int) -> Tensor:
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
    y = BatchedLinear.apply(xs, w, b)  # (N, M, out)
    return y.view(*x.shape[:-1], w.shape[1])


class BatchedLinear(torch.autograd.Function):
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
    def forward(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
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
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
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


class ReadoutLinear(torch.autograd.Function):
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
    def forward(ctx: Any, x: Tensor, h: Tensor, R: Tensor, r: Tensor | None) -> Tensor:
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
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        with _autocast_as(ctx.amp):
            return ReadoutLinear._backward(ctx, gy)

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
