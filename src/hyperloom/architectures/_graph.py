"""Targets as graphs of operations: what a graph hypernetwork reads (criterion 5: graph).

:func:`trace_graph` turns an unmodified module into a :class:`ModuleGraph`: one node per
operation (the input, each call of a layer, each function such as ``+`` or ``flatten``, the
output), an edge wherever one operation's result feeds another, and for each node the names of
the parameters it owns. It traces with ``torch.fx`` (standard layers stay whole; custom modules
are traced through), which sees residual connections and branches. Modules that ``torch.fx``
cannot trace (data-dependent control flow, say) fall back to the module tree: the leaf modules
that own parameters or are standard layers, in registration order, chained input to output.
The fallback cannot see branches or skips, and says so in :attr:`ModuleGraph.method`.

Node features (:meth:`ModuleGraph.features`) encode the operation type (one-hot over
:data:`OPS`), the shape of the node's main weight (``log2`` of the output and input sizes and
the kernel size), its stride and its relative depth in the graph.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

OPS = (
    "input",
    "output",
    "linear",
    "conv",
    "batchnorm",
    "norm",
    "embedding",
    "recurrent",
    "attention",
    "relu",
    "activation",
    "maxpool",
    "avgpool",
    "dropout",
    "reshape",
    "add",
    "mul",
    "cat",
    "parameter",
    "module",
    "function",
)
FEATURES = len(OPS) + 6

_MODULE_OPS: tuple[tuple[type[nn.Module] | tuple[type[nn.Module], ...], str], ...] = (
    (nn.Linear, "linear"),
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d), "conv"),
    ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), "batchnorm"),
    ((nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.RMSNorm), "norm"),
    (nn.Embedding, "embedding"),
    ((nn.RNNBase, nn.RNNCellBase), "recurrent"),
    (nn.MultiheadAttention, "attention"),
    (nn.ReLU, "relu"),
    ((nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.LeakyReLU, nn.Softmax), "activation"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d), "maxpool"),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d), "avgpool"),
    ((nn.Dropout, nn.Dropout2d), "dropout"),
    ((nn.Flatten, nn.Unflatten, nn.Identity), "reshape"),
)
_FUNCTION_OPS = {
    operator.add: "add",
    operator.iadd: "add",
    torch.add: "add",
    operator.mul: "mul",
    torch.mul: "mul",
    torch.cat: "cat",
    torch.relu: "relu",
    torch.nn.functional.relu: "relu",
    torch.flatten: "reshape",
    torch.nn.functional.max_pool2d: "maxpool",
    torch.nn.functional.avg_pool2d: "avgpool",
    torch.nn.functional.adaptive_avg_pool2d: "avgpool",
}
_METHOD_OPS = {
    "add": "add",
    "add_": "add",
    "mul": "mul",
    "relu": "relu",
    "view": "reshape",
    "reshape": "reshape",
    "flatten": "reshape",
    "permute": "reshape",
    "transpose": "reshape",
    "contiguous": "reshape",
}


@dataclass(frozen=True)
class GraphNode:
    """One operation of a traced target.

    Attributes:
        name: a readable name (the module path for layers, the fx node name otherwise).
        op: the operation type, one of :data:`OPS`.
        params: full names (as in ``named_parameters()``) of the parameters this node owns;
            a parameter used by several nodes belongs to the first.
        shape: ``(out, in, kh, kw)`` of the node's main weight (zeros when it has none).
        stride: the layer's stride (1 when it has none).
    """

    name: str
    op: str
    params: tuple[str, ...] = ()
    shape: tuple[int, int, int, int] = (0, 0, 0, 0)
    stride: int = 1


@dataclass(frozen=True)
class ModuleGraph:
    """A target as a directed acyclic graph of operations, nodes in topological order.

    Attributes:
        nodes: the operations; ``nodes[0]`` is the input, the last one the output.
        edges: ``(src, dst)`` pairs of node indices, ``src < dst``.
        method: ``"fx"`` (traced) or ``"module-tree"`` (the fallback chain).
    """

    nodes: tuple[GraphNode, ...]
    edges: tuple[tuple[int, int], ...]
    method: str

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def params(self) -> dict[str, int]:
        """``{parameter name: index of the node that owns it}``."""
        return {p: i for i, node in enumerate(self.nodes) for p in node.params}

    def depths(self) -> list[int]:
        """Longest-path distance of every node from the input."""
        depth = [0] * len(self.nodes)
        for src, dst in sorted(self.edges, key=lambda e: e[1]):
            depth[dst] = max(depth[dst], depth[src] + 1)
        return depth

    def features(self) -> Tensor:
        """``(n_nodes, FEATURES)`` node features: op one-hot, weight shape, stride, depth."""
        depth = self.depths()
        top = max(max(depth), 1)
        rows = []
        for node, d in zip(self.nodes, depth, strict=True):
            out, inn, kh, kw = node.shape
            rows.append(
                [
                    *(float(node.op == op) for op in OPS),
                    math.log2(out + 1) / 8,
                    math.log2(inn + 1) / 8,
                    kh / 7,
                    kw / 7,
                    (node.stride - 1) / 2,
                    d / top,
                ]
            )
        return torch.tensor(rows)

    def __str__(self) -> str:
        preds: dict[int, list[int]] = {}
        for src, dst in self.edges:
            preds.setdefault(dst, []).append(src)
        lines = [f"ModuleGraph ({self.method}, {len(self.nodes)} nodes, {len(self.edges)} edges)"]
        for i, node in enumerate(self.nodes):
            sources = ",".join(map(str, preds.get(i, []))) or "-"
            owned = f"  [{', '.join(node.params)}]" if node.params else ""
            lines.append(f"{i:>3}  {node.op:<10} {node.name:<24} <- {sources}{owned}")
        return "\n".join(lines)


def trace_graph(module: nn.Module, *, method: str = "auto") -> ModuleGraph:
    """The graph of operations of ``module``; the module is not touched.

    Args:
        module: any ``nn.Module``.
        method: ``"fx"`` (raise when tracing fails), ``"module-tree"`` (the fallback chain) or
            ``"auto"`` (fx, falling back to the module tree when tracing fails).

    Returns:
        A :class:`ModuleGraph` whose nodes own every parameter of ``module`` that its forward
        uses (parameters it never uses are owned by no node).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> g = trace_graph(net)
        >>> [n.op for n in g.nodes], g.method
        (['input', 'linear', 'relu', 'linear', 'output'], 'fx')
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"trace_graph() takes an nn.Module, got {type(module).__name__}")
    if method not in ("auto", "fx", "module-tree"):
        raise ValueError(f"method must be 'auto', 'fx' or 'module-tree', got {method!r}")
    if method in ("auto", "fx"):
        try:
            return _trace_fx(module)
        except Exception as err:  # torch.fx raises many kinds (TraceError, TypeError, ...)
            if method == "fx":
                raise ValueError(
                    f"torch.fx cannot trace {type(module).__name__}: {err}; use "
                    "method='module-tree' (or 'auto') for the module-tree fallback"
                ) from err
    return _module_tree(module)


