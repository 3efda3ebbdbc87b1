"""Mixtures of conditioners: task + noise, task + data, ..."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from .base import Conditioner


class Concat(Conditioner):
    """Concatenate the vectors of several conditioners (criterion 1: a mixture).

    Each part pulls its own input from the call; per-sample parts make the mixture dynamic.

    Example:
        >>> from hyperloom import Noise, TaskEmbedding
        >>> cond = Concat(TaskEmbedding(3, 8), Noise(4, seed=0))
        >>> c, index = cond.from_call((torch.randn(5, 2),), {"task": torch.tensor(1)})
        >>> c.shape, index
        (torch.Size([5, 12]), None)
    """

    def __init__(self, *parts: Conditioner) -> None:
        super().__init__()
        if len(parts) < 2:
            raise ValueError(f"Concat needs at least two conditioners, got {len(parts)}")
        for p in parts:
            if not isinstance(p, Conditioner):
                raise TypeError(f"Concat takes Conditioners, got {type(p).__name__}")
        self.parts = nn.ModuleList(parts)
        self.dim = sum(p.dim for p in parts)
        self.keys = tuple(k for p in parts for k in p.keys)

    @property
    def kind(self) -> str:  # type: ignore[override]
        names = [p.kind.removesuffix("-conditioned") for p in self._conditioners()]
        return f"mixture ({' + '.join(names)})"

    @property
    def dynamic(self) -> bool:  # type: ignore[override]
        return any(p.dynamic for p in self._conditioners())

    def from_call(self, args: tuple, context: Mapping[str, Any]) -> tuple[Tensor, Tensor | None]:
        outs = [p.from_call(args, context) for p in self._conditioners()]
        if all(c.dim() == 1 for c, _ in outs):
            return torch.cat([c for c, _ in outs], dim=-1), None
        per_sample = [c[i] if i is not None else c for c, i in outs]  # (B, d_k) or (d_k,)
        sizes = {c.shape[0] for c in per_sample if c.dim() == 2}
        if len(sizes) != 1:
            raise ValueError(f"Concat parts disagree on the number of samples: {sorted(sizes)}")
        (n,) = sizes
        full = [c.expand(n, -1) if c.dim() == 1 else c for c in per_sample]
        return torch.cat(full, dim=-1), None  # (B, sum d_k)

    def config(self) -> dict:
        return {"type": "concat", "parts": [p.config() for p in self._conditioners()]}

    def _conditioners(self) -> list[Conditioner]:
        """The parts, as the conditioners the constructor checked them to be."""
        return [cast(Conditioner, p) for p in self.parts]
