"""Implementation of :mod:`hyperloom.federated` (import from there)."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import call
from ..hypernet import HyperNetwork
from ..target import TargetSpec

LOGGER = logging.getLogger("hyperloom.federated")


# --------------------------------------------------------------------------------------------
# Non-IID partitions


def class_shares(
    num_clients: int, num_classes: int, classes_per_client: int = 2, *, seed: int = 0
) -> Tensor:
    """Shares of each class per client when every client sees only ``classes_per_client`` classes.

    As in pFedHN's code: the ``num_clients * classes_per_client`` (client, class) slots are spread
    evenly over the classes (each client takes distinct classes among those with the most free
    slots, ties broken at random), and each class's examples are split among its clients in
    proportions drawn from U(0.4, 0.6) and normalised.

    Args:
        num_clients: number of clients.
        num_classes: number of classes.
        classes_per_client: classes each client sees.
        seed: seed of the draw.

    Returns:
        ``(num_clients, num_classes)`` shares; each column sums to 1 (or is all zero for a class
        no client took), each row has ``classes_per_client`` non-zero entries.

    Example:
        >>> s = class_shares(10, 10, 2)
        >>> (s > 0).sum(1).tolist() == [2] * 10, s.sum(0).allclose(torch.ones(10))
        (True, True)
    """
    if num_clients < 1 or num_classes < 1:
        raise ValueError(
            f"need num_clients >= 1 and num_classes >= 1, got {num_clients}, {num_classes}"
        )
    if not 1 <= classes_per_client <= num_classes:
        raise ValueError(
            f"classes_per_client must be in [1, {num_classes}], got {classes_per_client}"
        )
    g = torch.Generator().manual_seed(seed)
    slots = num_clients * classes_per_client
    free = torch.full((num_classes,), slots // num_classes, dtype=torch.long)
    free[torch.randperm(num_classes, generator=g)[: slots % num_classes]] += 1  # (C,)
    raw = torch.zeros(num_clients, num_classes)
    for i in range(num_clients):
        taken: list[int] = []
        for _ in range(classes_per_client):
            avail = free.clone()
            avail[taken] = -1
            best = torch.nonzero(avail == avail.max()).flatten()
            c = int(best[torch.randint(len(best), (1,), generator=g)])
            taken.append(c)
            free[c] -= 1
            raw[i, c] = 0.4 + 0.2 * float(torch.rand((), generator=g))
    total = raw.sum(0, keepdim=True)  # (1, C)
    return torch.where(total > 0, raw / total.clamp_min(1e-12), raw)


def dirichlet_shares(num_clients: int, num_classes: int, alpha: float, *, seed: int = 0) -> Tensor:
    """Shares of each class per client drawn from Dirichlet(alpha, ..., alpha), class by class.

    Small ``alpha`` (0.1) gives each client a few dominant classes; large ``alpha`` (100) is close
    to an IID split.

    Args:
        num_clients: number of clients.
        num_classes: number of classes.
        alpha: concentration, > 0.
        seed: seed of the draw.

    Returns:
        ``(num_clients, num_classes)`` shares; each column sums to 1.

    Example:
        >>> dirichlet_shares(5, 10, alpha=0.5).sum(0).allclose(torch.ones(10))
        True
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if num_clients < 1 or num_classes < 1:
        raise ValueError(
            f"need num_clients >= 1 and num_classes >= 1, got {num_clients}, {num_classes}"
        )
    rng = np.random.default_rng(seed)
    draws = rng.dirichlet(np.full(num_clients, float(alpha)), size=num_classes)  # (C, N)
    return torch.from_numpy(draws.T.astype(np.float32)).contiguous()  # (N, C)


