"""Target selection: which parameters of an unmodified module a hypernetwork generates.

:func:`select` reads a module once and returns a frozen :class:`TargetSpec`: for every selected
parameter its name (as in ``named_parameters()``), shape, dtype, fan-in, fan-out and, when the
module initialised it to a constant (LayerNorm and BatchNorm scales, say), that constant. Tied
parameters appear once, under their first name; buffers are never selected. The module is not
touched.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .filters import Filter, describe_filter, to_predicate


@dataclass(frozen=True)
class ParamInfo:
    """What a generator needs to know about one target tensor.

    Attributes:
        name: the parameter's name in ``named_parameters()``.
        shape: its shape.
        dtype: its dtype.
        fan_in: inputs feeding one output unit (``in_features * kernel`` for weights; for a
            bias, the fan-in of the weight it is added to; 1 for element-wise tensors).
        fan_out: outputs fed by one input unit, likewise.
        init_const: the value the target initialised every element to, when it did (1.0 for
            LayerNorm scales, 0.0 for their shifts); ``None`` for randomly initialised tensors.
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    fan_in: int
    fan_out: int
    init_const: float | None = None

    @property
    def numel(self) -> int:
        """Number of elements."""
        n = 1
        for s in self.shape:
            n *= s
        return n

    def to_dict(self) -> dict:
        """JSON-ready form (see :meth:`TargetSpec.to_dict`)."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": str(self.dtype).removeprefix("torch."),
            "fan_in": self.fan_in,
            "fan_out": self.fan_out,
            "init_const": self.init_const,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> ParamInfo:
        """Inverse of :meth:`to_dict`."""
        dtype = getattr(torch, str(d["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {d['dtype']!r} for parameter {d['name']!r}")
        return cls(
            name=str(d["name"]),
            shape=tuple(int(s) for s in d["shape"]),
            dtype=dtype,
            fan_in=int(d["fan_in"]),
            fan_out=int(d["fan_out"]),
            init_const=None if d.get("init_const") is None else float(d["init_const"]),
        )


@dataclass(frozen=True)
class TargetSpec:
    """The frozen, printable description of the generated part of a target.

    Behaves like a read-only ordered mapping ``name -> ParamInfo``.

    Example:
        >>> spec = select(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
        >>> spec.names
        ('0.weight', '0.bias', '2.weight', '2.bias')
        >>> spec.numel
        23
    """

    params: tuple[ParamInfo, ...]

    def __post_init__(self) -> None:
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"a TargetSpec names each parameter once; repeated: {dup}")

    @property
    def names(self) -> tuple[str, ...]:
        """Parameter names in selection order."""
        return tuple(p.name for p in self.params)

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """Parameter shapes in selection order."""
        return tuple(p.shape for p in self.params)

    @property
    def numel(self) -> int:
        """Total number of generated elements."""
        return sum(p.numel for p in self.params)

    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self) -> Iterator[ParamInfo]:
        return iter(self.params)

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self.params)

    def __getitem__(self, name: str) -> ParamInfo:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"{name!r} is not in the spec; it has {list(self.names)}")

    def __str__(self) -> str:
        rows = [("name", "shape", "dtype", "fan_in", "fan_out", "numel")]
        for p in self.params:
            rows.append(
                (
                    p.name,
                    "x".join(map(str, p.shape)) or "scalar",
                    str(p.dtype).removeprefix("torch."),
                    str(p.fan_in),
                    str(p.fan_out),
                    f"{p.numel:,}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.append(f"{len(self.params)} tensors, {self.numel:,} elements")
        return "\n".join(lines)

    def check(self, weights: Mapping[str, Tensor], *, batch_dims: int = 0) -> None:
        """Check that ``weights`` names exactly this spec's tensors with their shapes.

        Args:
            weights: ``name -> tensor``.
            batch_dims: number of leading dimensions each tensor has before its own shape.

        Raises:
            ValueError: listing missing names, unexpected names and wrong shapes together.
        """
        problems = []
        missing = [n for n in self.names if n not in weights]
        unexpected = [n for n in weights if n not in self]
        if missing:
            problems.append(f"missing: {missing}")
        if unexpected:
            problems.append(f"unexpected: {unexpected}{_suggest(unexpected, self.names)}")
        lead = None
        for p in self.params:
            if p.name not in weights:
                continue
            t = weights[p.name]
            got = tuple(t.shape)
            if len(got) != batch_dims + len(p.shape) or got[batch_dims:] != p.shape:
                problems.append(
                    f"{p.name}: shape {got}, expected {batch_dims} batch dims then {p.shape}"
                )
            elif lead is None:
                lead = got[:batch_dims]
            elif got[:batch_dims] != lead:
                problems.append(f"{p.name}: batch dims {got[:batch_dims]}, others have {lead}")
        if problems:
            raise ValueError("weights do not match the target spec: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """JSON-ready form, for checkpoints."""
        return {"params": [p.to_dict() for p in self.params]}

    @classmethod
    def from_dict(cls, d: Mapping) -> TargetSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(ParamInfo.from_dict(p) for p in d["params"]))


def _suggest(names: list[str], valid: tuple[str, ...] | list[str]) -> str:
    hints = []
    for n in names:
        close = difflib.get_close_matches(n, list(valid), n=1)
        if close:
            hints.append(f"{n!r} -> did you mean {close[0]!r}?")
    return f" ({'; '.join(hints)})" if hints else ""


def _fans(local: str, tensor: Tensor, owner: nn.Module) -> tuple[int, int]:
    if tensor.dim() >= 2:
        receptive = 1
        for s in tensor.shape[2:]:
            receptive *= s
        return tensor.shape[1] * receptive, tensor.shape[0] * receptive
    # A vector is added to (or scales) the output of a sibling weight with as many rows:
    # the bias of Linear/Conv/LSTM/MultiheadAttention. Otherwise it acts element-wise.
    siblings = dict(owner.named_parameters(recurse=False))
    candidates = [local.replace("bias", "weight"), "weight"]
    candidates += [n for n, t in siblings.items() if t.dim() >= 2]
    for n in candidates:
        w = siblings.get(n)
        if w is not None and w.dim() >= 2 and w.shape[0] == tensor.numel():
            return _fans(n, w, owner)
    return 1, 1


def _constant(tensor: Tensor) -> float | None:
    if tensor.numel() < 2:
        return None
    flat = tensor.detach().reshape(-1)
    if bool((flat == flat[0]).all()):
        return float(flat[0])
    return None


def select(module: nn.Module, *filters: Filter) -> TargetSpec:
    """Select the parameters of ``module`` that a hypernetwork will generate.

    Args:
        module: any ``nn.Module``; it is only read.
        *filters: module types, globs over parameter names, predicates ``(name, tensor) -> bool``
            or tuples of these; a parameter is selected when any filter selects it. No filter
            selects every parameter.

    Returns:
        The frozen :class:`TargetSpec`, in ``named_parameters()`` order. Tied parameters appear
        once, under their first name; buffers are never selected.

    Raises:
        ValueError: when the filters select nothing (the message lists the parameter names).

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 4), nn.LayerNorm(4), nn.Linear(4, 2))
        >>> select(net, nn.Linear).names
        ('0.weight', '0.bias', '2.weight', '2.bias')
        >>> select(net, "*.weight").names
        ('0.weight', '1.weight', '2.weight')
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"select() takes an nn.Module, got {type(module).__name__}")
    predicate = to_predicate(filters) if filters else None
    seen: set[int] = set()
    infos = []
    all_names = []
    for mod_name, owner in module.named_modules():
        for local, tensor in owner.named_parameters(recurse=False):
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            name = f"{mod_name}.{local}" if mod_name else local
            all_names.append(name)
            if predicate is not None and not predicate(name, tensor, owner):
                continue
            fan_in, fan_out = _fans(local, tensor, owner)
            infos.append(
                ParamInfo(
                    name=name,
                    shape=tuple(tensor.shape),
                    dtype=tensor.dtype,
                    fan_in=fan_in,
                    fan_out=fan_out,
                    init_const=_constant(tensor),
                )
            )
    if not infos:
        what = ", ".join(describe_filter(f) for f in filters) if filters else "(no filter)"
        raise ValueError(
            f"filters {what} select no parameter of {type(module).__name__}; "
            f"its parameters are {all_names[:20]}{' ...' if len(all_names) > 20 else ''}"
        )
    return TargetSpec(tuple(infos))
