"""Self-describing checkpoints: safetensors tensors plus JSON metadata, never pickle.

A checkpoint is one ``.safetensors`` file. Its tensors are the hypernetwork's state (without the
target's generated parameters, whose values are never used) and, optionally, the training state
(optimizer tensors, RNG states). Its metadata (key ``"hyperloom"``) is JSON with everything
needed to rebuild the hypernetwork: the target spec and how to build the target, the generator
and conditioner configurations, the task vocabulary, the five criteria, the library version and
a SHA-256 over every tensor, so that a truncated or tampered file is refused. Writes are atomic:
a temporary file in the same folder, then a rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

FORMAT = 1
_KEY = "hyperloom"


def _version() -> str:
    from . import __version__

    return __version__


def _digest(tensors: Mapping[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _split_state(state: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """Replace tensors in a nested state by ``{"__tensor__": key}`` and collect them."""
    if isinstance(state, Tensor):
        key = prefix
        tensors[key] = state.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(state, Mapping):
        return {
            "__dict__": [
                [_key(k), _split_state(v, f"{prefix}/{k}", tensors)] for k, v in state.items()
            ]
        }
    if isinstance(state, (list, tuple)):
        items = [_split_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(state)]
        return {"__tuple__": items} if isinstance(state, tuple) else items
    if isinstance(state, np.ndarray):
        return _split_state(torch.from_numpy(state.copy()), prefix, tensors) | {"__numpy__": True}
    if isinstance(state, (np.integer, np.floating)):
        return state.item()
    return state


def _key(k: Any) -> Any:
    return k if isinstance(k, (int, str)) else str(k)


def _join_state(state: Any, tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(state, dict):
        if "__tensor__" in state:
            t = tensors[state["__tensor__"]]
            return t.numpy() if state.get("__numpy__") else t
        if "__dict__" in state:
            return {k: _join_state(v, tensors) for k, v in state["__dict__"]}
        if "__tuple__" in state:
            return tuple(_join_state(v, tensors) for v in state["__tuple__"])
    if isinstance(state, list):
        return [_join_state(v, tensors) for v in state]
    return state


def _generated_keys(hnet: nn.Module) -> set[str]:
    return {n for n in hnet.state_dict() if n in hnet._generated_names}


def save(
    hnet: nn.Module,
    path: str | os.PathLike,
    *,
    target: Mapping[str, Any] | None = None,
    tasks: Sequence[str] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    step: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of ``hnet`` (atomically).

    Args:
        hnet: a :class:`~hyperloom.HyperNetwork`.
        path: the ``.safetensors`` file to write.
        target: how to rebuild the target (``{"builder": ..., "kwargs": ...}``); by default the
            target's ``hyperloom_config`` (set by :func:`hyperloom.targets.build_target`).
        tasks: names of the tasks (the task vocabulary), in id order.
        optimizer: when given, its state is saved together with ``step`` and the RNG states
            of torch, numpy and ``random``, so that :func:`resume` continues exactly.
        step: the training step reached.
        extra: more JSON-ready metadata (a recipe's config, say).

    Returns:
        The path written.

    Example:
        >>> import tempfile, hyperloom as hl
        >>> hnet = hl.HyperNetwork(nn.Linear(3, 2), hl.TaskEmbedding(2, 4), hl.FlatGenerator())
        >>> p = hl.save(hnet, tempfile.mkdtemp() + "/h.safetensors", tasks=["a", "b"])
        >>> hl.load(p, target=nn.Linear(3, 2)).describe().inputs
        'task-conditioned'
    """
    from safetensors.torch import save_file

    from .hypernet import HyperNetwork
    from .runs import to_jsonable

    if not isinstance(hnet, HyperNetwork):
        raise TypeError(f"save() takes a HyperNetwork, got {type(hnet).__name__}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint paths end in .safetensors, got {str(path)!r}")
    if (
        tasks is not None
        and hasattr(hnet.conditioner, "num")
        and len(tasks) != hnet.conditioner.num
    ):
        raise ValueError(
            f"{len(tasks)} task names for a TaskEmbedding of {hnet.conditioner.num} tasks"
        )
    skip = _generated_keys(hnet)
    tensors = {
        f"model/{k}": v.detach().cpu().contiguous().clone()
        for k, v in hnet.state_dict().items()
        if k not in skip
    }
    training = None
    if optimizer is not None:
        training = {
            "step": step,
            "optimizer": _split_state(optimizer.state_dict(), "optim", tensors),
            "rng": _split_state(
                {
                    "torch": torch.get_rng_state(),
                    "numpy": np.random.get_state(),
                    "python": random.getstate(),
                },
                "rng",
                tensors,
            ),
        }
    elif step is not None:
        training = {"step": step}
    target = target if target is not None else getattr(hnet.target, "hyperloom_config", None)
    meta = {
        "format": FORMAT,
        "version": _version(),
        "target": target,
        "target_type": type(hnet.target).__name__,
        "tasks": list(tasks) if tasks is not None else None,
        "criteria": hnet.describe().to_dict(),
        "trainable_parameters": sum(p.numel() for p in hnet.parameters() if p.requires_grad),
        "hypernetwork": hnet.config(),
        "training": training,
        "extra": extra,
        "sha256": _digest(tensors),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={_KEY: json.dumps(to_jsonable(meta))})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read and verify a checkpoint: its metadata and tensors.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a hyperloom checkpoint, truncated, tampered, or from an incompatible
            format version.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types for broken headers
        raise ValueError(
            f"{str(path)!r} is not a readable checkpoint (truncated or corrupted?): {e}"
        ) from e
    if raw is None:
        raise ValueError(f"{str(path)!r} is a safetensors file but not a hyperloom checkpoint")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} has corrupted hyperloom metadata: {e}") from e
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise ValueError(
            f"{str(path)!r} has checkpoint format {fmt!r}; hyperloom {_version()} reads format "
            f"{FORMAT} (written by version {meta.get('version')!r})"
        )
    if _digest(tensors) != meta.get("sha256"):
        raise ValueError(f"{str(path)!r} failed its SHA-256 check: the tensors were modified")
    return meta, tensors


