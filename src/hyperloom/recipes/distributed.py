"""Devices, mixed precision and data-parallel training for the recipes' loops.

The core is distribution-agnostic: it never moves a tensor to a device and never talks to
other processes. A recipe asks this module for a :class:`Runtime` once, and its one visible
loop then does four things with it:

1. ``model.to(rt.device)`` and the batches too (``--device``);
2. ``with rt.autocast():`` around the forward and the loss (``--amp bf16``);
3. ``for idx in rt.shard(order.split(batch_size)):`` picks this process's part of every
   global batch (a distributed sampler: every process draws the same order from the same
   seed and keeps its slice);
4. ``rt.sync_grads(params)`` between ``loss.backward()`` and ``opt.step()``: the gradients are
   averaged over the processes in one flat all-reduce.

Under ``torchrun`` (``WORLD_SIZE`` set) :func:`start` joins the process group: gloo on CPU,
NCCL on CUDA. Without it, it is one process and every call above is a no-op, so the numbers of a
single-process run are those of the loop without this module.

Why not ``DistributedDataParallel`` in the recipes: DDP hooks every parameter and expects one
forward per backward in which each parameter it waits for gets a gradient. A task-conditioned
hypernetwork breaks both: ``TaskEmbedding`` holds one parameter per task, so a rank whose batch
holds task 3 only leaves the other rows without gradients (DDP then needs
``find_unused_parameters=True``, a graph traversal every step), and recipes such as the
illustrative one sum several task losses per step. :meth:`Runtime.sync_grads` reduces every
trainable parameter after the backward, a missing gradient counting as zeros, with any number of
forwards per step. ``hnet`` wrapped in ``DistributedDataParallel`` works too (tested, see
``docs/distributed.md``) for loops of one forward per step.

Example:
    >>> rt = start(device="cpu", amp="none")          # not under torchrun: one process
    >>> rt.world_size, rt.rank, rt.is_main, str(rt.device)
    (1, 0, True, 'cpu')
    >>> [i.tolist() for i in rt.shard(torch.arange(5).split(2))]
    [[0, 1], [2, 3], [4]]
    >>> stop(rt)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")

AMP_DTYPES: dict[str, torch.dtype | None] = {
    "none": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
"""``--amp`` values and the autocast dtype each selects (``none``: full precision)."""


def device_field(default: str = "auto") -> Any:
    """The ``device`` option of every recipe (a dataclass ``field``).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Config:
        ...     device: str = device_field()
        >>> Config().device
        'auto'
    """
    return dataclasses.field(
        default=default,
        metadata={
            "help": "cpu, cuda, cuda:N, or auto (cuda when available; under torchrun each "
            "process takes cuda:LOCAL_RANK)"
        },
    )


def amp_field(default: str = "none") -> Any:
    """The ``amp`` option of every recipe: autocast's dtype for forward and loss."""
    return dataclasses.field(
        default=default,
        metadata={"help": "mixed precision: none, bf16 or fp16", "choices": tuple(AMP_DTYPES)},
    )


