"""The ``hyperloom`` command: one function per subcommand, argparse only.

hyperloom demo [--key=value ...]          the review's illustrative example
hyperloom train RECIPE [--key=value ...]  any registered recipe
hyperloom describe CHECKPOINT             the five criteria, spec and sizes of a checkpoint
hyperloom export CHECKPOINT --task N --out FILE
hyperloom list                            generators, conditioners, recipes
hyperloom reproduce RECIPE [--seeds 0,1 | --smoke]   rerun a recorded result beside the record
hyperloom sweep RECIPE --grid KEY=V1,V2 --select PATH [--key=value ...]
                                          one run per grid value, selected on a validation figure

``python -m hyperloom`` is the same command. Options are checked before any work: an invalid
value exits with status 2 and a message naming the option; a failing command prints one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .recipes.config import ArgumentParser, add_config_arguments, config_from_args


def cmd_demo(args: argparse.Namespace, rest: Sequence[str]) -> int:
    return _run_recipe("illustrative", rest, prog="hyperloom demo")


def cmd_train(args: argparse.Namespace, rest: Sequence[str]) -> int:
    if args.recipe is None:  # the recipe's own parser answers --help once it is named
        print(args.usage())
        if "-h" in rest or "--help" in rest:
            return 0
        print("hyperloom train: error: name a recipe", file=sys.stderr)
        return 2
    return _run_recipe(args.recipe, rest, prog=f"hyperloom train {args.recipe}")


def _run_recipe(name: str, argv: Sequence[str], prog: str) -> int:
    from .recipes import load_recipe

    module = load_recipe(name)
    parser = ArgumentParser(prog=prog, description=(module.__doc__ or "").strip().splitlines()[0])
    add_config_arguments(parser, module.Config)
    args = parser.parse_args(list(argv))
    try:
        config = config_from_args(module.Config, args)
    except ValueError as e:
        parser.error(str(e))
    nproc = getattr(config, "nproc", 1)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # --nproc N: rerun under torchrun
        from .recipes.distributed import launch

        return launch(nproc, ["train", name, *argv])
    out = getattr(config, "out", None)
    if out is not None:
        problem = _unwritable(Path(out))
        if problem:
            parser.error(f"argument --out: {problem}")
    before = _entries(out)
    try:
        module.run(config)
    except BaseException:
        _remove_empty_new_folders(out, before)  # a failed run leaves no empty run folder
        raise
    return 0


def _unwritable(out: Path) -> str | None:
    """Why run folders cannot be created under ``out``, or ``None``; creates ``out`` itself."""
    if str(out).strip() == "":
        return "an empty path"
    try:
        if out.exists() and not out.is_dir():
            return f"{str(out)!r} exists and is not a folder"
        out.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        return f"cannot create {str(out)!r}: {getattr(e, 'strerror', None) or e}"
    if not os.access(out, os.W_OK | os.X_OK):
        return f"{str(out)!r} is not writable"
    return None


def _entries(out: str | None) -> set[str]:
    if out is None or not Path(out).is_dir():
        return set()
    return {p.name for p in Path(out).iterdir()}


def _remove_empty_new_folders(out: str | None, before: set[str]) -> None:
    if out is None or not Path(out).is_dir():
        return
    for p in Path(out).iterdir():
        if p.name not in before and p.is_dir() and not any(p.iterdir()):
            p.rmdir()


def cmd_describe(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from .checkpoint import describe_checkpoint

    print(describe_checkpoint(args.checkpoint))
    return 0


def cmd_export(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from .checkpoint import export_checkpoint

    path = export_checkpoint(args.checkpoint, task=args.task, out=args.out)
    print(f"wrote {path}")
    return 0


def cmd_list(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from .conditioning import CONDITIONERS
    from .generators import get_generator, list_generators
    from .recipes import RECIPES

    print("generators:")
    for name in list_generators():
        cls = get_generator(name)
        print(f"  {name:<12}{cls.__name__:<22}{cls.strategy} ({cls.architecture})")
    print("conditioners:")
    for name, cond in CONDITIONERS.items():
        kind = cond.kind if isinstance(cond.kind, str) else ""  # Concat's depends on its parts
        print(f"  {name:<12}{cond.__name__:<22}{kind or 'mixture'}")
    print("recipes:")
    for name in sorted(RECIPES):
        print(f"  {name:<14}hyperloom train {name} --help")
    return 0


def _task_id(text: str) -> int:
    try:
        task = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer task id, got {text!r}") from None
    if not 0 <= task < 2**62:
        raise argparse.ArgumentTypeError(f"must be a task id in [0, 2**62), got {text}")
    return task


def cmd_reproduce(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from .recipes.reproduce import main as reproduce_main

    return reproduce_main(rest)


def cmd_sweep(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from .recipes.sweep import main as sweep_main

    return sweep_main(rest)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="hyperloom", description="Hypernetworks for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo", help="the review's illustrative example on real data", add_help=False
    )
    p.set_defaults(func=cmd_demo, passthrough=True)

    from .recipes import RECIPES

    p = sub.add_parser("train", help="run a recipe: hyperloom train RECIPE --help", add_help=False)
    p.add_argument("recipe", nargs="?", choices=sorted(RECIPES), help="the recipe to run")
    p.set_defaults(func=cmd_train, passthrough=True, usage=p.format_help)

    p = sub.add_parser("describe", help="print what a checkpoint holds")
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by hyperloom.save")
    p.set_defaults(func=cmd_describe, passthrough=False)

    p = sub.add_parser("export", help="write the weights generated for one task")
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by hyperloom.save")
    p.add_argument("--task", type=_task_id, required=True, help="the task id to generate for")
    p.add_argument("--out", required=True, help="output .safetensors file (a plain state dict)")
    p.set_defaults(func=cmd_export, passthrough=False)

    p = sub.add_parser("list", help="list generators, conditioners and recipes")
    p.set_defaults(func=cmd_list, passthrough=False)

    p = sub.add_parser("reproduce", help="rerun a recorded result: --help", add_help=False)
    p.set_defaults(func=cmd_reproduce, passthrough=True)

    p = sub.add_parser("sweep", help="a grid of a recipe's options: --help", add_help=False)
    p.set_defaults(func=cmd_sweep, passthrough=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hyperloom`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not args.passthrough:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args, rest)
    except (OSError, IndexError, ValueError) as e:  # one line, never a traceback
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"hyperloom {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