def partition_clients(
    labels: Tensor, shares: Tensor, *, seed: int = 0, sizes: Sequence[int] | Tensor | None = None
) -> list[Tensor]:
    r"""Split a split's example indices among clients following per-class ``shares``.

    Without ``sizes``, column ``c`` of ``shares`` divides class ``c``'s examples: client ``i``
    gets the fraction ``shares[i, c]`` of them. With ``sizes`` (few examples per client, the
    regime of many small clients), client ``i`` gets exactly ``sizes[i]`` examples, divided
    over the classes in the proportions its unsized share would have had,

    .. math:: n_{ic} \propto \mathrm{shares}_{ic} \, |\{j : y_j = c\}|,

    rounded to integers that sum to ``sizes[i]`` (largest remainders), so that a test split
    partitioned with the same ``shares`` and no ``sizes`` has the same class proportions per
    client (exactly, when the two splits have the same class frequencies).

    Args:
        labels: ``(n,)`` int64 labels.
        shares: ``(num_clients, num_classes)`` from :func:`class_shares` or
            :func:`dirichlet_shares`; column ``c`` is how class ``c`` is divided.
        seed: seed of the shuffle within each class.
        sizes: ``(num_clients,)`` examples per client, or ``None`` for the whole shares.

    Returns:
        One sorted index tensor per client; every example goes to at most one client (all of
        them, when every column sums to 1 and ``sizes`` is ``None``).

    Raises:
        ValueError: bad shapes, a label without a column, a negative size, a client with a
            size but no share of any class present, or a class with fewer examples than its
            clients' sizes ask for (the class and both counts are named).

    Example:
        >>> y = torch.arange(10).repeat(20)
        >>> parts = partition_clients(y, class_shares(5, 10, 2))
        >>> sorted(torch.unique(y[parts[0]]).tolist()) == sorted(
        ...     torch.nonzero(class_shares(5, 10, 2)[0]).flatten().tolist())
        True
        >>> [len(p) for p in partition_clients(y, class_shares(5, 10, 2), sizes=[3, 5, 8, 2, 7])]
        [3, 5, 8, 2, 7]
    """
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (n,), got {tuple(labels.shape)}")
    if shares.ndim != 2:
        raise ValueError(f"shares must have shape (clients, classes), got {tuple(shares.shape)}")
    if len(labels) and int(labels.max()) >= shares.shape[1]:
        raise ValueError(
            f"label {int(labels.max())} has no column in shares of shape {tuple(shares.shape)}"
        )
    g = torch.Generator().manual_seed(seed)
    counts = _class_counts(labels, shares, sizes)  # (N, C) examples per client and class
    parts: list[list[Tensor]] = [[] for _ in range(shares.shape[0])]
    for c in range(shares.shape[1]):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=g)]  # (n_c,)
        if counts is None:
            bounds = (torch.cumsum(shares[:, c].double(), 0) * len(members)).round().long()
        else:
            bounds = torch.cumsum(counts[:, c], 0)  # (N,)
            if int(bounds[-1]) > len(members):
                raise ValueError(
                    f"class {c} has {len(members)} examples, but the clients' sizes ask for "
                    f"{int(bounds[-1])} of them; use fewer clients or smaller sizes"
                )
        bounds = bounds.clamp(max=len(members))
        start = 0
        for i, end in enumerate(bounds.tolist()):
            if end > start:
                parts[i].append(members[start:end])
            start = max(start, end)
    return [
        torch.sort(torch.cat(p)).values if p else torch.zeros(0, dtype=torch.long) for p in parts
    ]


def _class_counts(
    labels: Tensor, shares: Tensor, sizes: Sequence[int] | Tensor | None
) -> Tensor | None:
    """``(N, C)`` examples per client and class for :func:`partition_clients`'s ``sizes``."""
    if sizes is None:
        return None
    want = torch.as_tensor(sizes, dtype=torch.long).flatten()  # (N,)
    if len(want) != shares.shape[0]:
        raise ValueError(f"sizes has {len(want)} entries for {shares.shape[0]} clients")
    if len(want) and int(want.min()) < 0:
        raise ValueError(f"sizes must be >= 0, got {int(want.min())}")
    present = torch.bincount(labels, minlength=shares.shape[1]).double()  # (C,)
    weight = shares.double().clamp_min(0) * present  # (N, C)
    total = weight.sum(1, keepdim=True)  # (N, 1)
    lost = torch.nonzero((total.squeeze(1) == 0) & (want > 0)).flatten().tolist()
    if lost:
        raise ValueError(f"clients {lost} have sizes but no share of any class present")
    exact = weight / total.clamp_min(1e-300) * want.unsqueeze(1)  # (N, C)
    counts = exact.floor().long()
    short = want - counts.sum(1)  # (N,) examples still to place, fewer than C
    order = torch.argsort(exact - counts, dim=1, descending=True, stable=True)  # (N, C)
    rank = torch.argsort(order, dim=1)  # rank of each class by its remainder
    return counts + (rank < short.unsqueeze(1)).long()


