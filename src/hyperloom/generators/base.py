"""The generator protocol: conditioning ``(*, d)`` to target weights ``{name: (*, *shape)}``."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor, nn

from ..target import TargetSpec
from .trunk import MLPTrunk, activation_config


class Generator(nn.Module):
    """Base class of generators (criterion 2: how the target's weights are produced).

    A generator is built eagerly: its constructor takes the :class:`~hyperloom.TargetSpec`, the
    conditioning size and keyword-only options (``ChunkedGenerator(spec, 32, chunk_size=1024)``)
    and creates every parameter there. Where the spec is not known yet (it is the target's,
    which :class:`~hyperloom.HyperNetwork` selects), give a factory instead:
    ``ChunkedGenerator.factory(chunk_size=1024)`` is a :class:`GeneratorFactory`, and any
    callable ``(spec, cond_dim) -> Generator`` is one.

    Tensors whose target initialisation is a constant (LayerNorm and BatchNorm scales) are
    generated as that constant plus the learned output, so that a fresh hypernetwork starts
    near the target's own initialisation.

    Dtype and device: the constructor creates the parameters in the spec's floating dtype (when all
    its tensors share one), and from then on the generated tensors are in whatever dtype and on
    whatever device the generator's computation gives: they follow ``.to()``, ``.double()``,
    ``.half()`` and autocast like any module's outputs, and are never cast back.

    Subclasses set :attr:`strategy` (criterion 2), :attr:`architecture` (criterion 5) and
    :attr:`dynamic_output` (criterion 4) and implement ``_build``, ``_generate`` and
    ``_readouts``.
    """

    strategy: ClassVar[str] = ""
    architecture: ClassVar[str] = "MLP"
    dynamic_output: ClassVar[bool] = False
    registry_name: ClassVar[str] = ""

    def __init__(self, spec: TargetSpec, cond_dim: int, options: dict[str, Any]) -> None:
        """Check ``spec`` and ``cond_dim``, keep the options, then build the parameters.

        Subclasses call it from their own constructor with their options in a dict; it runs
        :meth:`_build` (which reads ``self.spec``, ``self.cond_dim`` and ``self.options``) and
        moves the new parameters to the spec's dtype.
        """
        super().__init__()
        if not isinstance(spec, TargetSpec):
            raise TypeError(
                f"{type(self).__name__} takes a TargetSpec first, got {type(spec).__name__}; "
                f"without one, pass {type(self).__name__}.factory(...) to HyperNetwork"
            )
        check_cond_dim(cond_dim)
        bad = [p.name for p in spec if not p.dtype.is_floating_point]
        if bad:
            raise TypeError(f"only floating-point parameters can be generated; not {bad}")
        options = dict(options)
        if "activation" in options:  # validated now, kept in its JSON-ready form
            options["activation"] = activation_config(options["activation"])
        for flag in ("norm", "final_activation"):
            if flag in options and not isinstance(options[flag], bool):
                raise ValueError(f"{flag} must be True or False, got {options[flag]!r}")
        self.options = options
        self.spec: TargetSpec = spec
        self.cond_dim: int = cond_dim
        self._build()
        dtypes = {p.dtype for p in spec}
        if len(dtypes) == 1:  # built in the target's dtype; from here on it follows .to()
            self.to(dtypes.pop())

    @classmethod
    def factory(cls: type[G], **options: Any) -> GeneratorFactory[G]:
        """This generator with ``options``, to be built later for a spec and conditioning size.

        Args:
            **options: the constructor's keyword-only options (checked by name now, by value
                when built).

        Returns:
            A :class:`GeneratorFactory`: ``factory(spec, cond_dim)`` builds the generator.

        Raises:
            TypeError: an option the constructor does not take.

        Example:
            >>> import hyperloom as hl
            >>> make = hl.FlatGenerator.factory(hidden=(16,))
            >>> make
            FlatGenerator.factory(hidden=(16,))
            >>> make(hl.select(nn.Linear(3, 2)), 4).readout.weight.shape
            torch.Size([8, 16])
        """
        return GeneratorFactory(cls, options)

    def forward(self, cond: Tensor) -> dict[str, Tensor]:
        """Generate the target's weights.

        Args:
            cond: ``(*, cond_dim)`` conditioning vectors.

        Returns:
            ``{name: (*, *shape)}`` for every tensor of the spec, leading dimensions kept.
        """
        spec = self.spec
        shape = cond.shape
        if not shape or shape[-1] != self.cond_dim:
            raise ValueError(
                f"{type(self).__name__} expects conditioning of shape (*, {self.cond_dim}), "
                f"got {tuple(shape)}"
            )
        lead = shape[:-1]
        parts = self._generate_parts(cond)  # [(*, numel_p)] in spec order, or None
        out = {}
        if parts is not None:
            for p, t in zip(spec, parts, strict=True):
                if len(p.shape) != 1:  # a vector's part has its shape already
                    t = t.view(*lead, *p.shape)  # (*, numel_p) -> (*, *shape), a view
                out[p.name] = t + p.init_const if p.init_const else t
            return out
        raw = self._generate(cond.reshape(-1, self.cond_dim))  # {name: (M, *shape)}
        return finish(raw, spec, lead)

    def config(self) -> dict[str, Any]:
        """``{"name": registry name, "options": constructor options}``, JSON-ready."""
        return {"name": self.registry_name, "options": _jsonable(self.options)}

    def _trunk(self, in_dim: int) -> MLPTrunk:
        """The MLP trunk from this generator's options (hidden sizes, activation, norm, ...)."""
        o = self.options
        return MLPTrunk(
            in_dim,
            o["hidden"],
            o["activation"],
            norm=o.get("norm", True),
            final_activation=o.get("final_activation", True),
        )

    def _split(self, flat: Tensor) -> dict[str, Tensor]:
        """``(M, spec.numel)`` -> ``{name: (M, *shape)}`` as views."""
        spec = self.spec
        parts = flat.split([p.numel for p in spec], dim=-1)
        return {p.name: t.view(-1, *p.shape) for p, t in zip(spec, parts, strict=True)}

    # Subclass hooks -------------------------------------------------------------------------
    def _build(self) -> None:
        raise NotImplementedError

    def _generate(self, cond: Tensor) -> dict[str, Tensor]:
        """``(M, cond_dim)`` -> ``{name: (M, *shape)}`` before the constant offsets."""
        raise NotImplementedError

    def _generate_parts(self, cond: Tensor) -> list[Tensor] | None:
        """Optional fast hook: ``(*, cond_dim)`` -> ``[(*, numel)]``, one flat part per tensor.

        A generator whose output is naturally flat returns the parts in spec order (each one
        viewable as ``(*, *shape)``), leading dimensions kept, so that :meth:`forward` views them
        into their shapes without reshaping the conditioning or copying. ``None`` (the default)
        sends :meth:`forward` to :meth:`_generate`.
        """
        return None

    def _readout_features(self, cond: Tensor) -> tuple[Tensor, nn.Linear] | None:
        """Optional hook: ``(h, readout)`` when the output is ``readout(h)`` split in spec order.

        A generator whose weights are one plain linear readout of features ``h`` (``(*, K)``),
        split into the spec's tensors in order and offset by their constants, returns both, so
        that :class:`~hyperloom.HyperNetwork` can run per-sample calls without forming the
        weights (:func:`~hyperloom.functional.call_from_readout`). ``None`` (the default): the
        weights are generated by :meth:`forward`.
        """
        return None

    def _element_readouts(self) -> list[tuple[nn.Linear, list[str]]] | None:
        """Optional hook: the output layers whose rows are the elements of named tensors.

        Each pair is a linear layer and the spec tensors its rows produce, in order, one row per
        element (before the constant offsets). ``None`` (the default): rows are shared between
        elements (chunk-wise, component-wise, low-rank). Used by
        :func:`~hyperloom.pretrained_init_`.
        """
        return None

    def _readouts(self, variance: dict[str, float]) -> list[tuple[nn.Linear, Tensor]]:
        """The output layers and, for each of their rows, the variance it should produce.

        Used by :func:`~hyperloom.hyperfan_in_`: ``variance`` gives each target tensor's desired
        element variance; each returned pair is a readout layer and a ``(out_features,)`` tensor.
        """
        raise NotImplementedError

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        size = f"{len(self.spec)} tensors, {self.spec.numel:,} weights"
        return f"{opts}, {size}" if opts else size


