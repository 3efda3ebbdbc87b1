"""Generate-once: one flat output layer produces every generated weight."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.dispatch import functorch_active
from ..target import TargetSpec
from .base import Generator, per_element_variance
from .registry import register_generator
from .trunk import Activation


@register_generator("once")
class FlatGenerator(Generator):
    """Generate all weights at once from one output layer (criterion 2: generate once).

    ``cond -> MLP trunk -> Linear(h, spec.numel) -> split into tensors``. Simplest and fastest
    to run, but the output layer alone has ``h * spec.numel`` parameters.

    Args:
        spec: the target spec (the tensors to generate).
        cond_dim: conditioning size (or ``None``).
        hidden: trunk hidden sizes.
        activation: trunk activation.
        norm: RMS-normalise the trunk's features (default; see :class:`MLPTrunk`). ``False``
            gives the plain MLP of most hypernetworks, one normalisation less per call.
        final_activation: end the trunk with its activation (default); ``False`` ends it on a
            linear layer (pFedHN's hypernetwork).

    Example:
        >>> from hyperloom import select
        >>> spec = select(nn.Linear(4, 3))
        >>> gen = FlatGenerator(spec, 8, hidden=(16,))
        >>> {k: tuple(v.shape) for k, v in gen(torch.randn(2, 8)).items()}
        {'weight': (2, 3, 4), 'bias': (2, 3)}
    """

    strategy = "generate-once"

    def __init__(
        self,
        spec: TargetSpec,
        cond_dim: int,
        *,
        hidden: Sequence[int] = (64,),
        activation: Activation = "relu",
        norm: bool = True,
        final_activation: bool = True,
    ) -> None:
        super().__init__(
            spec,
            cond_dim,
            {
                "hidden": tuple(hidden),
                "activation": activation,
                "norm": norm,
                "final_activation": final_activation,
            },
        )

    def _build(self) -> None:
        self.trunk = self._trunk(self.cond_dim)
        self.readout = nn.Linear(self.trunk.out_dim, self.spec.numel)
        self._sizes = [p.numel for p in self.spec]

    def _generate(self, cond: Tensor) -> dict[str, Tensor]:
        return self._split(self.readout(self.trunk(cond)))  # (M, numel) -> tensors

    def _generate_parts(self, cond: Tensor) -> list[Tensor]:
        return readout_parts(self.readout, self.trunk(cond), self._sizes)  # [(*, numel_p)]

    def _readout_features(self, cond: Tensor) -> tuple[Tensor, nn.Linear] | None:
        r = self.readout
        if type(r) is not nn.Linear or r._forward_hooks or r._forward_pre_hooks:
            return None
        return self.trunk(cond), r  # (*, K)

    def _element_readouts(self) -> list[tuple[nn.Linear, list[str]]]:
        return [(self.readout, list(self.spec.names))]

    def _readouts(self, variance: dict[str, float]) -> list[tuple[nn.Linear, Tensor]]:
        return [(self.readout, per_element_variance(self.spec, variance))]


# A readout this large (contexts x outputs) or larger skips the split's concatenating backward.
PARTS_MIN_ELEMENTS = 1 << 20


def readout_parts(readout: nn.Linear, h: Tensor, sizes: list[int]) -> list[Tensor]:
    """``readout(h)`` split along its last dimension into parts of ``sizes``, as views.

    The parts are the same either way; what differs is the backward. Autograd's backward of
    ``split`` concatenates the parts' gradients into one ``(M, numel)`` tensor before the
    readout's own backward reads it: for per-sample weights (``M`` contexts of a large target)
    that is a fresh copy of every generated weight's gradient. For training-size outputs
    (``M * numel >= PARTS_MIN_ELEMENTS``, gradients needed, a plain ``nn.Linear`` without hooks,
    no ``torch.func`` transform active) the readout runs as :class:`_ReadoutParts`, whose
    backward reads each part's gradient where it lies. Smaller outputs go through the module
    itself, where a custom function's fixed cost would outweigh the copy it saves.

    Args:
        readout: the output layer.
        h: ``(*, in_features)`` features.
        sizes: the parts' sizes, summing to ``out_features``.

    Returns:
        The parts ``[(*, size)]``.
    """
    w, b = readout.weight, readout.bias
    if (
        h.dim() == 2
        and h.shape[0] * w.shape[0] >= PARTS_MIN_ELEMENTS
        and torch.is_grad_enabled()
        and (h.requires_grad or w.requires_grad or (b is not None and b.requires_grad))
        and type(readout) is nn.Linear
        and not (readout._forward_hooks or readout._forward_pre_hooks)
        and not functorch_active()
    ):
        return list(_ReadoutParts.apply(h, w, b, sizes))
    return list(readout(h).split(sizes, dim=-1))


class _ReadoutParts(torch.autograd.Function):
    """``F.linear(h, w, b).split(sizes, 1)`` whose backward never concatenates the parts.

    ``h`` is ``(M, in)``, ``w`` is ``(numel, in)``. The backward takes each part's gradient
    ``g_p`` as it is (a part nobody used has none) and computes, part by part, the rows of
    ``grad_w = g^T h`` (written into one ``(numel, in)`` tensor), the bias gradient, and
    ``grad_h = sum_p g_p w_p``: the same matmuls as the readout's own backward, without the
    ``(M, numel)`` copy. Under ``create_graph=True`` it is built from differentiable ops (with the
    concatenation), so higher-order gradients work.
    """

    @staticmethod
    def forward(ctx: Any, h: Tensor, w: Tensor, b: Tensor | None, sizes: list[int]) -> Any:
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(h, w)
        ctx.sizes = sizes
        ctx.has_bias = b is not None
        return F.linear(h, w, b).split(sizes, dim=1)  # views of one (M, numel) output

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        h, w = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and ctx.has_bias
        if torch.is_grad_enabled():  # create_graph: differentiable ops only
            m = h.shape[0]
            gy = torch.cat(
                [
                    h.new_zeros(m, n) if g is None else g
                    for g, n in zip(grads, ctx.sizes, strict=True)
                ],
                dim=1,
            )  # (M, numel)
            return (
                gy @ w if need_h else None,
                gy.t() @ h if need_w else None,
                gy.sum(0) if need_b else None,
                None,
            )
        gh = None
        gw = w.new_empty(w.shape) if need_w else None  # (numel, in)
        gb = w.new_empty(w.shape[0]) if need_b else None  # (numel,)
        start = 0
        for g, n in zip(grads, ctx.sizes, strict=True):
            stop = start + n
            if g is None:
                if gw is not None:
                    gw[start:stop].zero_()
                if gb is not None:
                    gb[start:stop].zero_()
            else:
                if need_h:
                    gh = g @ w[start:stop] if gh is None else gh.addmm_(g, w[start:stop])
                if gw is not None:
                    torch.mm(g.t(), h, out=gw[start:stop])  # rows of grad_w, in place
                if gb is not None:
                    torch.sum(g, 0, out=gb[start:stop])
            start = stop
        if need_h and gh is None:
            gh = torch.zeros_like(h)
        return gh, gw, gb, None
