"""Generate-once: one flat output layer produces every generated weight."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..target import TargetSpec
from .base import Generator, per_element_variance
from .registry import register
from .trunk import MLPTrunk


@register("once")
class FlatGenerator(Generator):
    """Generate all weights at once from one output layer (criterion 2: generate once).

    ``cond -> MLP trunk -> Linear(h, spec.numel) -> split into tensors``. Simplest and fastest
    to run, but the output layer alone has ``h * spec.numel`` parameters.

    Args:
        spec: the target spec (or ``None``, to be bound later).
        cond_dim: conditioning size (or ``None``).
        hidden: trunk hidden sizes.
        activation: trunk activation.

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
        spec: TargetSpec | None = None,
        cond_dim: int | None = None,
        *,
        hidden: Sequence[int] = (64,),
        activation: str = "relu",
    ) -> None:
        super().__init__({"hidden": tuple(hidden), "activation": activation})
        if spec is not None:
            self.bind(spec, cond_dim)  # type: ignore[arg-type]

    def _build(self) -> None:
        self.trunk = MLPTrunk(self.cond_dim, self.options["hidden"], self.options["activation"])
        self.readout = nn.Linear(self.trunk.out_dim, self.spec.numel)

    def _generate(self, cond: Tensor) -> dict[str, Tensor]:
        return self._split(self.readout(self.trunk(cond)))  # (M, numel) -> tensors

    def _readouts(self, variance: dict[str, float]) -> list[tuple[nn.Linear, Tensor]]:
        return [(self.readout, per_element_variance(self.spec, variance))]
