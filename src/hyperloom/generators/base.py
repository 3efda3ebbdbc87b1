"""The generator protocol: conditioning ``(*, d)`` to target weights ``{name: (*, *shape)}``."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..target import TargetSpec
from .trunk import MLPTrunk, activation_config


class Generator(nn.Module):
    """Base class of generators (criterion 2: how the target's weights are produced).

    A generator is built from a :class:`~hyperloom.TargetSpec` and a conditioning size. It can be
    created with both (``ChunkedGenerator(spec, 32, chunk_size=1024)``) or with its options alone
    (``ChunkedGenerator(chunk_size=1024)``), in which case :class:`~hyperloom.HyperNetwork` binds
    it: both go through :meth:`bind`, the one place where parameters are created.

    Tensors whose target initialisation is a constant (LayerNorm and BatchNorm scales) are
    generated as that constant plus the learned output, so that a fresh hypernetwork starts
    near the target's own initialisation.

    Dtype and device: :meth:`bind` creates the parameters in the spec's floating dtype (when all
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

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__()
        options = dict(options)
        if "activation" in options:  # validated now, kept in its JSON-ready form
            options["activation"] = activation_config(options["activation"])
        for flag in ("norm", "final_activation"):
            if flag in options and not isinstance(options[flag], bool):
                raise ValueError(f"{flag} must be True or False, got {options[flag]!r}")
        self.options = options
        self.spec: TargetSpec | None = None
        self.cond_dim: int | None = None

    def bind(self, spec: TargetSpec, cond_dim: int) -> Generator:
        """Create the parameters for ``spec`` and conditioning size ``cond_dim`` (once).

        Binding again to the same spec and size is a no-op; to a different one, an error.

        Returns:
            ``self``.
        """
        if not isinstance(spec, TargetSpec):
            raise TypeError(f"bind() takes a TargetSpec, got {type(spec).__name__}")
        check_cond_dim(cond_dim)
        if self.spec is not None:
            if self.spec != spec or self.cond_dim != cond_dim:
                raise ValueError(
                    f"{type(self).__name__} is already bound to a spec of {len(self.spec)} "
                    f"tensors and cond_dim={self.cond_dim}; build a new generator for another "
                    "target"
                )
            return self
        bad = [p.name for p in spec if not p.dtype.is_floating_point]
        if bad:
            raise TypeError(f"only floating-point parameters can be generated; not {bad}")
        self.spec = spec
        self.cond_dim = cond_dim
        self._build()
        dtypes = {p.dtype for p in spec}
        if len(dtypes) == 1:  # built in the target's dtype; from here on it follows .to()
            self.to(dtypes.pop())
        return self

    @property
    def is_bound(self) -> bool:
        """Whether :meth:`bind` has created the parameters."""
        return self.spec is not None

    def forward(self, cond: Tensor) -> dict[str, Tensor]:
        """Generate the target's weights.

        Args:
            cond: ``(*, cond_dim)`` conditioning vectors.

        Returns:
            ``{name: (*, *shape)}`` for every tensor of the spec, leading dimensions kept.
        """
        spec = self.spec
        if spec is None:
            self._bound_spec()  # raises, saying how to bind
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

    def _bound_spec(self) -> TargetSpec:
        if self.spec is None:
            raise RuntimeError(
                f"{type(self).__name__} is not bound to a target yet: build it with "
                "(spec, cond_dim), call bind(), or give it to HyperNetwork"
            )
        return self.spec

    def _split(self, flat: Tensor) -> dict[str, Tensor]:
        """``(M, spec.numel)`` -> ``{name: (M, *shape)}`` as views."""
        spec = self._bound_spec()
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
        bound = f"{len(self.spec)} tensors, {self.spec.numel:,} weights" if self.spec else "unbound"
        return f"{opts}, {bound}" if opts else bound


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
