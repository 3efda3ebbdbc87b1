"""HyperNetwork: a conditioner and a generator producing the weights of an unmodified target."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .conditioning.base import Conditioner
from .filters import Filter
from .functional import call, call_batched, call_from_readout, check_weights, swapped_call
from .functional.dispatch import route
from .functional.swap import norm_statistics
from .generators.base import Generator
from .init import hyperfan_in_, hyperfan_out_, pretrained_init_
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
    constant_offsets: dict[str, float] = field(default_factory=dict)
    """Generated tensors that the target initialised to one value (normalisation scales and
    shifts, a FiLM gain of ones): each is generated as that value plus the learned output."""

    def __str__(self) -> str:
        rows = [
            ("1. inputs", self.inputs),
            ("2. outputs", self.outputs),
            ("3. input variability", self.input_variability),
            ("4. output variability", self.output_variability),
            ("5. architecture", self.architecture),
        ]
        if self.constant_offsets:
            offsets = ", ".join(f"{n} ({v:g})" for n, v in self.constant_offsets.items())
            rows.append(("constant + output", offsets))
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
        generator: a factory, any callable ``(spec, cond_dim) -> Generator`` (such as
            ``hl.FlatGenerator.factory(hidden=(64,))``), called here with the target's spec and
            the conditioner's size; or a generator already built for that spec and size.
        generate: a filter (module type, glob, predicate or tuple) choosing the generated
            parameters; ``None`` generates all of them.
        init: how a generator built here starts: ``"hyperfan_in"`` (default),
            ``"hyperfan_out"``, ``"pretrained"`` (every context first generates the target's
            current weights, :func:`~hyperloom.pretrained_init_`) or ``None`` (the generator's
            own initialisation). A generator given built keeps its parameters (it may hold
            trained weights): call ``hl.hyperfan_in_(hnet.generator)`` to re-initialise it.
        gain: the gain passed to the hyperfan initialisation.
        check_finite: raise when generated weights contain NaN or infinity (costs a sync).
        task_statistics: keep BatchNorm running statistics per task (task-conditioned
            hypernetworks only): each task's calls read and update their own copy, which starts
            as the target's own statistics; the target's buffers are then never updated.

    Calls:
        ``hnet(x, task=3)`` runs the target with one weight set for the whole batch;
        ``hnet(x, task=ids)`` with ``ids`` of shape ``(B,)`` runs sample ``i`` with the weights
        of task ``ids[i]``, generating each distinct task's weights once; data- and
        noise-conditioned hypernetworks give every sample its own weights. Per-sample calls run
        each sample as a batch of one and concatenate the outputs along dimension 0, so the
        target's outputs must be batch-first. When the target holds BatchNorm in training mode
        (or ``task_statistics`` is on), ``hnet(x, task=ids)`` runs the samples of each task as
        one batch instead, so that samples sharing a weight set are normalised together.
        Keyword arguments are the conditioner's context (``task=``, ``z=``, ...) or arguments
        of the target's ``forward``; any other name is refused.

    Dtype and device: the hypernetwork is created in its target's dtype (the conditioner and
    generator are moved to it) and then follows ``.to()``, ``.double()``, ``.half()`` and
    autocast like any module: generated weights are in the generator's current dtype.

    Example:
        >>> import hyperloom as hl
        >>> target = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> gen = hl.ChunkedGenerator.factory(chunk_size=64)
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
        generator: Generator | Callable[[TargetSpec, int], Generator],
        *,
        generate: Filter | None = None,
        init: str | None = "hyperfan_in",
        gain: float = 1.0,
        check_finite: bool = False,
        task_statistics: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(target, nn.Module):
            raise TypeError(f"target must be an nn.Module, got {type(target).__name__}")
        if not isinstance(conditioner, Conditioner):
            raise TypeError(f"conditioner must be a Conditioner, got {type(conditioner).__name__}")
        if not isinstance(generator, Generator) and not callable(generator):
            raise TypeError(
                "generator must be a Generator or a factory (spec, cond_dim) -> Generator, got "
                f"{type(generator).__name__}"
            )
        if init is not None and init not in (*_INITS, "pretrained"):
            raise ValueError(f"init must be one of {[*_INITS, 'pretrained', None]}, got {init!r}")
        spec = select(target, *(() if generate is None else (generate,)))
        dtypes = {p.dtype for p in spec}
        if len(dtypes) == 1:  # the conditioner computes in the target's dtype, as the generator
            conditioner.to(next(iter(dtypes)))
        self.target = target
        self.conditioner = conditioner
        built_here = not isinstance(generator, Generator)
        self.generator = _built(generator, spec, conditioner.dim)
        if init == "pretrained":
            pretrained_init_(self.generator, target)
        elif init is not None and built_here:
            _INITS[init](self.generator, gain=gain)
        self.check_finite = check_finite
        self.task_statistics: TaskStatistics | None = None
        if task_statistics:
            if not hasattr(conditioner, "num") or conditioner.keys != ("task",):
                raise ValueError(
                    "task_statistics=True needs a task-conditioned hypernetwork (TaskEmbedding), "
                    f"got {type(conditioner).__name__}"
                )
            if not norm_statistics(target):
                raise ValueError(
                    "task_statistics=True needs a target with BatchNorm running statistics; "
                    f"{type(target).__name__} has none"
                )
            self.task_statistics = TaskStatistics(target, _task_count(conditioner))
        self._target_keywords = _keywords(target)
        generated = {id(target.get_parameter(n)) for n in spec.names}
        self._generated_names = frozenset(
            "target." + n
            for n, p in target.named_parameters(remove_duplicate=False)
            if id(p) in generated
        )

    @property
    def spec(self) -> TargetSpec:
        """The generated part of the target."""
        return self.generator.spec

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
        self._check_keywords(kwargs)
        cond, index = self.conditioner.from_call(args, context)
        stats = self.task_statistics
        way = route(  # the table of routes: hyperloom.functional.dispatch.ROUTES
            cond,
            index,
            self.target,
            self.generator,
            args,
            kwargs,
            check_finite=self.check_finite,
            task_statistics=stats is not None,
        )
        if way == "readout":
            out = self._from_readout(cond, args[0])
            if out is not None:
                return out
        weights = self._weights(cond)
        if way == "one":
            if stats is not None:
                check_weights(self.target, weights)
                rows = stats.rows(int(context["task"]), _task_count(self.conditioner))
                return swapped_call(self.target, weights, args, kwargs, rows)
            return call(self.target, weights, *args, **kwargs)
        if way == "per_task" and index is not None:
            return self._per_task(weights, index, context, args, kwargs)
        if way == "one_task":
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
            >>> hnet = hl.HyperNetwork(nn.Linear(4, 2), hl.TaskEmbedding(3, 8),
            ...     hl.FlatGenerator.factory())
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
            >>> hnet = hl.HyperNetwork(nn.Linear(4, 2), hl.TaskEmbedding(3, 8),
            ...     hl.FlatGenerator.factory())
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
        for name, t in self._task_rows(context).items():
            plain.get_buffer(name).copy_(t)
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
            >>> hnet = hl.HyperNetwork(target, hl.TaskEmbedding(3, 8), hl.FlatGenerator.factory())
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
        for name, t in self._task_rows(context).items():  # the task's statistics, a copy
            memo[id(self.target.get_buffer(name))] = t.clone()
        return copy.deepcopy(self.target, memo)

    def describe(self) -> Criteria:
        """The five design criteria of this hypernetwork, as values.

        Example:
            >>> import hyperloom as hl
            >>> hnet = hl.HyperNetwork(nn.Linear(4, 2), hl.TaskEmbedding(3, 8),
            ...     hl.FlatGenerator.factory())
            >>> hnet.describe().outputs
            'generate-once'
        """
        return Criteria(
            inputs=self.conditioner.kind,
            outputs=self.generator.strategy,
            input_variability="dynamic" if self.conditioner.dynamic else "static",
            output_variability="dynamic" if self.generator.dynamic_output else "static",
            architecture=self.generator.architecture,
            constant_offsets={p.name: p.init_const for p in self.spec if p.init_const is not None},
        )

    def config(self) -> dict[str, Any]:
        """JSON-ready description: spec, conditioner and generator configurations."""
        return {
            "spec": self.spec.to_dict(),
            "conditioner": self.conditioner.config(),
            "generator": self.generator.config(),
            "check_finite": self.check_finite,
            "task_statistics": self.task_statistics is not None,
        }

    def _check_keywords(self, kwargs: dict[str, Any]) -> None:
        """Refuse keywords that are neither context nor an argument of the target's forward."""
        accepted = self._target_keywords
        if accepted is None:
            return
        unknown = sorted(k for k in kwargs if k not in accepted)
        if unknown:
            raise TypeError(
                f"unknown keyword {', '.join(map(repr, unknown))}: this hypernetwork's context is "
                f"{list(self.conditioner.keys)} and {type(self.target).__name__}.forward takes "
                f"{sorted(accepted) or 'no keywords'}"
            )

    def _task_rows(self, context: dict[str, Any]) -> dict[str, Tensor]:
        """One task's BatchNorm statistics with ``task_statistics``, else nothing."""
        if self.task_statistics is None:
            return {}
        return self.task_statistics.rows(int(context["task"]), _task_count(self.conditioner))

    def _per_task(
        self, weights: dict[str, Tensor], index: Tensor, context: dict, args: tuple, kwargs: dict
    ) -> Any:
        """Each task's samples through the target as one batch, with that task's weights.

        Samples that share a weight set are normalised together by BatchNorm in training mode
        (and use their task's statistics with ``task_statistics``), exactly as running each
        task's samples as one batch; the outputs come back in the samples' order.
        """
        n = index.shape[0]
        order = torch.argsort(index, stable=True)  # samples grouped by task
        counts = torch.bincount(index, minlength=next(iter(weights.values())).shape[0]).tolist()
        stats = self.task_statistics
        ids = torch.unique(context["task"]).tolist() if stats is not None else []  # as the rows
        check_weights(self.target, {k: v[0] for k, v in weights.items()})
        outs, start = [], 0
        for j, count in enumerate(counts):
            rows = order[start : start + count]
            start += count

            a, kw = _per_sample_inputs(args, kwargs, n, lambda t, rows=rows: t[rows])
            num = _task_count(self.conditioner)
            rows_j = stats.rows(ids[j], num) if stats is not None else None
            outs.append(
                swapped_call(self.target, {k: v[j] for k, v in weights.items()}, a, kw, rows_j)
            )
        inverse = torch.argsort(order)  # sample i's row in the grouped outputs
        return pytree.tree_map(
            lambda *ts: torch.cat(ts)[inverse] if isinstance(ts[0], Tensor) else ts[0], *outs
        )

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

    def _from_readout(self, cond: Tensor, x: Tensor) -> Tensor | None:
        """A per-sample call that never forms the per-sample weights, where it can.

        For a generator that is one plain linear readout of features (``FlatGenerator``) and a
        target made of known layers, :func:`~hyperloom.functional.call_from_readout` computes
        the same outputs as generating the ``(B, *shape)`` weights and calling the target with
        them, but a ``Linear`` layer reads its weights straight from the readout. ``None``:
        this call takes the general path. Only on the ``"readout"`` route
        (:func:`~hyperloom.functional.dispatch.readout_applies`).
        """
        found = self.generator._readout_features(cond)
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
            x,
            [p.init_const for p in spec],
        )

    def _per_sample(self, weights: dict[str, Tensor], args: tuple, kwargs: dict) -> Any:
        n = next(iter(weights.values())).shape[0]
        # (B, 1, ...): each sample as a batch of one
        args, kwargs = _per_sample_inputs(args, kwargs, n, lambda t: t.unsqueeze(1))
        out = call_batched(self.target, weights, *args, **kwargs)  # leaves (B, 1, ...)
        return pytree.tree_map(lambda t: t.flatten(0, 1) if isinstance(t, Tensor) else t, out)

    def extra_repr(self) -> str:
        return f"generates {len(self.spec)} tensors ({self.spec.numel:,} weights)"