def _trace_fx(module: nn.Module) -> ModuleGraph:
    from torch import fx

    gm = fx.symbolic_trace(module)
    param_names = {id(p): n for n, p in module.named_parameters()}
    owned: set[str] = set()
    nodes: list[GraphNode] = []
    index: dict[fx.Node, int] = {}
    edges: list[tuple[int, int]] = []
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    nodes.append(GraphNode("input", "input"))
    for n in inputs:
        index[n] = 0
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            continue
        if n.op == "call_module":
            sub = module.get_submodule(str(n.target))
            node = _module_node(str(n.target), sub, param_names, owned)
        elif n.op == "get_attr":
            names = []
            try:
                attr = module.get_parameter(str(n.target))
            except AttributeError:
                attr = None
            if attr is not None and param_names.get(id(attr)) not in owned:
                names.append(param_names[id(attr)])
                owned.add(param_names[id(attr)])
            shape = _shape4(attr) if attr is not None else (0, 0, 0, 0)
            node = GraphNode(str(n.target), "parameter", tuple(names), shape)
        elif n.op == "call_function":
            node = GraphNode(n.name, _FUNCTION_OPS.get(n.target, "function"))
        elif n.op == "call_method":
            node = GraphNode(n.name, _METHOD_OPS.get(str(n.target), "function"))
        else:  # output
            node = GraphNode("output", "output")
        index[n] = len(nodes)
        nodes.append(node)
        for src in n.all_input_nodes:
            edges.append((index[src], index[n]))
    return ModuleGraph(tuple(nodes), tuple(sorted(set(edges))), "fx")


def _module_tree(module: nn.Module) -> ModuleGraph:
    param_names = {id(p): n for n, p in module.named_parameters()}
    owned: set[str] = set()
    nodes = [GraphNode("input", "input")]
    for name, sub in module.named_modules():
        leaf = not any(True for _ in sub.children())
        has_own = any(True for _ in sub.parameters(recurse=False))
        if (leaf and name) or has_own:
            node = _module_node(name or type(module).__name__, sub, param_names, owned)
            if node.params or leaf:
                nodes.append(node)
    nodes.append(GraphNode("output", "output"))
    edges = tuple((i, i + 1) for i in range(len(nodes) - 1))
    return ModuleGraph(tuple(nodes), edges, "module-tree")


def _module_node(
    name: str, sub: nn.Module, param_names: dict[int, str], owned: set[str]
) -> GraphNode:
    op = "module"
    for types, label in _MODULE_OPS:
        if isinstance(sub, types):
            op = label
            break
    names = []
    for p in sub.parameters():
        full = param_names.get(id(p))
        if full is not None and full not in owned:
            names.append(full)
            owned.add(full)
    weight = getattr(sub, "weight", None)
    shape = _shape4(weight) if isinstance(weight, Tensor) else (0, 0, 0, 0)
    stride = getattr(sub, "stride", 1)
    stride = int(stride[0] if isinstance(stride, Sequence) else stride or 1)
    return GraphNode(name, op, tuple(names), shape, stride)


def _shape4(t: Tensor) -> tuple[int, int, int, int]:
    s = tuple(t.shape)
    out = s[0] if s else 1
    inn = s[1] if len(s) > 1 else 0
    kh = s[2] if len(s) > 2 else 0
    kw = math.prod(s[3:]) if len(s) > 3 else 0
    return (out, inn, kh, kw)
