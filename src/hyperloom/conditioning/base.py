"""The conditioner protocol: turn a call's context into conditioning vectors ``(*, d)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn


class Conditioner(nn.Module):
    """Base class of conditioners (criterion 1: what the hypernetwork's input C is).

    A conditioner maps its own input to vectors of size :attr:`dim`, keeping leading dimensions.
    :meth:`from_call` pulls that input out of a :class:`~hyperloom.HyperNetwork` call and says
    which samples share a context, so that a static context is generated once per batch.

    Attributes:
        dim: size of the conditioning vector.
        kind: criterion 1 as a value (``"task-conditioned"``, ``"data-conditioned"``, ...).
        dynamic: criterion 3: ``False`` when contexts come from a finite set (weights can be
            generated once per context and cached), ``True`` when every sample or draw brings a
            new one.
        keys: the keyword arguments of a hypernetwork call that this conditioner consumes.
    """

    kind: ClassVar[str] = ""
    dynamic: ClassVar[bool] = False
    keys: tuple[str, ...] = ()
    dim: int

    def from_call(self, args: tuple, context: Mapping[str, Any]) -> tuple[Tensor, Tensor | None]:
        """Conditioning for one hypernetwork call.

        Args:
            args: the positional inputs of the call (the target's inputs).
            context: the keyword arguments named in :attr:`keys` that the call received.

        Returns:
            ``(cond, index)``: ``cond`` is ``(d,)`` for one context shared by the whole batch, or
            ``(N, d)`` for N contexts; ``index`` is ``None`` when context ``i`` belongs to sample
            ``i``, or a ``(B,)`` long tensor mapping each sample to one of N distinct contexts.
        """
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-ready constructor arguments (``{"type": ..., ...}``), for checkpoints."""
        raise NotImplementedError
