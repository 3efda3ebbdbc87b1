"""Self-describing checkpoints: safetensors tensors plus JSON metadata, never pickle.

A checkpoint is one ``.safetensors`` file. Its tensors are the hypernetwork's state (without the
target's generated parameters, whose values are never used) and, optionally, the training state
(optimizer tensors, RNG states). Its metadata (key ``"hyperloom"``) is JSON with everything
needed to rebuild the hypernetwork: the target spec and how to build the target, the generator
and conditioner configurations, the task vocabulary, the five criteria, the library version and
a SHA-256 over every tensor and the metadata itself, so that a truncated or modified file is
refused.

What :func:`load` checks, in this order, before it allocates anything the file does not hold:
the digest; the type of every metadata field; that the hypernetwork it describes, built on
PyTorch's ``meta`` device (no memory), has exactly the file's tensors with their shapes; and
that the generated part of the target is at most :data:`GENERATED_PER_STORED` times the
stored elements (plus :data:`GENERATED_FLOOR`). Every refusal is a ``ValueError`` naming the
field or parameter (``FileNotFoundError`` for a missing file). The digest is an integrity check,
not a signature: someone who can write the file can recompute it, which is why the checks after
it do not trust the metadata either.

Writes are atomic and durable: a temporary file in the same folder, flushed with ``fsync``,
renamed over the target, then the folder is ``fsync``-ed; temporary files left by a killed
save (their process is gone) are removed by the next save to the same folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ._version import __version__

if TYPE_CHECKING:  # imported where used: hypernet imports the generators and conditioners
    from .conditioning.base import Conditioner
    from .generators.base import Generator
    from .hypernet import HyperNetwork

FORMAT = 2
"""Format 2: the SHA-256 covers the metadata too (format 1 covered the tensors only)."""

READS = (1, 2)
"""The formats :func:`load` reads. Format 1 (hyperloom 0.1) is read with every check that its
contents allow; what it cannot be checked for: its SHA-256 covers the tensors only, so a change
to its metadata is caught only where the type, size and shape checks catch it; and it holds no
state of a seeded :class:`~hyperloom.Noise`, whose draws start again from the seed (as they did
in 0.1). Its ``lenet`` target is 0.1's, with unnamed layers (the ``lenet_v01`` builder)."""

_KEY = "hyperloom"

GENERATED_PER_STORED = 1024
"""How many generated target elements :func:`load` accepts per element stored in the file."""

GENERATED_FLOOR = 2**20
"""Generated elements :func:`load` accepts whatever the file holds (4 MiB of float32)."""

_MAX_NESTING = 8  # mixtures of mixtures of conditioners, at most this deep


def _version() -> str:
    return __version__


