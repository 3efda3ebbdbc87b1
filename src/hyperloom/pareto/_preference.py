"""Preference rays on the simplex: checks, Dirichlet draws, evaluation grids, the conditioner."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..conditioning.base import Conditioner

SIMPLEX_ATOL = 1e-4
"""How far from 1 the entries of a preference ray may sum (float32 round-off)."""


def check_preference(ray: Any, num_objectives: int, *, atol: float = SIMPLEX_ATOL) -> Tensor:
    """Check that ``ray`` holds preference vectors on the simplex and return it as a tensor.

    A preference ray ``r`` over ``m`` objectives has ``r_i >= 0`` and ``sum_i r_i = 1``.

    Args:
        ray: a floating tensor ``(*, m)``.
        num_objectives: ``m``.
        atol: tolerance of the sum to 1.

    Returns:
        ``ray`` itself (a tensor).

    Raises:
        TypeError: ``ray`` is not a floating-point tensor.
        ValueError: the last dimension is not ``m``, an entry is negative or not finite, or a
            ray does not sum to 1; the message names the offending ray.

    Example:
        >>> check_preference(torch.tensor([0.25, 0.75]), 2)
        tensor([0.2500, 0.7500])
    """
    if not isinstance(ray, Tensor) or not ray.dtype.is_floating_point:
        what = f"a tensor of dtype {ray.dtype}" if isinstance(ray, Tensor) else type(ray).__name__
        raise TypeError(f"a preference ray must be a floating-point tensor, got {what}")
    if ray.dim() < 1 or ray.shape[-1] != num_objectives:
        raise ValueError(
            f"a preference ray must have shape (*, {num_objectives}) for {num_objectives} "
            f"objectives, got shape {tuple(ray.shape)}"
        )
    rows = ray.detach().reshape(-1, num_objectives)  # (N, m)
    bad = ~torch.isfinite(rows).all(-1) | (rows < 0).any(-1)
    bad |= (rows.sum(-1) - 1).abs() > atol
    if bool(bad.any()):
        first = rows[bad.nonzero()[0, 0]]
        raise ValueError(
            f"preference ray {[round(float(v), 6) for v in first]} is off the simplex: entries "
            f"must be >= 0 and sum to 1 (sum {float(first.sum()):.6g})"
        )
    return ray


def dirichlet_rays(
    n: int,
    num_objectives: int,
    *,
    alpha: float = 0.2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``n`` preference rays from a symmetric Dirichlet distribution.

    Draws are normalised Gamma(alpha) variables (the Dirichlet's definition), so a
    ``torch.Generator`` makes them reproducible. Small ``alpha`` (PHN uses 0.2) puts more rays
    near the corners of the simplex, ``alpha = 1`` is uniform on it.

    Args:
        n: number of rays.
        num_objectives: ``m >= 2``.
        alpha: concentration, > 0.
        generator: the random number generator to draw from.

    Returns:
        ``(n, m)`` rays, each on the simplex.

    Example:
        >>> r = dirichlet_rays(4, 3, generator=torch.Generator().manual_seed(0))
        >>> r.shape, bool(torch.allclose(r.sum(-1), torch.ones(4)))
        (torch.Size([4, 3]), True)
    """
    _check_count(n, "n")
    _check_objectives(num_objectives)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    # Gamma(alpha) by Marsaglia-Tsang on alpha + 1, then the boost u^(1/alpha) (alpha < 1).
    shape = torch.full((n, num_objectives), float(alpha))
    g = _gamma_plus_one(shape, generator)
    u = torch.rand(n, num_objectives, generator=generator).clamp_min(1e-12)
    g = g * u.pow(1.0 / shape)  # Gamma(alpha)
    g = g.clamp_min(1e-30)
    return g / g.sum(-1, keepdim=True)  # (n, m)


def _gamma_plus_one(alpha: Tensor, generator: torch.Generator | None) -> Tensor:
    """Gamma(alpha + 1) draws by Marsaglia and Tsang's method, from ``generator``."""
    d = alpha + 1.0 - 1.0 / 3.0
    c = 1.0 / (9.0 * d).sqrt()
    out = torch.empty_like(alpha)
    todo = torch.ones_like(alpha, dtype=torch.bool)
    while bool(todo.any()):
        z = torch.randn(alpha.shape, generator=generator)
        u = torch.rand(alpha.shape, generator=generator).clamp_min(1e-12)
        v = (1 + c * z) ** 3
        ok = (v > 0) & (u.log() < 0.5 * z * z + d - d * v + d * v.clamp_min(1e-12).log())
        take = todo & ok
        out[take] = (d * v)[take]
        todo &= ~ok
    return out


