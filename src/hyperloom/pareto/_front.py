"""Evaluating a front: metrics for many rays in one batched call, dominance, hypervolume."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..functional import call_batched
from ..hypernet import HyperNetwork
from ._preference import Preference, check_preference

Metrics = Callable[[Tensor, Tensor], Tensor]
"""``metrics(outputs (R, B, ...), y (B, ...)) -> (R, q)``: batch means of q values per model."""


@torch.no_grad()
def evaluate(
    outputs_of: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    metrics: Metrics,
    *,
    batch_size: int = 1000,
) -> Tensor:
    """Average per-model metrics over a dataset, a slice at a time.

    Args:
        outputs_of: ``x_slice (B, ...) -> (R, B, ...)``, the outputs of R models on a slice.
        x: ``(N, ...)`` inputs.
        y: ``(N, ...)`` targets.
        metrics: ``(outputs (R, B, ...), y_slice) -> (R, q)``, the mean of each of q metrics
            over the slice.
        batch_size: slice size.

    Returns:
        ``(R, q)``: the metrics over the whole dataset (slice means weighted by slice size).

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(3, 2)
        >>> x, y = torch.randn(10, 3), torch.randn(10, 2)
        >>> mse = lambda out, y: ((out - y) ** 2).mean(1)  # (R, 2): one MSE per output
        >>> evaluate(lambda xb: net(xb)[None], x, y, mse, batch_size=4).shape
        torch.Size([1, 2])
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must hold the same number (> 0) of rows, got {len(x)}, {len(y)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    total: Tensor | None = None
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        values = metrics(outputs_of(xb), yb) * len(xb)  # (R, q)
        total = values if total is None else total + values
    if total is None:  # unreachable: x has rows (checked above)
        raise ValueError("x has no rows")
    return total / len(x)


@torch.no_grad()
def front(
    hnet: HyperNetwork,
    x: Tensor,
    y: Tensor,
    metrics: Metrics,
    *,
    ray: Tensor,
    batch_size: int = 1000,
) -> Tensor:
    """Sweep a preference-conditioned hypernetwork over rays and return each ray's metrics.

    The R weight sets are generated in one call, and each slice of ``x`` runs through all of
    them at once (:func:`~hyperloom.call_batched`), never a Python loop over rays.

    Args:
        hnet: a hypernetwork whose conditioner is :class:`Preference`.
        x: ``(N, ...)`` inputs; ``y``: ``(N, ...)`` targets.
        metrics: as for :func:`evaluate`; its first m columns are usually the objectives.
        ray: ``(R, m)`` preference rays (e.g. :func:`ray_grid`), by the conditioner's keyword
            as in ``hnet(x, ray=...)``.
        batch_size: samples per slice.

    Returns:
        ``(R, q)``: the metrics of the network generated for each ray.

    Raises:
        TypeError: the conditioner is not :class:`Preference`.
        ValueError: a ray is off the simplex or has the wrong number of objectives.

    Example:
        >>> import hyperloom as hl
        >>> from torch import nn
        >>> gen = hl.ChunkedGenerator.factory(chunk_size=4)
        >>> hnet = hl.HyperNetwork(nn.Linear(3, 2), Preference(2), gen)
        >>> x, y = torch.randn(10, 3), torch.randn(10, 2)
        >>> mse = lambda out, y: ((out - y) ** 2).mean(1)  # (R, 2)
        >>> front(hnet, x, y, mse, ray=hl.pareto.ray_grid(5)).shape
        torch.Size([5, 2])
    """
    pref = hnet.conditioner
    if not isinstance(pref, Preference):
        raise TypeError(
            f"front() needs a preference-conditioned hypernetwork (hl.pareto.Preference), got a "
            f"{type(pref).__name__} conditioner"
        )
    rays = check_preference(ray, pref.num_objectives)
    if rays.dim() != 2:
        raise ValueError(f"ray must have shape (R, {pref.num_objectives}), got {tuple(rays.shape)}")
    weights = hnet.generate(ray=rays)  # {name: (R, *shape)}
    r = len(rays)

    def outputs_of(xb: Tensor) -> Tensor:
        return call_batched(hnet.target, weights, xb.expand(r, *xb.shape))  # (R, B, ...)

    return evaluate(outputs_of, x, y, metrics, batch_size=batch_size)


def non_dominated(points: Tensor) -> Tensor:
    """Which points no other point dominates (all objectives minimised).

    ``a`` dominates ``b`` when ``a <= b`` everywhere and ``a < b`` somewhere.

    Args:
        points: ``(N, m)``.

    Returns:
        ``(N,)`` bool mask of the non-dominated points.

    Example:
        >>> non_dominated(torch.tensor([[1.0, 2.0], [2.0, 1.0], [2.0, 2.0]])).tolist()
        [True, True, False]
    """
    if not isinstance(points, Tensor) or points.dim() != 2:
        raise ValueError(f"points must be a tensor (N, m), got {getattr(points, 'shape', points)}")
    a, b = points[:, None, :], points[None, :, :]  # (N, 1, m), (1, N, m)
    dominates = (b <= a).all(-1) & (b < a).any(-1)  # [i, j]: j dominates i
    return ~dominates.any(1)


def hypervolume(points: Tensor | np.ndarray | Sequence, ref: Sequence[float]) -> float:
    """The hypervolume dominated by ``points`` and bounded by ``ref`` (all objectives minimised).

    Computed by pymoo's ``pymoo.indicators.hv.HV`` (``pip install hyperloom[pareto]``); points
    that do not dominate ``ref`` add nothing. Larger is better.

    Args:
        points: ``(N, m)`` objective vectors.
        ref: the reference point, ``m`` values.

    Returns:
        The hypervolume (0.0 when no point dominates ``ref``).

    Raises:
        ValueError: ``ref`` does not have one value per objective, or a point is not finite.
        ImportError: pymoo is not installed.

    Example:
        >>> hypervolume([[1.0, 2.0], [2.0, 1.0]], ref=[3.0, 3.0])  # doctest: +SKIP
        3.0
    """
    pts = np.asarray(
        points.detach().cpu().numpy() if isinstance(points, Tensor) else points, dtype=np.float64
    )
    reference = np.asarray(ref, dtype=np.float64)
    if pts.ndim != 2:
        raise ValueError(f"points must be (N, m), got shape {pts.shape}")
    if reference.shape != (pts.shape[1],):
        raise ValueError(
            f"ref must have one value per objective ({pts.shape[1]}), got {list(reference)}"
        )
    if not np.isfinite(pts).all():
        raise ValueError("points must be finite; got NaN or infinite objective values")
    try:
        from pymoo.indicators.hv import HV
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "hypervolume needs pymoo: pip install 'hyperloom[pareto]' (or pymoo>=0.6)"
        ) from e
    inside = pts[(pts < reference).all(1)]
    if len(inside) == 0:
        return 0.0
    return float(HV(ref_point=reference)(inside))
