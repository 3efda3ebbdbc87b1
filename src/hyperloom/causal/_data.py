"""Observational data with known potential outcomes: checks, ACIC 2016 loading, unit splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

ACIC16_INSTANCES = tuple(range(1, 11))
"""The ACIC 2016 instances that ``causallib`` ships (one simulated file from each of 10 DGPs)."""


def check_causal_data(
    x: Tensor, t: Tensor, y: Tensor, *, name: str = "data", columns: list[str] | None = None
) -> None:
    """Raise a named error for data no ITE learner can be trained on.

    Args:
        x: covariates ``(n, d)``, float.
        t: treatment ``(n,)``, values 0 and 1 only.
        y: factual outcomes ``(n,)``.
        name: what the data is called in the messages (e.g. ``"ACIC 2016 instance 3"``).
        columns: covariate names, to name the columns that hold NaN.

    Raises:
        TypeError: a tensor is not a ``torch.Tensor``.
        ValueError: ``x`` is not 2-D or holds NaN or infinity (the columns are named), the
            lengths differ, ``t`` holds a value other than 0 and 1 (the values are named), an arm
            is empty (the arm is named), or ``y`` is not finite.

    Example:
        >>> x = torch.randn(4, 2)
        >>> check_causal_data(x, torch.tensor([0, 1, 0, 1]), torch.zeros(4))
        >>> check_causal_data(x, torch.tensor([0, 1, 2, 1]), torch.zeros(4))
        Traceback (most recent call last):
        ...
        ValueError: data: the treatment must be binary (0 or 1), got the values [0, 1, 2]
    """
    for label, v in (("x", x), ("t", t), ("y", y)):
        if not isinstance(v, Tensor):
            raise TypeError(f"{name}: {label} must be a torch.Tensor, got {type(v).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name}: covariates x must be (n, d), got shape {tuple(x.shape)}")
    n = x.shape[0]
    if t.shape != (n,) or y.shape != (n,):
        raise ValueError(
            f"{name}: x has {n} units but t has shape {tuple(t.shape)} and y {tuple(y.shape)} "
            f"(both must be ({n},))"
        )
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        cols = bad.any(dim=0).nonzero().flatten().tolist()
        names = [columns[c] for c in cols] if columns is not None else cols
        rows = int(bad.any(dim=1).sum())
        kind = "NaN" if bool(torch.isnan(x).any()) else "infinite values"
        raise ValueError(
            f"{name}: covariates contain {kind} in column(s) {names[:10]}"
            f"{' ...' if len(names) > 10 else ''} ({rows} of {n} units)"
        )
    values = torch.unique(t).tolist()
    if not set(values) <= {0, 1}:
        shown = [int(v) if float(v).is_integer() else v for v in values[:10]]
        raise ValueError(f"{name}: the treatment must be binary (0 or 1), got the values {shown}")
    for arm, label in ((0, "control"), (1, "treated")):
        if not bool((t == arm).any()):
            raise ValueError(
                f"{name}: the {label} arm (t = {arm}) is empty: all {n} units have t = {1 - arm}"
            )
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"{name}: the outcome y holds NaN or infinity")


@dataclass(frozen=True)
class CausalData:
    """Units with covariates, a binary treatment, the factual outcome and, when known, the true
    potential-outcome means (so that individual effects can be scored exactly).

    Construction checks the data (:func:`check_causal_data`).

    Attributes:
        x: covariates ``(n, d)``, float32.
        t: treatment ``(n,)``, long, 0 or 1.
        y: factual outcome ``(n,)``, float32.
        mu0: true mean outcome under control ``(n,)``, or ``None``.
        mu1: true mean outcome under treatment ``(n,)``, or ``None``.
        name: a label for messages and tables.
        columns: covariate names.

    Example:
        >>> d = CausalData(torch.randn(6, 3), torch.tensor([0, 1] * 3), torch.randn(6))
        >>> d.n, d.d, d.treated
        (6, 3, 3)
    """

    x: Tensor
    t: Tensor
    y: Tensor
    mu0: Tensor | None = None
    mu1: Tensor | None = None
    name: str = "data"
    columns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_causal_data(
            self.x,
            self.t,
            self.y,
            name=self.name,
            columns=None if self.columns is None else list(self.columns),
        )
        if (self.mu0 is None) != (self.mu1 is None):
            raise ValueError(f"{self.name}: give both mu0 and mu1 or neither")
        for label, v in (("mu0", self.mu0), ("mu1", self.mu1)):
            if v is not None and v.shape != (self.n,):
                raise ValueError(
                    f"{self.name}: {label} must have shape ({self.n},), got {tuple(v.shape)}"
                )

    @property
    def n(self) -> int:
        """Number of units."""
        return self.x.shape[0]

    @property
    def d(self) -> int:
        """Number of covariates."""
        return self.x.shape[1]

    @property
    def treated(self) -> int:
        """Number of treated units."""
        return int(self.t.sum())

    @property
    def ite(self) -> Tensor:
        """The true individual effects ``mu1 - mu0`` ``(n,)``.

        Raises:
            ValueError: the potential outcomes are not known.
        """
        if self.mu0 is None or self.mu1 is None:
            raise ValueError(f"{self.name}: the true potential outcomes are not known")
        return self.mu1 - self.mu0

    def subset(self, index: Tensor) -> CausalData:
        """The units ``index`` (checked again: an arm may not be empty)."""
        pick = None if self.mu0 is None else (self.mu0[index], self.mu1[index])  # type: ignore[index]
        return CausalData(
            self.x[index],
            self.t[index],
            self.y[index],
            None if pick is None else pick[0],
            None if pick is None else pick[1],
            self.name,
            self.columns,
        )


def load_acic16(instance: int = 1) -> CausalData:
    """One of the 10 ACIC 2016 instances that ``causallib`` ships (no download).

    The covariates are the challenge's 4,802 units x 58 real variables (its 3 categorical ones
    one-hot coded with the first level dropped: 79 columns); treatment, factual outcome and
    both true potential-outcome means come from ``zymu_<instance>.csv``.

    Args:
        instance: 1 to 10.

    Returns:
        A :class:`CausalData` named ``"acic16-<instance>"`` with ``mu0`` and ``mu1``.

    Raises:
        ValueError: ``instance`` is not in 1..10.
        ImportError: ``causallib`` is not installed (``pip install 'hyperloom[causal]'``).

    Example:
        >>> d = load_acic16(1)  # doctest: +SKIP
        >>> d.n, d.d  # doctest: +SKIP
        (4802, 79)
    """
    if isinstance(instance, bool) or instance not in ACIC16_INSTANCES:
        raise ValueError(f"ACIC 2016 instance must be one of 1..10, got {instance!r}")
    try:
        from causallib.datasets import load_acic16 as _load
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ACIC 2016 needs causallib: pip install 'hyperloom[causal]'") from e
    b = _load(instance=instance)
    x = torch.as_tensor(b.X.to_numpy(dtype=np.float32))
    return CausalData(
        x,
        torch.as_tensor(b.a.to_numpy().astype(np.int64)),
        torch.as_tensor(b.y.to_numpy(dtype=np.float32)),
        torch.as_tensor(b.po["0"].to_numpy(dtype=np.float32)),
        torch.as_tensor(b.po["1"].to_numpy(dtype=np.float32)),
        name=f"acic16-{instance}",
        columns=tuple(str(c) for c in b.X.columns),
    )


def stratified_split(
    t: Tensor, fraction: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Split unit indices in two, keeping the treated share in both parts.

    Args:
        t: treatment ``(n,)``.
        fraction: the share of each arm that goes to the second part, in (0, 1).
        generator: for the shuffle.

    Returns:
        ``(first, second)``: sorted index tensors, disjoint, together ``0..n-1``; each part
        holds at least one unit of each arm.

    Raises:
        ValueError: ``fraction`` is outside (0, 1), or an arm is too small to go in both parts.

    Example:
        >>> a, b = stratified_split(torch.tensor([0] * 6 + [1] * 4), 0.5)
        >>> len(a), len(b)
        (5, 5)
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    first, second = [], []
    for arm in (0, 1):
        idx = (t == arm).nonzero().flatten()
        if len(idx) < 2:
            raise ValueError(
                f"arm t = {arm} has {len(idx)} unit(s): too few to split into two parts"
            )
        idx = idx[torch.randperm(len(idx), generator=generator)]
        k = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        second.append(idx[:k])
        first.append(idx[k:])
    return torch.cat(first).sort().values, torch.cat(second).sort().values


def standardise(x: Tensor, fit: Tensor) -> Tensor:
    """Centre and scale every column with the mean and std of the units ``fit``.

    A column constant on those units is only centred (scale 1, as scikit-learn's
    ``StandardScaler`` does): dividing by its zero std would send the other units' values of a
    rare category, unseen in ``fit``, to infinity or to 1e6.

    Args:
        x: ``(n, d)``.
        fit: indices (or a boolean mask) of the units whose statistics are used.

    Returns:
        ``(n, d)``, all units transformed with the same statistics.

    Example:
        >>> x = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 3.0]])
        >>> standardise(x, torch.tensor([0, 1]))
        tensor([[-0.7071,  0.0000],
                [ 0.7071,  0.0000],
                [ 2.1213,  2.0000]])
    """
    part = x[fit]
    if len(part) < 2:
        raise ValueError(f"standardise needs at least 2 units to fit on, got {len(part)}")
    mean, std = part.mean(0), part.std(0)
    scale = torch.where(std > 1e-6, std, torch.ones_like(std))
    return (x - mean) / scale
