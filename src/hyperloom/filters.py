"""Parameter filters: a tiny selection language, normalised once into a predicate.

A filter is one of

- a module type (``nn.Linear``): parameters owned directly by a module of that type;
- a string: a glob over full parameter names (``"*.weight"``, ``"0.*"``);
- a callable ``(name, tensor) -> bool``;
- a tuple of filters: a parameter is selected when any member selects it.

:func:`to_predicate` turns any of these into one predicate over ``(name, tensor, owner)``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import TypeAlias

from torch import Tensor, nn

Filter: TypeAlias = "type[nn.Module] | str | Callable[[str, Tensor], bool] | tuple[Filter, ...]"
Predicate: TypeAlias = Callable[[str, Tensor, nn.Module], bool]


def to_predicate(filter: Filter) -> Predicate:
    """Normalise a filter into a predicate ``(name, tensor, owner_module) -> bool``.

    Args:
        filter: a module type, a glob string, a callable ``(name, tensor) -> bool`` or a tuple of
            these (any of them).

    Returns:
        The predicate.

    Raises:
        TypeError: for anything else, naming the value.

    Example:
        >>> import torch
        >>> pred = to_predicate((nn.Linear, "*.bias"))
        >>> pred("0.weight", torch.zeros(2, 2), nn.Linear(2, 2))
        True
    """
    if isinstance(filter, type):
        if not issubclass(filter, nn.Module):
            raise TypeError(
                f"a type used as a filter must be an nn.Module subclass, got {filter.__name__}"
            )
        module_type = filter
        return lambda name, tensor, owner: isinstance(owner, module_type)
    if isinstance(filter, str):
        pattern = filter
        return lambda name, tensor, owner: fnmatch.fnmatchcase(name, pattern)
    if isinstance(filter, tuple):
        predicates = [to_predicate(f) for f in filter]
        return lambda name, tensor, owner: any(p(name, tensor, owner) for p in predicates)
    if callable(filter):
        user = filter
        return lambda name, tensor, owner: bool(user(name, tensor))
    raise TypeError(
        "a filter is a module type, a glob string, a callable (name, tensor) -> bool "
        f"or a tuple of these; got {filter!r} of type {type(filter).__name__}"
    )


def describe_filter(filter: Filter) -> str:
    """A short human-readable form of a filter, used in error messages and ``describe()``."""
    if isinstance(filter, type):
        return filter.__name__
    if isinstance(filter, str):
        return repr(filter)
    if isinstance(filter, tuple):
        return "(" + ", ".join(describe_filter(f) for f in filter) + ")"
    return getattr(filter, "__name__", repr(filter))
