"""Typed dataclass configs as command-line options: ``--key=value`` with checked types.

A recipe's ``Config`` is a dataclass whose fields have defaults; ``field(metadata=...)`` may
give ``help``, ``choices`` and ``range``. Supported field types: ``int``, ``float``, ``str``,
``bool``, ``tuple[int, ...]`` (written ``400,400``), ``tuple[float, ...]``, ``tuple[str, ...]``
and ``X | None`` of these (written ``none``).

Every numeric option has a range, checked when the option is parsed (before any work; a value
outside it exits with status 2 naming the option) and by :func:`check_ranges` for configs built
in Python. ``range`` is ``(low, high)`` (both included; ``None``: unbounded) or ``(low, high,
"open")`` (``low`` excluded). A field without one gets :data:`NAMED_RANGES`'s entry for its name
(or a rule for ``*_lr``, ``*hidden``, ``*_momentum``, ``*_dropout``), else ``[0, 2**62]`` for
integers and ``[0, inf)`` for floats (unbounded below when the default is negative). Floats
must be finite; tuples check each element.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any


class ArgumentParser(argparse.ArgumentParser):
    """argparse with close-match hints for unknown options (exit status 2, as argparse).

    Abbreviated options are refused: ``--epoch=3`` must not silently mean ``--epochs=3``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        if "unrecognized arguments" in message:
            known = [s for a in self._actions for s in a.option_strings]
            for word in message.split(":", 1)[-1].split():
                close = difflib.get_close_matches(word.split("=")[0], known, n=3)
                if close:
                    message += f"\n  {word.split('=')[0]}: did you mean {', '.join(close)}?"
            message += f"\n  accepted options: {' '.join(sorted(set(known)))}"
        super().error(message)


Range = tuple  # (low, high) or (low, high, "open")

NAMED_RANGES: dict[str, Range] = {
    **dict.fromkeys(
        (
            "epochs",
            "shared_epochs",
            "batch_size",
            "steps",
            "iters",
            "rounds",
            "inner_steps",
            "tasks",
            "num_clients",
            "clients_per_round",
            "hn_hidden",
            "hn_layers",
            "chunk_size",
            "cond_dim",
            "ensemble",
            "flower_cpus",
        ),
        (1, None),
    ),
    **dict.fromkeys(("momentum", "dropout"), (0, 1)),
}
"""Ranges by field name, for fields that declare none: counts of at least one, fractions."""

_INT_HIGH = 2**62


def field_range(f: dataclasses.Field, tp: Any) -> Range | None:
    """The range of a numeric config field (``None`` for non-numeric ones).

    Example:
        >>> from dataclasses import dataclass, field, fields
        >>> @dataclass
        ... class C:
        ...     epochs: int = 3
        ...     hn_lr: float = 1e-3
        ...     p: float = field(default=0.5, metadata={"range": (0, 1)})
        >>> [field_range(f, f.type) for f in fields(C)]
        [(1, None), (0, None, 'open'), (0, 1)]
    """
    base = _numeric_base(tp)
    if base is None:
        return None
    if "range" in f.metadata:
        return tuple(f.metadata["range"])
    name = f.name
    if name in NAMED_RANGES:
        return NAMED_RANGES[name]
    if name == "hidden" or name.endswith("_hidden"):  # layer widths
        return (1, None)
    if name == "lr" or name.endswith("_lr"):
        return (0, None, "open")
    if name.endswith(("_momentum", "_dropout")):
        return (0, 1)
    default = f.default if f.default is not dataclasses.MISSING else None
    values = default if isinstance(default, tuple) else (default,)
    negative = any(isinstance(v, (int, float)) and v < 0 for v in values)
    low = None if negative else 0  # a field whose default is negative may stay negative
    return (low, _INT_HIGH) if base is int else (low, None)


