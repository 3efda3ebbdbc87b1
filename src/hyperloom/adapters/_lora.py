"""LoRA factors of a frozen model's linear layers as the tensors a hypernetwork generates."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..filters import Filter
from ..target import TargetSpec, select

# One lock for every call that hooks a model: two threads running one model would otherwise add
# each other's adapters. Module-level, so a LoRATarget stays deep-copyable and picklable.
_HOOK_LOCK = threading.RLock()


class _Factors(nn.Module):
    """The LoRA factors of one linear layer: ``A`` ``(r, in)`` and ``B`` ``(out, r)``.

    ``A`` starts as PEFT's default (Kaiming-uniform), ``B`` at zero, so a fresh adapter changes
    nothing; :func:`hyperloom.select` records ``B``'s constant, and hyperfan initialisation of a
    generator then starts the generated ``B`` at exactly zero too.
    """

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))


class LoRATarget(nn.Module):
    """The LoRA adapters of a frozen model's linear layers, as an ordinary target module.

    Each selected ``nn.Linear`` ``y = W x + b`` becomes ``y = W x + b + (alpha / r) B A x``
    while this module runs; ``W`` and ``b`` are never written. The factors are this module's
    parameters, named ``factors.<i>.A`` ``(r, in)`` and ``factors.<i>.B`` ``(out, r)`` for the
    ``i``-th adapted layer (:attr:`layers` gives its name in the model), so everything in the
    core applies to them: ``hl.select(lora)`` is the spec a generator is built from,
    ``hl.call(lora, factors, **inputs)`` runs the model with one generated adapter, and
    ``hl.HyperNetwork(lora, ...)`` generates them. :func:`call_per_row` runs one adapter per
    batch row. The model is held, not registered: it is frozen here (``requires_grad=False``),
    is not part of this module's parameters or ``state_dict``, and stays on its own device.

    The adapter is added by forward hooks that exist only during a call (``try/finally``), so
    the model is the same object, with bit-identical weights, before, after and between calls,
    also when a call raises.

    Args:
        model: any module, typically a Hugging Face ``transformers`` model.
        *filters: which linear layers to adapt, in :func:`hyperloom.select`'s language (module
            types, globs over parameter names, predicates, tuples): a layer is adapted when a
            filter selects its ``weight``. Default: every ``nn.Linear``.
        rank: the LoRA rank ``r``; at most ``min(in, out)`` of every adapted layer.
        alpha: the LoRA scaling numerator (scale ``alpha / r``, as PEFT's ``lora_alpha``).

    Raises:
        ValueError: filters that select no parameter or no ``nn.Linear`` weight (the message
            names the filters and the model's parameters or linear layers), or a rank that is
            not a positive int or exceeds a layer's ``min(in, out)`` (naming the layer).
        TypeError: a ``model`` that is not an ``nn.Module``.

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> lora = LoRATarget(net, "0.*", rank=2, alpha=4)
        >>> lora.layers
        ('0',)
        >>> [p.name for p in select(lora)]
        ['factors.0.A', 'factors.0.B']
        >>> bool(torch.equal(lora(torch.ones(1, 8)), net(torch.ones(1, 8))))  # B starts at 0
        True
    """

    def __init__(
        self, model: nn.Module, *filters: Filter, rank: int = 8, alpha: float = 16.0
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"LoRATarget takes an nn.Module, got {type(model).__name__}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        spec = select(model, *filters) if filters else select(model, nn.Linear)
        modules = dict(model.named_modules())
        linear = {n for n, m in modules.items() if isinstance(m, nn.Linear)}
        names = []
        for p in spec:
            owner, _, local = p.name.rpartition(".")
            if local == "weight" and owner in linear and owner not in names:
                names.append(owner)
        if not names:
            raise ValueError(
                f"the filters select no nn.Linear weight of {type(model).__name__}: they select "
                f"{list(spec.names)[:10]}; its linear layers are {sorted(linear)[:10]}"
                f"{' ...' if len(linear) > 10 else ''}"
            )
        for n in names:
            m = modules[n]
            if rank > min(m.in_features, m.out_features):
                raise ValueError(
                    f"rank {rank} exceeds layer {n!r} ({m.out_features}x{m.in_features}): "
                    f"at most {min(m.in_features, m.out_features)}"
                )
        model.requires_grad_(False)
        self._model = (model,)  # a tuple: held, not registered as a submodule
        self.layers: tuple[str, ...] = tuple(names)
        self.rank = rank
        self.alpha = float(alpha)
        ref = modules[names[0]].weight
        self.factors = nn.ModuleList(
            _Factors(modules[n].in_features, modules[n].out_features, rank) for n in names
        ).to(device=ref.device, dtype=ref.dtype)

    @property
    def model(self) -> nn.Module:
        """The frozen model (not a registered submodule)."""
        return self._model[0]

    @property
    def scale(self) -> float:
        """``alpha / rank``, the factor applied to ``B A x``."""
        return self.alpha / self.rank

    def factor_names(self) -> Iterator[tuple[str, str, str]]:
        """``(layer name in the model, name of A, name of B)`` for every adapted layer."""
        for i, layer in enumerate(self.layers):
            yield layer, f"factors.{i}.A", f"factors.{i}.B"

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the model with this module's factors (or those :func:`hyperloom.call` swaps in)."""
        factors = cast("list[_Factors]", list(self.factors))  # the ModuleList built above
        pairs = [(f.A, f.B) for f in factors]
        with self._hooked(pairs, per_row=False):
            return self.model(*args, **kwargs)

    @contextmanager
    def _hooked(self, pairs: Sequence[tuple[Tensor, Tensor]], *, per_row: bool) -> Iterator[None]:
        modules = dict(self.model.named_modules())
        scale = self.scale
        handles = []

        def make(a: Tensor, b: Tensor) -> Any:
            def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
                x = inputs[0]
                if per_row:
                    # x (N, *, in); a (N, r, in); b (N, out, r)
                    flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (N, L, in)
                    low = torch.bmm(flat, a.transpose(1, 2))  # (N, L, r)
                    delta = torch.bmm(low, b.transpose(1, 2))  # (N, L, out)
                    return output + scale * delta.reshape(output.shape)
                return output + scale * ((x @ a.T) @ b.T)  # (*, out)

            return hook

        with _HOOK_LOCK:
            try:
                for layer, (a, b) in zip(self.layers, pairs, strict=True):
                    handles.append(modules[layer].register_forward_hook(make(a, b)))
                yield
            finally:
                for h in handles:
                    h.remove()

    def extra_repr(self) -> str:
        return (
            f"model={type(self.model).__name__}, layers={len(self.layers)}, rank={self.rank}, "
            f"alpha={self.alpha:g}"
        )


def call_per_row(lora: LoRATarget, factors: Mapping[str, Tensor], *args: Any, **kwargs: Any) -> Any:
    """Run the model with adapter ``i`` on batch row ``i``: many tasks in one batch.

    The per-row LoRA term is two batched matmuls per adapted layer, ``(N, L, in) @ (N, in, r)``
    and ``(N, L, r) @ (N, r, out)``, added to the frozen layer's output for the whole batch:
    the model runs once, with no loop over rows and no vmap. The result equals
    ``torch.cat([hl.call(lora, factors_i, x_i) for i ...])`` (tested).

    Args:
        lora: the :class:`LoRATarget`.
        factors: ``name -> (N, *shape)`` for every name of ``hl.select(lora)``, e.g. a
            generator's output for ``N`` conditioning vectors.
        *args: the model's inputs, every tensor with ``N`` rows (``input_ids`` ``(N, T)``, ...).
        **kwargs: keyword inputs, likewise.

    Returns:
        What the model returns.

    Raises:
        ValueError: names or shapes that do not match the spec, or inputs whose first dimension
            is not ``N``.

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> lora = LoRATarget(net, nn.Linear, rank=2)
        >>> f = {n: torch.randn(5, *p.shape) for n, p in zip(select(lora).names, select(lora))}
        >>> call_per_row(lora, f, torch.randn(5, 8)).shape
        torch.Size([5, 2])
    """
    if not isinstance(lora, LoRATarget):
        raise TypeError(f"call_per_row takes a LoRATarget, got {type(lora).__name__}")
    spec: TargetSpec = select(lora)
    spec.check(factors, batch_dims=1)
    n = next(iter(factors.values())).shape[0]
    for i, leaf in enumerate([*args, *kwargs.values()]):
        if isinstance(leaf, Tensor) and (leaf.dim() == 0 or leaf.shape[0] != n):
            raise ValueError(
                f"input {i} has shape {tuple(leaf.shape)}; call_per_row needs {n} rows, one "
                "per adapter"
            )
    pairs = [(factors[a], factors[b]) for _, a, b in lora.factor_names()]
    with lora._hooked(pairs, per_row=True):
        return lora.model(*args, **kwargs)


def merged_weights(lora: LoRATarget, factors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The adapted layers' weights ``W + (alpha / r) B A``, keyed by the model's names.

    Args:
        lora: the :class:`LoRATarget`.
        factors: one adapter, ``name -> shape`` (no batch dimension).

    Returns:
        ``{"<layer>.weight": merged weight}``, for :func:`hyperloom.call` on the model itself.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3))
        >>> lora = LoRATarget(net, rank=1)
        >>> w = merged_weights(lora, dict(lora.named_parameters()))
        >>> bool(torch.equal(w["0.weight"], net[0].weight))
        True
    """
    select(lora).check(factors)
    modules = dict(lora.model.named_modules())
    return {
        f"{layer}.weight": modules[layer].weight + lora.scale * factors[b] @ factors[a]
        for layer, a, b in lora.factor_names()
    }