G = TypeVar("G", bound=Generator)


class GeneratorFactory(Generic[G]):
    """A generator class and its options: ``factory(spec, cond_dim)`` builds the generator.

    What :meth:`Generator.factory` returns, and what :class:`~hyperloom.HyperNetwork` takes when
    the spec is the target's (any callable ``(spec, cond_dim) -> Generator`` works as well).
    :meth:`config` is the built generator's checkpoint configuration.

    Args:
        cls: the generator class.
        options: its keyword-only constructor options.

    Raises:
        TypeError: an option ``cls`` does not take.

    Example:
        >>> import hyperloom as hl
        >>> make = hl.ChunkedGenerator.factory(chunk_size=64)
        >>> make.config()
        {'name': 'chunked', 'options': {'chunk_size': 64}}
        >>> make(hl.select(nn.Linear(8, 16)), 4).num_chunks
        3
    """

    def __init__(self, cls: type[G], options: dict[str, Any]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Generator)):
            raise TypeError(f"GeneratorFactory takes a Generator class, got {cls!r}")
        # the options: every parameter after self, spec and cond_dim
        params = list(inspect.signature(cls.__init__).parameters.values())[3:]
        takes = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        unknown = sorted(set(options) - set(takes))
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in params):
            raise TypeError(
                f"{cls.__name__} takes no option {', '.join(map(repr, unknown))}; its options: "
                f"{', '.join(takes) or 'none'}"
            )
        self.cls = cls
        self.options = dict(options)

    def __call__(self, spec: TargetSpec, cond_dim: int) -> G:
        """Build the generator for ``spec`` and conditioning size ``cond_dim``."""
        return self.cls(spec, cond_dim, **self.options)

    def config(self) -> dict[str, Any]:
        """``{"name": registry name, "options": the options given}``, JSON-ready."""
        return {"name": self.cls.registry_name, "options": _jsonable(self.options)}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.cls.__name__}.factory({opts})"


