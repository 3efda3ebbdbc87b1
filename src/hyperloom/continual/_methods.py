"""Implementation of :mod:`hyperloom.continual` (import from there)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..conditioning.base import Conditioner
from ..functional import call_batched
from ..generators.chunked import ChunkedGenerator
from ..hypernet import HyperNetwork


def _task_ids(task: Tensor | Sequence[int] | int, device: torch.device) -> Tensor:
    ids = torch.as_tensor(task, dtype=torch.long, device=device).reshape(-1)  # (n,)
    if len(torch.unique(ids)) != len(ids):
        raise ValueError(f"task ids {ids.tolist()} repeat an id")
    return ids


def _device(module: nn.Module) -> torch.device:
    first = next(module.parameters(), None)
    return torch.device("cpu") if first is None else first.device


@torch.no_grad()
def snapshot_outputs(hnet: HyperNetwork, *, task: Tensor | Sequence[int]) -> dict[str, Tensor]:
    """The hypernetwork's current outputs for ``task``, detached: the regulariser's targets.

    Take it once after training a task, for every task learned so far.

    Args:
        hnet: a task-conditioned :class:`~hyperloom.HyperNetwork` (anything with
            ``generate(task=ids) -> {name: (n, *shape)}``).
        task: the task ids, e.g. ``range(t + 1)`` after task ``t``.

    Returns:
        ``{name: (n, *shape)}``, row ``i`` for ``task[i]``.

    Example:
        >>> import hyperloom as hl
        >>> hnet = hl.HyperNetwork(nn.Linear(4, 2), hl.TaskEmbedding(3, 8),
        ...     hl.FlatGenerator.factory())
        >>> snapshot_outputs(hnet, task=[0, 1])["weight"].shape
        torch.Size([2, 2, 4])
    """
    ids = _task_ids(task, _device(hnet))
    if len(ids) == 0:
        return {}
    return {k: v.detach().clone() for k, v in generate_tasks(hnet, task=ids).items()}


def generate_tasks(hnet: HyperNetwork, *, task: Tensor | Sequence[int]) -> dict[str, Tensor]:
    """The generated weights of several tasks in one batched call, ``{name: (n, *shape)}``.

    The same as ``hnet.generate(task=ids)``, but when the ids are distinct and increasing
    (``range(t + 1)``, say) the rows come straight out of the generator, without the gather
    that reorders them (a copy of every generated number, and its backward). One call for the
    current task and every earlier one lets a training step share it between the task loss
    (row ``-1``) and :func:`output_regularizer` (``current=`` the other rows).

    Args:
        hnet: a task-conditioned :class:`~hyperloom.HyperNetwork` (``conditioner`` a
            :class:`~hyperloom.TaskEmbedding`); anything else goes through
            ``hnet.generate(task=ids)``.
        task: distinct task ids.

    Returns:
        ``{name: (n, *shape)}``, row ``i`` for ``task[i]``.

    Example:
        >>> import hyperloom as hl
        >>> hnet = hl.HyperNetwork(nn.Linear(4, 2), hl.TaskEmbedding(3, 8),
        ...     hl.FlatGenerator.factory())
        >>> generate_tasks(hnet, task=range(3))["weight"].shape
        torch.Size([3, 2, 4])
    """
    ids = _task_ids(task, _device(hnet))
    conditioner, generator = hnet.conditioner, hnet.generator
    sorted_ids = len(ids) > 0 and bool((ids[1:] > ids[:-1]).all())
    if (
        not sorted_ids
        or getattr(hnet, "check_finite", True)
        or getattr(conditioner, "keys", None) != ("task",)
    ):
        return hnet.generate(task=ids)
    cond, _ = conditioner.from_call((), {"task": ids})  # rows of the sorted unique ids: ids
    return generator(cond)  # {name: (n, *shape)}


class _Generate(nn.Module):
    """``hnet.generate(task=ids)`` as a forward, so that ``functional_call`` can swap Phi."""

    def __init__(self, hnet: HyperNetwork) -> None:
        super().__init__()
        self.hnet = hnet

    def forward(self, ids: Tensor) -> dict[str, Tensor]:
        return generate_tasks(self.hnet, task=ids)


def output_regularizer(
    hnet: HyperNetwork,
    snapshot: Mapping[str, Tensor],
    *,
    task: Tensor | Sequence[int],
    beta: float = 1.0,
    delta: Mapping[str, Tensor] | None = None,
    sample: int | None = None,
    generator: torch.Generator | None = None,
    current: Mapping[str, Tensor] | None = None,
    importance: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """``beta / n * sum_t ||H(e_t; Phi + delta) - snapshot_t||^2`` over the ``n`` earlier tasks.

    The squared norm is the sum over every generated number of task ``t``; the sum over tasks
    is divided by their number (``T - 1`` when training task ``T``), as in von Oswald et al.
    Gradients reach the hypernetwork's parameters and, if they are trained, the embeddings of
    the earlier tasks (keep those out of the optimizer to hold them fixed, as the paper does).
    With ``sample``, each call regularises only that many earlier tasks drawn at random
    (without replacement) and averages over them: an unbiased estimate of the full term at a
    fraction of its cost, as hypercl's regulariser batch size.

    Args:
        hnet: the hypernetwork (``generate(task=ids) -> {name: (n, *shape)}``).
        snapshot: :func:`snapshot_outputs` for the same ``task``, ``{name: (n, *shape)}``.
        task: the earlier task ids, in the snapshot's row order.
        beta: the regularisation strength.
        delta: optional lookahead ``{parameter name: step}`` added to the named parameters of
            ``hnet`` (names as in ``hnet.named_parameters()``), e.g. :func:`lookahead_delta`;
            the step should be detached. ``None`` evaluates at the current parameters.
        sample: the number of earlier tasks to draw per call; ``None`` (or at least ``n``)
            uses them all.
        generator: the random generator of the draw (default: torch's global one).
        current: the hypernetwork's outputs for ``task`` already computed with gradients,
            ``{name: (n, *shape)}`` (e.g. rows of one :func:`generate_tasks` call shared with
            the task loss); ``None`` generates them here. Not combinable with ``delta``.
        importance: per-element weights of the squared differences, ``{name: (n, *shape)}``
            in the snapshot's row order (``(*shape)`` for all tasks alike): a 0/1 mask gives
            hypnettorch's masked regulariser (e.g. only each task's own output units), the
            diagonal Fisher of each task's generated weights (:func:`output_fisher`) the
            Fisher-weighted one. Names it leaves out are weighted 1.

    Returns:
        A scalar tensor; exactly zero when there are no earlier tasks.

    Raises:
        ValueError: when the snapshot's names or row count do not match, ``delta`` names a
            parameter ``hnet`` does not have, both ``delta`` and ``current`` are given, or
            ``importance`` names a tensor the snapshot lacks or has a shape that does not fit.

    Example:
        >>> import hyperloom as hl
        >>> hnet = hl.HyperNetwork(nn.Linear(4, 2), hl.TaskEmbedding(3, 8),
        ...     hl.FlatGenerator.factory())
        >>> old = snapshot_outputs(hnet, task=[0])
        >>> with torch.no_grad():
        ...     _ = hnet.generator.readout.bias.add_(1.0)  # every output moves by 1
        >>> output_regularizer(hnet, old, task=[0], beta=0.5).item()  # 0.5 * (8 + 2) numbers
        5.0
    """
    device = _device(hnet)
    ids = _task_ids(task, device)
    if len(ids) == 0:
        return torch.zeros((), device=device)
    bad = {k: tuple(v.shape) for k, v in snapshot.items() if v.dim() == 0 or len(v) != len(ids)}
    if bad:
        raise ValueError(f"snapshot rows do not match the {len(ids)} tasks: shapes {bad}")
    if delta and current is not None:
        raise ValueError("give delta (outputs after a lookahead step) or current, not both")
    rows = None
    if sample is not None:
        if sample < 1:
            raise ValueError(f"sample must be >= 1 or None, got {sample}")
        if sample < len(ids):
            rows = torch.randperm(len(ids), generator=generator)[:sample].sort().values
            ids = ids[rows.to(device)]
    if delta:
        own = dict(hnet.named_parameters())
        unknown = sorted(set(delta) - set(own))
        if unknown:
            raise ValueError(f"delta names {unknown}, which are not parameters of the hnet")
        wrapper = _Generate(hnet)
        moved = {f"hnet.{k}": own[k] + d for k, d in delta.items()}
        current = functional_call(wrapper, moved, (ids,), strict=False)
    elif current is None:
        current = generate_tasks(hnet, task=ids)
    elif rows is not None:
        current = {k: v[rows.to(v.device)] for k, v in current.items()}  # (sample, *shape)
    if set(current) != set(snapshot):
        raise ValueError(
            f"snapshot has names {sorted(snapshot)}, the hypernetwork generates {sorted(current)}"
        )
    importance = dict(importance or {})
    unknown = sorted(set(importance) - set(snapshot))
    if unknown:
        raise ValueError(f"importance names {unknown}, which the snapshot does not have")
    total = torch.zeros((), device=device)
    for name, now in current.items():
        old = snapshot[name]
        if rows is not None:
            old = old[rows.to(old.device)]  # (sample, *shape)
        if old.shape != now.shape:
            raise ValueError(
                f"snapshot[{name!r}] has shape {tuple(old.shape)}, but {len(ids)} tasks give "
                f"{tuple(now.shape)}"
            )
        sq = (now - old).pow(2)
        if name in importance:
            w = importance[name]
            if w.shape == snapshot[name].shape and rows is not None:
                w = w[rows.to(w.device)]
            if w.shape not in (sq.shape, sq.shape[1:]):
                raise ValueError(
                    f"importance[{name!r}] has shape {tuple(w.shape)}; expected "
                    f"{tuple(snapshot[name].shape)} or {tuple(sq.shape[1:])}"
                )
            sq = sq * w
        total = total + sq.sum()
    return beta * total / len(ids)


def _chunked_parts(hnet: HyperNetwork) -> tuple[Conditioner, ChunkedGenerator]:
    """``(conditioner, generator)`` of a task-conditioned chunk-wise hypernetwork, checked."""
    conditioner, generator = hnet.conditioner, hnet.generator
    if not isinstance(generator, ChunkedGenerator) or not isinstance(generator.readout, nn.Linear):
        raise TypeError(
            "the factored regulariser needs a ChunkedGenerator (generated chunks = readout of "
            f"features), got {type(generator).__name__}"
        )
    if getattr(conditioner, "keys", None) != ("task",):
        raise TypeError(
            f"the factored regulariser needs a TaskEmbedding conditioner, got "
            f"{type(conditioner).__name__}"
        )
    return conditioner, generator


def _readout_matrix(generator: ChunkedGenerator) -> Tensor:
    """``[W, b]``, ``(chunk_size, h + 1)``: chunk ``j`` of a task is ``[W, b] @ [h_j; 1]``."""
    w, b = generator.readout.weight, generator.readout.bias  # (s, h), (s,)
    return w if b is None else torch.cat([w, b[:, None]], dim=1)


def _chunk_features(conditioner: Conditioner, generator: ChunkedGenerator, ids: Tensor) -> Tensor:
    """``[h_j; 1]`` of every chunk of every task, ``(n, n_chunks, h + 1)`` (no ``1`` w/o bias)."""
    cond = conditioner(ids)  # (n, cond_dim)
    h = generator.features(cond)  # (n, K, h)
    if generator.readout.bias is None:
        return h
    return torch.cat([h, h.new_ones(*h.shape[:-1], 1)], dim=-1)  # (n, K, h + 1)


@torch.no_grad()
def snapshot_factors(hnet: HyperNetwork, *, task: Tensor | Sequence[int]) -> dict[str, Tensor]:
    """A chunk-wise hypernetwork's outputs for ``task`` in factored form, detached.

    A :class:`~hyperloom.ChunkedGenerator` writes chunk ``j`` of task ``t`` as
    ``A m_tj`` with ``A = [W, b]`` its readout layer (``(chunk_size, h + 1)``) and
    ``m_tj = [h_tj; 1]`` the trunk's features of ``(e_t, c_j)``: the snapshot keeps ``A``, its
    Gram matrix and the features (``n * n_chunks * (h + 1)`` numbers instead of ``n`` whole
    weight sets). It is the target of :func:`factored_output_regularizer`, which then costs
    the same for any number of earlier tasks. Take it once after training a task, for every
    task learned so far.

    Args:
        hnet: a :class:`~hyperloom.HyperNetwork` with a :class:`~hyperloom.TaskEmbedding`
            and a :class:`~hyperloom.ChunkedGenerator`.
        task: the task ids, e.g. ``range(t + 1)`` after task ``t``.

    Returns:
        ``{"readout": A (s, h + 1), "gram": A^T A (h + 1, h + 1), "features": (n, K, h + 1)}``.

    Raises:
        TypeError: for another generator or conditioner.

    Example:
        >>> import hyperloom as hl
        >>> gen = hl.ChunkedGenerator.factory(chunk_size=6, chunk_dim=4, hidden=(8,))
        >>> hnet = hl.HyperNetwork(nn.Linear(4, 2), hl.TaskEmbedding(3, 8), gen)
        >>> snapshot_factors(hnet, task=[0, 1])["features"].shape  # 2 tasks, 2 chunks, 8 + 1
        torch.Size([2, 2, 9])
    """
    conditioner, generator = _chunked_parts(hnet)
    ids = _task_ids(task, _device(hnet))
    a = _readout_matrix(generator).detach().clone()  # (s, h + 1)
    return {
        "readout": a,
        "gram": a.T @ a,  # (h + 1, h + 1)
        "features": _chunk_features(conditioner, generator, ids).detach(),  # (n, K, h + 1)
    }


def factored_output_regularizer(
    hnet: HyperNetwork,
    snapshot: Mapping[str, Tensor],
    *,
    task: Tensor | Sequence[int],
    beta: float = 1.0,
    sample: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """:func:`output_regularizer` of a chunk-wise hypernetwork without generating old tasks.

    The same value and gradients as ``output_regularizer(hnet, snapshot_outputs(hnet, task=ids),
    task=ids, beta=beta)`` (up to rounding), from :func:`snapshot_factors`. With ``D = A - A*``
    (readout now minus snapshot) and ``dm = m - m*`` (features), chunk ``j`` of task ``t``
    moved by ``D m_tj + A* dm_tj``, so

    ``||moved||^2 = m^T (D^T D) m + 2 m^T (D^T A*) dm + dm^T (A*^T A*) dm``

    summed over chunks and tasks, less the positions of the last chunk that the target does
    not use. Every term is a product of small differences (no cancellation of large numbers)
    and the cost is one ``(h + 1) x chunk_size x 2(h + 1)`` product plus the trunk on the
    earlier tasks' embeddings, where generating them costs ``n x n_chunks x h x chunk_size``:
    a training step of the tenth task of a 25-25 hypernetwork with 24 chunks of 20,000 (a
    400-400 MLP on 784 inputs, one CPU thread) is about 4 times faster, nearly as fast as one
    without the regulariser.

    Args:
        hnet: the hypernetwork of :func:`snapshot_factors`.
        snapshot: :func:`snapshot_factors` for the same ``task``.
        task: the earlier task ids, in the snapshot's row order.
        beta: the regularisation strength.
        sample: the number of earlier tasks to draw per call (as in
            :func:`output_regularizer`, the same draws for the same ``generator``); ``None``
            (or at least ``n``) uses them all.
        generator: the random generator of the draw.

    Returns:
        A scalar tensor; exactly zero when there are no earlier tasks.

    Raises:
        ValueError: when the snapshot's rows or shapes do not match.
        TypeError: for another generator or conditioner.

    Example:
        >>> import hyperloom as hl
        >>> gen = hl.ChunkedGenerator.factory(chunk_size=6, chunk_dim=4, hidden=(8,))
        >>> hnet = hl.HyperNetwork(nn.Linear(4, 2), hl.TaskEmbedding(3, 8), gen)
        >>> old = snapshot_factors(hnet, task=[0])
        >>> with torch.no_grad():
        ...     _ = hnet.generator.readout.bias.add_(1.0)  # 10 used outputs (of 12) move by 1
        >>> round(factored_output_regularizer(hnet, old, task=[0], beta=0.5).item(), 4)
        5.0
    """
    conditioner, gen = _chunked_parts(hnet)
    device = _device(hnet)
    ids = _task_ids(task, device)
    if len(ids) == 0:
        return torch.zeros((), device=device)
    missing = {"readout", "gram", "features"} - set(snapshot)
    if missing:
        raise ValueError(f"snapshot lacks {sorted(missing)}: take it with snapshot_factors")
    a_old, gram_old, m_old = snapshot["readout"], snapshot["gram"], snapshot["features"]
    a = _readout_matrix(gen)  # (s, h + 1)
    if (
        a_old.shape != a.shape
        or len(m_old) != len(ids)
        or m_old.shape[1:] != (gen.num_chunks, a.shape[1])
    ):
        raise ValueError(
            f"snapshot shapes {tuple(a_old.shape)} (readout), {tuple(m_old.shape)} (features) do "
            f"not match {len(ids)} tasks of this hypernetwork ({tuple(a.shape)}, "
            f"{gen.num_chunks} chunks)"
        )
    if sample is not None:
        if sample < 1:
            raise ValueError(f"sample must be >= 1 or None, got {sample}")
        if sample < len(ids):
            rows = torch.randperm(len(ids), generator=generator)[:sample].sort().values
            ids, m_old = ids[rows.to(device)], m_old[rows.to(m_old.device)]
    m = _chunk_features(conditioner, gen, ids)  # (n, K, h + 1)
    dm = m - m_old  # (n, K, h + 1)
    d = a - a_old  # (s, h + 1)
    k = a.shape[1]
    prod = d.T @ torch.cat([d, a_old], dim=1)  # (h + 1, 2(h + 1)): [D^T D, D^T A*]
    total = (
        torch.einsum("nka,ab,nkb->", m, prod[:, :k], m)
        + 2 * torch.einsum("nka,ab,nkb->", m, prod[:, k:], dm)
        + torch.einsum("nka,ab,nkb->", dm, gram_old, dm)
    )
    size = gen.options["chunk_size"]
    unused = gen.num_chunks * size - gen.spec.numel  # tail of the last chunk, cut by the generator
    if unused:
        tail = d[-unused:] @ m[:, -1].T + a_old[-unused:] @ dm[:, -1].T  # (unused, n)
        total = total - tail.pow(2).sum()
    return beta * total / len(ids)


def lookahead_delta(
    named_params: Iterable[tuple[str, Tensor]],
    lr: float | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Tensor]:
    """The one-step lookahead ``Delta Phi`` from the gradients already in ``.grad``.

    Call it after ``task_loss.backward()`` and before the regulariser's backward, so that the
    regulariser is evaluated where the task loss alone would move the parameters (the paper's
    ``Delta Phi``). With ``lr`` the step is plain SGD's, ``-lr * grad``; with ``optimizer`` it
    is the step that optimiser would take now (Adam's, with its moments; hypnettorch's
    ``calc_delta_theta``): the optimiser steps, the step is read off, and the parameters and
    the optimiser's state are put back as they were. Parameters without a gradient get no
    entry.

    Args:
        named_params: ``(name, parameter)`` pairs, e.g. ``hnet.named_parameters()``.
        lr: the SGD step size (or ``optimizer``).
        optimizer: the optimiser that trains these parameters (or ``lr``).

    Returns:
        ``{name: step}``, detached.

    Example:
        >>> lin = nn.Linear(2, 1)
        >>> opt = torch.optim.Adam(lin.parameters(), lr=0.1)
        >>> lin(torch.ones(1, 2)).sum().backward()
        >>> step = lookahead_delta(lin.named_parameters(), optimizer=opt)
        >>> [round(v, 4) for v in step["weight"].flatten().tolist()]  # Adam's first step
        [-0.1, -0.1]
    """
    if (lr is None) == (optimizer is None):
        raise ValueError("lookahead_delta takes lr (an SGD step) or optimizer, exactly one")
    named = [(n, p) for n, p in named_params if p.grad is not None]
    if optimizer is None:
        step = cast(float, lr)  # exactly one of lr and optimizer, checked above
        return {n: -step * cast(Tensor, p.grad).detach() for n, p in named}
    before = {n: p.detach().clone() for n, p in named}
    state = copy.deepcopy(optimizer.state_dict())
    try:
        optimizer.step()
        with torch.no_grad():
            return {n: p.detach() - before[n] for n, p in named}
    finally:
        with torch.no_grad():
            for n, p in named:
                p.copy_(before[n])
        optimizer.load_state_dict(state)


def predictive_entropy(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)`` over the last dimension, ``(*, C) -> (*)``, in nats."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def log_predictive_entropy(logits: Tensor) -> Tensor:
    """``log`` of :func:`predictive_entropy`, computed in log space, ``(*, C) -> (*)``.

    ``log H = logsumexp_c(log p_c + log(-log p_c))`` with ``-log p_c = softplus(L_c)`` and
    ``L_c = logsumexp_{j != c} z_j - z_c``, so that every term stays finite where ``p_c`` or
    ``H`` underflow in float32 (a margin of about 17 rounds the top class's ``log p`` to 0, one
    of about 104 rounds ``H`` itself to 0): lowest-entropy comparisons between very confident
    networks are still decided by their margins, not by ties at zero.

    Example:
        >>> log_predictive_entropy(torch.tensor([[0.0, 0.0], [200.0, 0.0]])).tolist()
        [-0.36651289463043213, -194.69668579101562]
    """
    if logits.shape[-1] < 2:
        raise ValueError(f"logits need at least 2 classes, got shape {tuple(logits.shape)}")
    c = logits.shape[-1]
    logp = F.log_softmax(logits, dim=-1)
    others = logits.unsqueeze(-2).expand(*logits.shape[:-1], c, c)  # (*, C, C): row c, col j
    diagonal = torch.eye(c, dtype=torch.bool, device=logits.device)
    rest = torch.logsumexp(others.masked_fill(diagonal, float("-inf")), dim=-1) - logits  # L_c
    # log(softplus(L)) = L + log1p(-e^L/2 + ...) = L to float precision below L = -20
    log_minus_logp = torch.where(rest < -20, rest, torch.log(F.softplus(rest.clamp(min=-20))))
    return torch.logsumexp(logp + log_minus_logp, dim=-1)


TASK_INFERENCE_RULES = ("entropy", "log-entropy")
"""How :func:`infer_task` compares entropies: as float numbers, or in log space."""


def infer_task(
    logits: Tensor, *, temperature: Tensor | None = None, rule: str = "entropy"
) -> Tensor:
    """For each sample, the task whose predictions have the lowest entropy (HNET+ENT).

    Args:
        logits: ``(T, B, C)``: the outputs of each of ``T`` candidate tasks' networks (or
            heads) on the same ``B`` samples.
        temperature: optional ``(T,)`` positive numbers, one per task: task ``t``'s logits
            are divided by ``temperature[t]`` first (e.g. :func:`fit_temperature` on held-out
            images of task ``t``).
        rule: ``"entropy"``: the lowest :func:`predictive_entropy` (exact ties, e.g. several
            entropies that underflow to 0, go to the first such task); ``"log-entropy"``: the
            lowest :func:`log_predictive_entropy` (the same choice wherever the entropies
            differ in float32, and no ties at 0).

    Returns:
        ``(B,)`` long: the inferred task index in ``range(T)``.

    Example:
        >>> logits = torch.tensor([[[0.0, 0.0], [9.0, 0.0]],    # task 0: unsure, sure
        ...                        [[5.0, 0.0], [0.0, 0.0]]])   # task 1: sure, unsure
        >>> infer_task(logits).tolist()
        [1, 0]
        >>> z = torch.tensor([[[4.0, 0.0]], [[6.0, 0.0]]])  # one image; task 1 is surer...
        >>> infer_task(z, temperature=torch.tensor([1.0, 3.0])).tolist()  # ...until cooled
        [0]
        >>> sure = torch.tensor([[[150.0, 0.0]], [[300.0, 0.0]]])  # both entropies underflow
        >>> infer_task(sure).tolist(), infer_task(sure, rule="log-entropy").tolist()
        ([0], [1])
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape (T, B, C), got {tuple(logits.shape)}")
    if rule not in TASK_INFERENCE_RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {TASK_INFERENCE_RULES}")
    if temperature is not None:
        if temperature.shape != logits.shape[:1] or not bool((temperature > 0).all()):
            raise ValueError(
                f"temperature must hold {logits.shape[0]} positive numbers (one per task), "
                f"got {temperature.tolist()}"
            )
        logits = logits / temperature.to(logits)[:, None, None]
    score = predictive_entropy(logits) if rule == "entropy" else log_predictive_entropy(logits)
    return score.argmin(dim=0)


