"""Continual learning: the hypernetwork output regulariser, task inference and EWC/SI penalties.

Plain functions to call from your own training loop (von Oswald et al., "Continual learning
with hypernetworks", ICLR 2020). A task-conditioned hypernetwork ``H(e; Phi)`` keeps one
embedding ``e_t`` per task; after task ``t`` is learned, its generated weights are snapshotted
and every later task is trained with

.. math:: L = L_{task}(\\Phi, e_T) + \\frac{\\beta}{T-1} \\sum_{t<T}
          \\lVert H(e_t; \\Phi^*) - H(e_t; \\Phi + \\Delta\\Phi) \\rVert^2

where ``H(e_t; Phi*)`` is the snapshot and ``Delta Phi`` an optional one-step lookahead (the
step the task loss alone would take; zero without it). No data of earlier tasks is replayed.
When the task id is unknown at test time, :func:`infer_task` picks the stored embedding whose
predictions have the lowest entropy (HNET+ENT).

The baselines' penalties are here too: :func:`fisher_diagonal` (online EWC) and
:func:`si_importance` (synaptic intelligence) give importances for :func:`quadratic_penalty`.

Example:
    >>> import torch, hyperloom as hl
    >>> from torch import nn
    >>> hnet = hl.HyperNetwork(nn.Linear(4, 2), hl.TaskEmbedding(3, 8), hl.FlatGenerator.factory())
    >>> old = snapshot_outputs(hnet, task=[0, 1])          # after training tasks 0 and 1
    >>> output_regularizer(hnet, old, task=[0, 1], beta=0.01).item()  # outputs unchanged
    0.0
"""

from ._methods import TASK_INFERENCE_RULES as TASK_INFERENCE_RULES
from ._methods import factored_output_regularizer as factored_output_regularizer
from ._methods import fisher_diagonal as fisher_diagonal
from ._methods import fit_temperature as fit_temperature
from ._methods import generate_tasks as generate_tasks
from ._methods import infer_task as infer_task
from ._methods import log_predictive_entropy as log_predictive_entropy
from ._methods import lookahead_delta as lookahead_delta
from ._methods import output_fisher as output_fisher
from ._methods import output_regularizer as output_regularizer
from ._methods import predictive_entropy as predictive_entropy
from ._methods import quadratic_penalty as quadratic_penalty
from ._methods import si_importance as si_importance
from ._methods import snapshot_factors as snapshot_factors
from ._methods import snapshot_outputs as snapshot_outputs
from ._methods import task_logits as task_logits
