"""Reinforcement learning across a family of MDPs: context-conditioned policies and values.

A context vector (log2 scale factors of physical parameters such as a pole's length and mass)
indexes a family of Gymnasium classic-control MDPs (:class:`ContextualEnv`,
:func:`make_vector_env`). Policy and value networks are any ``nn.Module`` targets that use the
context through a hypernetwork (:class:`HyperContext`), by concatenation
(:class:`ConcatContext`) or not at all (:class:`NoContext`); :class:`ActorCritic` holds the
two, and :func:`gae` and :func:`ppo_loss` are PPO's pieces (the training loop is the recipe,
``hyperloom train rl``). Needs the ``rl`` extra (gymnasium).

Example:
    >>> import hyperloom.rl as rl
    >>> vec = rl.make_vector_env("CartPole-v1", ("length",), [[0.0], [1.0]], fixed=True)
    >>> agent = rl.ActorCritic(rl.contextual("hyper", 4, 1, 2), rl.contextual("hyper", 4, 1, 1),
    ...                        vec.single_action_space)
    >>> rl.evaluate(agent, vec, 1, seed=0).returns.shape
    (2,)
"""

from ._envs import PARAMETERS as PARAMETERS
from ._envs import ContextualEnv as ContextualEnv
from ._envs import check_context as check_context
from ._envs import make_vector_env as make_vector_env
from ._envs import sample_contexts as sample_contexts
from ._policy import METHODS as METHODS
from ._policy import ActorCritic as ActorCritic
from ._policy import ConcatContext as ConcatContext
from ._policy import ContextConditioner as ContextConditioner
from ._policy import HyperContext as HyperContext
from ._policy import NoContext as NoContext
from ._policy import check_context_tensor as check_context_tensor
from ._policy import contextual as contextual
from ._policy import mlp as mlp
from ._ppo import Evaluation as Evaluation
from ._ppo import evaluate as evaluate
from ._ppo import gae as gae
from ._ppo import ppo_loss as ppo_loss
from ._ppo import split_observation as split_observation