def fit_temperature(
    logits: Tensor, y: Tensor, *, bounds: tuple[float, float] = (0.01, 1e4)
) -> float:
    """The temperature ``T`` that minimises the cross-entropy of ``softmax(logits / T)`` on ``y``.

    Temperature scaling (Guo et al., 2017) of one task's network on held-out images of that
    task only. A golden-section search over ``log T`` in float64 (the cross-entropy is convex
    in ``1/T``), deterministic.

    Args:
        logits: ``(N, C)`` outputs on held-out samples of the task.
        y: ``(N,)`` their labels.
        bounds: the range of temperatures searched, ``0 < low < high``.

    Returns:
        The temperature, a float within ``bounds``.

    Example:
        >>> logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0], [0.0, 4.0]])
        >>> round(fit_temperature(logits, torch.tensor([0, 1, 0, 0])), 2)  # one of 4 wrong
        3.64
    """
    if logits.dim() != 2 or y.shape != logits.shape[:1] or len(y) == 0:
        raise ValueError(
            f"logits must be (N, C) with one label each, got shapes {tuple(logits.shape)} and "
            f"{tuple(y.shape)}"
        )
    lo, hi = bounds
    if not 0 < lo < hi:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")
    z, labels = logits.detach().double(), y.to(logits.device)

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(z / math.exp(log_t), labels))

    golden = (math.sqrt(5) - 1) / 2
    a, b = math.log(lo), math.log(hi)
    c, d = b - golden * (b - a), a + golden * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(60):  # the bracket shrinks by 0.618 a step: 60 steps reach float precision
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - golden * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + golden * (b - a)
            fd = nll(d)
    return math.exp((a + b) / 2)


