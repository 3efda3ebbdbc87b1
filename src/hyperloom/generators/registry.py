"""The generator registry: a dict, a decorator and two functions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ..target import TargetSpec
    from .base import Generator

G = TypeVar("G", bound="type[Generator]")

_GENERATORS: dict[str, type[Generator]] = {}


def register_generator(name: str) -> Callable[[G], G]:
    """Class decorator: list a generator under ``name`` (used by checkpoints, the CLI and tests).

    Registering a different class under a taken name is an error; the same class (same module
    and qualified name, as when a notebook cell is run again) replaces the old definition.
    """

    def deco(cls: G) -> G:
        old = _GENERATORS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (
            cls.__module__,
            cls.__qualname__,
        ):
            raise ValueError(
                f"a generator is already registered as {name!r}: "
                f"{old.__module__}.{old.__qualname__}"
            )
        # the same class defined again (a re-run notebook cell) replaces the old definition
        cls.registry_name = name
        _GENERATORS[name] = cls
        return cls

    return deco


def list_generators() -> list[str]:
    """Names of the registered generators, in registration order."""
    return list(_GENERATORS)


def get_generator(name: str) -> type[Generator]:
    """The generator class registered as ``name``."""
    try:
        return _GENERATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown generator {name!r}; registered: {', '.join(_GENERATORS)}"
        ) from None


def build_generator(config: Mapping[str, Any], spec: TargetSpec, cond_dim: int) -> Generator:
    """Rebuild a generator from its ``config()`` for ``spec`` and conditioning size ``cond_dim``.

    Args:
        config: ``{"name": registry name, "options": {...}}`` (a generator's or a factory's).
        spec: the tensors to generate.
        cond_dim: the conditioning size.

    Returns:
        A new generator, its parameters freshly initialised.

    Raises:
        ValueError: an unregistered name.

    Example:
        >>> import hyperloom as hl
        >>> spec = hl.select(nn.Linear(3, 2))
        >>> build_generator({"name": "chunked", "options": {"chunk_size": 4}}, spec, 5).num_chunks
        2
    """
    cls = get_generator(str(config["name"]))
    return cls(spec, cond_dim, **dict(config.get("options", {})))
