"""Hypernetwork architectures that are whole models: HyperLSTM and graph hypernetworks.

- :class:`HyperLSTM` (Ha et al. 2017): an LSTM whose weights a small LSTM rescales at every step;
- :func:`trace_graph` and :class:`ModuleGraph`: any module as a graph of operations;
- :class:`GraphHyperNetwork` (Zhang et al. 2019; Knyazev et al. 2021): weights for
  architectures never seen in training, read from that graph.

Each builds on the core (:mod:`hyperloom`) and on nothing else in the package.
"""

from ._ghn import GraphHyperNetwork as GraphHyperNetwork
from ._graph import FEATURES as FEATURES
from ._graph import OPS as OPS
from ._graph import GraphNode as GraphNode
from ._graph import ModuleGraph as ModuleGraph
from ._graph import trace_graph as trace_graph
from ._hyperlstm import HyperLSTM as HyperLSTM