def task_logits(hnet: HyperNetwork, x: Tensor, *args: Any, task: Tensor | Sequence[int]) -> Tensor:
    """The target's outputs on ``x`` with the weights of every task in ``task``.

    Each task's weights are generated once and the ``T`` weight sets run in one
    :func:`~hyperloom.call_batched`; the target's non-generated parameters are shared.

    Args:
        hnet: a task-conditioned :class:`~hyperloom.HyperNetwork`.
        x: inputs ``(B, ...)``.
        task: ``T`` task ids.
        *args: further inputs of the target, passed unchanged.

    Returns:
        ``(T, B, ...)``: for classifiers, the ``(T, B, C)`` logits :func:`infer_task` takes.
    """
    ids = _task_ids(task, _device(hnet))
    weights = hnet.generate(task=ids)  # {name: (T, *shape)}
    xs = x.unsqueeze(0).expand(len(ids), *x.shape)  # (T, B, ...)
    return call_batched(hnet.target, weights, xs, *args)


def quadratic_penalty(
    params: Mapping[str, Tensor], anchor: Mapping[str, Tensor], importance: Mapping[str, Tensor]
) -> Tensor:
    """``sum_i importance_i * (theta_i - anchor_i)^2`` over the names in ``importance``.

    The penalty of online EWC (``lambda / 2`` times it, with the Fisher diagonal as importance)
    and of synaptic intelligence (``c`` times it, with :func:`si_importance`).

    Args:
        params: current ``{name: tensor}`` (e.g. ``dict(model.named_parameters())``).
        anchor: the values after the previous task, same names.
        importance: non-negative ``{name: tensor}`` of the same shapes.

    Returns:
        A scalar tensor; zero for an empty ``importance``.

    Example:
        >>> p = {"w": torch.tensor([1.0, 2.0])}
        >>> float(quadratic_penalty(p, {"w": torch.zeros(2)}, {"w": torch.tensor([1.0, 0.5])}))
        3.0
    """
    missing = sorted(set(importance) - set(params)) + sorted(set(importance) - set(anchor))
    if missing:
        raise ValueError(f"importance names {sorted(set(missing))} missing from params/anchor")
    total = None
    for name, f in importance.items():
        term = (f * (params[name] - anchor[name]).pow(2)).sum()
        total = term if total is None else total + term
    if total is None:
        first = next(iter(params.values()), None)
        return torch.zeros((), device=None if first is None else first.device)
    return total


