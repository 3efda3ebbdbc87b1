"""Scalarisations: a vector of objective losses and a preference ray to one training loss."""

from __future__ import annotations

from torch import Tensor

from ._preference import check_preference


def _check_pair(losses: Tensor, ray: Tensor) -> None:
    if not isinstance(losses, Tensor) or losses.dim() < 1:
        raise TypeError(f"losses must be a tensor (*, m), got {type(losses).__name__}")
    m = losses.shape[-1]
    if not isinstance(ray, Tensor) or ray.dim() < 1 or ray.shape[-1] != m:
        shape = tuple(ray.shape) if isinstance(ray, Tensor) else type(ray).__name__
        raise ValueError(
            f"the ray must have one entry per objective: losses have {m} objectives "
            f"(shape {tuple(losses.shape)}), ray has shape {shape}"
        )
    check_preference(ray, m)


def linear_scalarization(losses: Tensor, ray: Tensor) -> Tensor:
    r"""The preference-weighted sum :math:`\sum_i r_i \, \ell_i` (PHN-LS).

    Minimising it for every ray reaches the convex part of the Pareto front only.

    Args:
        losses: ``(*, m)`` objective values.
        ray: ``(*, m)`` preference rays on the simplex (broadcast against ``losses``).

    Returns:
        ``(*)`` scalarised losses.

    Raises:
        ValueError: the ray is off the simplex or has the wrong number of objectives.

    Example:
        >>> linear_scalarization(torch.tensor([1.0, 3.0]), torch.tensor([0.5, 0.5]))
        tensor(2.)
    """
    _check_pair(losses, ray)
    return (losses * ray).sum(-1)


def chebyshev(losses: Tensor, ray: Tensor, *, ideal: Tensor | float = 0.0) -> Tensor:
    r"""The weighted Chebyshev scalarisation :math:`\max_i r_i (\ell_i - z_i)`.

    Its minimiser for ray ``r`` balances :math:`r_i (\ell_i - z_i)` across objectives, the
    ray-exact solution that EPO searches for (Mahapatra and Rajan, 2020), and unlike the linear
    scalarisation it also reaches points on non-convex parts of the front. ``z`` is an ideal
    point (a lower bound of each objective, 0 for non-negative losses).

    Args:
        losses: ``(*, m)`` objective values.
        ray: ``(*, m)`` preference rays on the simplex.
        ideal: ``z``, a float or an ``(m,)`` tensor.

    Returns:
        ``(*)`` scalarised losses; the gradient flows through the largest term.

    Example:
        >>> chebyshev(torch.tensor([1.0, 3.0]), torch.tensor([0.5, 0.5]))
        tensor(1.5000)
    """
    _check_pair(losses, ray)
    if isinstance(ideal, Tensor) and ideal.shape not in ((), (losses.shape[-1],)):
        raise ValueError(
            f"ideal must be a float or have shape ({losses.shape[-1]},), got {tuple(ideal.shape)}"
        )
    return (ray * (losses - ideal)).amax(-1)


SCALARIZATIONS = {"ls": linear_scalarization, "chebyshev": chebyshev}
"""The scalarisations by name (``hyperloom train pareto --loss=...``)."""


def scalarize(name: str, losses: Tensor, ray: Tensor) -> Tensor:
    """The scalarisation ``name`` (``"ls"`` or ``"chebyshev"``) of ``losses`` for ``ray``.

    Example:
        >>> scalarize("ls", torch.tensor([1.0, 3.0]), torch.tensor([0.25, 0.75]))
        tensor(2.5000)
    """
    if name not in SCALARIZATIONS:
        raise ValueError(f"unknown scalarisation {name!r}; choose one of {list(SCALARIZATIONS)}")
    return SCALARIZATIONS[name](losses, ray)
