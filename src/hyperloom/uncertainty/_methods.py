"""Implementation of :mod:`hyperloom.uncertainty` (import from there)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..conditioning.noise import Noise
from ..functional import call_batched
from ..hypernet import HyperNetwork

_EPS = 1e-12


# Sampling and prediction ---------------------------------------------------------------------
def sample_weights(
    hnet: HyperNetwork,
    k: int,
    *,
    z: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Draw ``k`` weight sets from a noise-conditioned hypernetwork in one generator call.

    Args:
        hnet: a :class:`~hyperloom.HyperNetwork` whose conditioner is :class:`~hyperloom.Noise`.
        k: number of weight sets.
        z: ``(k, dim)`` noise to use instead of drawing it (for instance draws of a
            :class:`GaussianPosterior`).
        generator: a ``torch.Generator`` to draw z from instead of the conditioner's own.

    Returns:
        ``{name: (k, *shape)}`` for every generated tensor.

    Raises:
        TypeError: the conditioner is not :class:`~hyperloom.Noise`.
        ValueError: ``k < 1`` or ``z`` does not have shape ``(k, dim)``.

    Example:
        >>> import hyperloom as hl
        >>> from torch import nn
        >>> hnet = hl.HyperNetwork(nn.Linear(3, 2), hl.Noise(4, seed=0), hl.FlatGenerator.factory())
        >>> sample_weights(hnet, 5)["weight"].shape
        torch.Size([5, 2, 3])
    """
    noise = hnet.conditioner
    if not isinstance(noise, Noise):
        raise TypeError(
            f"sample_weights needs a noise-conditioned hypernetwork (hl.Noise), got a "
            f"{type(noise).__name__} conditioner"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if z is None:
        z = noise.sample(k, generator=generator)  # (k, dim)
    elif z.dim() != 2 or tuple(z.shape) != (k, noise.dim):
        raise ValueError(f"z must have shape ({k}, {noise.dim}), got {tuple(z.shape)}")
    return hnet.generate(z=z)


def sample_outputs(target: nn.Module, weights: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """Run ``target`` on the same batch with each of K weight sets, in one batched call.

    Args:
        target: the module the weights are for (``hnet.target``).
        weights: ``{name: (K, *shape)}``, e.g. from :func:`sample_weights`.
        x: ``(B, ...)`` inputs, shared by all K weight sets.

    Returns:
        ``(K, B, ...)``: the output of weight set ``k`` on the whole batch, equal to
        ``torch.stack([hl.call(target, w_k, x) for w_k in ...])``.

    Example:
        >>> from torch import nn
        >>> ws = {"weight": torch.randn(7, 2, 3), "bias": torch.zeros(7, 2)}
        >>> sample_outputs(nn.Linear(3, 2), ws, torch.randn(5, 3)).shape
        torch.Size([7, 5, 2])
    """
    if not weights:
        raise ValueError("sample_outputs needs at least one weight tensor")
    k = next(iter(weights.values())).shape[0]
    return call_batched(target, weights, x.expand(k, *x.shape))  # (K, B, ...)


@dataclass(frozen=True)
class ClassPrediction:
    """The predictive distribution of an ensemble of K classifiers on B inputs.

    Attributes:
        probs: ``(B, C)`` predictive mean,
            :math:`\\bar p = \\frac1K \\sum_k \\mathrm{softmax}(f_k)`.
        entropy: ``(B,)`` total uncertainty :math:`H[\\bar p]` (nats).
        expected_entropy: ``(B,)`` aleatoric part :math:`\\frac1K \\sum_k H[p_k]`.
        mutual_information: ``(B,)`` epistemic part, the mutual information between the
            prediction and the weights: ``entropy - expected_entropy`` (>= 0).
        member_probs: ``(K, B, C)`` each member's softmax.
    """

    probs: Tensor
    entropy: Tensor
    expected_entropy: Tensor
    mutual_information: Tensor
    member_probs: Tensor


def _entropy(p: Tensor) -> Tensor:
    return -(p * p.clamp_min(_EPS).log()).sum(-1)


def summarize_classification(logits: Tensor) -> ClassPrediction:
    """Predictive mean and spread from K members' logits.

    Args:
        logits: ``(K, B, C)``.

    Returns:
        A :class:`ClassPrediction`.

    Example:
        >>> same = torch.tensor([[[2.0, 0.0]], [[2.0, 0.0]]])  # two members that agree
        >>> summarize_classification(same).mutual_information.abs().item() < 1e-6
        True
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape (K, B, C), got {tuple(logits.shape)}")
    member = logits.softmax(-1)  # (K, B, C)
    probs = member.mean(0)  # (B, C)
    entropy = _entropy(probs)
    expected = _entropy(member).mean(0)
    mi = (entropy - expected).clamp_min(0.0)
    return ClassPrediction(probs, entropy, expected, mi, member)


@dataclass(frozen=True)
class RegressionPrediction:
    """The predictive distribution of an ensemble of K regressors on B inputs.

    Attributes:
        mean: ``(B, D)`` mean of the members' means.
        variance: ``(B, D)`` total variance, ``epistemic + aleatoric``.
        epistemic: ``(B, D)`` variance of the members' means (spread of the weights).
        aleatoric: ``(B, D)`` mean of the members' noise variances.
        member_means: ``(K, B, D)``.
    """

    mean: Tensor
    variance: Tensor
    epistemic: Tensor
    aleatoric: Tensor
    member_means: Tensor


def summarize_regression(
    means: Tensor, noise_variance: Tensor | float = 0.0
) -> RegressionPrediction:
    """Predictive mean and variance (law of total variance) from K members' outputs.

    Args:
        means: ``(K, B, D)`` each member's predicted mean.
        noise_variance: the members' observation-noise variance: a float, or a tensor that
            broadcasts to ``(K, B, D)``.

    Returns:
        A :class:`RegressionPrediction`; the epistemic variance uses ``1 / K`` (population).

    Example:
        >>> p = summarize_regression(torch.tensor([[[0.0]], [[2.0]]]), noise_variance=0.5)
        >>> p.mean.item(), p.epistemic.item(), p.variance.item()
        (1.0, 1.0, 1.5)
    """
    if means.dim() != 3:
        raise ValueError(f"means must have shape (K, B, D), got {tuple(means.shape)}")
    mean = means.mean(0)
    epistemic = means.var(0, unbiased=False)
    aleatoric = torch.as_tensor(noise_variance, dtype=means.dtype, device=means.device)
    aleatoric = aleatoric.expand_as(means).mean(0)
    return RegressionPrediction(mean, epistemic + aleatoric, epistemic, aleatoric, means)


@torch.no_grad()
def predict_classification(
    hnet: HyperNetwork,
    x: Tensor,
    k: int = 20,
    *,
    z: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> ClassPrediction:
    """Sample ``k`` classifiers from a noise-conditioned hypernetwork and predict with all at once.

    Args:
        hnet: a noise-conditioned :class:`~hyperloom.HyperNetwork` whose target returns logits.
        x: ``(B, ...)`` inputs.
        k: number of sampled weight sets.
        z: ``(k, dim)`` noise to use (e.g. from a :class:`GaussianPosterior`).
        generator: a ``torch.Generator`` for z.

    Returns:
        A :class:`ClassPrediction` over the ``k`` sampled networks.
    """
    weights = sample_weights(hnet, k, z=z, generator=generator)
    return summarize_classification(sample_outputs(hnet.target, weights, x))


@torch.no_grad()
def predict_regression(
    hnet: HyperNetwork,
    x: Tensor,
    k: int = 20,
    *,
    noise_variance: Tensor | float = 0.0,
    z: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> RegressionPrediction:
    """Sample ``k`` regressors from a noise-conditioned hypernetwork and predict with all at once.

    Args:
        hnet: a noise-conditioned :class:`~hyperloom.HyperNetwork` whose target returns
            ``(B, D)`` means.
        x: ``(B, ...)`` inputs.
        k: number of sampled weight sets.
        noise_variance: observation-noise variance added as the aleatoric part.
        z: ``(k, dim)`` noise to use.
        generator: a ``torch.Generator`` for z.

    Returns:
        A :class:`RegressionPrediction` over the ``k`` sampled networks.
    """
    weights = sample_weights(hnet, k, z=z, generator=generator)
    return summarize_regression(sample_outputs(hnet.target, weights, x), noise_variance)


# Training objectives -------------------------------------------------------------------------
def mixture_nll(logits: Tensor, labels: Tensor) -> Tensor:
    r"""NLL of the K members' mixture: the loss of the predictive that the ensemble predicts with.

    .. math:: -\frac1B \sum_b \log \frac1K \sum_k \mathrm{softmax}(f_k(x_b))_{y_b}

    Training K draws on this instead of on the mean of their cross-entropies fits the averaged
    prediction itself (the PAC^m bound of Morningstar et al. 2022, with m = K): members are not
    each pulled to the confident answer, so the mixture need not be underconfident. It is at
    most the members' mean cross-entropy (Jensen) and equals it when the members agree. (In
    ``docs/results/uncertainty.md`` a noise-conditioned hypernetwork trained on it did worse on
    validation NLL than one trained on the mean cross-entropy.)

    Args:
        logits: ``(K, B, C)`` the members' logits.
        labels: ``(B,)`` class indices.

    Returns:
        The mean over the batch, a scalar (differentiable).

    Example:
        >>> p = torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]])  # two members, one input, label 0
        >>> round(mixture_nll(p.log(), torch.tensor([0])).item(), 4)  # -log 0.7
        0.3567
    """
    if logits.dim() != 3 or labels.shape != logits.shape[1:2]:
        raise ValueError(
            f"logits must be (K, B, C) and labels (B,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    k = logits.shape[0]
    log_p = logits.log_softmax(-1).gather(2, labels.expand(k, -1)[..., None]).squeeze(2)  # (K, B)
    return -(torch.logsumexp(log_p, dim=0) - math.log(k)).mean()


def flatten_weights(weights: Mapping[str, Tensor]) -> Tensor:
    """``{name: (K, *shape)}`` -> ``(K, P)``, the K weight sets as rows."""
    if not weights:
        raise ValueError("flatten_weights needs at least one tensor")
    return torch.cat([t.flatten(1) for t in weights.values()], dim=1)  # (K, P)


def _pairwise_sq_dists(samples: Tensor) -> Tensor:
    if samples.dim() != 2 or samples.shape[0] < 2:
        raise ValueError(f"samples must have shape (K, D) with K >= 2, got {tuple(samples.shape)}")
    sq = samples.pow(2).sum(1)  # (K,)
    d2 = sq[:, None] + sq[None, :] - 2 * samples @ samples.T  # (K, K)
    off = ~torch.eye(samples.shape[0], dtype=torch.bool, device=samples.device)
    return d2.clamp_min(0.0) * off  # exact zeros on the diagonal


def kernel_repulsion(samples: Tensor, bandwidth: float | None = None) -> Tensor:
    r"""Mean RBF kernel between distinct samples: minimise it to push them apart.

    .. math:: R = \frac{1}{K(K-1)} \sum_{i \ne j} \exp(-\lVert s_i - s_j\rVert^2 / h)

    With ``bandwidth=None`` the median heuristic :math:`h = \mathrm{med}^2 / \log K` (as in
    SVGD, Liu and Wang 2016) sets :math:`h` from the current distances, without gradient, so
    the term's scale does not depend on the scale of the samples. Its gradient is the
    repulsive part of SVGD and of repulsive deep ensembles (D'Angelo and Fortuin, 2021).

    Args:
        samples: ``(K, D)``, e.g. :func:`flatten_weights` of K weight sets, or K members'
            outputs on a batch flattened (function space).
        bandwidth: the kernel's :math:`h`; ``None`` for the median heuristic.

    Returns:
        A scalar in ``(0, 1]``; 1 when all samples coincide.

    Example:
        >>> close = kernel_repulsion(torch.tensor([[0.0], [0.1]]), bandwidth=1.0)
        >>> far = kernel_repulsion(torch.tensor([[0.0], [3.0]]), bandwidth=1.0)
        >>> bool(far < close)
        True
    """
    d2 = _pairwise_sq_dists(samples)
    k = samples.shape[0]
    off = ~torch.eye(k, dtype=torch.bool, device=samples.device)
    h: Tensor | float
    if bandwidth is None:
        med = d2.detach()[off].median()
        h = med / math.log(k) + _EPS
    elif bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    else:
        h = bandwidth
    return torch.exp(-d2 / h)[off].mean()


def entropy_surrogate(samples: Tensor) -> Tensor:
    r"""Nearest-neighbour entropy estimate (up to constants): maximise it to spread samples.

    The Kozachenko-Leonenko estimator of the differential entropy of K samples in
    :math:`\mathbb{R}^D` is :math:`\frac{D}{K} \sum_i \log \rho_i + c(K, D)` with
    :math:`\rho_i` the distance from sample i to its nearest neighbour. This returns
    :math:`\frac1K \sum_i \log \rho_i`: the entropy's gradient divided by D, the surrogate
    that implicit weight distributions (HyperGAN-style) maximise so that the generator does not
    collapse onto one network.

    Args:
        samples: ``(K, D)``, K >= 2.

    Returns:
        A scalar; larger when the samples are further apart.

    Example:
        >>> s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
        >>> round(entropy_surrogate(s).item(), 4)  # log of nearest distances 1, 1, 2
        0.231
    """
    d2 = _pairwise_sq_dists(samples)
    k = samples.shape[0]
    d2 = d2 + torch.diag(torch.full((k,), float("inf"), device=samples.device))
    nearest = d2.min(dim=1).values  # (K,)
    return 0.5 * (nearest + _EPS).log().mean()


DIVERSITY_TERMS = ("kernel", "entropy")
"""The diversity terms :func:`implicit_loss` accepts."""


def implicit_loss(
    data_loss: Tensor,
    samples: Tensor,
    *,
    diversity: float = 1.0,
    term: str = "kernel",
    bandwidth: float | None = None,
) -> Tensor:
    """Loss of an implicit weight distribution: data fit plus a term keeping samples apart.

    ``data_loss + diversity * kernel_repulsion(samples)`` for ``term="kernel"``,
    ``data_loss - diversity * entropy_surrogate(samples)`` for ``term="entropy"``.

    Args:
        data_loss: the members' data loss (e.g. the mean cross-entropy over K and the batch).
        samples: ``(K, D)`` what to keep apart: :func:`flatten_weights` of the sampled weights
            (weight space) or the members' outputs (function space).
        diversity: weight of the diversity term (0 disables it).
        term: ``"kernel"`` or ``"entropy"``.
        bandwidth: the kernel's bandwidth (``"kernel"`` only); ``None`` for the median heuristic.

    Returns:
        A scalar to minimise.
    """
    if term not in DIVERSITY_TERMS:
        raise ValueError(f"term must be one of {DIVERSITY_TERMS}, got {term!r}")
    if diversity < 0:
        raise ValueError(f"diversity must be >= 0, got {diversity}")
    if diversity == 0:
        return data_loss
    if term == "kernel":
        return data_loss + diversity * kernel_repulsion(samples, bandwidth)
    return data_loss - diversity * entropy_surrogate(samples)


class GaussianPosterior(nn.Module):
    r"""A learned diagonal Gaussian :math:`q(z) = N(\mu, \mathrm{diag}\,\sigma^2)` over a
    hypernetwork's noise, with the prior :math:`p(z) = N(0, s^2 I)`.

    Together with the generator :math:`\theta = G(z)` it is the variational Bayesian
    hypernetwork: samples are reparameterised (:math:`z = \mu + \sigma \odot \epsilon`), and
    :meth:`kl` is the ELBO's :math:`\mathrm{KL}(q \,\|\, p)` in closed form.

    Args:
        dim: size of z (the :class:`~hyperloom.Noise` conditioner's ``dim``).
        prior_std: the prior's standard deviation :math:`s`.
        init_std: initial :math:`\sigma` (the mean starts at 0).

    Example:
        >>> q = GaussianPosterior(4)
        >>> q.rsample(3).shape, round(q.kl().item(), 6)  # starts at the prior
        (torch.Size([3, 4]), 0.0)
    """

    def __init__(self, dim: int, *, prior_std: float = 1.0, init_std: float | None = None) -> None:
        super().__init__()
        if dim < 1 or prior_std <= 0:
            raise ValueError(
                f"GaussianPosterior needs dim >= 1 and prior_std > 0, got {dim}, {prior_std}"
            )
        init = prior_std if init_std is None else init_std
        if init <= 0:
            raise ValueError(f"init_std must be > 0, got {init}")
        self.dim = dim
        self.prior_std = prior_std
        self.mean = nn.Parameter(torch.zeros(dim))
        self.log_std = nn.Parameter(torch.full((dim,), math.log(init)))

    @property
    def std(self) -> Tensor:
        """:math:`\\sigma`, ``(dim,)``."""
        return self.log_std.exp()

    def rsample(self, k: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``k`` reparameterised draws ``(k, dim)`` (differentiable in the mean and std)."""
        if k < 1:
            raise ValueError(f"rsample() needs k >= 1, got {k}")
        eps = torch.randn(k, self.dim, generator=generator, device=self.mean.device)
        return self.mean + self.std * eps  # (k, dim)

    def kl(self) -> Tensor:
        r""":math:`\mathrm{KL}(q \,\|\, p)` in nats, summed over dimensions.

        :math:`\sum_i \log(s/\sigma_i) + (\sigma_i^2 + \mu_i^2) / (2 s^2) - 1/2`.
        """
        s2 = self.prior_std**2
        kl = math.log(self.prior_std) - self.log_std + (self.std**2 + self.mean**2) / (2 * s2)
        return (kl - 0.5).sum()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, prior_std={self.prior_std}"


def elbo_loss(nll: Tensor, kl: Tensor, num_data: int, *, kl_weight: float = 1.0) -> Tensor:
    r"""The negative ELBO per training example: ``nll + kl_weight * kl / num_data``.

    With :math:`\theta = G(z)` and :math:`z \sim q`, the ELBO of N examples is
    :math:`\mathbb{E}_q[\sum_n \log p(y_n | x_n, G(z))] - \mathrm{KL}(q \| p)`; dividing by N
    gives a loss on the scale of a mean cross-entropy.

    Args:
        nll: mean negative log-likelihood of a minibatch, averaged over the sampled z.
        kl: :meth:`GaussianPosterior.kl` (or any KL in nats).
        num_data: N, the size of the training set.
        kl_weight: scales the KL (1 is the ELBO; < 1 a tempered posterior).

    Example:
        >>> elbo_loss(torch.tensor(0.5), torch.tensor(100.0), num_data=1000).item()
        0.6000000238418579
    """
    if num_data < 1:
        raise ValueError(f"num_data must be >= 1, got {num_data}")
    if kl_weight < 0:
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
    return nll + kl_weight * kl / num_data


# Metrics -------------------------------------------------------------------------------------
def _check_probs(probs: Tensor, labels: Tensor) -> None:
    if probs.dim() != 2 or labels.dim() != 1 or probs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"probs must be (N, C) and labels (N,), got {tuple(probs.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if probs.shape[0] == 0:
        raise ValueError("metrics need at least one example")


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Share of examples whose most probable class is the label."""
    _check_probs(probs, labels)
    return (probs.argmax(-1) == labels).double().mean().item()


def nll(probs: Tensor, labels: Tensor) -> float:
    """Mean negative log-probability of the label (nats), probabilities clamped at 1e-12."""
    _check_probs(probs, labels)
    p = probs.double().gather(1, labels[:, None]).squeeze(1)
    return (-p.clamp_min(_EPS).log()).mean().item()


def brier_score(probs: Tensor, labels: Tensor) -> float:
    r"""Mean over examples of :math:`\sum_c (p_c - [y = c])^2` (0 is perfect, at most 2)."""
    _check_probs(probs, labels)
    onehot = F.one_hot(labels, probs.shape[1]).double()
    return (probs.double() - onehot).pow(2).sum(1).mean().item()


def reliability_diagram(probs: Tensor, labels: Tensor, bins: int = 15) -> dict[str, list]:
    """Confidence against accuracy in equal-width confidence bins.

    Example ``i`` falls in bin ``b`` when ``b / bins < confidence <= (b + 1) / bins`` (the first
    bin also takes confidence 0), with confidence the largest predicted probability.

    Args:
        probs: ``(N, C)`` predicted probabilities.
        labels: ``(N,)`` class indices.
        bins: number of bins.

    Returns:
        ``{"lower", "upper", "count", "confidence", "accuracy"}``, lists of length ``bins``;
        ``confidence`` and ``accuracy`` are the bin means, ``None`` for an empty bin.
    """
    _check_probs(probs, labels)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    conf, pred = probs.double().max(-1)
    correct = (pred == labels).double()
    which = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)  # (N,) bin index
    count = torch.bincount(which, minlength=bins).double()
    conf_sum = torch.bincount(which, weights=conf, minlength=bins)
    acc_sum = torch.bincount(which, weights=correct, minlength=bins)
    nonzero = count > 0
    return {
        "lower": [b / bins for b in range(bins)],
        "upper": [(b + 1) / bins for b in range(bins)],
        "count": [int(c) for c in count.tolist()],
        "confidence": [
            (s / c) if ok else None
            for s, c, ok in zip(conf_sum.tolist(), count.tolist(), nonzero.tolist(), strict=True)
        ],
        "accuracy": [
            (s / c) if ok else None
            for s, c, ok in zip(acc_sum.tolist(), count.tolist(), nonzero.tolist(), strict=True)
        ],
    }


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    r"""Expected calibration error with ``bins`` equal-width confidence bins (Guo et al. 2017).

    :math:`\mathrm{ECE} = \sum_b \frac{|B_b|}{N} \, |\mathrm{acc}(B_b) - \mathrm{conf}(B_b)|`,
    the bins of :func:`reliability_diagram`.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.9, 0.1]])  # 90% sure, right half the time
        >>> round(expected_calibration_error(probs, torch.tensor([0, 1])), 6)
        0.4
    """
    d = reliability_diagram(probs, labels, bins)
    n = sum(d["count"])
    total = 0.0
    for c, conf, acc in zip(d["count"], d["confidence"], d["accuracy"], strict=True):
        if c:
            total += c / n * abs(acc - conf)
    return total


def auroc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve of ``scores`` for telling positives from negatives.

    Computed as the Mann-Whitney statistic: the probability that a random positive scores
    higher than a random negative, ties counting one half (average ranks).

    Args:
        scores: ``(N,)`` higher means "more likely positive" (for OOD detection: the
            predictive entropy, positives the out-of-distribution inputs).
        positive: ``(N,)`` booleans.

    Returns:
        AUROC in ``[0, 1]``.

    Example:
        >>> auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([False, False, True, True]))
        0.75
    """
    scores = scores.double().flatten()
    positive = positive.bool().flatten()
    if scores.shape != positive.shape:
        raise ValueError(
            f"scores and positive must have the same length, got {scores.numel()} and "
            f"{positive.numel()}"
        )
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"auroc needs both classes, got {n_pos} positives and {n_neg} negatives")
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    counts = counts.double()
    first = torch.cumsum(counts, 0) - counts  # rank (0-based) of each distinct value's first copy
    avg_rank = first + (counts + 1) / 2  # 1-based average rank of each distinct value
    ranks = avg_rank[inverse]  # (N,)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return (u / (n_pos * n_neg)).item()


def ood_auroc(score_in: Tensor, score_out: Tensor) -> float:
    """AUROC of telling out-of-distribution inputs (positives) by a higher ``score``.

    Example:
        >>> ood_auroc(torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.05]))
        0.5
    """
    scores = torch.cat([score_in.flatten(), score_out.flatten()])
    positive = torch.cat(
        [
            torch.zeros(score_in.numel(), dtype=torch.bool),
            torch.ones(score_out.numel(), dtype=torch.bool),
        ]
    )
    return auroc(scores, positive)


def gaussian_nll(mean: Tensor, variance: Tensor, target: Tensor) -> float:
    r"""Mean Gaussian negative log-likelihood of ``target`` under ``N(mean, variance)``.

    :math:`\frac12 \log(2\pi\sigma^2) + (y-\mu)^2 / (2\sigma^2)`, averaged over elements.
    """
    var = variance.double().clamp_min(_EPS)
    err = (target.double() - mean.double()).pow(2)
    return (0.5 * (torch.log(2 * math.pi * var) + err / var)).mean().item()