def nproc_field() -> Any:
    """The ``nproc`` option: data-parallel processes on this machine (relaunch via torchrun)."""
    return dataclasses.field(
        default=1,
        metadata={
            "help": "data-parallel processes on this machine (>1: relaunched under torchrun; "
            "one already under torchrun ignores it)",
            "range": (1, 1024),
        },
    )


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The ``torch.device`` that ``--device=name`` means in the process of ``local_rank``.

    ``auto`` is CUDA when available, else the CPU; a bare ``cuda`` is ``cuda:local_rank``.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or any ``torch.device`` string.
        local_rank: this process's rank on its machine (``LOCAL_RANK`` under torchrun).

    Returns:
        The device; a CUDA device is checked to exist.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; expected cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r} asked for, but torch sees "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return device


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where this process trains: its device, autocast dtype and place among the processes.

    Attributes:
        device: where the model and the batches go.
        amp: ``none``, ``bf16`` or ``fp16`` (autocast's dtype in :meth:`autocast`).
        rank: this process's rank (0 .. world_size - 1).
        world_size: number of data-parallel processes (1: no process group).
        local_rank: rank on this machine.
    """

    device: torch.device
    amp: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """Whether this process is one of several (a process group is open)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints, writes the run folder and saves checkpoints."""
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` for ``amp`` on this device (a null context for ``none``).

        Example:
            >>> rt = Runtime(torch.device("cpu"), amp="bf16")
            >>> with rt.autocast():
            ...     y = nn.Linear(4, 2)(torch.randn(3, 4))
            >>> y.dtype
            torch.bfloat16
        """
        dtype = AMP_DTYPES[self.amp]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def shard(self, batches: Iterable[Tensor]) -> Iterator[Tensor]:
        """This process's slice of every global batch of indices (a distributed sampler).

        Every process must see the same global batches (the same seed and order). Each batch
        is cut into ``world_size`` equal, contiguous slices and rank ``r`` keeps slice ``r``;
        the ``len(batch) % world_size`` last samples of a batch that does not divide are left
        out (at most ``world_size - 1``, only in a run of several processes), so that each
        process's mean loss weighs its samples as the single-process mean over the kept batch
        does. With one process the batches pass unchanged.

        Args:
            batches: 1-D index tensors, e.g. ``torch.randperm(n, generator=g).split(b)``.

        Returns:
            An iterator over this process's index tensors (batches too small for every process
            to get a sample are skipped).

        Example:
            >>> rt = Runtime(torch.device("cpu"), rank=1, world_size=2)
            >>> [i.tolist() for i in rt.shard(torch.arange(7).split(4))]
            [[2, 3], [5]]
        """
        for batch in batches:
            if batch.dim() != 1:
                raise ValueError(f"shard expects 1-D index tensors, got shape {tuple(batch.shape)}")
            if self.world_size == 1:
                yield batch
                continue
            per = len(batch) // self.world_size
            if per == 0:
                continue
            yield batch[self.rank * per : (self.rank + 1) * per]

    def part(self, batch: Tensor) -> Tensor:
        """This process's slice of one global batch of indices (see :meth:`shard`).

        Example:
            >>> Runtime(torch.device("cpu"), rank=1, world_size=2).part(torch.arange(5)).tolist()
            [2, 3]
        """
        for piece in self.shard([batch]):
            return piece
        raise ValueError(
            f"a batch of {len(batch)} samples cannot be shared by {self.world_size} processes"
        )

    def sync_grads(self, params: Iterable[nn.Parameter] | torch.optim.Optimizer) -> None:
        """Average the gradients of ``params`` over the processes (no-op with one process).

        A parameter this process left without a gradient (a task embedding no sample of its
        slice used) counts as zeros in the average; one that no process gave a gradient keeps
        ``grad is None``, so the optimiser skips it as it would in one process. All processes
        must pass the same parameters in the same order. One flat all-reduce per dtype.

        Args:
            params: the trainable parameters, or the optimiser that updates them.
        """
        if self.world_size == 1:
            return
        if isinstance(params, torch.optim.Optimizer):
            params = [p for group in params.param_groups for p in group["params"]]
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for p in params:
            if p.requires_grad:
                by_dtype.setdefault(p.dtype, []).append(p)
        for group in by_dtype.values():
            parts = [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group
            ]
            has = [float(p.grad is not None) for p in group]
            flat = torch.cat(
                [*parts, torch.tensor(has, dtype=group[0].dtype, device=parts[0].device)]
            )
            dist.all_reduce(flat)
            flags = flat[-len(group) :].tolist()  # how many processes had each gradient
            offset = 0
            for p, count in zip(group, flags, strict=True):
                part = flat[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
                if count == 0:
                    continue  # no process had a gradient: left as None
                part = part / self.world_size
                if p.grad is None:
                    p.grad = part
                else:
                    p.grad.copy_(part)

    def split(self, items: Sequence[T]) -> list[T]:
        """This process's share of ``items`` (clients of a round): every item to exactly one
        process, round-robin, none left out (unlike :meth:`shard`, which cuts batches).

        Example:
            >>> Runtime(torch.device("cpu"), rank=1, world_size=2).split([7, 3, 5, 9, 4])
            [3, 9]
        """
        return list(items[self.rank :: self.world_size])

    def merge(self, part: dict[Any, T]) -> dict[Any, T]:
        """The union of every process's ``part`` (the replies of the items each took), on every
        process: one ``all_gather_object`` (pickled, so tensors travel as they are). Keys are in
        rank order; with one process ``part`` is returned as it is.

        Example:
            >>> Runtime(torch.device("cpu")).merge({3: "reply"})
            {3: 'reply'}
        """
        if self.world_size == 1:
            return part
        gathered: list[dict[Any, T] | None] = [None] * self.world_size
        dist.all_gather_object(gathered, part)
        merged: dict[Any, T] = {}
        for piece in gathered:
            merged.update(piece or {})
        return merged

    def average(self, value: float) -> float:
        """The mean of ``value`` over the processes (a logged loss: every slice's, not rank 0's).

        Example:
            >>> Runtime(torch.device("cpu")).average(0.25)
            0.25
        """
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world_size

    def move(self, obj: T) -> T:
        """``obj`` with its tensors on :attr:`device`: a tensor, a dataclass (such as a
        ``Dataset``), a list, tuple or dict of these; anything else is returned as it is.

        Example:
            >>> rt = Runtime(torch.device("cpu"))
            >>> x = torch.ones(2)
            >>> rt.move({"x": x, "n": 3})["x"] is x  # already there: no copy
            True
        """
        return _move(obj, self.device)

    def broadcast(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into ``module`` on every process."""
        if self.world_size == 1:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)


def _move(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {
            f.name: _move(getattr(obj, f.name), device)
            for f in dataclasses.fields(obj)
            if f.init and isinstance(getattr(obj, f.name), (Tensor, list, tuple, dict))
        }
        return dataclasses.replace(cast(Any, obj), **changes) if changes else obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(_move(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_move(v, device) for v in obj)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    return obj


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer") from None


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (``WORLD_SIZE`` and ``RANK`` are set)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def start(*, device: str = "auto", amp: str = "none", backend: str | None = None) -> Runtime:
    """The runtime of this process; joins torchrun's process group when there is one.

    Under torchrun each process takes ``cuda:LOCAL_RANK`` (``device=auto`` or ``cuda``) and the
    group's backend is NCCL on CUDA, gloo on the CPU, unless ``backend`` says otherwise.
    Processes other than rank 0 have their ``print`` output discarded (rank-0-only logging).

    Args:
        device: ``--device`` (see :func:`resolve_device`).
        amp: ``--amp``: ``none``, ``bf16`` or ``fp16``.
        backend: the process group's backend (``None``: by device).

    Returns:
        A :class:`Runtime`; pass it to :func:`stop` when training ends.

    Example:
        >>> rt = start(device="cpu", amp="bf16")
        >>> rt.amp, rt.distributed
        ('bf16', False)
        >>> stop(rt)
    """
    if amp not in AMP_DTYPES:
        raise ValueError(f"unknown amp {amp!r}; expected one of {', '.join(AMP_DTYPES)}")
    if not under_torchrun():
        return Runtime(resolve_device(device), amp=amp)
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"))
    if rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (closed by stop())
    return Runtime(dev, amp=amp, rank=rank, world_size=world, local_rank=local_rank)


def stop(rt: Runtime) -> None:
    """Leave the process group that :func:`start` joined (waits for every process first)."""
    if rt.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if rt.rank != 0 and sys.stdout is not sys.__stdout__:
        sys.stdout.close()
        sys.stdout = sys.__stdout__


@contextlib.contextmanager
def runtime(*, device: str = "auto", amp: str = "none") -> Iterator[Runtime]:
    """:func:`start` and :func:`stop` as a context manager (stopped also when training raises).

    Example:
        >>> with runtime(device="cpu") as rt:
        ...     rt.world_size
        1
    """
    rt = start(device=device, amp=amp)
    try:
        yield rt
    finally:
        stop(rt)


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``hyperloom argv`` in ``nproc`` processes under torchrun on this machine.

    The command-line flag ``--nproc N`` of a recipe lands here: the same command is started
    again through ``python -m torch.distributed.run --standalone --nproc_per_node N``, whose
    processes see ``WORLD_SIZE`` and so do not relaunch.

    Args:
        nproc: processes to start (at least 1).
        argv: the ``hyperloom`` arguments, e.g. ``["train", "illustrative", "--epochs=1"]``.

    Returns:
        torchrun's exit status.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    # The processes need no --nproc (they see WORLD_SIZE), and torchrun's own parser would
    # take ``--nproc=N`` for an abbreviation of its ``--nproc-per-node``.
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--nproc", "--nproc="):
            skip = a == "--nproc"
        elif not a.startswith("--nproc="):
            args.append(a)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "hyperloom",
        *args,
    ]
    return subprocess.call(cmd)
