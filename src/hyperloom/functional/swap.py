"""The swapping path: ``functional_call`` (and ``vmap``) with tensors swapped in for one call.

Every call that swaps tensors into a module holds :data:`SWAP_LOCK`; BatchNorm running
statistics are updated on copies and written back only when the call returns
(:func:`swapped_call`), or kept per slice and dropped (:func:`call_batched_vmap`). Recurrent
modules run through :func:`~hyperloom.rnn_forward` on a stand-in, never on the user's module.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .recurrent import rnn_forward

Weights = Mapping[str, Tensor]


# One lock for every call that swaps tensors into a module: two threads calling one target (or
# a target and one of its submodules) would otherwise run with each other's tensors. The fast
# paths swap nothing and run without it.
SWAP_LOCK = threading.RLock()


def swapped_call(
    target: nn.Module,
    weights: Weights,
    args: tuple,
    kwargs: dict,
    statistics: Mapping[str, Tensor] | None = None,
) -> Any:
    """``functional_call`` with ``weights`` (already checked), safe under threads and errors.

    BatchNorm layers in training mode update copies of their running statistics, which are
    written back only when the call returns: a call that raises leaves them as they were.

    Args:
        target: the module.
        weights: ``name -> tensor``, names and shapes already checked.
        args: positional inputs.
        kwargs: keyword inputs.
        statistics: where the BatchNorm statistics live, ``buffer name -> tensor``; ``None``:
            the module's own buffers. Read in eval mode, updated in training mode.

    Returns:
        What ``target`` returns.
    """
    own = norm_statistics(target)
    homes = dict(own) if statistics is None else dict(statistics)
    if set(homes) != set(own):
        raise ValueError(
            f"statistics must name the BatchNorm buffers {sorted(own)}, got {sorted(homes)}"
        )
    training = norm_statistics(target, updated=True)
    work = {n: t.clone() if n in training else t for n, t in homes.items()}
    weights = autocast_norm_affine(target, weights)
    with SWAP_LOCK:
        out = functional_call(
            target, {**weights, **work}, args, kwargs, tie_weights=True, strict=False
        )
        with torch.no_grad():
            for n in training:
                homes[n].copy_(work[n])
    return out


def autocast_norm_affine(target: nn.Module, weights: Weights) -> Weights:
    """``weights`` with generated BatchNorm affine tensors in their statistics' dtype (autocast).

    Under autocast a generator's matmuls give ``bfloat16``/``float16`` weights. A plain module
    keeps its BatchNorm ``weight``/``bias`` in the dtype of its running statistics (autocast
    casts only the inputs of its listed ops, and ``batch_norm`` is not one of them), and the
    CPU's ``batch_norm`` refuses low-precision affine weights beside ``float32`` statistics. So
    the generated affine weights of a layer that keeps statistics go in in the statistics' dtype,
    as the module's own would (a lossless cast up; their gradients flow back through it). Outside
    autocast, or for layers without running statistics, ``weights`` is returned unchanged.
    """
    first = next(iter(weights.values()), None)
    if first is None or not torch.is_autocast_enabled(first.device.type):
        return weights
    out = dict(weights)
    for prefix, m in target.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        stats = m._buffers.get("running_mean")
        if stats is None:
            continue
        for local in ("weight", "bias"):
            name = f"{prefix}.{local}" if prefix else local
            t = out.get(name)
            if t is not None and t.dtype != stats.dtype:
                out[name] = t.to(stats.dtype)
    return out


def norm_statistics(target: nn.Module, *, updated: bool = False) -> dict[str, Tensor]:
    """``name -> buffer`` for the running statistics of every BatchNorm layer that keeps them.

    With ``updated``, only those a call in the current mode updates (layers in training mode).
    """
    out = {}
    for prefix, m in target.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or not m.track_running_stats:
            continue
        if updated and not m.training:
            continue
        for local in ("running_mean", "running_var", "num_batches_tracked"):
            buf = m._buffers.get(local)
            if buf is not None:
                out[f"{prefix}.{local}" if prefix else local] = buf
    return out


def call_batched_vmap(
    target: nn.Module, weights: Weights, n: int, in_dims_inputs: Any, args: tuple, kwargs: dict
) -> Any:
    """The general path of :func:`call_batched`: ``vmap`` over ``functional_call``."""
    stats, counts = _running_statistics(target, n)
    module = _recurrent_stand_in(target)

    def one(w: dict[str, Tensor], s: dict[str, Tensor], c: dict[str, Tensor], inputs: tuple):
        a, kw = inputs
        return functional_call(module, {**w, **s, **c}, a, kw, tie_weights=True, strict=False)

    with SWAP_LOCK:
        return vmap(one, in_dims=(0, 0, None, in_dims_inputs), randomness="different")(
            dict(weights), stats, counts, (args, kwargs)
        )


def _running_statistics(target: nn.Module, n: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Copies of the statistics that normalisation layers update in place in training.

    Running means and variances get one copy per slice (each weight set would need its own);
    the batch counter, the same for every slice and read with ``float()`` by BatchNorm with
    ``momentum=None``, gets one unbatched copy. The module's own buffers are never written.
    """
    stats: dict[str, Tensor] = {}
    counts: dict[str, Tensor] = {}
    for prefix, m in target.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats:
            for local in ("running_mean", "running_var", "num_batches_tracked"):
                buf = getattr(m, local, None)
                if buf is None:
                    continue
                name = f"{prefix}.{local}" if prefix else local
                if local == "num_batches_tracked":
                    counts[name] = buf.detach().clone()
                else:
                    stats[name] = buf.detach().unsqueeze(0).expand(n, *buf.shape).clone()
    return stats, counts


def _recurrent_stand_in(target: nn.Module) -> nn.Module:
    """``target``, or a stand-in whose recurrent modules run through :func:`rnn_forward`.

    ``nn.RNN``/``nn.GRU``/``nn.LSTM`` have no vmap rule. Rather than patching the user's modules,
    the modules on the way to each recurrent one are shallow copies (their own dictionaries of
    parameters, buffers and children; the same tensors), and each recurrent copy runs
    :func:`rnn_forward` on its own parameters. The rest of the tree is shared, unchanged.
    """
    memo: dict[int, nn.Module] = {}

    def stand_in(m: nn.Module) -> nn.Module:
        if id(m) in memo:
            return memo[id(m)]
        if not any(isinstance(s, nn.RNNBase) for s in m.modules()):
            memo[id(m)] = m
            return m
        new = copy.copy(m)  # a new object; its dictionaries are replaced below
        memo[id(m)] = new
        object.__setattr__(new, "_parameters", dict(m._parameters))
        object.__setattr__(new, "_buffers", dict(m._buffers))
        children = {k: c if c is None else stand_in(c) for k, c in m._modules.items()}
        object.__setattr__(new, "_modules", children)
        if isinstance(m, nn.RNNBase) and "forward" not in vars(m):
            object.__setattr__(new, "_flat_weights", list(m._flat_weights))
            forward = functools.partial(rnn_forward, cast(nn.RNNBase, new))  # a copy of m
            object.__setattr__(new, "forward", forward)
        return new

    return stand_in(target)
