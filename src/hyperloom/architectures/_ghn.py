r"""Graph hypernetworks: weights for architectures never seen in training (criterion 4: dynamic).

A :class:`GraphHyperNetwork` (Zhang, Ren and Urtasun, 2019; Knyazev et al., 2021 and 2023)
reads the target's graph of operations (:func:`~hyperloom.architectures.trace_graph`), gives every
node an
embedding by message passing, and decodes each node's embedding into that node's parameters
with a shape-agnostic :class:`~hyperloom.TiledGenerator`. Nothing in it is sized by one target,
so one trained GHN predicts weights for any module whose operations it knows.

Message passing is a gated graph network run as GHN-2 runs it: nodes are updated in
topological order, each from the sum of messages of its already-updated predecessors
(:math:`h_v \leftarrow \mathrm{GRU}(\sum_{u \to v} \mathrm{MLP}(h_u), h_v)`), then in reverse
order from its successors, so that after one round every node has seen the whole graph. Nodes
at the same depth are updated together.

Example:
    >>> import hyperloom as hl
    >>> ghn = hl.architectures.GraphHyperNetwork(hidden=16, tile=(8, 8))
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    >>> weights = ghn(net)
    >>> hl.call(net, weights, torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, TypedDict

import torch
from torch import Tensor, nn

from ..generators.tiled import TiledGenerator
from ..hypernet import Criteria
from ..target import TargetSpec, select
from ._graph import FEATURES, ModuleGraph, trace_graph

_CACHE_SIZE = 256


class _Options(TypedDict):
    """The constructor options of a :class:`GraphHyperNetwork`."""

    hidden: int
    rounds: int
    tile: tuple[int, ...]
    decoder_hidden: tuple[int, ...]
    frequencies: int
    integrated: bool
    standardize: bool
    offsets: str
    max_width: dict[str, int] | None
    gain: float
    method: str


class GraphHyperNetwork(nn.Module):
    """Predict the parameters of any module from its graph of operations.

    Args:
        hidden: node embedding size.
        rounds: rounds of message passing (each a forward and a backward sweep).
        tile: tile size of the decoder (:class:`~hyperloom.TiledGenerator`).
        decoder_hidden: hidden sizes of the decoder's MLP.
        frequencies: sine/cosine pairs of the decoder's tile positions.
        integrated: average them over each tile's span (see
            :class:`~hyperloom.TiledGenerator`).
        standardize: weight-standardise every predicted matrix and convolution (see
            :class:`~hyperloom.TiledGenerator`); its learned gain starts at ``gain``.
        offsets: ``"absolute"`` or ``"relative"`` kernel offsets in the decoder's tile
            descriptions (see :class:`~hyperloom.TiledGenerator`).
        max_width: width-aware tiling, ``{op: width}`` for ops ``"conv"`` and ``"linear"``
            (``None``: off). A layer of that op with more outputs than ``width`` is predicted
            as a narrower layer of ``b = ceil(n / m)`` outputs, ``m = ceil(n / width)``, and
            its outputs are repeated cyclically to ``n`` (channel ``c`` is a copy of channel
            ``c mod b``); the layers after it read their inputs with the same period (a
            flattened ``(C, H, W)`` input as ``C`` blocks), and normalisation layers between
            them follow it. Weights read over repeated inputs are scaled by ``sqrt(b / n)`` so
            they keep the fan-in variance. The graph the GHN reads has the narrower shapes, so
            a net whose widths are multiples of in-range widths is predicted as that in-range
            net with its channels repeated; with batch normalisation after every layer the two
            compute the same classes. Set it to the widest layers of the training family; it
            acts at every call, training included.
        gain: the activation gain the predicted weights start at (``sqrt(2)`` for ReLU
            targets): the decoder's readouts are scaled so that, at initialisation, weights of
            fan-in ``d`` have variance ``gain^2 / d``.
        method: how targets are traced (see :func:`~hyperloom.architectures.trace_graph`).

    Calls:
        ``ghn(target)`` returns ``{name: tensor}`` for every floating-point parameter the
        target's forward uses, to be run with :func:`~hyperloom.call`; ``ghn.export(target)``
        returns a plain copy holding them.
    """

    def __init__(
        self,
        *,
        hidden: int = 64,
        rounds: int = 1,
        tile: Sequence[int] = (16, 16),
        decoder_hidden: Sequence[int] = (64,),
        frequencies: int = 6,
        integrated: bool = False,
        standardize: bool = False,
        offsets: str = "absolute",
        max_width: Mapping[str, int] | None = None,
        gain: float = 2**0.5,
        method: str = "auto",
    ) -> None:
        super().__init__()
        if hidden < 1 or rounds < 0:
            raise ValueError(f"hidden must be >= 1 and rounds >= 0, got {hidden} and {rounds}")
        if not gain > 0:
            raise ValueError(f"gain must be > 0, got {gain}")
        if method not in ("auto", "fx", "module-tree"):
            raise ValueError(f"method must be 'auto', 'fx' or 'module-tree', got {method!r}")
        widths = dict(max_width or {})
        bad = {k: v for k, v in widths.items() if k not in _TILED_OPS or int(v) < 1}
        if bad:
            raise ValueError(
                f"max_width maps ops {_TILED_OPS} to widths >= 1, got {bad} in {widths}"
            )
        self.options: _Options = {
            "hidden": int(hidden),
            "rounds": int(rounds),
            "tile": tuple(int(t) for t in tile),
            "decoder_hidden": tuple(int(h) for h in decoder_hidden),
            "frequencies": int(frequencies),
            "integrated": bool(integrated),
            "standardize": bool(standardize),
            "offsets": offsets,
            "max_width": {k: int(v) for k, v in sorted(widths.items())} or None,
            "gain": float(gain),
            "method": method,
        }
        self.embed = nn.Linear(FEATURES, hidden)
        self.message = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU()) for _ in range(2)
        )
        self.update = nn.ModuleList(nn.GRUCell(hidden, hidden) for _ in range(2))
        self.decoder = TiledGenerator(
            TargetSpec(()),  # no spec of its own: every call passes one
            hidden,
            tile=tile,
            hidden=decoder_hidden,
            frequencies=frequencies,
            integrated=integrated,
            standardize=standardize,
            offsets=offsets,
        )
        if standardize:
            with torch.no_grad():
                self.decoder.matrix_gain.fill_(math.log(gain))
        width = self.options["decoder_hidden"][-1]
        for readout, var in (
            (self.decoder.matrix_readout, gain**2),
            (self.decoder.vector_readout, 1.0),
        ):
            # the decoder's features are RMS-normalised (sum of squares = width), so this gives
            # readout outputs of variance var, which fan-in normalisation turns into var / fan_in
            nn.init.normal_(readout.weight, std=(var / width) ** 0.5)
            nn.init.zeros_(readout.bias)
        self._graphs: dict[tuple, tuple[nn.Module, ModuleGraph, TargetSpec]] = {}

    def graph(self, target: nn.Module) -> tuple[ModuleGraph, TargetSpec]:
        """The traced graph and the spec of the parameters :meth:`forward` predicts (cached)."""
        if not isinstance(target, nn.Module):
            raise TypeError(f"a GraphHyperNetwork takes an nn.Module, got {type(target).__name__}")
        key = (id(target), tuple((n, p.shape) for n, p in target.named_parameters()))
        hit = self._graphs.get(key)
        if hit is not None and hit[0] is target:  # the same module, parameters unchanged
            return hit[1], hit[2]
        graph = trace_graph(target, method=self.options["method"])
        owners = graph.params
        spec = select(target, lambda name, p: name in owners and p.dtype.is_floating_point)
        if len(self._graphs) >= _CACHE_SIZE:
            self._graphs.clear()
        self._graphs[key] = (target, graph, spec)
        return graph, spec

    def embed_nodes(self, graph: ModuleGraph) -> Tensor:
        """``(n_nodes, hidden)`` node embeddings after message passing."""
        ref = self.embed.weight
        h = self.embed(graph.features().to(ref))  # (n, hidden)
        n = len(graph)
        adj = torch.zeros(n, n, dtype=ref.dtype, device=ref.device)  # adj[dst, src] = 1
        if graph.edges:
            src, dst = zip(*graph.edges, strict=True)
            adj[list(dst), list(src)] = 1.0
        levels = [idx.to(ref.device) for idx in _levels(graph.depths())]
        for _ in range(self.options["rounds"]):
            for direction, order, a in ((0, levels, adj), (1, levels[::-1], adj.T)):
                for idx in order:
                    rows = a[idx]  # (k, n): who sends to these nodes
                    if not bool(rows.any()):
                        continue
                    m = rows @ self.message[direction](h)  # (k, hidden)
                    h = h.index_copy(0, idx, self.update[direction](m, h[idx]))
        return h

    def forward(self, target: nn.Module) -> dict[str, Tensor]:
        """Predicted parameters of ``target``: ``{name: tensor}`` for :func:`~hyperloom.call`."""
        graph, spec = self.graph(target)
        if not len(spec):
            return {}
        owners = graph.params
        widths = self.options["max_width"]
        if widths is None:
            h = self.embed_nodes(graph)
            return self.decoder({p.name: h[owners[p.name]] for p in spec}, spec=spec)
        narrow_graph, narrow_spec, periods = _narrow(graph, spec, widths)
        h = self.embed_nodes(narrow_graph)
        narrow = self.decoder({p.name: h[owners[p.name]] for p in narrow_spec}, spec=narrow_spec)
        out = {}
        for p in spec:
            w = narrow[p.name]
            rows, cols = periods[p.name]
            if rows < p.shape[0]:
                w = w.index_select(0, torch.arange(p.shape[0], device=w.device) % rows)
            if cols < (p.shape[1] if len(p.shape) > 1 else 1):
                w = w.index_select(1, torch.arange(p.shape[1], device=w.device) % cols)
                if p.init_const is None:
                    w = w * (cols / p.shape[1]) ** 0.5  # keep the fan-in variance
            out[p.name] = w
        return out

    @torch.no_grad()
    def export(self, target: nn.Module) -> nn.Module:
        """A plain copy of ``target`` holding the predicted parameters.

        Example:
            >>> ghn = GraphHyperNetwork(hidden=8, tile=(4, 4))
            >>> net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2))
            >>> x = torch.randn(3, 5)
            >>> from hyperloom import call
            >>> torch.allclose(ghn.export(net)(x), call(net, ghn(net), x))
            True
        """
        weights = self(target)
        plain = copy.deepcopy(target)
        for name, t in weights.items():
            plain.get_parameter(name).copy_(t)
        return plain

    def describe(self) -> Criteria:
        """The five design criteria: the input is the architecture, the outputs are dynamic."""
        return Criteria(
            inputs="architecture graph",
            outputs=self.decoder.strategy,
            input_variability="static",
            output_variability="dynamic",
            architecture=f"graph (gated GNN, {self.options['rounds']} round(s))",
        )

    def config(self) -> dict[str, Any]:
        """The constructor options, JSON-ready."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