def fisher_diagonal(
    fn: Callable[[dict[str, Tensor], Tensor], Tensor],
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int = 32,
) -> dict[str, Tensor]:
    """Diagonal empirical Fisher: the mean over samples of ``(d log p(y_i | x_i) / d theta)^2``.

    Per-sample gradients come from ``torch.func.vmap(grad(...))`` in batches of ``batch_size``.

    Args:
        fn: ``fn(params, x_batch) -> logits (B, C)``, e.g. ``lambda p, x:
            torch.func.functional_call(model, p, (x,))[:, head]``.
        params: ``{name: tensor}`` at which to take the gradients (detached here).
        x: inputs ``(N, ...)``.
        y: labels ``(N,)``.
        batch_size: samples per vectorised gradient call (memory: ``batch_size`` x the
            number of parameters).

    Returns:
        ``{name: tensor}`` of the parameters' shapes.
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y need the same non-zero length, got {len(x)} and {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    detached = {k: v.detach() for k, v in params.items()}

    def nll_one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return F.cross_entropy(fn(p, xi.unsqueeze(0)), yi.unsqueeze(0))

    per_sample = vmap(grad(nll_one), in_dims=(None, 0, 0))
    fisher = {k: torch.zeros_like(v) for k, v in detached.items()}
    for start in range(0, len(x), batch_size):
        grads = per_sample(detached, x[start : start + batch_size], y[start : start + batch_size])
        for k, g in grads.items():  # g: (b, *shape)
            fisher[k] += g.pow(2).sum(dim=0)
    return {k: f / len(x) for k, f in fisher.items()}


def output_fisher(
    hnet: HyperNetwork, task: int, x: Tensor, y: Tensor, *, batch_size: int = 32
) -> dict[str, Tensor]:
    """The diagonal Fisher of the weights ``hnet`` generates for ``task``, on that task's data.

    Importance of each generated number for a Fisher-weighted :func:`output_regularizer`
    (``importance=``): the mean over samples of ``(d log p(y_i | x_i) / d theta)^2`` at
    ``theta = H(e_task)``, through the target with the generated weights.

    Args:
        hnet: a classification hypernetwork (``generate(task=t)``, ``target``).
        task: the task id.
        x: inputs of that task ``(N, ...)``.
        y: labels ``(N,)``.
        batch_size: samples per vectorised gradient call.

    Returns:
        ``{name: tensor}`` of the generated tensors' shapes.
    """
    weights = {k: v.detach() for k, v in hnet.generate(task=task).items()}
    target = hnet.target
    return fisher_diagonal(
        lambda p, xb: functional_call(target, p, (xb,)), weights, x, y, batch_size=batch_size
    )


def si_importance(
    path: Mapping[str, Tensor], delta: Mapping[str, Tensor], *, xi: float = 0.1
) -> dict[str, Tensor]:
    """Synaptic intelligence's per-task importance ``omega / (Delta^2 + xi)`` (Zenke et al.).

    Args:
        path: the path integral of the task, ``omega = sum over steps of -g * step`` (``g``
            the task loss gradient, ``step`` the parameter change), accumulated in the loop.
        delta: the total change of each parameter over the task.
        xi: damping.

    Returns:
        ``{name: tensor}``, clamped at zero; add it to the running importance.
    """
    if xi <= 0:
        raise ValueError(f"xi must be positive, got {xi}")
    return {k: (w / (delta[k].pow(2) + xi)).clamp(min=0) for k, w in path.items()}
