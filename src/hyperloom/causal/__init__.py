"""Individualised treatment effects with hypernetworks (HyperITE; Chauhan et al., AISTATS 2024).

Plain ITE learners (T-learner, S-learner, TARNet) and their hypernetwork versions, whose per-arm
networks a task-conditioned hypernetwork generates from one embedding per treatment arm; the
factual loss, the effects and the metrics (sqrt PEHE, ATE error); checked observational data and
the ACIC 2016 instances that ``causallib`` ships (imported only when loaded).

Example:
    >>> import torch
    >>> from hyperloom import causal
    >>> m = causal.HyperTLearner(5, hidden=(8,))
    >>> po = m(torch.randn(4, 5))                       # (n, 2): both potential outcomes
    >>> causal.factual_loss(po, torch.tensor([0, 1, 1, 0]), torch.zeros(4)).shape
    torch.Size([])
"""

from ._data import ACIC16_INSTANCES as ACIC16_INSTANCES
from ._data import CausalData as CausalData
from ._data import check_causal_data as check_causal_data
from ._data import load_acic16 as load_acic16
from ._data import standardise as standardise
from ._data import stratified_split as stratified_split
from ._learners import LEARNERS as LEARNERS
from ._learners import HyperSLearner as HyperSLearner
from ._learners import HyperTARNet as HyperTARNet
from ._learners import HyperTLearner as HyperTLearner
from ._learners import SLearner as SLearner
from ._learners import TARNet as TARNet
from ._learners import TLearner as TLearner
from ._learners import build_learner as build_learner
from ._learners import mlp as mlp
from ._metrics import ate_error as ate_error
from ._metrics import effects as effects
from ._metrics import factual_loss as factual_loss
from ._metrics import pehe as pehe