def ray_grid(n: int, num_objectives: int = 2, *, margin: float = 0.0) -> Tensor:
    """Evenly spread preference rays for sweeping the front.

    For two objectives: ``r = (t, 1 - t)`` with ``t`` evenly spaced from ``margin`` to
    ``1 - margin``. For more: every point of the simplex lattice with ``n - 1`` steps per side,
    shrunk towards the centre so that no entry is below ``margin``.

    Args:
        n: rays for two objectives; lattice resolution (points per edge) for more.
        num_objectives: ``m >= 2``.
        margin: smallest entry, in ``[0, 1/m)``.

    Returns:
        ``(N, m)`` rays on the simplex (``N = n`` for two objectives).

    Example:
        >>> ray_grid(3, margin=0.1)
        tensor([[0.1000, 0.9000],
                [0.5000, 0.5000],
                [0.9000, 0.1000]])
    """
    _check_count(n, "n")
    _check_objectives(num_objectives)
    if not 0 <= margin < 1 / num_objectives:
        raise ValueError(f"margin must be in [0, 1/{num_objectives}), got {margin!r}")
    if n == 1:
        return torch.full((1, num_objectives), 1 / num_objectives)
    if num_objectives == 2:
        t = torch.linspace(margin, 1 - margin, n)  # (n,)
        return torch.stack([t, 1 - t], dim=-1)  # (n, 2)
    steps = n - 1
    lattice = (
        torch.tensor(_compositions(steps, num_objectives), dtype=torch.float32) / steps
    )  # (N, m)
    return margin + (1 - num_objectives * margin) * lattice


def _compositions(total: int, parts: int) -> list[tuple[int, ...]]:
    if parts == 1:
        return [(total,)]
    return [(i, *rest) for i in range(total + 1) for rest in _compositions(total - i, parts - 1)]


def _check_count(n: Any, name: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")


def _check_objectives(m: Any) -> None:
    if isinstance(m, bool) or not isinstance(m, int) or m < 2:
        raise ValueError(f"num_objectives must be an int >= 2, got {m!r}")


class Preference(Conditioner):
    """A preference ray on the simplex as the context (Pareto hypernetworks, Navon et al. 2021).

    The hypernetwork is called with ``ray=r``: one ray ``(m,)`` gives one weight set for the
    batch, rays ``(B, m)`` one weight set per sample. Every ray is checked to lie on the
    simplex for ``num_objectives`` objectives. With ``dim=None`` the ray itself is the
    conditioning vector; with ``dim`` a learned linear map embeds it first (PHN's first layer).

    Args:
        num_objectives: ``m >= 2``.
        dim: size of the learned embedding; ``None`` passes the ray through (``dim = m``).

    Shapes:
        ``forward(ray)``: ``(*, m) -> (*, dim)``.

    Example:
        >>> import hyperloom as hl
        >>> from torch import nn
        >>> pref = Preference(2, dim=16)
        >>> hnet = hl.HyperNetwork(nn.Linear(4, 2), pref, hl.ChunkedGenerator.factory(chunk_size=8))
        >>> hnet(torch.randn(5, 4), ray=torch.tensor([0.3, 0.7])).shape
        torch.Size([5, 2])
        >>> hnet(torch.randn(5, 4), ray=hl.pareto.ray_grid(5)).shape  # one ray per sample
        torch.Size([5, 2])
    """

    kind = "preference-conditioned"
    dynamic = True
    keys = ("ray",)

    def __init__(self, num_objectives: int, *, dim: int | None = None) -> None:
        super().__init__()
        _check_objectives(num_objectives)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive int or None, got {dim!r}")
        self.num_objectives = num_objectives
        self.embed = None if dim is None else nn.Linear(num_objectives, dim)
        self.dim = num_objectives if dim is None else dim

    def forward(self, ray: Tensor) -> Tensor:
        check_preference(ray, self.num_objectives)
        return ray if self.embed is None else self.embed(ray)  # (*, dim)

    def from_call(self, args: tuple, context: Mapping[str, Any]) -> tuple[Tensor, Tensor | None]:
        if "ray" not in context:
            raise TypeError(
                "this hypernetwork is preference-conditioned: call it with ray=<(m,) tensor> "
                "(one weight set for the batch) or ray=<(B, m) tensor> (one per sample)"
            )
        ray = check_preference(context["ray"], self.num_objectives)
        if self.embed is not None:
            ray = ray.to(self.embed.weight.dtype)
        return self.forward(ray), None

    def config(self) -> dict:
        dim = None if self.embed is None else self.dim
        return {"type": "preference", "num_objectives": self.num_objectives, "dim": dim}

    def extra_repr(self) -> str:
        return f"num_objectives={self.num_objectives}, dim={self.dim}"