# --------------------------------------------------------------------------------------------
# The client's side


def train_local(
    target: nn.Module,
    weights: Mapping[str, Tensor],
    x: Tensor | None = None,
    y: Tensor | None = None,
    *,
    steps: int,
    lr: float,
    batch_size: int = 64,
    momentum: float = 0.9,
    weight_decay: float = 5e-5,
    seed: int = 0,
    max_grad_norm: float | None = None,
    loss: Callable[[Any, Tensor], Tensor] = F.cross_entropy,
    batches: Iterable[tuple[Any, Tensor]] | None = None,
) -> tuple[dict[str, Tensor], float]:
    """Inner SGD steps on a client's data, starting from ``weights``; the target is not touched.

    Args:
        target: the model whose parameters ``weights`` replaces (any subset of its parameters;
            the others keep the module's values and are not trained).
        weights: ``name -> tensor``, the starting point (never modified).
        x: the client's inputs ``(n, ...)`` (or ``batches``).
        y: its labels ``(n,)``.
        steps: number of SGD steps, each on a minibatch drawn with replacement from ``(x, y)``,
            or on the next minibatch of ``batches`` (fewer when it runs out).
        lr: learning rate.
        batch_size: minibatch size (capped at ``n``).
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        seed: seed of the minibatch draws.
        max_grad_norm: clip the total gradient norm of every step to this (``None``: no
            clipping).
        loss: ``loss(outputs, targets)`` of one minibatch (default: cross-entropy).
        batches: an iterable of ``(inputs, targets)`` minibatches (a ``DataLoader``, say) to
            train on instead of ``(x, y)``.

    Returns:
        ``(new_weights, mean_loss)``: detached tensors with the same names and shapes, and the
        mean training loss over the steps.

    Example:
        >>> net = nn.Linear(4, 2)
        >>> w = {k: v.detach() for k, v in net.named_parameters()}
        >>> x, y = torch.randn(8, 4), torch.randint(2, (8,))
        >>> new, loss = train_local(net, w, x, y, steps=3, lr=0.1)
        >>> sorted(new) == sorted(w) and not torch.equal(new["weight"], w["weight"])
        True
    """
    if batches is None:
        if x is None or y is None:
            raise ValueError("train_local needs the client's data: x and y, or batches")
        if len(x) == 0:
            raise ValueError("train_local got a client with no examples")
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
        batches = _draws(x, y, min(batch_size, len(x)), seed)
    elif x is not None or y is not None:
        raise ValueError("train_local takes x and y, or batches, not both")
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
    params = {n: w.detach().clone().requires_grad_(True) for n, w in weights.items()}
    opt = torch.optim.SGD(params.values(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    total, done = torch.zeros(()), 0
    for xb, yb in itertools.islice(batches, steps):
        value = loss(call(target, params, xb), yb)
        opt.zero_grad(set_to_none=True)
        value.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params.values(), max_grad_norm)
        opt.step()
        total += value.detach()
        done += 1
    return {n: p.detach() for n, p in params.items()}, float(total) / max(done, 1)


def _draws(x: Tensor, y: Tensor, b: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Minibatches of ``b`` examples drawn with replacement, for ever, from a seeded stream."""
    g = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randint(len(x), (b,), generator=g)
        yield x[idx], y[idx]


@torch.no_grad()
def evaluate(
    target: nn.Module,
    weights: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int = 2048,
) -> tuple[float, float, int]:
    """Loss, accuracy and number of examples of ``target`` with ``weights`` on ``(x, y)``.

    Returns ``(nan, nan, 0)`` for an empty set.

    Example:
        >>> net = nn.Linear(4, 2)
        >>> loss, acc, n = evaluate(net, {}, torch.randn(8, 4), torch.zeros(8, dtype=torch.long))
        >>> n, 0.0 <= acc <= 1.0
        (8, True)
    """
    if len(x) == 0:
        return math.nan, math.nan, 0
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = call(target, dict(weights), x[i : i + batch_size])
        loss += float(F.cross_entropy(logits, y[i : i + batch_size], reduction="sum"))
        correct += int((logits.argmax(-1) == y[i : i + batch_size]).sum())
    return loss / len(x), correct / len(x), len(x)


def personal_weights(target: nn.Module, spec: TargetSpec) -> dict[str, Tensor]:
    """A fresh copy of the target's parameters that the hypernetwork does not generate.

    In pFedHN-PC these (the classifier head) are personal: each client keeps its own copy, trains
    it with the generated ones, and never sends it.

    Example:
        >>> import hyperloom as hl
        >>> net = hl.networks.lenet()
        >>> sorted(personal_weights(net, hl.select(net, "conv*", "fc*")))
        ['out.bias', 'out.weight']
    """
    return {n: p.detach().clone() for n, p in target.named_parameters() if n not in spec.names}


# --------------------------------------------------------------------------------------------
# Replies: validation and collection


def check_reply(
    spec: TargetSpec,
    weights: Any,
    *,
    sent: Mapping[str, Tensor] | None = None,
    trust_bound: float | None = None,
) -> str | None:
    """Why a client's reply cannot be used, or ``None`` when it can.

    A reply must name exactly the spec's tensors (string keys), each a tensor with its shape and
    a floating dtype whose values stay finite once cast to the spec's dtype (the server's:
    a float64 ``1e300`` is finite, but ``inf`` in float32). With ``sent`` (what the server sent)
    and ``trust_bound``, the update must also satisfy the trust bound

    ``||reply - sent|| <= trust_bound * ||sent||``,

    both norms over all tensors, computed in float64. Nothing is modified.

    Args:
        spec: what the server sent (the generated tensors).
        weights: the reply, ``name -> tensor``.
        sent: the weights the server sent this client (same names), for the trust bound.
        trust_bound: the largest accepted ``||reply - sent|| / ||sent||``; ``None``: no bound.

    Returns:
        A human-readable reason, or ``None``.

    Example:
        >>> import hyperloom as hl
        >>> spec = hl.select(nn.Linear(3, 2))
        >>> check_reply(spec, {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}) is None
        True
        >>> nan = torch.tensor([0.0, float("nan")])
        >>> check_reply(spec, {"weight": torch.zeros(2, 3), "bias": nan})
        "'bias' has 1 non-finite values of 2 (as float32)"
        >>> sent = {"weight": torch.ones(2, 3), "bias": torch.ones(2)}
        >>> check_reply(spec, {"weight": torch.ones(2, 3) * 50, "bias": torch.ones(2)},
        ...             sent=sent, trust_bound=10.0)
        'update norm 120 exceeds the trust bound 10 x ||sent|| = 10 x 2.83'
    """
    if not isinstance(weights, Mapping):
        return f"expected a mapping of name -> tensor, got {type(weights).__name__}"
    for name, t in weights.items():
        if not isinstance(name, str):
            return f"key {name!r} is a {type(name).__name__}, not a string"
        if not isinstance(t, Tensor):
            return f"{name!r} is a {type(t).__name__}, not a tensor"
    try:
        spec.check(weights)
    except ValueError as e:
        return str(e)
    for p in spec:
        t = weights[p.name]
        if not t.is_floating_point():
            return f"{p.name!r} has dtype {t.dtype}, expected a floating dtype"
        bad = int((~torch.isfinite(t.to(p.dtype))).sum())
        if bad:
            dtype = str(p.dtype).removeprefix("torch.")
            return f"{p.name!r} has {bad} non-finite values of {t.numel()} (as {dtype})"
    if trust_bound is not None and sent is not None:
        change = _norm64(weights[p.name].to(p.dtype) - sent[p.name].to(p.dtype) for p in spec)
        base = _norm64(sent[p.name] for p in spec)
        if not change <= trust_bound * base:
            return (
                f"update norm {change:.3g} exceeds the trust bound {trust_bound:g} x ||sent|| = "
                f"{trust_bound:g} x {base:.3g}"
            )
    return None


def _norm64(tensors: Any) -> float:
    """The l2 norm over several tensors, accumulated in float64 (no float32 overflow)."""
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


@dataclass
class Replies:
    """What :func:`collect_replies` got back in one round.

    Attributes:
        ok: ``client -> reply`` for the clients that answered in time.
        skipped: ``client -> reason`` for those that failed, timed out or dropped out.
    """

    ok: dict[Any, Any] = field(default_factory=dict)
    skipped: dict[Any, str] = field(default_factory=dict)


def collect_replies(
    clients: Sequence[Any],
    work: Callable[[Any], Any],
    *,
    timeout: float | None = None,
    round_: int | None = None,
) -> Replies:
    """Run ``work(client)`` for each client; skip and log the ones that fail, time out or drop.

    A client fails when ``work`` raises, drops out when it returns ``None``, and times out when
    it takes longer than ``timeout`` seconds (it then runs on in a worker thread, whose result is
    discarded; in a real deployment Flower's ``send_and_receive(timeout=...)`` does the same). The
    round goes on with the others.

    Python cannot stop a thread, so a timed-out ``work`` keeps running beside the next clients:
    ``work`` must therefore touch nothing shared. It must compute on its own copies (of the
    target module, say: :func:`call` swaps tensors into the module it is given, so two threads
    on one module see each other's weights) and return everything it produced; the caller
    applies the results of :attr:`Replies.ok` only. The recipe's clients do so.

    Args:
        clients: client ids.
        work: ``client -> reply`` (``None`` means the client dropped out).
        timeout: seconds per client; ``None`` waits as long as it takes (and runs ``work`` in
            the calling thread).
        round_: the round number, for the log lines.

    Returns:
        :class:`Replies`.

    Example:
        >>> r = collect_replies([0, 1, 2], lambda c: None if c == 1 else c * 10)
        >>> r.ok, r.skipped
        ({0: 0, 2: 20}, {1: 'dropped out (no reply)'})
    """
    out = Replies()
    where = f"round {round_}: " if round_ is not None else ""
    pool = ThreadPoolExecutor(max_workers=1) if timeout is not None else None
    try:
        for c in clients:
            try:
                if pool is None:
                    reply = work(c)
                else:
                    future = pool.submit(work, c)
                    try:
                        reply = future.result(timeout=timeout)
                    except FutureTimeout:
                        # The stuck worker keeps its thread: later clients get a fresh pool.
                        pool.shutdown(wait=False, cancel_futures=True)
                        pool = ThreadPoolExecutor(max_workers=1)
                        raise
            except FutureTimeout:
                out.skipped[c] = f"timed out after {timeout} s"
            except Exception as e:  # a failing client must not stop the round
                out.skipped[c] = f"failed: {type(e).__name__}: {e}"
            else:
                if reply is None:
                    out.skipped[c] = "dropped out (no reply)"
                else:
                    out.ok[c] = reply
            if c in out.skipped:
                LOGGER.warning("%sskipped client %s: %s", where, c, out.skipped[c])
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    return out


# --------------------------------------------------------------------------------------------
# The server's side


def pfedhn_grads(
    generated: Mapping[str, Tensor],
    returned: Mapping[str, Tensor],
    params: Sequence[Tensor],
) -> list[Tensor | None]:
    """The pFedHN gradient ``(d theta / d params)^T (theta - theta_tilde)`` as one VJP.

    It is the gradient of ``0.5 * ||theta - theta_tilde||^2`` with ``theta_tilde`` held fixed,
    and Shamsian et al.'s update direction for the hypernetwork and the client's embedding.

    Args:
        generated: ``theta``, the weights generated for the client (still attached to the graph
            of ``params``).
        returned: ``theta_tilde``, the client's weights after local training (same names and
            shapes).
        params: the tensors to differentiate with respect to.

    Returns:
        One gradient per entry of ``params``; ``None`` for those ``theta`` does not depend on.

    Example:
        >>> W = torch.randn(3, 2, requires_grad=True)
        >>> e = torch.randn(2)
        >>> theta = {"w": W @ e}
        >>> (g,) = pfedhn_grads(theta, {"w": torch.zeros(3)}, [W])
        >>> torch.allclose(g, torch.outer(W @ e, e).detach())
        True
    """
    names = list(generated)
    missing = [n for n in names if n not in returned]
    if missing:
        raise ValueError(f"returned weights lack {missing}")
    outputs = [generated[n] for n in names]
    deltas = [
        generated[n].detach() - returned[n].to(generated[n].device, generated[n].dtype)
        for n in names
    ]
    return list(torch.autograd.grad(outputs, list(params), grad_outputs=deltas, allow_unused=True))


IDLE_EMBEDDINGS = ("skip", "step")
"""What :func:`pfedhn_step` does to the parameters no reply moved (the other clients' rows)."""

MAX_SERVER_GRAD_NORM = 1e18
"""Larger total gradient norms are refused: their squares would overflow float32 in Adam."""


def pfedhn_step(
    hnet: HyperNetwork,
    returned: Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    task: int | Tensor | Sequence[int],
    max_grad_norm: float | None = 50.0,
    trust_bound: float | None = None,
    idle: str = "skip",
) -> float:
    """One pFedHN server step: regenerate, take the VJP with ``theta - theta_tilde``, step.

    The parameters that move are those in ``optimizer`` (the hypernetwork and the embeddings in
    training; one new client's embedding with :func:`embedding_optimizer`). With several
    clients (``task=[...]`` and a list of replies, one each), their gradients are averaged
    before one step.

    Every reply is checked as :func:`check_reply` does (against the weights generated now, for
    the trust bound) and the gradient must be finite with a total norm below
    :data:`MAX_SERVER_GRAD_NORM`, all before anything moves: a refused call leaves the
    hypernetwork, its gradients and the optimizer as they were.

    Args:
        hnet: a :class:`~hyperloom.HyperNetwork` with a task-conditioned input (``task=`` ids).
        returned: the client's trained weights (the generated names only), or, with a list of
            clients in ``task``, a list of them in the same order.
        optimizer: the server optimizer.
        task: the client's id (its embedding row, the ``TaskEmbedding``'s keyword), or a list
            of ids for one averaged step.
        max_grad_norm: clip the total gradient norm (the paper uses 50); ``None`` to skip.
        trust_bound: refuse a reply whose change exceeds this many times the norm of the
            weights generated for it (:func:`check_reply`); ``None``: no bound.
        idle: ``"skip"``: parameters no reply reaches (the other clients' embedding rows) have
            no gradient, so the optimizer leaves them alone; ``"step"``: they get a zero
            gradient, so weight decay and momentum move them at every step, as in pFedHN's code
            (one ``nn.Embedding`` table under one optimizer).

    Returns:
        The mean ``||theta - theta_tilde||`` over the clients (how far the clients moved).

    Raises:
        ValueError: a reply that :func:`check_reply` refuses (the client and the reason are
            named), a non-finite or too large gradient, or bad arguments.
        TypeError: ``task`` that is not an id or a list of ids, or ``returned`` that is not a
            mapping (or a list of mappings for a list of ids).

    Example:
        >>> import hyperloom as hl
        >>> hnet = hl.HyperNetwork(nn.Linear(4, 2), hl.TaskEmbedding(3, 2),
        ...     hl.HeadsGenerator.factory())
        >>> opt = torch.optim.SGD(hnet.parameters(), lr=0.1)
        >>> w = {k: v.detach() + 0.1 for k, v in hnet.generate(task=torch.tensor(1)).items()}
        >>> round(pfedhn_step(hnet, w, opt, task=1), 3)
        0.316
    """
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
    if trust_bound is not None and not trust_bound > 0:
        raise ValueError(f"trust_bound must be > 0 or None, got {trust_bound}")
    if idle not in IDLE_EMBEDDINGS:
        raise ValueError(f"idle must be one of {IDLE_EMBEDDINGS}, got {idle!r}")
    ids, several = _client_ids(task, "pfedhn_step")
    replies: list[Mapping[str, Tensor]]
    if several:
        if isinstance(returned, Mapping) or not isinstance(returned, Sequence):
            raise TypeError(
                f"pfedhn_step with task={ids} takes a list of replies, one per client, got "
                f"{type(returned).__name__}"
            )
        replies = list(returned)
    elif isinstance(returned, Mapping):
        replies = [returned]
    else:
        raise TypeError(
            f"pfedhn_step with task={ids[0]} takes one reply (a mapping of name -> tensor), "
            f"got {type(returned).__name__}"
        )
    if len(replies) != len(ids) or not ids:
        raise ValueError(f"got {len(replies)} replies for clients {ids}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    total: list[Tensor | None] = [None] * len(params)
    moved = 0.0
    for c, reply in zip(ids, replies, strict=True):
        theta = hnet.generate(task=torch.tensor(c))
        sent = {n: t.detach() for n, t in theta.items()}
        reason = check_reply(hnet.spec, reply, sent=sent, trust_bound=trust_bound)
        if reason is not None:
            raise ValueError(f"refused the reply of client {c}: {reason}")
        moved += _norm64(sent[n] - reply[n].to(sent[n].dtype) for n in sent)
        grads = pfedhn_grads(theta, reply, params)
        for i, g in enumerate(grads):
            if g is not None:
                prev = total[i]
                total[i] = g / len(ids) if prev is None else prev + g / len(ids)
    # In the gradients' own dtype (no float64 copy of 8.7 M values): a norm whose square
    # overflows comes out inf and is refused like NaN.
    norm = math.sqrt(sum(float(torch.linalg.vector_norm(g)) ** 2 for g in total if g is not None))
    if not norm <= MAX_SERVER_GRAD_NORM:
        raise ValueError(
            f"refused the step for clients {ids}: gradient norm {norm:.3g} is not finite or "
            f"exceeds {MAX_SERVER_GRAD_NORM:g}"
        )
    for p, g in zip(params, total, strict=True):
        p.grad = torch.zeros_like(p) if g is None and idle == "step" else g
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return moved / len(ids)


def _client_ids(task: Any, where: str) -> tuple[list[int], bool]:
    """``task=`` as a list of client ids, and whether it named several (a list or 1-d tensor)."""
    if isinstance(task, Tensor):
        if task.is_floating_point() or task.is_complex() or task.ndim > 1:
            raise TypeError(
                f"{where} takes task= as an integer id or a list of ids, got a tensor of "
                f"dtype {task.dtype} and shape {tuple(task.shape)}"
            )
        return [int(t) for t in task.reshape(-1).tolist()], task.ndim == 1
    if isinstance(task, int) and not isinstance(task, bool):
        return [task], False
    if isinstance(task, Sequence) and not isinstance(task, str):
        bad = [t for t in task if isinstance(t, bool) or not isinstance(t, int)]
        if not bad:
            return list(task), True
    raise TypeError(f"{where} takes task= as an integer id or a list of ids, got {task!r}")


def embedding_optimizer(hnet: nn.Module, *, task: int | Tensor, lr: float) -> torch.optim.Optimizer:
    """An optimizer over one client's embedding row only: the hypernetwork stays frozen.

    Used for a client that joins after training (pFedHN's generalisation to novel clients):
    run the usual rounds for it with :func:`pfedhn_step` and this optimizer.

    Args:
        hnet: a :class:`~hyperloom.HyperNetwork` with a ``TaskEmbedding`` conditioner.
        task: the client's id (its embedding row, the ``TaskEmbedding``'s keyword).
        lr: Adam's learning rate.

    Returns:
        Adam over that one row.

    Example:
        >>> import hyperloom as hl
        >>> hnet = hl.HyperNetwork(nn.Linear(4, 2), hl.TaskEmbedding(3, 2),
        ...     hl.HeadsGenerator.factory())
        >>> new = hnet.conditioner.add(1)[0]
        >>> len(embedding_optimizer(hnet, task=new, lr=0.1).param_groups[0]["params"])
        1
    """
    rows = getattr(getattr(hnet, "conditioner", None), "rows", None)
    if not isinstance(rows, nn.ParameterList):
        raise TypeError("embedding_optimizer needs a HyperNetwork with a TaskEmbedding conditioner")
    ids, several = _client_ids(task, "embedding_optimizer")
    if several:
        raise TypeError(f"embedding_optimizer takes one client id as task=, got {ids}")
    client = ids[0]
    if not 0 <= client < len(rows):
        raise IndexError(f"client {client} has no embedding (there are {len(rows)})")
    return torch.optim.Adam([rows[client]], lr=lr)


@torch.no_grad()
def fedavg(
    weight_sets: Sequence[Mapping[str, Tensor]], counts: Sequence[float]
) -> dict[str, Tensor]:
    """Average of weight sets weighted by ``counts`` (FedAvg's aggregation).

    Example:
        >>> fedavg([{"w": torch.zeros(2)}, {"w": torch.ones(2)}], [1, 3])["w"].tolist()
        [0.75, 0.75]
    """
    if not weight_sets or len(weight_sets) != len(counts):
        raise ValueError(f"got {len(weight_sets)} weight sets and {len(counts)} counts")
    total = float(sum(counts))
    if not total > 0:
        raise ValueError(f"counts must sum to > 0, got {list(counts)}")
    names = list(weight_sets[0])
    return {
        n: sum(w[n] * (c / total) for w, c in zip(weight_sets, counts, strict=True))  # type: ignore[misc]
        for n in names
    }
