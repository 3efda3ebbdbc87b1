"""Component-wise: learned component embeddings, one shared head per shape group."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from ..target import TargetSpec
from .base import Generator
from .registry import register_generator
from .trunk import Activation


@register_generator("component")
class ComponentGenerator(Generator):
    """One embedding per target tensor, one head per group of same-shaped tensors.

    (Tensors initialised to a constant, like normalisation scales, form groups of their own.)

    Tensor ``t`` has a learned component embedding ``e_t``; a shared trunk reads ``[c; e_t]``
    and the head of ``t``'s shape group emits the whole tensor (criterion 2: component-wise).
    A deep target whose layers share shapes (a ResNet stage, a transformer) needs one head per
    distinct shape, not per layer.

    Args:
        spec: the target spec (the tensors to generate).
        cond_dim: conditioning size (or ``None``).
        component_dim: size of each component embedding.
        hidden: trunk hidden sizes.
        activation: trunk activation (a name or a ``torch.nn`` activation module).
        norm: RMS-normalise the trunk's features (default; see :class:`MLPTrunk`).
        final_activation: end the trunk with its activation (default); ``False`` ends it on a
            linear layer (pFedHN's hypernetwork).

    Example:
        >>> from hyperloom import select
        >>> net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2))
        >>> gen = ComponentGenerator(select(net), 4)
        >>> len(gen.heads)  # shapes (8, 8), (8,), (2, 8), (2,)
        4
    """

    strategy = "component-wise"

    def __init__(
        self,
        spec: TargetSpec,
        cond_dim: int,
        *,
        component_dim: int = 8,
        hidden: Sequence[int] = (64,),
        activation: Activation = "relu",
        norm: bool = True,
        final_activation: bool = True,
    ) -> None:
        if component_dim < 1:
            raise ValueError(f"component_dim must be >= 1, got {component_dim}")
        super().__init__(
            spec,
            cond_dim,
            {
                "component_dim": component_dim,
                "hidden": tuple(hidden),
                "activation": activation,
                "norm": norm,
                "final_activation": final_activation,
            },
        )

    def _build(self) -> None:
        o = self.options
        # Tensors the target initialised to a constant get heads of their own, which hyperfan
        # initialisation zeroes, so they start exactly at their constant.
        groups: dict[tuple[tuple[int, ...], bool], list[int]] = {}
        for i, p in enumerate(self.spec):
            groups.setdefault((p.shape, p.init_const is not None), []).append(i)
        self.groups = list(groups.values())  # tensor indices per shape group
        self.component_embeddings = nn.Parameter(torch.randn(len(self.spec), o["component_dim"]))
        self.trunk = self._trunk(self.cond_dim + o["component_dim"])
        self.heads = nn.ModuleList(
            nn.Linear(self.trunk.out_dim, self.spec.params[g[0]].numel) for g in self.groups
        )

    def _generate(self, cond: Tensor) -> dict[str, Tensor]:
        h = self.trunk.forward_pair(cond, self.component_embeddings)  # (M, n_tensors, h)
        out = {}
        for members, head in zip(self.groups, self.heads, strict=True):
            shape = self.spec.params[members[0]].shape
            y = head(h[:, members])  # (M, n_group, numel)
            for j, i in enumerate(members):
                out[self.spec.params[i].name] = y[:, j].view(-1, *shape)
        return out

    def _readouts(self, variance: dict[str, float]) -> list[tuple[nn.Linear, Tensor]]:
        # Same-shaped weights share their fan-in, so the head's target variance is exact for
        # them; vectors of equal length with different fans share the mean.
        out: list[tuple[nn.Linear, Tensor]] = []
        for members, head in zip(self.groups, self.heads, strict=True):
            head = cast(nn.Linear, head)
            v = sum(variance[self.spec.params[i].name] for i in members) / len(members)
            out.append((head, torch.full((head.out_features,), float(v))))
        return out