class TaskStatistics(nn.Module):
    """BatchNorm running statistics kept per task, for ``HyperNetwork(task_statistics=True)``.

    One buffer ``(num_tasks, *shape)`` per running statistic of the target; row ``t`` starts as
    the target's own statistic and is read and updated by task ``t``'s calls only. New tasks
    (``TaskEmbedding.add``) get rows on their first call.

    Example:
        >>> stats = TaskStatistics(nn.BatchNorm1d(4), num=3)
        >>> {k: tuple(v.shape) for k, v in stats.rows(2, 3).items()}
        {'running_mean': (4,), 'running_var': (4,), 'num_batches_tracked': ()}
    """

    def __init__(self, target: nn.Module, num: int) -> None:
        super().__init__()
        self._target = [target]  # a list: not a submodule of this one
        self._keys = {}
        for name, buf in norm_statistics(target).items():
            key = name.replace(".", "__")
            self._keys[name] = key
            self.register_buffer(key, buf.detach().unsqueeze(0).repeat(num, *[1] * buf.dim()))

    def rows(self, task: int, num: int) -> dict[str, Tensor]:
        """Task ``task``'s statistics ``{buffer name: view}`` (``num``: tasks there are now)."""
        have = self._table(next(iter(self._keys.values()))).shape[0]
        if num > have:  # the embedding grew: new rows start as the target's statistics
            own = norm_statistics(self._target[0])
            for name, key in self._keys.items():
                new = own[name].detach().unsqueeze(0).repeat(num - have, *[1] * own[name].dim())
                self._buffers[key] = torch.cat([self._table(key), new])
        return {name: self._table(key)[task] for name, key in self._keys.items()}

    def _table(self, key: str) -> Tensor:
        """The ``(num_tasks, *shape)`` buffer ``key`` (registered in the constructor)."""
        table = self._buffers[key]
        if table is None:
            raise ValueError(f"TaskStatistics buffer {key!r} was set to None")
        return table