def _numeric_base(tp: Any) -> type | None:
    if isinstance(tp, str):
        tp = {"int": int, "float": float}.get(tp.split("|")[0].strip(), tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _numeric_base(args[0]) if len(args) == 1 else None
    if origin is tuple:
        items = typing.get_args(tp)
        return _numeric_base(items[0]) if items else None
    if tp in (int, float):
        return tp
    return None


def range_problem(value: Any, bounds: Range | None) -> str | None:
    """Why ``value`` (a number, a tuple of numbers or ``None``) is outside ``bounds``, or ``None``.

    Example:
        >>> range_problem(-1, (1, None)), range_problem(0.0, (0, None, "open"))
        ('must be >= 1, got -1', 'must be > 0, got 0.0')
        >>> range_problem(float("nan"), (0, None)), range_problem((3, 0), (1, None))
        ('must be a finite number, got nan', 'must be >= 1, got 0')
    """
    if bounds is None or value is None or isinstance(value, bool):
        return None
    if isinstance(value, tuple):
        for v in value:
            problem = range_problem(v, bounds)
            if problem:
                return problem
        return None
    if not isinstance(value, (int, float)):
        return None
    if isinstance(value, int) and not -_INT_HIGH <= value <= _INT_HIGH:
        return f"must be within +-2**62, got {value}"
    low, high = bounds[0], bounds[1]
    open_low = len(bounds) > 2 and bounds[2] == "open"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if low is not None and (value <= low if open_low else value < low):
        return f"must be {'>' if open_low else '>='} {low}, got {value}"
    if high is not None and value > high:
        return f"must be <= {high}, got {value}"
    return None


def check_ranges(config: Any) -> None:
    """Raise ``ValueError`` naming the first field of ``config`` outside its range.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class C:
        ...     epochs: int = 3
        >>> check_ranges(C(epochs=0))
        Traceback (most recent call last):
        ...
        ValueError: epochs must be >= 1, got 0
    """
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        problem = range_problem(getattr(config, f.name), field_range(f, hints[f.name]))
        if problem:
            raise ValueError(f"{f.name} {problem}")


def _in_range(parse: Callable[[str], Any], bounds: Range | None) -> Callable[[str], Any]:
    if bounds is None:
        return parse

    def checked(text: str) -> Any:
        value = parse(text)
        problem = range_problem(value, bounds)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    checked.__name__ = getattr(parse, "__name__", "value")  # argparse names it in errors
    return checked


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _tuple_of(item: Callable[[str], Any], name: str) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        parts = [p for p in text.replace(" ", "").split(",") if p]
        try:
            return tuple(item(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {name} values, got {text!r}"
            ) from None

    return parse


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def inner(text: str) -> Any:
        return None if text.strip().lower() == "none" else parse(text)

    inner.__name__ = getattr(parse, "__name__", "value")  # argparse: "invalid int value"
    return inner


def value_parser(tp: Any) -> tuple[Callable[[str], Any], str]:
    """``(parse, metavar)`` for a config field's type: how ``--key=TEXT`` becomes a value.

    Example:
        >>> parse, metavar = value_parser(int | None)
        >>> parse("3"), parse("none"), metavar
        (3, None, 'INT|none')
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            parse, meta = value_parser(args[0])
            return _optional(parse), meta + "|none"
    if origin is tuple:
        items = typing.get_args(tp)
        if len(items) == 2 and items[1] is Ellipsis and items[0] in (int, float, str):
            return _tuple_of(items[0], items[0].__name__), f"{items[0].__name__.upper()},..."
    if tp is bool:
        return _parse_bool, "BOOL"
    if tp in (int, float, str):
        return tp, tp.__name__.upper()
    raise TypeError(f"config fields of type {tp!r} are not supported on the command line")


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """Add one ``--name=value`` option (also spelt with dashes) per field of ``config_cls``."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        parse, metavar = value_parser(hints[f.name])
        parse = _in_range(parse, field_range(f, hints[f.name]))
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"config field {f.name!r} of {config_cls.__name__} has no default")
        flags = [f"--{f.name}"]
        if "_" in f.name:
            flags.append(f"--{f.name.replace('_', '-')}")
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "type": parse,
            "default": default,
            "metavar": metavar,
            "help": f"{f.metadata.get('help', '')} (default: {default})".strip(),
        }
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
            kwargs.pop("metavar")
        if hints[f.name] is bool:
            kwargs.update(nargs="?", const=True)
        parser.add_argument(*flags, **kwargs)


def config_from_args(config_cls: type, namespace: argparse.Namespace) -> Any:
    """Build ``config_cls`` from the parsed options (fields the namespace lacks keep defaults)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    values = {k: v for k, v in vars(namespace).items() if k in names}
    config = config_cls(**values)
    check_ranges(config)  # the defaults too
    return config


def dataset_field(default: str = "auto") -> Any:
    """The ``dataset`` option every recipe on real data shares (a dataclass ``field``)."""
    return dataclasses.field(
        default=default,
        metadata={
            "help": "fashion-mnist, digits, or auto (Fashion-MNIST when its files are present)",
            "choices": ("auto", "fashion-mnist", "digits"),
        },
    )


def data_dir_field() -> Any:
    """The ``data_dir`` option: a folder holding Fashion-MNIST's four IDX files."""
    return dataclasses.field(
        default=None, metadata={"help": "folder of the 4 IDX files (default: Debian's)"}
    )


def seed_field(help: str = "random seed") -> Any:
    """The ``seed`` option (default 0); ``help`` says what it seeds."""
    return dataclasses.field(default=0, metadata={"help": help})


def seeds_field(default: tuple[int, ...] = (0,), help: str = "seeds, one run each") -> Any:
    """The ``seeds`` option of recipes that run once per seed."""
    return dataclasses.field(default=default, metadata={"help": help})


def out_field() -> Any:
    """The ``out`` option: the folder that run folders are created under."""
    return dataclasses.field(default="runs", metadata={"help": "folder for the run folder"})


def quiet_field(help: str = "no progress bars") -> Any:
    """The ``quiet`` option (default false)."""
    return dataclasses.field(default=False, metadata={"help": help})


def parse_config(config_cls: type, argv: Sequence[str], prog: str = "") -> Any:
    """Parse ``argv`` (``--key=value`` options) into a ``config_cls`` instance."""
    parser = ArgumentParser(prog=prog or config_cls.__name__)
    add_config_arguments(parser, config_cls)
    return config_from_args(config_cls, parser.parse_args(list(argv)))
