"""Multiple heads: one output layer per target tensor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from ..target import TargetSpec
from .base import Generator
from .registry import register_generator
from .trunk import Activation


@register_generator("heads")
class HeadsGenerator(Generator):
    """One output head per target tensor on a shared trunk (criterion 2: multiple heads).

    ``cond -> MLP trunk -> {Linear(h, numel_t)}``; the parameter count equals generate-once's,
    but each tensor has its own head (as in pFedHN), which can be given its own learning rate or
    frozen.

    Args:
        spec: the target spec (the tensors to generate).
        cond_dim: conditioning size (or ``None``).
        hidden: trunk hidden sizes.
        activation: trunk activation (a name or a ``torch.nn`` activation module).
        norm: RMS-normalise the trunk's features (default; see :class:`MLPTrunk`).
        final_activation: end the trunk with its activation (default); ``False`` ends it on a
            linear layer (pFedHN's hypernetwork).

    Example:
        >>> from hyperloom import select
        >>> gen = HeadsGenerator(select(nn.Linear(4, 3)), 8)
        >>> gen(torch.randn(8))["weight"].shape
        torch.Size([3, 4])
    """

    strategy = "multiple heads"

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
        self.heads = nn.ModuleList(nn.Linear(self.trunk.out_dim, p.numel) for p in self.spec)

    def _generate(self, cond: Tensor) -> dict[str, Tensor]:
        h = self.trunk(cond)  # (M, h)
        return {
            p.name: head(h).view(-1, *p.shape)
            for p, head in zip(self.spec, self.heads, strict=True)
        }

    def _element_readouts(self) -> list[tuple[nn.Linear, list[str]]]:
        return [
            (cast(nn.Linear, head), [p.name]) for p, head in zip(self.spec, self.heads, strict=True)
        ]

    def _readouts(self, variance: dict[str, float]) -> list[tuple[nn.Linear, Tensor]]:
        return [
            (cast(nn.Linear, head), torch.full((p.numel,), float(variance[p.name])))
            for p, head in zip(self.spec, self.heads, strict=True)
        ]