def check_cond_dim(cond_dim: object) -> None:
    """Raise ``ValueError`` unless ``cond_dim`` is a positive int."""
    if isinstance(cond_dim, bool) or not isinstance(cond_dim, int) or cond_dim < 1:
        raise ValueError(f"cond_dim must be a positive int, got {cond_dim!r}")


def finish(raw: dict[str, Tensor], spec: TargetSpec, lead: tuple[int, ...]) -> dict[str, Tensor]:
    """Raw generated tensors ``{name: (M, *shape)}`` -> ``{name: (*lead, *shape)}``.

    Adds each constant-initialised tensor's constant; every generator's output goes through
    here (or, for flat parts, the same steps as views). The dtype is the computation's own (the
    generator's current dtype, or autocast's): it is not cast back to the spec's.
    """
    out = {}
    for p in spec:
        t = raw[p.name]
        if p.init_const:
            t = t + p.init_const
        want = (*lead, *p.shape)
        out[p.name] = t if t.shape == want else t.reshape(want)
    return out


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def per_element_variance(spec: TargetSpec, variance: dict[str, float]) -> Tensor:
    """The desired variance of every element of the flattened spec, ``(spec.numel,)``."""
    return torch.cat([torch.full((p.numel,), float(variance[p.name])) for p in spec])
