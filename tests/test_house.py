"""The package's layout: a flat core, namespaces above it, every import arrow pointing down.

Layers, bottom to top (a module imports only from its own layer or below):

0. the core (selection, calls, conditioners, generators, init, ``HyperNetwork``, checkpoints)
   and two leaves beside it that import nothing of hyperloom's: ``data`` and ``networks``;
1. the namespaces: one application or architecture family each, built on layer 0 alone (no
   namespace imports another);
2. ``recipes`` (the recorded experiments and their plumbing);
3. the command line.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import hyperloom as hl

PACKAGE = Path(hl.__file__).parent
NAMESPACES = (
    "adapters",
    "architectures",
    "causal",
    "continual",
    "federated",
    "pareto",
    "rl",
    "uncertainty",
)
LEAVES = ("data", "networks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULE_NAMES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """The hyperloom modules ``path`` imports anywhere (top level or inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hyperloom")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("hyperloom"):
                continue
            for alias in node.names:  # ``from . import x`` names a module
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in MODULE_NAMES else module)
    found.discard(name)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: imports(path) for name, path in MODULES.items()}


def layer(name: str) -> tuple[int, str]:
    """``(layer, room)`` of a module."""
    parts = name.split(".")
    room = parts[1] if len(parts) > 1 else ""
    if room in ("cli", "__main__"):
        return 3, room
    if room == "recipes":
        return 2, room
    if room in NAMESPACES:
        return 1, room
    if room in LEAVES:
        return 0, room
    return 0, "core"


def test_every_arrow_points_down():
    upward = []
    for name, targets in GRAPH.items():
        if name == "hyperloom":  # the root imports the core, and namespaces lazily by name
            continue
        here, room = layer(name)
        for target in targets:
            there, other = layer(target)
            if target == "hyperloom" and name != "hyperloom":
                upward.append(f"{name} -> hyperloom (the root)")
            elif there > here or (there == here == 1 and other != room):
                upward.append(f"{name} -> {target}")
            elif room in LEAVES and other != room:
                upward.append(f"{name} -> {target} (a leaf imports nothing of hyperloom)")
    assert upward == []


def test_no_import_cycle():
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt not in GRAPH:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_graph_sees_known_arrows():
    """Guard against a parser that finds nothing: a few arrows that must be there."""
    assert "hyperloom.functional" in GRAPH["hyperloom.hypernet"]
    assert "hyperloom.checkpoint" in GRAPH["hyperloom.recipes.runs"]
    assert "hyperloom.recipes.config" in GRAPH["hyperloom.cli"]
    assert any(t.startswith("hyperloom.hypernet") for t in GRAPH["hyperloom.uncertainty._methods"])


BLOCKED = """
import importlib.abc, sys
BLOCK = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[:2] and ".".join(name.split(".")[:2]) in BLOCK:
            raise ImportError(f"blocked: {{name}}")
sys.meta_path.insert(0, Block())
import torch, hyperloom as hl
from torch import nn
gen = hl.FlatGenerator.factory(hidden=(8,))
hnet = hl.HyperNetwork(nn.Linear(3, 2), hl.TaskEmbedding(2, 4), gen)
y = hnet(torch.randn(5, 3), task=1)
import tempfile, os
path = os.path.join(tempfile.mkdtemp(), "h.safetensors")
hl.save(hnet, path)
back = hl.load(path, target=nn.Linear(3, 2))
print(tuple(y.shape), tuple(back(torch.randn(5, 3), task=1).shape))
"""


def test_the_core_runs_with_every_namespace_blocked():
    blocked = [f"hyperloom.{n}" for n in (*NAMESPACES, "recipes", "cli")]
    code = BLOCKED.format(blocked=blocked)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(5,", "2)", "(5,", "2)"]


CORE = {
    "Filter", "to_predicate", "ParamInfo", "TargetSpec", "select",
    "call", "call_batched", "check_weights", "rnn_forward",
    "Conditioner", "Concat", "Noise", "SampleEncoder", "TaskEmbedding",
    "Generator", "MLPTrunk", "FlatGenerator", "HeadsGenerator", "ChunkedGenerator",
    "ComponentGenerator", "LowRankGenerator", "AttentionGenerator", "ConvGenerator",
    "TiledGenerator", "build_generator", "get_generator", "list_generators",
    "register_generator", "hyperfan_in_", "hyperfan_out_", "target_variance",
    "pretrained_init_", "Criteria", "HyperNetwork", "save", "load", "resume",
}  # fmt: skip


def test_dir_is_the_core_and_the_namespaces():
    public = {n for n in dir(hl) if not n.startswith("_")}
    assert public == CORE | set(NAMESPACES) | set(LEAVES)


@pytest.mark.parametrize("namespace", [*NAMESPACES, *LEAVES])
def test_namespaces_load_on_first_use_and_export_only_public_names(namespace):
    module = getattr(hl, namespace)
    assert module.__name__ == f"hyperloom.{namespace}"
    names = [n for n in vars(module) if not n.startswith("_")]
    assert names, namespace
    private = [
        n for n in names if getattr(getattr(module, n), "__name__", "").startswith("hyperloom.")
    ]
    assert set(private) <= {"datasets", "scenarios", "idx"}, private  # data keeps its modules


def test_import_hyperloom_loads_no_namespace():
    code = (
        "import sys, hyperloom; print(sorted(m for m in sys.modules if m.startswith('hyperloom.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = eval(out.stdout)
    rooms = {m.split(".")[1] for m in loaded}
    assert rooms.isdisjoint({*NAMESPACES, *LEAVES, "recipes", "cli"}), rooms
