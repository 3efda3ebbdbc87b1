"""HyperNetwork: a conditioner and a generator producing the weights of an unmodified target."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .conditioning.base import Conditioner
from .filters import Filter
from .functional import _functorch_active, _layers, call, call_batched, call_from_readout
from .generators.base import Generator
from .init import hyperfan_in_, hyperfan_out_
from .target import TargetSpec, select

_INITS = {"hyperfan_in": hyperfan_in_, "hyperfan_out": hyperfan_out_}


@dataclass(frozen=True)
class Criteria:
    """Where a hypernetwork sits on the review's five design criteria (Chauhan et al., 2023)."""

    inputs: str
    outputs: str
    input_variability: str
    output_variability: str
    architecture: str

    def __str__(self) -> str:
        rows = [
            ("1. inputs", self.inputs),
            ("2. outputs", self.outputs),
            ("3. input variability", self.input_variability),
            ("4. output variability", self.output_variability),
            ("5. architecture", self.architecture),
        ]
        return "\n".join(f"{k:<24}{v}" for k, v in rows)

    def to_dict(self) -> dict[str, str]:
        """The five values by name."""
        return asdict(self)


class HyperNetwork(nn.Module):
    """``F(X; H(C; Phi))``: weights of ``target`` generated from a context.

    Args:
        target: any ``nn.Module``; never mutated. Its parameters selected by ``generate`` are
            produced by the generator at every call; the others stay ordinary trainable
            parameters and appear in :meth:`parameters`.
        conditioner: turns a call's context into conditioning vectors (``TaskEmbedding``,
            ``SampleEncoder``, ``Noise``, ``Concat``).
        generator: a generator built with its options alone (bound here to the target's spec and
            the conditioner's size) or one already bound to the same spec and size.
        generate: a filter (module type, glob, predicate or tuple) choosing the generated
            parameters; ``None`` generates all of them.
        init: ``"hyperfan_in"`` (default), ``"hyperfan_out"`` or ``None`` to keep the
            generator's initialisation.
        gain: the gain passed to the hyperfan initialisation.
        check_finite: raise when generated weights contain NaN or infinity (costs a sync).

    Calls:
        ``hnet(x, task=3)`` runs the target with one weight set for the whole batch;
        ``hnet(x, task=ids)`` with ``ids`` of shape ``(B,)`` runs sample ``i`` with the weights
        of task ``ids[i]``, generating each distinct task's weights once; data- and
        noise-conditioned hypernetworks give every sample its own weights. Per-sample calls run
        each sample as a batch of one and concatenate the outputs along dimension 0, so the
        target's outputs must be batch-first.

    Example:
        >>> import hyperloom as hl
        >>> target = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> gen = hl.ChunkedGenerator(chunk_size=64)
        >>> hnet = hl.HyperNetwork(target, hl.TaskEmbedding(4, 8), gen)
        >>> hnet(torch.randn(5, 8), task=2).shape
        torch.Size([5, 3])
        >>> hnet(torch.randn(5, 8), task=torch.tensor([0, 1, 1, 3, 0])).shape
        torch.Size([5, 3])
    """

    def __init__(
        self,
        target: nn.Module,
        conditioner: Conditioner,
        generator: Generator,
        *,
        generate: Filter | None = None,
        init: str | None = "hyperfan_in",
        gain: float = 1.0,
        check_finite: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(target, nn.Module):
            raise TypeError(f"target must be an nn.Module, got {type(target).__name__}")
        if not isinstance(conditioner, Conditioner):
            raise TypeError(f"conditioner must be a Conditioner, got {type(conditioner).__name__}")
        if not isinstance(generator, Generator):
            raise TypeError(f"generator must be a Generator, got {type(generator).__name__}")
        if init is not None and init not in _INITS:
            raise ValueError(f"init must be one of {[*_INITS, None]}, got {init!r}")
        spec = select(target, *(() if generate is None else (generate,)))
        self.target = target
        self.conditioner = conditioner
        self.generator = generator.bind(spec, conditioner.dim)
        if init is not None:
            _INITS[init](self.generator, gain=gain)
        self.check_finite = check_finite
        generated = {id(target.get_parameter(n)) for n in spec.names}
        self._generated_names = frozenset(
            "target." + n
            for n, p in target.named_parameters(remove_duplicate=False)
            if id(p) in generated
        )

    @property
    def spec(self) -> TargetSpec:
        """The generated part of the target."""
        return self.generator._bound_spec()

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        """The hypernetwork's own parameters and the target's non-generated ones.

        The target's generated parameters are left out: their values are never used.
        """
        skip = {f"{prefix}.{n}" if prefix else n for n in self._generated_names}
        for name, p in super().named_parameters(prefix, recurse, remove_duplicate):
            if name not in skip:
                yield name, p

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        context = {k: kwargs.pop(k) for k in self.conditioner.keys if k in kwargs}
        cond, index = self.conditioner.from_call(args, context)
        if index is None and cond.dim() == 2:  # every sample its own context
            out = self._from_readout(cond, args, kwargs)
            if out is not None:
                return out
        weights = self._weights(cond)
        if cond.dim() == 1:  # one context for the whole batch
            return call(self.target, weights, *args, **kwargs)
        if index is not None and cond.shape[0] == 1:  # one distinct static context
            return call(self.target, {k: v[0] for k, v in weights.items()}, *args, **kwargs)
        if index is not None:
            weights = {k: v[index] for k, v in weights.items()}  # (B, *shape)
        return self._per_sample(weights, args, kwargs)

    def generate(self, **context: Any) -> dict[str, Tensor]:
        """The generated weights for a context, ``{name: (*, *shape)}``.

        Args:
            **context: what the conditioner takes: ``task=`` (an id or ids), ``x=`` (samples,
                data-conditioned), ``z=`` (noise vectors).

        Example:
            >>> import hyperloom as hl
            >>> hnet = hl.HyperNetwork(nn.Linear(4, 2), hl.TaskEmbedding(3, 8), hl.FlatGenerator())
            >>> {k: tuple(v.shape) for k, v in hnet.generate(task=1).items()}
            {'weight': (2, 4), 'bias': (2,)}
        """
        unknown = sorted(set(context) - set(self.conditioner.keys))
        if unknown:
            raise TypeError(
                f"unknown context {unknown}; this hypernetwork's conditioner takes "
                f"{list(self.conditioner.keys)}"
            )
        cond, index = self.conditioner.from_call((), context)
        weights = self._weights(cond)
        if index is not None:
            weights = {k: v[index] for k, v in weights.items()}
        return weights

    @torch.no_grad()
    def export(self, **context: Any) -> nn.Module:
        """An ordinary copy of the target holding the weights generated for one context.

        Example:
            >>> import hyperloom as hl
            >>> hnet = hl.HyperNetwork(nn.Linear(4, 2), hl.TaskEmbedding(3, 8), hl.FlatGenerator())
            >>> plain = hnet.export(task=1)
            >>> x = torch.randn(5, 4)
            >>> torch.allclose(plain(x), hnet(x, task=1))
            True
        """
        weights = self.generate(**context)
        for name, t in weights.items():
            if t.shape != self.spec[name].shape:
                raise ValueError(
                    f"export() needs one context, got weights of shape {tuple(t.shape)} for "
                    f"{name!r} (one weight set has shape {self.spec[name].shape})"
                )
        plain = copy.deepcopy(self.target)
        for name, t in weights.items():
            plain.get_parameter(name).copy_(t)
        return plain

    @torch.no_grad()
    def cached(self, **context: Any) -> nn.Module:
        """The target with one static context's weights generated once, for inference.

        The weights are generated here, once; the returned module is the target's own structure
        holding them as frozen parameters (``requires_grad=False``), so calling it costs what the
        plain target costs: no conditioner, no generator, no reparametrisation. Unlike
        :meth:`export` it copies nothing else: the target's other parameters and its buffers are
        shared with it. It is a snapshot: call ``cached`` again after the hypernetwork changed.

        Args:
            **context: one static context, as for :meth:`generate` (``task=3``).

        Returns:
            An ``nn.Module`` of the target's type.

        Raises:
            ValueError: when ``context`` gives more than one weight set.

        Example:
            >>> import hyperloom as hl
            >>> target = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> hnet = hl.HyperNetwork(target, hl.TaskEmbedding(3, 8), hl.FlatGenerator())
            >>> fast = hnet.cached(task=1)
            >>> x = torch.randn(5, 4)
            >>> torch.allclose(fast(x), hnet(x, task=1))
            True
        """
        weights = self.generate(**context)
        memo: dict[int, Any] = {id(t): t for t in self.target.parameters()}
        memo.update({id(t): t for t in self.target.buffers()})  # shared, not copied
        for name, t in weights.items():
            if t.shape != self.spec[name].shape:
                raise ValueError(
                    f"cached() needs one context, got weights of shape {tuple(t.shape)} for "
                    f"{name!r} (one weight set has shape {self.spec[name].shape})"
                )
            own = self.target.get_parameter(name)  # tied names share it: replaced together
            memo[id(own)] = nn.Parameter(t.detach(), requires_grad=False)
        return copy.deepcopy(self.target, memo)

    def describe(self) -> Criteria:
        """The five design criteria of this hypernetwork, as values.

        Example:
            >>> import hyperloom as hl
            >>> hnet = hl.HyperNetwork(nn.Linear(4, 2), hl.TaskEmbedding(3, 8), hl.FlatGenerator())
            >>> hnet.describe().outputs
            'generate-once'
        """
        return Criteria(
            inputs=self.conditioner.kind,
            outputs=self.generator.strategy,
            input_variability="dynamic" if self.conditioner.dynamic else "static",
            output_variability="dynamic" if self.generator.dynamic_output else "static",
            architecture=self.generator.architecture,
        )

    def config(self) -> dict[str, Any]:
        """JSON-ready description: spec, conditioner and generator configurations."""
        return {
            "spec": self.spec.to_dict(),
            "conditioner": self.conditioner.config(),
            "generator": self.generator.config(),
            "check_finite": self.check_finite,
        }

    def _weights(self, cond: Tensor) -> dict[str, Tensor]:
        weights = self.generator(cond)
        if self.check_finite:
            for name, t in weights.items():
                bad = ~torch.isfinite(t)
                if bool(bad.any()):
                    raise ValueError(
                        f"generated weights for {name!r} are not finite: "
                        f"{int(torch.isnan(t).sum())} NaN and {int(torch.isinf(t).sum())} inf "
                        f"of {t.numel()} values"
                    )
        return weights

    def _from_readout(self, cond: Tensor, args: tuple, kwargs: dict) -> Tensor | None:
        """A per-sample call that never forms the per-sample weights, where it can.

        For a generator that is one plain linear readout of features (``FlatGenerator``) and a
        target made of known layers, :func:`~hyperloom.functional.call_from_readout` computes
        the same outputs as generating the ``(B, *shape)`` weights and calling the target with
        them, but a ``Linear`` layer reads its weights straight from the readout. ``None``:
        this call takes the general path.
        """
        gen = self.generator
        if (
            self.check_finite
            or kwargs
            or len(args) != 1
            or not isinstance(args[0], Tensor)
            or gen._forward_hooks
            or gen._forward_pre_hooks
            or _functorch_active()
        ):
            return None
        if _layers(self.target) is None:  # before the features: no trunk run for nothing
            return None
        found = gen._readout_features(cond)
        if found is None:
            return None
        h, readout = found
        spec = self.spec
        return call_from_readout(
            self.target,
            list(spec.names),
            [p.numel for p in spec],
            h,
            readout.weight,
            readout.bias,
            args[0],
            [p.init_const for p in spec],
        )

    def _per_sample(self, weights: dict[str, Tensor], args: tuple, kwargs: dict) -> Any:
        n = next(iter(weights.values())).shape[0]

        def one_per_sample(leaf: Any) -> Any:
            if not isinstance(leaf, Tensor):
                return leaf
            if leaf.dim() == 0 or leaf.shape[0] != n:
                raise ValueError(
                    f"per-sample weights for {n} samples, but an input has shape "
                    f"{tuple(leaf.shape)}: every tensor input needs a leading dimension of {n}"
                )
            return leaf.unsqueeze(1)  # (B, 1, ...): each sample as a batch of one

        args, kwargs = pytree.tree_map(one_per_sample, (args, kwargs))
        out = call_batched(self.target, weights, *args, **kwargs)  # leaves (B, 1, ...)
        return pytree.tree_map(lambda t: t.flatten(0, 1) if isinstance(t, Tensor) else t, out)

    def extra_repr(self) -> str:
        return f"generates {len(self.spec)} tensors ({self.spec.numel:,} weights)"
