"""Task-conditioned input: one learned embedding per task, client or group."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .base import Conditioner


class TaskEmbedding(Conditioner):
    """A learned embedding per task (criterion 1: task-conditioned; criterion 3: static).

    Args:
        num: number of tasks.
        dim: embedding size.
        init_std: embeddings start as ``N(0, init_std^2)``.

    Shapes:
        ``forward(task)``: task ids ``(*)`` (long) -> ``(*, dim)``.

    The embeddings are one ``nn.Parameter`` per task, so :meth:`add` grows the table without
    touching the rows already there (and an optimizer can take the new rows as a new parameter
    group, ``opt.add_param_group({"params": emb.rows[-n:]})``).

    Example:
        >>> emb = TaskEmbedding(num=3, dim=4)
        >>> emb(torch.tensor([0, 2, 2])).shape
        torch.Size([3, 4])
        >>> emb.add(2)
        range(3, 5)
    """

    kind = "task-conditioned"
    dynamic = False
    keys = ("task",)

    def __init__(self, num: int, dim: int, *, init_std: float = 1.0) -> None:
        super().__init__()
        if num < 1 or dim < 1:
            raise ValueError(f"TaskEmbedding needs num >= 1 and dim >= 1, got num={num}, dim={dim}")
        self.dim = dim
        self.init_std = init_std
        self.rows = nn.ParameterList(
            [nn.Parameter(torch.randn(dim) * init_std) for _ in range(num)]
        )

    @property
    def num(self) -> int:
        """Number of tasks."""
        return len(self.rows)

    def add(self, n: int = 1) -> range:
        """Append ``n`` new task embeddings; the existing rows are kept as they are.

        Returns:
            The ids of the new tasks.
        """
        if n < 1:
            raise ValueError(f"add() needs n >= 1, got {n}")
        old = self.num
        like = self.rows[0]
        for _ in range(n):
            row = torch.randn(self.dim, device=like.device, dtype=like.dtype) * self.init_std
            self.rows.append(nn.Parameter(row))
        return range(old, old + n)

    @property
    def weight(self) -> Tensor:
        """The embedding table ``(num, dim)`` (stacked rows; gradients reach the rows)."""
        return torch.stack(list(self.rows))

    def forward(self, task: Tensor) -> Tensor:
        return self._lookup(_as_ids(task, self.num))  # (*, dim)

    def _lookup(self, ids: Tensor) -> Tensor:
        if ids.dim() == 0:  # one row: no need to stack the table
            return self.rows[int(ids)]
        return self.weight[ids]

    def from_call(self, args: tuple, context: Mapping[str, Any]) -> tuple[Tensor, Tensor | None]:
        if "task" not in context:
            raise TypeError(
                "this hypernetwork is task-conditioned: call it with task=<id> (one weight set "
                "for the batch) or task=<ids of shape (B,)> (one per sample)"
            )
        task = context["task"]
        if type(task) is int:  # one id for the whole batch: checked in Python, no tensor
            if not 0 <= task < len(self.rows):
                raise IndexError(
                    f"task id {task} is out of range: this embedding has tasks 0..{self.num - 1}"
                )
            return self.rows[task], None
        task = _as_ids(task, self.num, device=self.rows[0].device)
        if task.dim() == 0:
            return self._lookup(task), None
        if task.dim() != 1:
            raise ValueError(f"task ids must be a scalar or of shape (B,), got {tuple(task.shape)}")
        unique, index = torch.unique(task, return_inverse=True)
        return self._lookup(unique), index  # (U, dim), (B,)

    def config(self) -> dict:
        return {"type": "task", "num": self.num, "dim": self.dim, "init_std": self.init_std}

    def extra_repr(self) -> str:
        return f"num={self.num}, dim={self.dim}"


def _as_ids(task: Any, num: int, device: torch.device | None = None) -> Tensor:
    if isinstance(task, bool) or not isinstance(task, (int, Tensor)):
        raise TypeError(f"task ids must be an int or a long tensor, got {type(task).__name__}")
    t = torch.as_tensor(task, device=device)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"task ids must be integers, got dtype {t.dtype}")
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= num:
            bad = lo if lo < 0 else hi
            raise IndexError(
                f"task id {bad} is out of range: this embedding has tasks 0..{num - 1}"
            )
    return t.long()
