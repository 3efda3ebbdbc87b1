"""Typed dataclass configs as command-line options: ``--key=value`` with checked types.

A recipe's ``Config`` is a dataclass whose fields have defaults; ``field(metadata=...)`` may
give ``help`` and ``choices``. Supported field types: ``int``, ``float``, ``str``, ``bool``,
``tuple[int, ...]`` (written ``400,400``), ``tuple[float, ...]``, ``tuple[str, ...]`` and
``X | None`` of these (written ``none``).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
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

    return inner


def _parser_for(tp: Any) -> tuple[Callable[[str], Any], str]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            parse, meta = _parser_for(args[0])
            return _optional(parse), meta + "|none"
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float, str):
            return _tuple_of(args[0], args[0].__name__), f"{args[0].__name__.upper()},..."
    if tp is bool:
        return _parse_bool, "BOOL"
    if tp in (int, float, str):
        return tp, tp.__name__.upper()
    raise TypeError(f"config fields of type {tp!r} are not supported on the command line")


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """Add one ``--name=value`` option (also spelt with dashes) per field of ``config_cls``."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        parse, metavar = _parser_for(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
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
    return config_cls(**values)


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


def parse_config(config_cls: type, argv: Sequence[str], prog: str = "") -> Any:
    """Parse ``argv`` (``--key=value`` options) into a ``config_cls`` instance."""
    parser = ArgumentParser(prog=prog or config_cls.__name__)
    add_config_arguments(parser, config_cls)
    return config_from_args(config_cls, parser.parse_args(list(argv)))
