r"""Shape-agnostic generation: tiles conditioned on each tensor's role, position and shape.

Every other generator is built for one target: its heads or chunk tables are sized by the spec.
:class:`TiledGenerator` owns nothing of that size. It covers a tensor of shape
``(out, in, *kernel)`` with ``ceil(out / t_o) x ceil(in / t_i) x prod(kernel)`` tiles of
``t_o x t_i`` numbers (vectors: ``ceil(out / t_o)`` tiles of ``t_o``), generates every tile
from the conditioning vector plus a description of the tile, assembles the tiles and slices the
result to the tensor's shape, after GHN-3's slicing and tiling (Knyazev et al., 2023). A tile's
description holds

- the tensor's role (linear weight, convolution weight, bias, normalisation scale, shift),
- its shape (``log2`` of the output and input sizes, kernel size, fan-in) and its position
  among the spec's tensors (relative index, whether it is the first or last),
- the tile's place in the tensor: relative row and column ``(i + 1/2) / n`` with sine and
  cosine features of them (taken at the tile's centre, or with ``integrated=True`` averaged over
  its span), and its offset from the kernel's centre.

Positions are relative, so a layer twice as wide reads the same range of positions at twice the
resolution: there is no table of positions to run off the end of, and any shape can be asked
for, up to ``max_numel`` elements per tensor (a guard against generating by mistake a tensor
larger than memory allows).

**Fan-in normalisation.** The readout's output ``r`` is scaled per tensor to
:math:`\theta = r / \sqrt{d_{in}}` for weights and :math:`r / \sqrt{3 d_{in}}` for vectors
(PyTorch's default bias scale), so with unit-variance ``r`` a tensor of any shape starts at the
variance that keeps activations at scale (hyperfan-in with gain 1). Hyperfan initialisation
scales the readouts to the requested gain (``gain^2`` for weights). Tensors that the target
initialised to a constant are generated as that constant plus ``s r`` with a learned scalar ``s``
that starts at 0, so they start exactly at their constant.

The spec may be given at call time: ``gen(cond, spec=other_spec)`` generates weights for a
target the generator never saw, and ``gen(conds, spec=spec)`` with ``conds`` a dict
``{name: (*, cond_dim)}`` conditions each tensor on its own vector (how
:class:`~hyperloom.architectures.GraphHyperNetwork` feeds in node embeddings).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..target import ParamInfo, TargetSpec
from .base import Generator, finish
from .registry import register_generator
from .trunk import Activation, activation_module

ROLES = ("linear", "conv", "bias", "scale", "shift")
OFFSETS = ("absolute", "relative")
_CACHE_SIZE = 64


def tensor_role(p: ParamInfo) -> str:
    """The role a tiled generator reads for one tensor: one of :data:`ROLES`.

    ``scale`` and ``shift`` are constant-initialised vectors (normalisation layers; ``scale`` when
    the constant is non-zero); ``bias`` any other vector or scalar; ``linear`` 2-D weights;
    ``conv`` weights with kernel dimensions.
    """
    if len(p.shape) >= 3:
        return "conv"
    if len(p.shape) == 2:
        return "linear"
    if p.init_const is not None:
        return "scale" if p.init_const != 0 else "shift"
    return "bias"


def num_features(frequencies: int) -> int:
    """Size of a tile description with ``frequencies`` sine/cosine pairs per position."""
    return len(ROLES) + 8 + 2 * (1 + 2 * frequencies) + 2


def _positions(n: int, frequencies: int, integrated: bool = False) -> Tensor:
    """``(n, 1 + 2 frequencies)``: relative centre ``r = (i + 1/2) / n``, sin and cos of
    ``w r`` for ``w = 2^k pi``, ``k < frequencies``.

    ``integrated``: the sine and cosine are averaged over the tile's span ``[i / n, (i + 1) / n]``
    instead of taken at its centre (an integrated positional encoding, after Barron et al.'s
    Mip-NeRF), so a frequency finer than the grid of ``n`` tiles fades towards 0 instead of
    taking arbitrary aliased values that change with ``n``.
    """
    r = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    w = math.pi * (2.0 ** torch.arange(frequencies, dtype=torch.float64))
    if not integrated:
        angles = r[:, None] * w
        return torch.cat([r[:, None], angles.sin(), angles.cos()], dim=1)
    lo, hi = (r - 0.5 / n)[:, None] * w, (r + 0.5 / n)[:, None] * w
    span = w / n
    return torch.cat([r[:, None], (lo.cos() - hi.cos()) / span, (hi.sin() - lo.sin()) / span], 1)


@dataclass(frozen=True)
class _Group:
    """The tiles of one kind (matrices or vectors) for one spec."""

    features: Tensor  # (T, F) tile descriptions
    owner: Tensor  # (T,) index of the tensor each tile belongs to
    layout: tuple[tuple[int, int, int, int, int, int, int], ...]  # per tensor, see _plan


@dataclass(frozen=True)
class _Plan:
    matrices: _Group
    vectors: _Group
    scales: Tensor  # (n_tensors,) fan-in normalisation of each tensor
    constant: Tensor  # (n_tensors,) bool: initialised to a constant by the target


def _plan(
    spec: TargetSpec,
    tile: tuple[int, int],
    frequencies: int,
    integrated: bool = False,
    offsets: str = "absolute",
) -> _Plan:
    """Tile descriptions, owners and the assembly layout of every tensor of ``spec``."""
    n = len(spec)
    feats: dict[bool, list[Tensor]] = {True: [], False: []}
    owners: dict[bool, list[Tensor]] = {True: [], False: []}
    layouts: dict[bool, list[tuple[int, int, int, int, int, int, int]]] = {True: [], False: []}
    starts = {True: 0, False: 0}
    scales = []
    for t, p in enumerate(spec):
        role = tensor_role(p)
        matrix = role in ("linear", "conv")
        out = p.shape[0] if p.shape else 1
        inn = p.shape[1] if matrix else 1
        kh = p.shape[2] if role == "conv" else 1
        kw = math.prod(p.shape[3:]) if role == "conv" else 1  # 3-D kernels: (kd, kh * kw)
        tensor_feats = torch.tensor(
            [
                *(float(role == r) for r in ROLES),
                math.log2(out + 1) / 8,
                math.log2(inn + 1) / 8,
                kh / 7,
                kw / 7,
                math.log2(p.fan_in + 1) / 12,
                t / max(n - 1, 1),
                float(t == 0),
                float(t == n - 1),
            ],
            dtype=torch.float64,
        )
        f = _tile_features(
            tensor_feats,
            out,
            inn if matrix else None,
            kh,
            kw,
            tile,
            frequencies,
            integrated,
            offsets,
        )
        feats[matrix].append(f)
        owners[matrix].append(torch.full((f.shape[0],), t, dtype=torch.long))
        layouts[matrix].append((t, starts[matrix], f.shape[0], out, inn, kh, kw))
        starts[matrix] += f.shape[0]
        if p.init_const is not None:
            scales.append(1.0)
        elif matrix:
            scales.append(p.fan_in**-0.5)
        else:
            scales.append((3.0 * p.fan_in) ** -0.5)

    def group(matrix: bool) -> _Group:
        if not feats[matrix]:
            empty = torch.zeros(0, num_features(frequencies))
            return _Group(empty, torch.zeros(0, dtype=torch.long), ())
        return _Group(
            torch.cat(feats[matrix]).float(), torch.cat(owners[matrix]), tuple(layouts[matrix])
        )

    constant = torch.tensor([p.init_const is not None for p in spec], dtype=torch.bool)
    return _Plan(group(True), group(False), torch.tensor(scales), constant)


def _tile_features(
    tensor_feats: Tensor,
    out: int,
    inn: int | None,
    kh: int,
    kw: int,
    tile: tuple[int, int],
    frequencies: int,
    integrated: bool = False,
    offsets: str = "absolute",
) -> Tensor:
    """The descriptions of one tensor's tiles in (row, column, kh, kw) order, ``(count, F)``.

    ``inn`` is ``None`` for vectors, which have one column of tiles and no column position.
    ``offsets``: a kernel element's offset from the centre in elements over 3
    (``"absolute"``, ``(i - (k - 1) / 2) / 3``) or as a fraction of the kernel
    (``"relative"``, ``(i + 1/2) / k - 1/2``, always within ``(-1/2, 1/2)``); both give
    ``-1/3, 0, 1/3`` for a 3x3 kernel.
    """
    t_o, t_i = tile
    n_i = -(-out // t_o)
    rows = _positions(n_i, frequencies, integrated)  # (n_i, P)
    if inn is None:
        n_j, cols = 1, torch.zeros(1, rows.shape[1], dtype=torch.float64)
    else:
        n_j = -(-inn // t_i)
        cols = _positions(n_j, frequencies, integrated)  # (n_j, P)
    u, v = _offsets(kh, offsets), _offsets(kw, offsets)  # (kh,), (kw,) from the centre
    ii, jj, uu, vv = (
        g.flatten()
        for g in torch.meshgrid(
            torch.arange(n_i), torch.arange(n_j), torch.arange(kh), torch.arange(kw), indexing="ij"
        )
    )
    count = ii.numel()
    return torch.cat(
        [tensor_feats.expand(count, -1), rows[ii], cols[jj], u[uu, None], v[vv, None]], dim=1
    )


def _offsets(k: int, offsets: str) -> Tensor:
    """``(k,)`` offsets of a kernel's elements from its centre (see :func:`_tile_features`)."""
    i = torch.arange(k, dtype=torch.float64)
    if offsets == "relative":
        return (i + 0.5) / k - 0.5
    return (i - (k - 1) / 2) / 3


