"""hyperloom: hypernetworks over any unmodified PyTorch module.

The public API in data-flow order: select what to generate, condition, generate, call.
"""

from .filters import Filter as Filter
from .filters import to_predicate as to_predicate
from .target import ParamInfo as ParamInfo
from .target import TargetSpec as TargetSpec
from .target import select as select
from .functional import call as call
from .functional import call_batched as call_batched
from .functional import check_weights as check_weights
from .functional import rnn_forward as rnn_forward
from .conditioning import Concat as Concat
from .conditioning import Conditioner as Conditioner
from .conditioning import Noise as Noise
from .conditioning import SampleEncoder as SampleEncoder
from .conditioning import TaskEmbedding as TaskEmbedding
from .generators import ChunkedGenerator as ChunkedGenerator
from .generators import ComponentGenerator as ComponentGenerator
from .generators import FlatGenerator as FlatGenerator
from .generators import Generator as Generator
from .generators import HeadsGenerator as HeadsGenerator
from .generators import LowRankGenerator as LowRankGenerator
from .generators import AttentionGenerator as AttentionGenerator
from .generators import ConvGenerator as ConvGenerator
from .generators import MLPTrunk as MLPTrunk
from .generators import build_generator as build_generator
from .generators import get_generator as get_generator
from .generators import list_generators as list_generators
from .generators import register as register
from .init import hyperfan_in_ as hyperfan_in_
from .init import hyperfan_out_ as hyperfan_out_
from .init import target_variance as target_variance
from .hypernet import Criteria as Criteria
from .hypernet import HyperNetwork as HyperNetwork
from .hyperlstm import HyperLSTM as HyperLSTM
from .continual import snapshot_outputs as snapshot_outputs
from .continual import output_regularizer as output_regularizer
from .continual import lookahead_delta as lookahead_delta
from .continual import predictive_entropy as predictive_entropy
from .continual import task_logits as task_logits
from .continual import infer_task as infer_task
from .continual import quadratic_penalty as quadratic_penalty
from .continual import fisher_diagonal as fisher_diagonal
from .continual import si_importance as si_importance
from .uncertainty import ClassPrediction as ClassPrediction
from .uncertainty import GaussianPosterior as GaussianPosterior
from .uncertainty import RegressionPrediction as RegressionPrediction
from .uncertainty import accuracy as accuracy
from .uncertainty import auroc as auroc
from .uncertainty import brier_score as brier_score
from .uncertainty import elbo_loss as elbo_loss
from .uncertainty import entropy_surrogate as entropy_surrogate
from .uncertainty import expected_calibration_error as expected_calibration_error
from .uncertainty import flatten_weights as flatten_weights
from .uncertainty import gaussian_nll as gaussian_nll
from .uncertainty import implicit_loss as implicit_loss
from .uncertainty import kernel_repulsion as kernel_repulsion
from .uncertainty import nll as nll
from .uncertainty import ood_auroc as ood_auroc
from .uncertainty import predict_classification as predict_classification
from .uncertainty import predict_regression as predict_regression
from .uncertainty import predictive_classification as predictive_classification
from .uncertainty import predictive_regression as predictive_regression
from .uncertainty import reliability_diagram as reliability_diagram
from .uncertainty import sample_outputs as sample_outputs
from .uncertainty import sample_weights as sample_weights
from .targets import build_target as build_target
from .checkpoint import save as save
from .checkpoint import load as load
from .checkpoint import resume as resume

__version__ = "0.1.0"
