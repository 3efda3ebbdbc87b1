"""Low-rank: generate factors whose product is the weight."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from ..target import TargetSpec
from .base import Generator
from .registry import register_generator
from .trunk import Activation


@register_generator("lowrank")
class LowRankGenerator(Generator):
    """Generate each weight as a product of two thin factors (criterion 2: low-rank).

    A tensor of shape ``(out, *rest)`` is viewed as an ``out x in`` matrix (``in = prod(rest)``)
    and generated as ``U @ V`` with ``U: out x r`` and ``V: r x in`` from two heads; vectors are
    generated directly. Output heads shrink from ``out * in`` to ``r * (out + in)`` rows.

    Args:
        spec: the target spec (the tensors to generate).
        cond_dim: conditioning size (or ``None``).
        rank: the rank ``r`` (capped at ``min(out, in)`` per tensor).
        hidden: trunk hidden sizes.
        activation: trunk activation (a name or a ``torch.nn`` activation module).
        norm: RMS-normalise the trunk's features (default; see :class:`MLPTrunk`).
        final_activation: end the trunk with its activation (default); ``False`` ends it on a
            linear layer (pFedHN's hypernetwork).

    Example:
        >>> from hyperloom import select
        >>> gen = LowRankGenerator(select(nn.Linear(50, 40)), 8, rank=2)
        >>> torch.linalg.matrix_rank(gen(torch.randn(8))["weight"]).item()
        2
    """

    strategy = "low-rank"

    def __init__(
        self,
        spec: TargetSpec,
        cond_dim: int,
        *,
        rank: int = 4,
        hidden: Sequence[int] = (64,),
        activation: Activation = "relu",
        norm: bool = True,
        final_activation: bool = True,
    ) -> None:
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        super().__init__(
            spec,
            cond_dim,
            {
                "rank": rank,
                "hidden": tuple(hidden),
                "activation": activation,
                "norm": norm,
                "final_activation": final_activation,
            },
        )

    def _factors(self, shape: tuple[int, ...]) -> tuple[int, int, int] | None:
        if len(shape) < 2:
            return None
        rows = shape[0]
        cols = 1
        for s in shape[1:]:
            cols *= s
        return rows, cols, min(self.options["rank"], rows, cols)

    def _build(self) -> None:
        self.trunk = self._trunk(self.cond_dim)
        h = self.trunk.out_dim
        self.heads = nn.ModuleList()
        for p in self.spec:
            f = self._factors(p.shape)
            if f is None:
                self.heads.append(nn.ModuleList([nn.Linear(h, p.numel)]))
            else:
                rows, cols, r = f
                self.heads.append(nn.ModuleList([nn.Linear(h, rows * r), nn.Linear(h, r * cols)]))

    def _generate(self, cond: Tensor) -> dict[str, Tensor]:
        h = self.trunk(cond)  # (M, h)
        out = {}
        for p, heads in zip(self.spec, self.heads, strict=True):
            heads = cast(nn.ModuleList, heads)  # [U] or [U, V] heads of one tensor
            f = self._factors(p.shape)
            if f is None:
                out[p.name] = heads[0](h).view(-1, *p.shape)
            else:
                rows, cols, r = f
                u = heads[0](h).view(-1, rows, r)  # (M, out, r)
                v = heads[1](h).view(-1, r, cols)  # (M, r, in)
                out[p.name] = (u @ v).view(-1, *p.shape)
        return out

    def _readouts(self, variance: dict[str, float]) -> list[tuple[nn.Linear, Tensor]]:
        # Var((UV)_ij) = r Var(U) Var(V) for independent zero-mean factors: give each factor
        # sqrt(v / r). A constant-initialised matrix (v = 0) keeps U at unit scale and V at zero,
        # so the product starts at zero but still receives gradients.
        out = []
        for p, heads in zip(self.spec, self.heads, strict=True):
            u, *rest = [cast(nn.Linear, head) for head in cast(nn.ModuleList, heads)]
            v = float(variance[p.name])
            f = self._factors(p.shape)
            if f is None:
                out.append((u, torch.full((p.numel,), v)))
                continue
            _, _, r = f
            vu, vv = ((v / r) ** 0.5, (v / r) ** 0.5) if v > 0 else (1.0 / r, 0.0)
            out.append((u, torch.full((u.out_features,), vu)))
            out.append((rest[0], torch.full((rest[0].out_features,), vv)))
        return out
