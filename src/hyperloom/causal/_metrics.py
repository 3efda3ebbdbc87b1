"""Losses and metrics for individual treatment effects: plain functions of tensors."""

from __future__ import annotations

import torch
from torch import Tensor


def _check_outcomes(po: Tensor) -> None:
    if not isinstance(po, Tensor):
        raise TypeError(f"potential outcomes must be a torch.Tensor, got {type(po).__name__}")
    if po.dim() != 2 or po.shape[1] != 2:
        raise ValueError(f"potential outcomes must be (n, 2), got shape {tuple(po.shape)}")


def factual_loss(po: Tensor, t: Tensor, y: Tensor) -> Tensor:
    """Mean squared error of the factual column: ``mean((po[i, t_i] - y_i)^2)``.

    Only what was observed is fitted; the counterfactual column gets no direct signal.

    Args:
        po: predicted potential outcomes ``(n, 2)``.
        t: treatment ``(n,)``, long, 0 or 1.
        y: factual outcomes ``(n,)``.

    Example:
        >>> po = torch.tensor([[1.0, 5.0], [2.0, 3.0]])
        >>> factual_loss(po, torch.tensor([1, 0]), torch.tensor([5.0, 0.0]))
        tensor(2.)
    """
    _check_outcomes(po)
    if t.shape != (po.shape[0],) or y.shape != (po.shape[0],):
        raise ValueError(
            f"t and y must have shape ({po.shape[0]},), got {tuple(t.shape)} and {tuple(y.shape)}"
        )
    factual = po.gather(1, t.long().unsqueeze(1)).squeeze(1)  # (n,)
    return torch.mean((factual - y) ** 2)


def effects(po: Tensor) -> Tensor:
    """Estimated individual effects ``po[:, 1] - po[:, 0]`` ``(n,)``.

    Example:
        >>> effects(torch.tensor([[1.0, 5.0], [2.0, 3.0]]))
        tensor([4., 1.])
    """
    _check_outcomes(po)
    return po[:, 1] - po[:, 0]


def _check_pair(estimate: Tensor, truth: Tensor) -> None:
    if estimate.shape != truth.shape or estimate.dim() != 1 or len(estimate) == 0:
        raise ValueError(
            f"estimated and true effects must be non-empty (n,) tensors of one shape, got "
            f"{tuple(estimate.shape)} and {tuple(truth.shape)}"
        )


def pehe(estimate: Tensor, truth: Tensor) -> float:
    """sqrt(PEHE): the root mean squared error of the individual effects.

    ``sqrt(mean((tau_hat(x_i) - (mu1(x_i) - mu0(x_i)))^2))`` (Hill, 2011).

    Example:
        >>> round(pehe(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0])), 6)
        1.414214
    """
    _check_pair(estimate, truth)
    return float(torch.sqrt(torch.mean((estimate.double() - truth.double()) ** 2)))


def ate_error(estimate: Tensor, truth: Tensor) -> float:
    """Absolute error of the average effect: ``|mean(tau_hat) - mean(tau)|``.

    Example:
        >>> ate_error(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]))
        1.0
    """
    _check_pair(estimate, truth)
    return float(torch.abs(estimate.double().mean() - truth.double().mean()))