def _task_count(conditioner: Conditioner) -> int:
    """The number of tasks of a task-conditioned conditioner (``TaskEmbedding.num``)."""
    num = getattr(conditioner, "num", None)
    if isinstance(num, bool) or not isinstance(num, int):
        raise ValueError(f"{type(conditioner).__name__} has no number of tasks (num={num!r})")
    return num


def _built(
    generator: Generator | Callable[[TargetSpec, int], Generator], spec: TargetSpec, cond_dim: int
) -> Generator:
    """``generator`` built for ``spec`` and ``cond_dim`` by its factory, or checked to fit them."""
    if not isinstance(generator, Generator):
        built = generator(spec, cond_dim)
        if not isinstance(built, Generator):
            raise TypeError(
                f"the generator factory {generator!r} returned a {type(built).__name__}, not a "
                "Generator"
            )
        return built
    if generator.spec != spec or generator.cond_dim != cond_dim:
        raise ValueError(
            f"{type(generator).__name__} was built for a spec of {len(generator.spec)} tensors "
            f"and cond_dim={generator.cond_dim}, not for this target's {len(spec)} tensors and "
            f"cond_dim={cond_dim}; give HyperNetwork {type(generator).__name__}.factory(...) to "
            "build one for it"
        )
    return generator


def _per_sample_inputs(args: tuple, kwargs: dict, n: int, f: Any) -> tuple[tuple, dict]:
    """``f`` applied to every tensor input, each checked to have a leading dimension of ``n``."""

    def one(leaf: Any) -> Any:
        if not isinstance(leaf, Tensor):
            return leaf
        if leaf.dim() == 0 or leaf.shape[0] != n:
            raise ValueError(
                f"per-sample contexts for {n} samples, but an input has shape "
                f"{tuple(leaf.shape)}: every tensor input needs a leading dimension of {n}"
            )
        return f(leaf)

    return pytree.tree_map(one, (args, kwargs))


def _keywords(target: nn.Module) -> frozenset[str] | None:
    """The keyword arguments ``target.forward`` accepts; ``None`` when it takes ``**kwargs``."""
    try:
        params = inspect.signature(target.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