def _canonical(meta: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def _digest(tensors: Mapping[str, Tensor], meta: Mapping[str, Any] | None) -> str:
    """SHA-256 over the tensors and, unless ``meta`` is ``None`` (format 1), the metadata."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    if meta is not None:
        h.update(b"\0metadata\0")
        h.update(_canonical(meta))
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


def _join_state(state: Any, tensors: Mapping[str, Tensor], where: str, depth: int = 0) -> Any:
    """Inverse of :func:`_split_state`; ``ValueError`` naming ``where`` for a malformed state."""
    if depth > 32:
        raise ValueError(f"checkpoint field {where}: nested more than 32 levels deep")
    if isinstance(state, dict):
        if "__tensor__" in state:
            key = state["__tensor__"]
            if not isinstance(key, str) or key not in tensors:
                raise ValueError(f"checkpoint field {where}: names a tensor {key!r} not in file")
            t = tensors[key]
            return t.numpy() if state.get("__numpy__") else t
        if "__dict__" in state:
            items = state["__dict__"]
            if not isinstance(items, list) or not all(
                isinstance(kv, list) and len(kv) == 2 and isinstance(kv[0], (int, str))
                for kv in items
            ):
                raise ValueError(f"checkpoint field {where}: malformed mapping")
            return {k: _join_state(v, tensors, f"{where}.{k}", depth + 1) for k, v in items}
        if "__tuple__" in state:
            if not isinstance(state["__tuple__"], list):
                raise ValueError(f"checkpoint field {where}: malformed tuple")
            return tuple(
                _join_state(v, tensors, f"{where}.{i}", depth + 1)
                for i, v in enumerate(state["__tuple__"])
            )
        raise ValueError(f"checkpoint field {where}: unknown entry with keys {sorted(state)}")
    if isinstance(state, list):
        return [_join_state(v, tensors, f"{where}.{i}", depth + 1) for i, v in enumerate(state)]
    return state


def _generated_keys(hnet: HyperNetwork) -> set[str]:
    return {n for n in hnet.state_dict() if n in hnet._generated_names}


def _printable(text: Any) -> str:
    """``text`` with control characters (terminal escape sequences) escaped, for printing."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


# --------------------------------------------------------------------------------------------
# Writing


def _check_rebuildable(hnet: HyperNetwork) -> None:
    """Refuse what :func:`load` could not rebuild: unregistered generators, and conditioners
    that cannot describe themselves (a conditioner outside the core's table, an application's
    ``Preference`` say, is recorded by its ``config()`` and given back to :func:`load`)."""
    from .conditioning import CONDITIONERS
    from .generators import get_generator

    gen = hnet.generator
    name = gen.registry_name
    try:
        registered = get_generator(name) if name else None
    except ValueError:
        registered = None
    if registered is not type(gen):
        raise ValueError(
            f"save() cannot record the generator {type(gen).__name__}: it is not registered "
            f"(registry name {name!r}); decorate its class with "
            "@hyperloom.register_generator('name')"
        )

    def check(cond: nn.Module) -> None:
        if type(cond) not in CONDITIONERS.values():
            describe = getattr(cond, "config", None)
            config = describe() if callable(describe) else None
            if not isinstance(config, dict) or not isinstance(config.get("type"), str):
                raise ValueError(
                    f"save() cannot record the conditioner {type(cond).__name__}: its config() "
                    "must return a JSON dict with a 'type'"
                )
        for part in getattr(cond, "parts", ()):
            check(part)

    check(hnet.conditioner)


def _stale(tmp: Path) -> bool:
    """Whether a temporary file ``.NAME.PID.tmp`` was left by a process that no longer runs."""
    try:
        pid = int(tmp.name.rsplit(".", 2)[-2])
    except ValueError:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot open or sync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` then fsync and rename onto ``path``; stale temporaries are cleaned first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob(f".{path.name}.*.tmp"):
        if _stale(old):
            with contextlib.suppress(OSError):
                old.unlink()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    """Write a checkpoint of ``hnet`` (atomically and durably).

    Args:
        hnet: a :class:`~hyperloom.HyperNetwork` with a registered generator and a conditioner
            :func:`load` can rebuild.
        path: the ``.safetensors`` file to write.
        target: how to rebuild the target (``{"builder": ..., "kwargs": ...}``); by default the
            target's ``hyperloom_config`` (set by :func:`hyperloom.networks.build_target`).
        tasks: names of the tasks (the task vocabulary), in id order.
        optimizer: when given, its state (and its type) is saved together with ``step`` and the
            RNG states of torch, numpy and ``random``, so that :func:`resume` continues exactly.
            The draws of a seeded :class:`~hyperloom.Noise` are part of the model's state and
            are always saved.
        step: the training step reached.
        extra: more JSON-ready metadata (a recipe's config, say).

    Returns:
        The path written.

    Raises:
        TypeError: ``hnet`` is not a HyperNetwork.
        ValueError: a path not ending in ``.safetensors``, a task list of the wrong length, or a
            generator or conditioner that :func:`load` could not rebuild.

    Example:
        >>> import tempfile, hyperloom as hl
        >>> hnet = hl.HyperNetwork(nn.Linear(3, 2), hl.TaskEmbedding(2, 4),
        ...     hl.FlatGenerator.factory())
        >>> p = hl.save(hnet, tempfile.mkdtemp() + "/h.safetensors", tasks=["a", "b"])
        >>> hl.load(p, target=nn.Linear(3, 2)).describe().inputs
        'task-conditioned'
    """
    from safetensors.torch import save_file

    from .hypernet import HyperNetwork

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
    _check_rebuildable(hnet)
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
            "optimizer_type": _optimizer_type(optimizer),
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
    meta = to_jsonable(
        {
            "format": FORMAT,
            "version": _version(),
            "target": target,
            "target_type": type(hnet.target).__name__,
            "tasks": [str(t) for t in tasks] if tasks is not None else None,
            "criteria": hnet.describe().to_dict(),
            "trainable_parameters": sum(p.numel() for p in hnet.parameters() if p.requires_grad),
            "hypernetwork": hnet.config(),
            "training": training,
            "extra": extra,
        }
    )
    meta["sha256"] = _digest(tensors, meta)
    text = json.dumps(meta)
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={_KEY: text}))
    return path


def _optimizer_type(optimizer: torch.optim.Optimizer) -> str:
    cls = type(optimizer)
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------------------------
# Reading and checking


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read and verify a checkpoint: its metadata and tensors.

    Args:
        path: a file written by :func:`save`.

    Returns:
        ``(metadata, tensors)``; the metadata's fields have the types :func:`save` writes.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a hyperloom checkpoint, truncated, modified (tensors or metadata), from
            an incompatible format version, or with a field of the wrong type (named).

    Example:
        >>> import tempfile, hyperloom as hl
        >>> hnet = hl.HyperNetwork(nn.Linear(3, 2), hl.TaskEmbedding(2, 4),
        ...     hl.FlatGenerator.factory())
        >>> meta, tensors = read_checkpoint(hl.save(hnet, tempfile.mkdtemp() + "/h.safetensors"))
        >>> meta["hypernetwork"]["generator"]["name"], "model/conditioner.rows.1" in tensors
        ('once', True)
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
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{str(path)!r} has corrupted hyperloom metadata: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{str(path)!r} has hyperloom metadata that is not a JSON object")
    fmt = meta.get("format")
    if isinstance(fmt, bool) or fmt not in READS:
        raise ValueError(
            f"{str(path)!r} has checkpoint format {_printable(repr(fmt))}; hyperloom "
            f"{_version()} reads formats {', '.join(map(str, READS))} (written by version "
            f"{_printable(repr(meta.get('version')))})"
        )
    try:
        digest = _digest(tensors, meta if fmt >= 2 else None)
    except (ValueError, TypeError, RecursionError) as e:
        raise ValueError(f"{str(path)!r} has metadata that cannot be digested: {e}") from e
    if digest != meta.get("sha256"):
        what = "the tensors or the metadata" if fmt >= 2 else "the tensors"
        raise ValueError(f"{str(path)!r} failed its SHA-256 check: {what} were modified")
    _check_meta(meta)
    return meta, tensors


def _expect(value: Any, kinds: type | tuple[type, ...], where: str, what: str) -> Any:
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in _tuple(kinds))
    if not ok:
        raise ValueError(
            f"checkpoint field {where}: expected {what}, got {_printable(repr(value))[:80]}"
        )
    return value


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _check_conditioner_config(config: Any, where: str, depth: int = 0) -> None:
    _expect(config, dict, where, "an object")
    kind = _expect(config.get("type"), str, f"{where}.type", "a string")
    if kind == "concat":
        if depth >= _MAX_NESTING:
            raise ValueError(f"checkpoint field {where}: mixtures nested too deep")
        parts = _expect(config.get("parts"), list, f"{where}.parts", "a list")
        for i, part in enumerate(parts):
            _check_conditioner_config(part, f"{where}.parts.{i}", depth + 1)
        return
    for key, value in config.items():
        if key in ("num", "dim"):
            _expect(value, int, f"{where}.{key}", "an integer")
        elif key != "type":
            _expect(value, (int, float, str, type(None)), f"{where}.{key}", "a number")


def _check_meta(meta: dict[str, Any]) -> None:
    """Types of every field :func:`load`, :func:`resume` and ``describe`` read."""
    _expect(meta.get("version"), str, "version", "a string")
    _expect(meta.get("target_type"), str, "target_type", "a string")
    target = meta.get("target")
    if target is not None:
        _expect(target, dict, "target", "an object or null")
        _expect(target.get("builder"), str, "target.builder", "a string")
        _expect(target.get("kwargs", {}), dict, "target.kwargs", "an object")
    tasks = meta.get("tasks")
    if tasks is not None:
        _expect(tasks, list, "tasks", "a list or null")
        for i, t in enumerate(tasks):
            _expect(t, str, f"tasks.{i}", "a string")
    criteria = _expect(meta.get("criteria"), dict, "criteria", "an object")
    for key in ("inputs", "outputs", "input_variability", "output_variability", "architecture"):
        _expect(criteria.get(key), str, f"criteria.{key}", "a string")
    _expect(meta.get("trainable_parameters"), int, "trainable_parameters", "an integer")
    config = _expect(meta.get("hypernetwork"), dict, "hypernetwork", "an object")
    spec = _expect(config.get("spec"), dict, "hypernetwork.spec", "an object")
    params = _expect(spec.get("params"), list, "hypernetwork.spec.params", "a list")
    for i, p in enumerate(params):
        where = f"hypernetwork.spec.params.{i}"
        _expect(p, dict, where, "an object")
        _expect(p.get("name"), str, f"{where}.name", "a string")
        shape = _expect(p.get("shape"), list, f"{where}.shape", "a list")
        for s in shape:
            if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 2**62:
                raise ValueError(f"checkpoint field {where}.shape: {_printable(shape)[:80]}")
        dtype = getattr(
            torch, str(_expect(p.get("dtype"), str, f"{where}.dtype", "a string")), None
        )
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(
                f"checkpoint field {where}.dtype: {_printable(p['dtype'])!r} is not a floating "
                "dtype (only those are generated)"
            )
        for key in ("fan_in", "fan_out"):
            _expect(p.get(key), int, f"{where}.{key}", "an integer")
        init = p.get("init_const")
        if init is not None:
            _expect(init, (int, float), f"{where}.init_const", "a number or null")
            if not math.isfinite(init):
                raise ValueError(f"checkpoint field {where}.init_const: {init} is not finite")
    _check_conditioner_config(config.get("conditioner"), "hypernetwork.conditioner")
    gen = _expect(config.get("generator"), dict, "hypernetwork.generator", "an object")
    _expect(gen.get("name"), str, "hypernetwork.generator.name", "a string")
    _expect(gen.get("options", {}), dict, "hypernetwork.generator.options", "an object")
    _expect(config.get("check_finite", False), bool, "hypernetwork.check_finite", "a boolean")
    _expect(config.get("task_statistics", False), bool, "hypernetwork.task_statistics", "a boolean")
    training = meta.get("training")
    if training is not None:
        _expect(training, dict, "training", "an object or null")
        if training.get("step") is not None:
            _expect(training["step"], int, "training.step", "an integer or null")
        if "optimizer" in training:
            _expect(training.get("optimizer_type"), str, "training.optimizer_type", "a string")
            _expect(training.get("rng"), dict, "training.rng", "an object")


def _bound_lists(value: Any, limit: int, where: str) -> None:
    """Lists in a builder's options (layer sizes, say) are at most ``limit`` long."""
    if isinstance(value, list):
        if len(value) > limit:
            raise ValueError(
                f"checkpoint field {where}: a list of {len(value)} entries for a file of "
                f"{limit} tensors and generated tensors"
            )
        for i, v in enumerate(value):
            _bound_lists(v, limit, f"{where}.{i}")
    elif isinstance(value, dict):
        for k, v in value.items():
            _bound_lists(v, limit, f"{where}.{k}")


def _rebuild(where: str, build: Callable[[], Any]) -> Any:
    """Run a constructor on checkpoint values; any failure is a ``ValueError`` naming ``where``."""
    try:
        return build()
    except ValueError as e:
        raise ValueError(f"checkpoint field {where}: {_printable(e)}") from e
    except Exception as e:  # hostile values reach arbitrary constructors: one error type out
        raise ValueError(
            f"checkpoint field {where}: cannot rebuild it ({type(e).__name__}: {_printable(e)})"
        ) from e


def _first_spec_mismatch(saved: Any, got: Any) -> str | None:
    """The first difference between the checkpoint's spec and the target's, in words."""
    saved_names, got_names = list(saved.names), list(got.names)
    for i, (a, b) in enumerate(zip(saved.params, got.params, strict=False)):
        if a.name != b.name:
            return (
                f"generated tensor {i} is {a.name!r} in the checkpoint but {b.name!r} in the target"
            )
        for key in ("shape", "fan_in", "fan_out", "init_const"):
            va, vb = getattr(a, key), getattr(b, key)
            if va != vb:
                what = {"init_const": "constant initialisation (init_const)"}.get(key, key)
                return (
                    f"parameter {a.name!r}: {what} {va!r} in the checkpoint, {vb!r} in the target"
                )
    if len(saved_names) != len(got_names):
        longer = saved_names if len(saved_names) > len(got_names) else got_names
        extra = longer[min(len(saved_names), len(got_names))]
        side = "checkpoint" if longer is saved_names else "target"
        return (
            f"the checkpoint generates {len(saved_names)} tensors, the target "
            f"{len(got_names)}; first unmatched: {extra!r} (only in the {side})"
        )
    return None


def _check_state_shapes(expected: Mapping[str, Tensor], stored: Mapping[str, Tensor]) -> None:
    """The file's ``model/`` tensors are exactly the rebuilt state, shape for shape."""
    missing = [k for k in expected if k not in stored]
    unexpected = [k for k in stored if k not in expected]
    if missing or unexpected:
        raise ValueError(
            "the checkpoint's tensors do not fit the hypernetwork its metadata describes: "
            f"missing {_printable(missing[:5])}, unexpected {_printable(unexpected[:5])}"
        )
    for k, t in expected.items():
        if k.endswith("_extra_state"):
            continue
        if tuple(t.shape) != tuple(stored[k].shape):
            raise ValueError(
                f"tensor {_printable(k)!r}: shape {tuple(stored[k].shape)} in the checkpoint, "
                f"{tuple(t.shape)} in the hypernetwork its metadata describes"
            )
        if t.is_floating_point() != stored[k].is_floating_point():
            raise ValueError(
                f"tensor {_printable(k)!r}: dtype {stored[k].dtype} in the checkpoint, "
                f"expected a {'floating' if t.is_floating_point() else 'non-floating'} dtype"
            )


def load(
    path: str | os.PathLike,
    *,
    target: nn.Module | None = None,
    conditioner: Conditioner | None = None,
    max_generated: int | None = None,
) -> HyperNetwork:
    """Rebuild a :class:`~hyperloom.HyperNetwork` from a checkpoint, in the dtype it was saved.

    Args:
        path: a file written by :func:`save`.
        target: the target module; by default rebuilt from the checkpoint's target config.
        conditioner: the conditioner; needed only when it cannot be rebuilt from JSON (a
            ``SampleEncoder`` wraps an arbitrary encoder module).
        max_generated: the most generated target elements accepted (default:
            :data:`GENERATED_PER_STORED` per stored element, at least :data:`GENERATED_FLOOR`).

    Returns:
        The hypernetwork, with the saved parameters and buffers (and their dtypes).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, modified or malformed file (the field is named), a target whose
            generated parameters differ from the checkpoint's spec (the first difference is
            named), or sizes the file's tensors do not account for.

    Example:
        >>> import tempfile, hyperloom as hl
        >>> hnet = hl.HyperNetwork(nn.Linear(3, 2), hl.TaskEmbedding(2, 4),
        ...     hl.FlatGenerator.factory())
        >>> p = hl.save(hnet.double(), tempfile.mkdtemp() + "/h.safetensors")
        >>> hl.load(p, target=nn.Linear(3, 2).double()).conditioner.rows[0].dtype
        torch.float64
    """
    from .conditioning import CONDITIONERS
    from .generators import build_generator
    from .hypernet import HyperNetwork
    from .networks import target_from_config
    from .target import TargetSpec, select

    meta, tensors = read_checkpoint(path)
    fmt = meta["format"]
    config = meta["hypernetwork"]
    spec = _rebuild("hypernetwork.spec", lambda: TargetSpec.from_dict(config["spec"]))
    names = set(spec.names)
    state = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    stored = sum(t.numel() for t in tensors.values())
    limit = max_generated
    if limit is None:
        limit = max(GENERATED_FLOOR, GENERATED_PER_STORED * stored)
    if spec.numel > limit:
        raise ValueError(
            f"checkpoint field hypernetwork.spec: {spec.numel:,} generated elements for a file "
            f"of {stored:,} stored elements (at most {limit:,}; pass max_generated= to allow "
            "more)"
        )
    bound = len(tensors) + len(spec) + 16
    _bound_lists(meta.get("target"), bound, "target")
    _bound_lists(config["generator"], bound, "hypernetwork.generator")
    rows = _count_rows(config["conditioner"])
    if rows > len(tensors):
        raise ValueError(
            f"checkpoint field hypernetwork.conditioner: {rows} task embeddings but the file "
            f"holds {len(tensors)} tensors"
        )
    if target is None and not meta.get("target"):
        raise ValueError(
            f"{str(path)!r} does not say how to build its target "
            f"({_printable(meta['target_type'])}); pass target=..."
        )
    floating = {v.dtype for v in state.values() if v.is_floating_point()}
    dtype = next(iter(floating)) if len(floating) == 1 else None
    if target is None:
        # Count the target on the meta device (no memory) before building it for real.
        with torch.device("meta"):
            probe = _rebuild("target", lambda: target_from_config(meta["target"], fmt))
        size = sum(t.numel() for t in [*probe.parameters(), *probe.buffers()])
        if size > limit + stored:
            raise ValueError(
                f"checkpoint field target: a target of {size:,} elements for a file of "
                f"{stored:,} stored elements (at most {limit + stored:,}; pass max_generated=)"
            )
        target = _rebuild("target", lambda: target_from_config(meta["target"], fmt))
        if dtype is not None and dtype != torch.get_default_dtype():
            target = target.to(dtype)
    got = _rebuild("target", lambda: select(target, lambda n, _p: n in names))
    mismatch = _first_spec_mismatch(spec, got)
    if mismatch:
        raise ValueError(f"the target does not match the checkpoint: {mismatch}")
    _check_state_shapes(  # the target's other tensors are the file's, shape for shape
        {f"target.{k}": v for k, v in target.state_dict().items() if k not in names},
        {k: v for k, v in state.items() if k.startswith("target.")},
    )

    def parts() -> tuple[Conditioner, Generator]:
        cond = conditioner
        if cond is None:
            cond = _rebuild(
                "hypernetwork.conditioner",
                lambda: _build_conditioner(config["conditioner"], CONDITIONERS),
            )
        gen = _rebuild(
            "hypernetwork.generator", lambda: build_generator(config["generator"], got, cond.dim)
        )
        return cond, gen

    # The conditioner and generator on the meta device first: their sizes against the file's.
    with torch.device("meta"):
        cond, gen = parts()
    expected = {f"generator.{k}": v for k, v in gen.state_dict().items()}
    if conditioner is None:
        expected |= {f"conditioner.{k}": v for k, v in cond.state_dict().items()}
    if fmt < 2:  # format 1 kept no Noise state: its draws start from the seed, as in 0.1
        expected = {k: v for k, v in expected.items() if not k.endswith("_extra_state")}
    prefixes = ("generator.",) if conditioner is not None else ("generator.", "conditioner.")
    _check_state_shapes(expected, {k: v for k, v in state.items() if k.startswith(prefixes)})
    cond, gen = parts()
    hnet = _rebuild(
        "hypernetwork",
        lambda: HyperNetwork(
            target,
            cond,
            gen,
            generate=lambda name, tensor: name in names,
            init=None,
            check_finite=config.get("check_finite", False),
            task_statistics=config.get("task_statistics", False),
        ),
    )
    if dtype is not None:
        hnet.to(dtype)
    own = hnet.state_dict(keep_vars=True)
    with torch.no_grad():
        for k, v in state.items():
            t = own.get(k)
            if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != v.dtype:
                t.data = t.data.to(v.dtype)  # mixed dtypes: each tensor keeps its own
    try:
        missing, unexpected = hnet.load_state_dict(state, strict=False)
    except Exception as e:
        raise ValueError(f"checkpoint tensors do not fit the rebuilt hypernetwork: {e}") from e
    missing = [
        k
        for k in missing
        if k not in hnet._generated_names and not (fmt < 2 and k.endswith("_extra_state"))
    ]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint tensors do not fit the rebuilt hypernetwork: missing {missing}, "
            f"unexpected {_printable(unexpected)}"
        )
    return hnet


def _count_rows(config: Mapping[str, Any]) -> int:
    if config.get("type") == "concat":
        return sum(_count_rows(c) for c in config["parts"])
    return config["num"] if config.get("type") == "task" and isinstance(config["num"], int) else 0


def _build_conditioner(config: Mapping[str, Any], registry: Mapping[str, type]) -> Conditioner:
    kind = config["type"]
    if kind == "concat":
        return registry["concat"](*(_build_conditioner(c, registry) for c in config["parts"]))
    if kind == "sample":
        raise ValueError(
            "this checkpoint's conditioner wraps an encoder module that JSON cannot describe; "
            "pass conditioner=SampleEncoder(encoder, dim=...) to load()"
        )
    if kind not in registry:
        raise ValueError(
            f"this checkpoint's conditioner {_printable(kind)!r} is not one load() builds "
            f"({', '.join(registry)}); pass conditioner=... to load()"
        )
    options = {k: v for k, v in config.items() if k != "type"}
    if kind == "task":
        return registry["task"](options.pop("num"), options.pop("dim"), **options)
    return registry[kind](options.pop("dim"), **options)


# --------------------------------------------------------------------------------------------
# Resuming


def _check_rng(rng: Any) -> tuple[Tensor, tuple, tuple]:
    """The saved RNG states, checked against the current ones' layout (``ValueError`` if not)."""
    if not isinstance(rng, dict) or set(rng) != {"torch", "numpy", "python"}:
        raise ValueError("checkpoint field training.rng: expected torch, numpy and python states")
    t = rng["torch"]
    now = torch.get_rng_state()
    if not isinstance(t, Tensor) or t.dtype != now.dtype or t.shape != now.shape:
        raise ValueError("checkpoint field training.rng.torch: not a torch RNG state")
    n = rng["numpy"]
    if not (
        isinstance(n, (list, tuple))
        and len(n) == 5
        and n[0] == "MT19937"
        and isinstance(n[1], np.ndarray)
        and n[1].dtype == np.uint32
        and n[1].shape == (624,)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in n[2:4])
        and 0 <= n[2] <= 624
        and isinstance(n[4], (int, float))
    ):
        raise ValueError("checkpoint field training.rng.numpy: not a numpy RNG state")
    p = rng["python"]
    if not (
        isinstance(p, (list, tuple))
        and len(p) == 3
        and p[0] == 3
        and isinstance(p[1], (list, tuple))
        and len(p[1]) == 625
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in p[1])
        and (p[2] is None or isinstance(p[2], float))
    ):
        raise ValueError("checkpoint field training.rng.python: not a random-module state")
    return t, tuple(n), (p[0], tuple(p[1]), p[2])


def _check_optimizer_state(state: Any, optimizer: torch.optim.Optimizer) -> None:
    """The saved optimizer state fits ``optimizer``: groups, parameter counts, tensor shapes."""
    if not isinstance(state, dict) or not isinstance(state.get("param_groups"), list):
        raise ValueError("checkpoint field training.optimizer: expected state and param_groups")
    if not isinstance(state.get("state"), dict):
        raise ValueError("checkpoint field training.optimizer.state: expected an object")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    groups = state["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(
            f"checkpoint field training.optimizer.param_groups: {len(groups)} groups saved, "
            f"the optimizer has {len(optimizer.param_groups)}"
        )
    ids: list[Any] = []
    for i, (g, own) in enumerate(zip(groups, optimizer.param_groups, strict=True)):
        if not isinstance(g, dict) or not isinstance(g.get("params"), list):
            raise ValueError(f"checkpoint field training.optimizer.param_groups.{i}: malformed")
        if len(g["params"]) != len(own["params"]):
            raise ValueError(
                f"checkpoint field training.optimizer.param_groups.{i}: {len(g['params'])} "
                f"parameters saved, the optimizer's group has {len(own['params'])}"
            )
        for key, value in g.items():
            if key != "params" and isinstance(value, float) and not math.isfinite(value):
                raise ValueError(
                    f"checkpoint field training.optimizer.param_groups.{i}.{key}: {value}"
                )
        ids += g["params"]
    index = {pid: p for pid, p in zip(ids, params, strict=True) if isinstance(pid, int)}
    for pid, entry in state["state"].items():
        where = f"training.optimizer.state.{pid}"
        if pid not in index or not isinstance(entry, dict):
            raise ValueError(f"checkpoint field {where}: no such parameter in the groups")
        p = index[pid]
        for key, value in entry.items():
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape != p.shape:
                raise ValueError(
                    f"checkpoint field {where}.{key}: shape {tuple(value.shape)}, the parameter "
                    f"has {tuple(p.shape)}"
                )
            if (
                isinstance(value, Tensor)
                and value.is_floating_point()
                and not bool(torch.isfinite(value).all())
            ):
                raise ValueError(f"checkpoint field {where}.{key}: non-finite values")


def resume(path: str | os.PathLike, optimizer: torch.optim.Optimizer) -> int | None:
    """Restore the optimizer state and RNG states saved with :func:`save`; return the step.

    Call it on the optimizer of the hypernetwork returned by :func:`load` (built over
    ``hnet.parameters()`` in the same order as when saving). Training then continues exactly as
    if it had not stopped. Everything is checked before anything is changed: a refused
    checkpoint leaves the optimizer and every RNG as they were.

    Args:
        path: a file written by :func:`save` with ``optimizer=``.
        optimizer: an optimizer of the type that was saved, over the same parameters.

    Returns:
        The saved step (``None`` when none was given).

    Raises:
        ValueError: no training state, another optimizer type, or a state that does not fit
            (groups, shapes, RNG layouts; the field is named).

    Example:
        >>> import tempfile, hyperloom as hl
        >>> hnet = hl.HyperNetwork(nn.Linear(3, 2), hl.TaskEmbedding(2, 4),
        ...     hl.FlatGenerator.factory())
        >>> opt = torch.optim.Adam(hnet.parameters())
        >>> p = hl.save(hnet, tempfile.mkdtemp() + "/h.safetensors", optimizer=opt, step=7)
        >>> hl.resume(p, torch.optim.Adam(hl.load(p, target=nn.Linear(3, 2)).parameters()))
        7
    """
    meta, tensors = read_checkpoint(path)
    training = meta.get("training") or {}
    if "optimizer" not in training:
        raise ValueError(f"{str(path)!r} holds no optimizer state; save with optimizer=...")
    saved_type = training["optimizer_type"]
    if saved_type != _optimizer_type(optimizer):
        raise ValueError(
            f"checkpoint field training.optimizer_type: the checkpoint holds the state of "
            f"{_printable(saved_type)}, not of {_optimizer_type(optimizer)}"
        )
    state = _join_state(training["optimizer"], tensors, "training.optimizer")
    _check_optimizer_state(state, optimizer)
    torch_state, np_state, py_state = _check_rng(
        _join_state(training["rng"], tensors, "training.rng")
    )
    try:
        optimizer.load_state_dict(state)
    except Exception as e:
        raise ValueError(
            f"checkpoint field training.optimizer: does not fit the optimizer ({e})"
        ) from e
    torch.set_rng_state(torch_state)
    np.random.set_state(np_state)
    random.setstate(py_state)
    return training.get("step")


# --------------------------------------------------------------------------------------------
# The command line's describe and export


def describe_checkpoint(path: str | os.PathLike) -> str:
    """A human-readable summary: the five criteria, the target spec, sizes and tasks.

    Every text taken from the file is printed with control characters escaped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: as :func:`read_checkpoint`.

    Example:
        >>> import tempfile, hyperloom as hl
        >>> hnet = hl.HyperNetwork(nn.Linear(3, 2), hl.TaskEmbedding(2, 4),
        ...     hl.FlatGenerator.factory())
        >>> p = hl.save(hnet, tempfile.mkdtemp() + "/h.safetensors", tasks=["a", "b\\x1b[2J"])
        >>> describe_checkpoint(p).splitlines()[-1]
        '  1: b\\\\x1b[2J'
    """
    from .target import TargetSpec

    meta, _tensors = read_checkpoint(path)
    config = meta["hypernetwork"]
    spec = _rebuild("hypernetwork.spec", lambda: TargetSpec.from_dict(config["spec"]))
    c = meta["criteria"]
    target = meta.get("target")
    lines = [
        f"checkpoint      {_printable(path)}",
        f"written by      hyperloom {meta['version']} (format {meta['format']})",
        f"target          {meta['target_type']}"
        + (f" built by {target['builder']}" if target else ""),
        f"generator       {config['generator']['name']} {config['generator'].get('options', {})}",
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
    return "\n".join(_printable(line) for line in lines)


def export_checkpoint(path: str | os.PathLike, *, task: int, out: str | os.PathLike) -> Path:
    """Write the target weights generated for ``task`` as a plain safetensors state dict.

    The file holds the target's full ``state_dict()`` (generated and ordinary parameters and its
    buffers) and loads with ``safetensors.torch.load_file`` into the plain target. ``out`` may
    not be the checkpoint itself.

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: as :func:`load`; ``out`` is the checkpoint; not a task-conditioned one.
        IndexError: no such task.

    Example:
        >>> import tempfile, hyperloom as hl
        >>> target = hl.networks.build_target("mlp", in_features=3, hidden=[4], out_features=2)
        >>> hnet = hl.HyperNetwork(target, hl.TaskEmbedding(2, 4), hl.FlatGenerator.factory())
        >>> folder = tempfile.mkdtemp()
        >>> p = hl.save(hnet, folder + "/h.safetensors")
        >>> export_checkpoint(p, task=1, out=folder + "/task1.safetensors").name
        'task1.safetensors'
    """
    from safetensors.torch import save_file

    out = Path(out)
    src = Path(path)
    if out.exists() and src.exists() and os.path.samefile(out, src):
        raise ValueError(f"--out {str(out)!r} is the checkpoint itself; write somewhere else")
    hnet = load(path)
    num = getattr(hnet.conditioner, "num", None)
    if num is None:
        raise ValueError("export --task needs a task-conditioned checkpoint")
    if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < num:
        raise IndexError(f"task id {task} is out of range: this embedding has tasks 0..{num - 1}")
    plain = hnet.export(task=torch.tensor(task))
    state = {k: v.detach().contiguous().clone() for k, v in plain.state_dict().items()}
    meta = {"source": str(path), "task": str(task)}
    _atomic_write(out, lambda tmp: save_file(state, tmp, metadata=meta))
    return out


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tensors, tuples and paths as plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj
