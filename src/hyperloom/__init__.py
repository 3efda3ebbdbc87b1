"""hyperloom: hypernetworks over any unmodified PyTorch module.

The core is flat, in data-flow order: select what to generate (:func:`select`), condition
(:class:`TaskEmbedding`, :class:`Noise`, ...), generate (the generators), call the target with
the generated weights (:func:`call`, :func:`call_batched`), or let :class:`HyperNetwork` do all
four; :func:`save`/:func:`load` keep it. Everything else is a namespace that builds on the core
and on nothing above it:

==========================  ===========================================================
``hl.continual``            the output regulariser, task inference, EWC/SI penalties
``hl.federated``            pFedHN: client partitions, local training, server steps
``hl.uncertainty``          weight distributions, predictive summaries, calibration
``hl.causal``               HyperITE learners, PEHE/ATE, ACIC 2016
``hl.pareto``               preference-conditioned hypernetworks, fronts, hypervolume
``hl.adapters``             generated LoRA adapters for transformers, PEFT export
``hl.rl``                   contextual environments, PPO, hypernetwork policies
``hl.architectures``        HyperLSTM, graph hypernetworks, tracing modules to graphs
``hl.networks``             example target networks (an MLP, the pFedHN LeNet)
``hl.data``                 Fashion-MNIST/digits loaders and task scenarios
``hyperloom.recipes``       the recorded experiments (``hyperloom train NAME``)
==========================  ===========================================================

A namespace is imported on first use (``hl.rl`` needs gymnasium, ``hl.causal`` pandas):
``import hyperloom`` loads the core alone, and never ``hyperloom.recipes``.
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING

# 1. Select: which of the target's tensors are generated.
from .filters import Filter as Filter
from .filters import to_predicate as to_predicate
from .target import ParamInfo as ParamInfo
from .target import TargetSpec as TargetSpec
from .target import select as select

# 2. Call: run an unmodified module with weights it does not own.
from .functional import call as call
from .functional import call_batched as call_batched
from .functional import check_weights as check_weights
from .functional import rnn_forward as rnn_forward

# 3. Condition: what the weights depend on.
from .conditioning import Concat as Concat
from .conditioning import Conditioner as Conditioner
from .conditioning import Noise as Noise
from .conditioning import SampleEncoder as SampleEncoder
from .conditioning import TaskEmbedding as TaskEmbedding

# 4. Generate: conditioning vector -> the selected tensors.
from .generators import AttentionGenerator as AttentionGenerator
from .generators import ChunkedGenerator as ChunkedGenerator
from .generators import ComponentGenerator as ComponentGenerator
from .generators import ConvGenerator as ConvGenerator
from .generators import FlatGenerator as FlatGenerator
from .generators import Generator as Generator
from .generators import HeadsGenerator as HeadsGenerator
from .generators import LowRankGenerator as LowRankGenerator
from .generators import MLPTrunk as MLPTrunk
from .generators import TiledGenerator as TiledGenerator
from .generators import build_generator as build_generator
from .generators import get_generator as get_generator
from .generators import list_generators as list_generators
from .generators import register_generator as register_generator
from .init import hyperfan_in_ as hyperfan_in_
from .init import hyperfan_out_ as hyperfan_out_
from .init import pretrained_init_ as pretrained_init_
from .init import target_variance as target_variance

# 5. All of it as one module, and kept on disk.
from .hypernet import Criteria as Criteria
from .hypernet import HyperNetwork as HyperNetwork
from .checkpoint import load as load
from .checkpoint import resume as resume
from .checkpoint import save as save
from ._version import __version__ as __version__

# Namespaces (applications, architectures, example networks, data): imported on first use, so
# that ``import hyperloom`` loads the core alone and no namespace's dependencies.
_NAMESPACES = (
    "adapters",
    "architectures",
    "causal",
    "continual",
    "data",
    "federated",
    "networks",
    "pareto",
    "rl",
    "uncertainty",
)

if _TYPE_CHECKING:  # pragma: no cover
    from . import adapters as adapters
    from . import architectures as architectures
    from . import causal as causal
    from . import continual as continual
    from . import data as data
    from . import federated as federated
    from . import networks as networks
    from . import pareto as pareto
    from . import rl as rl
    from . import uncertainty as uncertainty


def __getattr__(name: str) -> object:
    """A namespace (``hl.continual``, ``hl.rl``, ...), imported on first use."""
    if name in _NAMESPACES:
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'hyperloom' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The core's names and the namespaces; the core's implementation modules stay out."""
    names = [n for n, v in globals().items() if not n.startswith("_") and not _ismodule(v)]
    return sorted([*names, *_NAMESPACES, "__version__"])


def _ismodule(value: object) -> bool:
    return isinstance(value, type(_importlib))