def load(
    path: str | os.PathLike,
    *,
    target: nn.Module | None = None,
    conditioner: nn.Module | None = None,
) -> nn.Module:
    """Rebuild a :class:`~hyperloom.HyperNetwork` from a checkpoint.

    Args:
        path: a file written by :func:`save`.
        target: the target module; by default rebuilt from the checkpoint's target config.
        conditioner: the conditioner; needed only when it cannot be rebuilt from JSON (a
            ``SampleEncoder`` wraps an arbitrary encoder module).

    Returns:
        The hypernetwork, with the saved parameters and buffers.

    Raises:
        ValueError: unreadable or tampered file, or a target whose parameters differ from the
            checkpoint's spec.
    """
    from .conditioning import CONDITIONERS
    from .generators import build_generator
    from .hypernet import HyperNetwork
    from .target import TargetSpec
    from .targets import target_from_config

    meta, tensors = read_checkpoint(path)
    config = meta["hypernetwork"]
    if target is None:
        if not meta.get("target"):
            raise ValueError(
                f"{str(path)!r} does not say how to build its target "
                f"({meta.get('target_type')}); pass target=..."
            )
        target = target_from_config(meta["target"])
    if conditioner is None:
        conditioner = _build_conditioner(config["conditioner"], CONDITIONERS)
    spec = TargetSpec.from_dict(config["spec"])
    names = set(spec.names)
    hnet = HyperNetwork(
        target,
        conditioner,
        build_generator(config["generator"]),
        generate=lambda name, tensor: name in names,
        init=None,
        check_finite=bool(config.get("check_finite", False)),
    )
    if hnet.spec != spec:
        raise ValueError(
            f"the target does not match the checkpoint's spec:\nexpected\n{spec}\ngot\n{hnet.spec}"
        )
    state = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    missing, unexpected = hnet.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in hnet._generated_names]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint tensors do not fit the rebuilt hypernetwork: missing {missing}, "
            f"unexpected {unexpected}"
        )
    return hnet


