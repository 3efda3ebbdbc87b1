"""Data-conditioned input: the sample itself, through an encoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from .base import Conditioner


class SampleEncoder(Conditioner):
    """Condition on the input sample through any encoder (criterion 1: data-conditioned).

    Every sample brings its own context, so every sample gets its own weights (criterion 3:
    dynamic).

    Args:
        encoder: any module mapping a batch of inputs ``(B, ...)`` to ``(B, dim)``.
        dim: the encoder's output size.
        key: the call keyword to read the input from. With the default ``"x"`` a call that
            does not pass it conditions on its first positional input (the target's own input);
            with any other key the call must pass it.

    Example:
        >>> enc = SampleEncoder(nn.Sequential(nn.Flatten(), nn.Linear(64, 16)), dim=16)
        >>> enc(torch.randn(5, 8, 8)).shape
        torch.Size([5, 16])
    """

    kind = "data-conditioned"
    dynamic = True

    def __init__(self, encoder: nn.Module, dim: int, *, key: str = "x") -> None:
        super().__init__()
        self.encoder = encoder
        self.dim = dim
        self.key = key
        self.keys = (key,)

    def forward(self, x: Tensor) -> Tensor:
        out = self.encoder(x)
        if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[-1] != self.dim:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"SampleEncoder expects its encoder to return (*, {self.dim}), got {got}"
            )
        return out  # (B, dim)

    def from_call(self, args: tuple, context: Mapping[str, Any]) -> tuple[Tensor, Tensor | None]:
        if self.key in context:
            x = context[self.key]
        elif args and self.key == "x":
            x = args[0]
        elif self.key != "x":
            raise TypeError(
                f"this hypernetwork is conditioned on {self.key}=...: pass it with the call "
                f"(SampleEncoder(key={self.key!r}) never falls back to the target's input)"
            )
        else:
            raise TypeError(
                "this hypernetwork is data-conditioned: pass the input positionally or as x=..."
            )
        return self(x), None

    def config(self) -> dict:
        return {"type": "sample", "dim": self.dim, "key": self.key}