_TILED_OPS = ("conv", "linear")


def _narrow(
    graph: ModuleGraph, spec: TargetSpec, widths: Mapping[str, int]
) -> tuple[ModuleGraph, TargetSpec, dict[str, tuple[int, int]]]:
    """Width-aware tiling (see :class:`GraphHyperNetwork`'s ``max_width``).

    Returns the graph and the spec with every tiled axis at its period, and for each parameter
    the periods ``(rows, columns)`` of its first two axes (equal to their sizes when untiled).
    """
    preds: dict[int, list[int]] = {}
    for src, dst in graph.edges:
        preds.setdefault(dst, []).append(src)
    # period[i]: (n, b) when node i outputs n channels that repeat with period b < n
    period: list[tuple[int, int] | None] = []
    in_period: list[tuple[int, int] | None] = []
    for i, node in enumerate(graph.nodes):
        incoming = {period[j] for j in preds.get(i, [])}
        inherited = next(iter(incoming)) if len(incoming) == 1 else None
        in_period.append(inherited)
        if node.op in _TILED_OPS and node.shape[0] > 0:
            n, limit = node.shape[0], widths.get(node.op)
            b = n if limit is None or n <= limit else -(-n // -(-n // limit))
            period.append((n, b) if b < n else None)
        elif node.op in ("input", "linear", "conv", "embedding", "recurrent", "attention"):
            period.append(None)  # a layer of another kind starts afresh
        else:
            period.append(inherited)  # activations, pooling, reshapes, normalisation

    periods: dict[str, tuple[int, int]] = {}
    nodes = list(graph.nodes)
    narrow_params = []
    owners = graph.params
    for p in spec:
        i = owners[p.name]
        rows = p.shape[0] if p.shape else 1
        cols = p.shape[1] if len(p.shape) > 1 else 1
        out = period[i] if graph.nodes[i].op in _TILED_OPS else in_period[i]
        if out is not None and p.shape and out[0] == rows:
            rows = out[1]
        feed = in_period[i]
        if len(p.shape) > 1 and graph.nodes[i].op in _TILED_OPS and feed is not None:
            c, b = feed
            k = p.shape[1] // c
            if k * c == p.shape[1] and (k == 1 or len(p.shape) == 2):  # channel-major flatten
                cols = b * k
        periods[p.name] = (rows, cols)
        shape = list(p.shape)
        if shape:
            shape[0] = rows
        if len(shape) > 1:
            shape[1] = cols
        narrow_params.append(replace(p, shape=tuple(shape)))
    # fan-ins follow the narrowed inputs: a weight's and the bias added to it
    ratio = {
        owners[p.name]: periods[p.name][1] / p.shape[1]
        for p in spec
        if len(p.shape) > 1 and graph.nodes[owners[p.name]].op in _TILED_OPS
    }
    narrow_params = [
        replace(q, fan_in=max(round(q.fan_in * ratio.get(owners[q.name], 1.0)), 1))
        for q in narrow_params
    ]
    for i, node in enumerate(nodes):
        out_n, in_n, kh, kw = node.shape
        feed = in_period[i]
        if node.op in _TILED_OPS and node.params:
            rows, cols = periods.get(node.params[0], (out_n, in_n))
            nodes[i] = replace(node, shape=(rows, cols, kh, kw))
        elif feed is not None and out_n == feed[0]:  # normalisation
            nodes[i] = replace(node, shape=(feed[1], in_n, kh, kw))
    narrow_graph = replace(graph, nodes=tuple(nodes))
    return narrow_graph, TargetSpec(tuple(narrow_params)), periods


def _levels(depths: list[int]) -> list[Tensor]:
    """Node indices grouped by depth, shallowest first."""
    by_depth: dict[int, list[int]] = {}
    for i, d in enumerate(depths):
        by_depth.setdefault(d, []).append(i)
    return [torch.tensor(by_depth[d]) for d in sorted(by_depth)]
