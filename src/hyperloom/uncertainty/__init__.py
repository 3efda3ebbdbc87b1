r"""Uncertainty from noise-conditioned hypernetworks: K weight sets, one call, calibrated metrics.

A hypernetwork conditioned on noise, :math:`\theta = G(z)` with :math:`z \sim q(z)`, holds a
distribution over target networks (Krueger et al. 2017, Bayesian hypernetworks; Pawlowski et
al. 2017; Ratzlaff and Fuxin 2019, HyperGAN). This module gives

- sampling and prediction: :func:`sample_weights` draws K weight sets in one generator call,
  :func:`sample_outputs` runs the target with all K at once through
  :func:`~hyperloom.call_batched` (no Python loop over samples), and
  :func:`summarize_classification` / :func:`summarize_regression` turn the K outputs into a
  predictive mean and its spread (entropy, mutual information, variance);
- training objectives as plain functions: an implicit weight distribution kept spread by a
  diversity term (:func:`kernel_repulsion` or :func:`entropy_surrogate`, combined by
  :func:`implicit_loss`), and a variational Bayesian hypernetwork with a reparameterised
  Gaussian over z (:class:`GaussianPosterior`) and the ELBO (:func:`elbo_loss`);
- metrics: :func:`accuracy`, :func:`nll`, :func:`brier_score`,
  :func:`expected_calibration_error` (15 equal-width bins), :func:`reliability_diagram`,
  :func:`auroc` (rank statistic, ties counted one half) and :func:`gaussian_nll`.

Example:
    >>> import torch, hyperloom as hl
    >>> from torch import nn
    >>> target = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> hnet = hl.HyperNetwork(target, hl.Noise(8, seed=0),
    ...     hl.ChunkedGenerator.factory(chunk_size=32))
    >>> x = torch.randn(10, 4)
    >>> pred = hl.uncertainty.predict_classification(hnet, x, k=6)
    >>> pred.probs.shape, pred.mutual_information.shape
    (torch.Size([10, 3]), torch.Size([10]))
"""

from ._methods import DIVERSITY_TERMS as DIVERSITY_TERMS
from ._methods import ClassPrediction as ClassPrediction
from ._methods import GaussianPosterior as GaussianPosterior
from ._methods import RegressionPrediction as RegressionPrediction
from ._methods import accuracy as accuracy
from ._methods import auroc as auroc
from ._methods import brier_score as brier_score
from ._methods import elbo_loss as elbo_loss
from ._methods import entropy_surrogate as entropy_surrogate
from ._methods import expected_calibration_error as expected_calibration_error
from ._methods import flatten_weights as flatten_weights
from ._methods import gaussian_nll as gaussian_nll
from ._methods import implicit_loss as implicit_loss
from ._methods import kernel_repulsion as kernel_repulsion
from ._methods import mixture_nll as mixture_nll
from ._methods import nll as nll
from ._methods import ood_auroc as ood_auroc
from ._methods import predict_classification as predict_classification
from ._methods import predict_regression as predict_regression
from ._methods import reliability_diagram as reliability_diagram
from ._methods import sample_outputs as sample_outputs
from ._methods import sample_weights as sample_weights
from ._methods import summarize_classification as summarize_classification
from ._methods import summarize_regression as summarize_regression