@register_generator("tiled")
class TiledGenerator(Generator):
    """Weights for any tensor shape from tiles (criterion 4: dynamic outputs).

    See the module docstring for the tiling, the tile descriptions and the fan-in normalisation.

    Args:
        spec: the target spec generated by default; an empty ``TargetSpec(())`` when every
            call passes its own ``spec=`` (a graph hypernetwork's decoder).
        cond_dim: conditioning size.
        tile: ``(t_o, t_i)``, rows and columns of one matrix tile; vector tiles have ``t_o``.
        hidden: hidden sizes of the MLP that reads ``[cond; tile description]``.
        activation: its activation.
        frequencies: sine/cosine pairs describing a tile's row and column position (``2^k pi r``
            for ``k < frequencies``): more tell neighbouring tiles of a large tensor apart.
        integrated: average each sine and cosine over the tile's span instead of taking it at
            the tile's centre, so that frequencies finer than a tensor's tile grid fade out
            rather than alias (a layer with 3 tiles per axis then reads features close to one
            with 2 or 4).
        standardize: give every output row (unit, or filter) of a generated matrix or
            convolution zero mean and unit variance over its fan-in before the fan-in
            normalisation, times one learned gain shared by all such tensors (starting at
            ``sqrt(2)``): weight standardisation (Qiao et al.) of the generated weights, so no
            predicted layer can shift or rescale its activations wholesale. Rows with a fan-in
            of 1 are left as generated.
        offsets: how a kernel element's offset from the kernel's centre is described:
            ``"absolute"`` (elements over 3: a 7x7 kernel's outer ring reads offsets that no
            3x3 or 5x5 kernel has) or ``"relative"`` (a fraction of the kernel's size,
            ``(i + 1/2) / k - 1/2``: every kernel size reads offsets within the same range,
            as rows and columns do). A 3x3 kernel reads the same offsets under both.
        max_numel: the largest tensor (in elements) a call may ask for.

    Example:
        >>> from hyperloom import select
        >>> gen = TiledGenerator(select(nn.Linear(30, 20)), 8, tile=(8, 8))
        >>> gen(torch.randn(8))["weight"].shape
        torch.Size([20, 30])
        >>> other = select(nn.Conv2d(3, 40, 5))  # never seen: weights at call time
        >>> gen(torch.randn(8), spec=other)["weight"].shape
        torch.Size([40, 3, 5, 5])
    """

    strategy = "tiled (shape-agnostic)"
    dynamic_output = True

    def __init__(
        self,
        spec: TargetSpec,
        cond_dim: int,
        *,
        tile: Sequence[int] = (16, 16),
        hidden: Sequence[int] = (64,),
        activation: Activation = "relu",
        frequencies: int = 6,
        integrated: bool = False,
        standardize: bool = False,
        offsets: str = "absolute",
        max_numel: int = 2**26,
    ) -> None:
        tile = tuple(int(t) for t in tile)
        if len(tile) != 2 or min(tile) < 1:
            raise ValueError(f"tile must be two sizes >= 1 (rows, columns), got {tile}")
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden must be one or more sizes >= 1, got {tuple(hidden)}")
        if frequencies < 0:
            raise ValueError(f"frequencies must be >= 0, got {frequencies}")
        if max_numel < 1:
            raise ValueError(f"max_numel must be >= 1, got {max_numel}")
        if offsets not in OFFSETS:
            raise ValueError(f"offsets must be one of {OFFSETS}, got {offsets!r}")
        super().__init__(
            spec,
            cond_dim,
            {
                "tile": tile,
                "hidden": tuple(int(h) for h in hidden),
                "activation": activation,
                "frequencies": int(frequencies),
                "integrated": bool(integrated),
                "standardize": bool(standardize),
                "offsets": offsets,
                "max_numel": int(max_numel),
            },
        )

    def _build(self) -> None:
        self._plans: dict[TargetSpec, _Plan] = {}
        o = self.options
        t_o, t_i = o["tile"]
        sizes = [self.cond_dim + num_features(o["frequencies"]), *o["hidden"]]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.act = activation_module(o["activation"])
        self.matrix_readout = nn.Linear(sizes[-1], t_o * t_i)
        self.vector_readout = nn.Linear(sizes[-1], t_o)
        self.const_scale = nn.Parameter(torch.zeros(()))
        if o["standardize"]:
            self.matrix_gain = nn.Parameter(torch.tensor(math.log(2.0) / 2))  # log sqrt(2)

    # Generation ------------------------------------------------------------------------------
    def forward(
        self, cond: Tensor | Mapping[str, Tensor], spec: TargetSpec | None = None
    ) -> dict[str, Tensor]:
        """Generate weights for the generator's spec or for ``spec``.

        Args:
            cond: ``(*, cond_dim)`` shared by every tensor, or ``{name: (*, cond_dim)}`` with one
                vector per tensor of the spec (all with the same leading dimensions).
            spec: the tensors to generate; defaults to the generator's own.

        Returns:
            ``{name: (*, *shape)}`` for every tensor of the spec.
        """
        if spec is None:
            spec = self.spec
        elif not isinstance(spec, TargetSpec):
            raise TypeError(f"spec must be a TargetSpec, got {type(spec).__name__}")
        if not len(spec):  # an empty spec (a decoder that is always given one): nothing to make
            return {}
        too_big = [p.name for p in spec if p.numel > self.options["max_numel"]]
        if too_big:
            raise ValueError(
                f"tensors {too_big} have more than max_numel={self.options['max_numel']:,} "
                "elements; raise max_numel to generate them"
            )
        per_tensor = self._stack_conditioning(cond, spec)  # (*, n_tensors, d)
        lead = per_tensor.shape[:-2]
        raw = self._tiles(per_tensor.reshape(-1, len(spec), self.cond_dim), spec)
        return finish(raw, spec, tuple(lead))

    def _generate(self, cond: Tensor) -> dict[str, Tensor]:
        spec = self.spec
        return self._tiles(cond[:, None].expand(-1, len(spec), -1), spec)

    def _stack_conditioning(self, cond: Tensor | Mapping[str, Tensor], spec: TargetSpec) -> Tensor:
        if isinstance(cond, Tensor):
            if cond.dim() == 0 or cond.shape[-1] != self.cond_dim:
                raise ValueError(
                    f"TiledGenerator expects conditioning of shape (*, {self.cond_dim}), "
                    f"got {tuple(cond.shape)}"
                )
            return cond.unsqueeze(-2).expand(*cond.shape[:-1], len(spec), self.cond_dim)
        if not isinstance(cond, Mapping):
            raise TypeError(
                f"cond must be a tensor or a dict of tensors, got {type(cond).__name__}"
            )
        missing = [n for n in spec.names if n not in cond]
        unexpected = sorted(set(cond) - set(spec.names))
        if missing or unexpected:
            raise ValueError(
                f"per-tensor conditioning must name the spec's tensors; missing {missing}, "
                f"unexpected {unexpected}"
            )
        shapes = {tuple(cond[n].shape) for n in spec.names}
        if len(shapes) != 1 or next(iter(shapes))[-1:] != (self.cond_dim,):
            raise ValueError(
                f"per-tensor conditioning needs one shape (*, {self.cond_dim}) for every "
                f"tensor, got {sorted(shapes)}"
            )
        return torch.stack([cond[n] for n in spec.names], dim=-2)

    def _tiles(self, cond: Tensor, spec: TargetSpec) -> dict[str, Tensor]:
        """``(M, n_tensors, cond_dim)`` -> ``{name: (M, *shape)}`` before constant offsets."""
        plan = self._plan_for(spec)
        first = cast(nn.Linear, self.layers[0])
        d = self.cond_dim
        from_cond = F.linear(cond, first.weight[:, :d])  # (M, n_tensors, h)
        scales = plan.scales.to(cond)
        scales = torch.where(plan.constant.to(cond.device), self.const_scale.to(cond), scales)
        out: dict[str, Tensor] = {}
        m = cond.shape[0]
        t_o, t_i = self.options["tile"]
        gain = self.matrix_gain.exp() if self.options["standardize"] else None
        for group, readout in (
            (plan.matrices, self.matrix_readout),
            (plan.vectors, self.vector_readout),
        ):
            if not group.layout:
                continue
            feats = group.features.to(cond)
            owner = group.owner.to(cond.device)
            x = from_cond[:, owner] + F.linear(feats, first.weight[:, d:], first.bias)  # (M, T, h)
            x = self.act(x)
            for layer in self.layers[1:]:
                x = self.act(layer(x))
            x = F.rms_norm(x, (x.shape[-1],))
            tiles = readout(x)  # (M, T, t_o * t_i) or (M, T, t_o)
            for t, start, count, rows, cols, kh, kw in group.layout:
                p = spec.params[t]
                block = tiles[:, start : start + count]
                n_i = -(-rows // t_o)
                if readout is self.matrix_readout:
                    n_j = -(-cols // t_i)
                    block = block.view(m, n_i, n_j, kh, kw, t_o, t_i)
                    block = block.permute(0, 1, 5, 2, 6, 3, 4)  # (M, n_i, t_o, n_j, t_i, kh, kw)
                    block = block.reshape(m, n_i * t_o, n_j * t_i, kh, kw)[:, :rows, :cols]
                    if gain is not None and cols * kh * kw > 1:
                        flat = block.reshape(m, rows, -1)
                        mean = flat.mean(-1, keepdim=True)
                        var = flat.var(-1, unbiased=False, keepdim=True)
                        flat = (flat - mean) * torch.rsqrt(var + 1e-8) * gain
                        block = flat.reshape(block.shape)
                else:
                    block = block.reshape(m, n_i * t_o)[:, :rows]
                out[p.name] = (block * scales[t]).reshape(m, *p.shape)
        return out

    def _plan_for(self, spec: TargetSpec) -> _Plan:
        plan = self._plans.get(spec)
        if plan is None:
            if len(self._plans) >= _CACHE_SIZE:
                self._plans.clear()
            o = self.options
            plan = self._plans[spec] = _plan(
                spec, o["tile"], o["frequencies"], o["integrated"], o["offsets"]
            )
        return plan

    def num_tiles(self, spec: TargetSpec | None = None) -> int:
        """How many tiles one weight set of ``spec`` (default: the generator's own) takes."""
        plan = self._plan_for(spec if spec is not None else self.spec)
        return plan.matrices.owner.numel() + plan.vectors.owner.numel()

    def _readouts(self, variance: dict[str, float]) -> list[tuple[nn.Linear, Tensor]]:
        # The readouts are shared by every tensor; fan-in normalisation has already given each
        # tensor gain-1 hyperfan-in variance for unit-variance tiles, so a readout aims at the
        # mean ratio of the requested variance to that one (exact for hyperfan-in: gain^2 for
        # weights, 1 for biases).
        spec = self.spec
        plan = self._plan_for(spec)
        t_o, t_i = self.options["tile"]
        ratios: dict[bool, list[float]] = {True: [], False: []}
        for p, s in zip(spec, plan.scales.tolist(), strict=True):
            if p.init_const is None:
                ratios[tensor_role(p) in ("linear", "conv")].append(variance[p.name] / s**2)
        mean = {k: (sum(v) / len(v) if v else 1.0) for k, v in ratios.items()}
        pairs = [
            (self.matrix_readout, torch.full((t_o * t_i,), mean[True]), plan.matrices),
            (self.vector_readout, torch.full((t_o,), mean[False]), plan.vectors),
        ]
        return [(lin, var) for lin, var, group in pairs if group.layout]  # readouts the spec uses

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        bound = (
            f"{len(self.spec)} tensors, {self.spec.numel:,} weights" if self.spec else "any spec"
        )
        return f"{opts}, {bound}"
