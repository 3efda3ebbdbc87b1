"""Noise-conditioned input: z ~ N(0, std^2 I), one draw per weight set."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .base import Conditioner


class Noise(Conditioner):
    """Gaussian noise as the context (criterion 1: noise-conditioned; criterion 3: dynamic).

    Each draw of z gives the hypernetwork a new weight set, so one hypernetwork holds a
    distribution over target networks.

    Args:
        dim: size of z.
        std: standard deviation of each coordinate.
        seed: when given, draws come from a ``torch.Generator`` seeded with it, so a sequence of
            draws is reproducible; :meth:`reseed` starts it again. Where the sequence has got to
            is part of the module's ``state_dict()`` (an extra-state tensor), so a checkpoint
            resumes the draws exactly.

    Example:
        >>> noise = Noise(4, seed=0)
        >>> noise.sample(3).shape
        torch.Size([3, 4])
        >>> torch.equal(Noise(4, seed=1).sample(2), Noise(4, seed=1).sample(2))
        True
    """

    kind = "noise-conditioned"
    dynamic = True
    keys = ("z",)
    _device_probe: Tensor  # an empty buffer: where and in what dtype to draw

    def __init__(self, dim: int, *, std: float = 1.0, seed: int | None = None) -> None:
        super().__init__()
        if dim < 1 or std <= 0:
            raise ValueError(f"Noise needs dim >= 1 and std > 0, got dim={dim}, std={std}")
        self.dim = dim
        self.std = std
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}
        self.register_buffer("_device_probe", torch.empty(0), persistent=False)

    def reseed(self, seed: int | None = None) -> None:
        """Restart the draws from ``seed`` (default: the constructor's seed)."""
        if seed is not None:
            self.seed = seed
        self._generators.clear()

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` vectors ``(n, dim)``.

        Args:
            n: number of draws.
            generator: a generator to draw from instead of the conditioner's own.
        """
        if n < 1:
            raise ValueError(f"sample() needs n >= 1, got {n}")
        device = self._device_probe.device
        if generator is None and self.seed is not None:
            key = str(device)
            if key not in self._generators:
                self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
            generator = self._generators[key]
        dtype = self._device_probe.dtype  # follows .to()/.double() like a parameter would
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype)
        return z * self.std  # (n, dim)

    def get_extra_state(self) -> Tensor:
        """The state of the seeded generator on this module's device (empty before any draw).

        Example:
            >>> a = Noise(3, seed=0)
            >>> _ = a.sample(2)
            >>> b = Noise(3, seed=0)
            >>> b.load_state_dict(a.state_dict())
            <All keys matched successfully>
            >>> torch.equal(a.sample(2), b.sample(2))
            True
        """
        g = self._generators.get(str(self._device_probe.device))
        if self.seed is None or g is None:
            return torch.zeros(0, dtype=torch.uint8, device="cpu")
        return g.get_state().to("cpu")

    def set_extra_state(self, state: Any) -> None:
        """Continue the draws from a state returned by :meth:`get_extra_state`."""
        if not isinstance(state, Tensor) or state.dtype != torch.uint8 or state.dim() != 1:
            raise ValueError(
                f"Noise extra state must be a 1-D uint8 tensor, got {type(state).__name__}"
                + (f" {state.dtype} {tuple(state.shape)}" if isinstance(state, Tensor) else "")
            )
        self._generators.clear()
        if state.numel() == 0:
            return
        if self.seed is None:
            raise ValueError("Noise extra state holds a generator state but this Noise has no seed")
        device = self._device_probe.device
        g = torch.Generator(device=device)
        try:
            g.set_state(state.to("cpu"))
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"Noise extra state is not a generator state for {device}: {e}") from e
        self._generators[str(device)] = g

    def forward(self, n: int) -> Tensor:
        return self.sample(n)

    def from_call(self, args: tuple, context: Mapping[str, Any]) -> tuple[Tensor, Tensor | None]:
        if "z" in context:
            z = torch.as_tensor(context["z"])
            if z.dim() not in (1, 2) or z.shape[-1] != self.dim:
                raise ValueError(
                    f"z must be ({self.dim},) or (B, {self.dim}), got {tuple(z.shape)}"
                )
            return z, None
        if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() == 0:
            raise TypeError(
                "a noise-conditioned call draws one z per sample of its first input; pass a "
                "batched tensor first, or z=... explicitly"
            )
        return self.sample(args[0].shape[0]), None  # (B, dim)

    def config(self) -> dict:
        return {"type": "noise", "dim": self.dim, "std": self.std, "seed": self.seed}

    def extra_repr(self) -> str:
        return f"dim={self.dim}, std={self.std}, seed={self.seed}"