def _build_conditioner(config: Mapping[str, Any], registry: Mapping[str, type]) -> nn.Module:
    kind = config["type"]
    if kind == "concat":
        return registry["concat"](*(_build_conditioner(c, registry) for c in config["parts"]))
    if kind == "sample":
        raise ValueError(
            "this checkpoint's conditioner wraps an encoder module that JSON cannot describe; "
            "pass conditioner=SampleEncoder(encoder, dim=...) to load()"
        )
    if kind not in registry:
        raise ValueError(f"unknown conditioner type {kind!r} in checkpoint")
    options = {k: v for k, v in config.items() if k != "type"}
    if kind == "task":
        return registry["task"](options.pop("num"), options.pop("dim"), **options)
    return registry[kind](options.pop("dim"), **options)


def resume(path: str | os.PathLike, optimizer: torch.optim.Optimizer) -> int | None:
    """Restore the optimizer state and RNG states saved with :func:`save`; return the step.

    Call it on the optimizer of the hypernetwork returned by :func:`load` (built over
    ``hnet.parameters()`` in the same order as when saving). Training then continues exactly as
    if it had not stopped.

    Raises:
        ValueError: the checkpoint holds no training state.
    """
    meta, tensors = read_checkpoint(path)
    training = meta.get("training") or {}
    if "optimizer" not in training:
        raise ValueError(f"{str(path)!r} holds no optimizer state; save with optimizer=...")
    optimizer.load_state_dict(_join_state(training["optimizer"], tensors))
    rng = _join_state(training["rng"], tensors)
    torch.set_rng_state(rng["torch"])
    np_state = rng["numpy"]
    np.random.set_state(tuple(np_state))
    py = rng["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    return training.get("step")


def describe_checkpoint(path: str | os.PathLike) -> str:
    """A human-readable summary: the five criteria, the target spec, sizes and tasks."""
    from .target import TargetSpec

    meta, _tensors = read_checkpoint(path)
    config = meta["hypernetwork"]
    spec = TargetSpec.from_dict(config["spec"])
    c = meta["criteria"]
    lines = [
        f"checkpoint      {path}",
        f"written by      hyperloom {meta['version']} (format {meta['format']})",
        f"target          {meta['target_type']}"
        + (f" built by {meta['target']['builder']}" if meta.get("target") else ""),
        f"generator       {config['generator']['name']} {config['generator']['options']}",
        f"conditioner     {config['conditioner']}",
        f"trainable       {meta['trainable_parameters']:,} parameters "
        f"(the generated part of the target has {spec.numel:,})",
        "",
        "five design criteria",
        f"  1. inputs               {c['inputs']}",
        f"  2. outputs              {c['outputs']}",
        f"  3. input variability    {c['input_variability']}",
        f"  4. output variability   {c['output_variability']}",
        f"  5. architecture         {c['architecture']}",
        "",
        "generated tensors",
        *("  " + line for line in str(spec).splitlines()),
    ]
    if meta.get("tasks"):
        lines += ["", "tasks", *(f"  {i}: {t}" for i, t in enumerate(meta["tasks"]))]
    training = meta.get("training")
    if training:
        lines += ["", f"training state  step {training.get('step')}"]
    return "\n".join(lines)


def export_checkpoint(path: str | os.PathLike, *, task: int, out: str | os.PathLike) -> Path:
    """Write the target weights generated for ``task`` as a plain safetensors state dict.

    The file holds the target's full ``state_dict()`` (generated and ordinary parameters and its
    buffers) and loads with ``safetensors.torch.load_file`` into the plain target.
    """
    from safetensors.torch import save_file

    hnet = load(path)
    num = getattr(hnet.conditioner, "num", None)
    if num is None:
        raise ValueError("export --task needs a task-conditioned checkpoint")
    plain = hnet.export(task=torch.tensor(task))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in plain.state_dict().items()}
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata={"source": str(path), "task": str(task)})
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
