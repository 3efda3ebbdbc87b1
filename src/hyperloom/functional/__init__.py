"""Calling an unmodified module with weights it does not own.

:func:`call` runs ``target`` with one weight set; :func:`call_batched` runs it with a batch of
weight sets, slice ``i`` of the weights on slice ``i`` of the inputs, through ``torch.func.vmap``.
Both swap tensors in for one call (``torch.func.functional_call``) and leave the module's own
tensors as they were, also when the call raises.

:func:`call_from_readout` is the per-sample call of a hypernetwork whose weights are one linear
readout of features (``FlatGenerator``): its ``Linear`` layers read their weights from the
readout without forming them (``docs/performance.md``); ``HyperNetwork`` uses it by itself.

Fast paths. When a target is built only from layers this module knows (``nn.Sequential`` of
``Linear``, ``Conv1d/2d/3d``, element-wise activations, ``Dropout``, ``Flatten``; or one
``nn.RNN``/``nn.GRU``/``nn.LSTM``, or one ``nn.RNNCell``/``nn.GRUCell``/``nn.LSTMCell``), exact
types, no hooks, the same results are computed without ``functional_call``'s reparametrisation:
:func:`call` runs ``F.linear``/``_conv_forward`` on the given tensors directly, and
:func:`call_batched` runs hand-batched kernels (``bmm`` for linear maps, one grouped convolution
for a batch of convolutions, batched recurrent steps) instead of ``vmap``. Anything else goes
through ``functional_call`` (and ``vmap``) as before. ``tests/test_fastpaths.py`` checks every
fast path against that general path, outputs and gradients.

Where it lives: :mod:`~hyperloom.functional.dispatch` is the table of fast paths and the one
place where a call's path is chosen; :mod:`~hyperloom.functional.autograd` holds their custom
autograd Functions; :mod:`~hyperloom.functional.readout` the per-sample route from a linear
readout; :mod:`~hyperloom.functional.swap` the ``functional_call``/``vmap`` path (its lock, the
BatchNorm statistics); :mod:`~hyperloom.functional.recurrent` recurrent modules as tensor ops.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .dispatch import batched_plan, known_layers, resolve, run_direct
from .readout import call_from_readout as call_from_readout
from .recurrent import rnn_forward as rnn_forward
from .swap import call_batched_vmap
from .swap import swapped_call as swapped_call

Weights = Mapping[str, Tensor]


def check_weights(target: nn.Module, weights: Weights, *, batch_dims: int = 0) -> None:
    """Check that every key of ``weights`` names a parameter of ``target``, with its shape.

    Parameters that ``weights`` does not name keep the module's own values when called.

    Args:
        target: the module the weights are for.
        weights: ``name -> tensor``; a tensor has ``batch_dims`` leading dimensions before the
            parameter's own shape, the same ones for every tensor.
        batch_dims: 0 for :func:`call`, 1 for :func:`call_batched`.

    Raises:
        TypeError: a value is not a tensor.
        ValueError: unexpected names (with close matches) and wrong shapes, all listed at once.
    """
    own = dict(target.named_parameters(remove_duplicate=False))
    problems = []
    unexpected = [n for n in weights if n not in own]
    if unexpected:
        hints = []
        for n in unexpected:
            close = difflib.get_close_matches(n, list(own), n=1)
            hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        problems.append(f"unexpected names {', '.join(hints)}")
    lead = None
    for name, t in weights.items():
        if name not in own:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"weights[{name!r}] must be a Tensor, got {type(t).__name__}")
        want = tuple(own[name].shape)
        got = tuple(t.shape)
        if len(got) != batch_dims + len(want) or got[batch_dims:] != want:
            what = f"{batch_dims} batch dim(s) then {want}" if batch_dims else f"{want}"
            problems.append(f"{name!r} has shape {got}, expected {what}")
        elif lead is None:
            lead = got[:batch_dims]
        elif got[:batch_dims] != lead:
            problems.append(f"{name!r} has batch shape {got[:batch_dims]}, others have {lead}")
    if problems:
        raise ValueError(f"weights for {type(target).__name__} do not fit: " + "; ".join(problems))


def call(target: nn.Module, weights: Weights, *args: Any, **kwargs: Any) -> Any:
    """Run ``target(*args, **kwargs)`` with the named parameters replaced by ``weights``.

    The module is not mutated: the tensors are swapped in for this call only, inside
    ``try/finally``. Parameters not named in ``weights`` keep their own values (and stay
    trainable). Tied parameters are replaced together.

    Args:
        target: any ``nn.Module``.
        weights: ``name -> tensor`` with exactly the parameters' shapes.
        *args: positional inputs of ``target.forward``.
        **kwargs: keyword inputs of ``target.forward``.

    Returns:
        Whatever ``target.forward`` returns.

    Raises:
        ValueError: unexpected names or wrong shapes (see :func:`check_weights`).

    Example:
        >>> net = nn.Linear(3, 2)
        >>> w = {"weight": torch.zeros(2, 3), "bias": torch.ones(2)}
        >>> call(net, w, torch.randn(4, 3))
        tensor([[1., 1.],
                [1., 1.],
                [1., 1.],
                [1., 1.]])
    """
    by_id = resolve(target, weights, 0)
    if by_id is None:
        check_weights(target, weights, batch_dims=0)  # raises, naming the problems
    elif not kwargs and len(args) == 1 and isinstance(args[0], Tensor):
        layers = known_layers(target)
        if layers is not None:
            return run_direct(layers, by_id, args[0])
    return swapped_call(target, weights, args, kwargs)


def call_batched(target: nn.Module, weights: Weights, *args: Any, **kwargs: Any) -> Any:
    """Run ``target`` once per weight set: slice ``i`` of the weights on slice ``i`` of the inputs.

    Every weight tensor has a leading dimension ``N`` and so does every tensor input; the target
    sees ``weights[name][i]`` and ``x[i]``, as in ``torch.func.vmap``. Non-tensor inputs are passed
    unchanged. To let a group of ``G`` samples share one weight set, give inputs of shape
    ``(N, G, ...)``; for one weight set per sample with modules that expect a batch dimension,
    ``x.unsqueeze(1)``. The result equals ``torch.stack([call(target, w_i, x_i) for ...])``.

    Recurrent modules (``nn.RNN``, ``nn.GRU``, ``nn.LSTM``), which have no vmap rule, run through
    the functional cells of :func:`rnn_forward` for the duration of the call. BatchNorm in
    training mode normalises each slice with its own batch statistics; its running statistics
    are not updated (each weight set would need its own), so evaluate with per-slice
    ``eval()``-mode statistics only after training them another way.

    Targets built only from known layers (``nn.Sequential`` of ``Linear``/``Conv*d``/element-wise
    activations/``Dropout``/``Flatten``, a recurrent module, or a recurrent cell, exact types
    without hooks) skip vmap: linear maps run as one ``bmm`` with a backward that returns the
    weight gradient in the weights' own layout, convolutions as one grouped convolution,
    recurrent steps as batched matmuls; the results are the vmap path's (see
    ``docs/performance.md``). ``nn.LSTMCell``, which vmap cannot batch, works through this path.

    Args:
        target: any ``nn.Module``.
        weights: ``name -> (N, *shape)``.
        *args: positional inputs, tensors with leading dimension ``N``.
        **kwargs: keyword inputs, likewise.

    Returns:
        The target's outputs, each stacked along a new leading dimension ``N``.

    Raises:
        ValueError: unexpected names, wrong shapes, or inputs whose leading dimension is not N.

    Example:
        >>> net = nn.Linear(3, 2)
        >>> ws = {"weight": torch.randn(5, 2, 3), "bias": torch.randn(5, 2)}
        >>> call_batched(net, ws, torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """
    by_id = resolve(target, weights, 1)
    if by_id is None:
        check_weights(target, weights, batch_dims=1)  # raises, naming the problems
    if not weights:
        raise ValueError("call_batched needs at least one weight tensor to batch over")
    n = next(iter(weights.values())).shape[0]
    if n == 0:
        return _call_batched_empty(target, weights, args, kwargs)
    leaves, spec = pytree.tree_flatten((args, kwargs))
    in_leaves: list[int | None] = []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, Tensor):
            if leaf.dim() == 0 or leaf.shape[0] != n:
                raise ValueError(
                    f"input {i} has shape {tuple(leaf.shape)}; call_batched needs a leading "
                    f"dimension of {n}, one slice per weight set"
                )
            in_leaves.append(0)
        else:
            in_leaves.append(None)
    if by_id is not None:
        run = batched_plan(target, args, kwargs)
        if run is not None:
            return run(by_id)
    return call_batched_vmap(
        target, weights, n, pytree.tree_unflatten(in_leaves, spec), args, kwargs
    )


def _call_batched_empty(target: nn.Module, weights: Weights, args: tuple, kwargs: dict) -> Any:
    """:func:`call_batched` with zero weight sets: empty outputs of the right shapes.

    Runs one weight set of zeros on one input slice of zeros, appended to the (empty) given
    ones, and keeps none of it: the outputs have a leading dimension of 0 and the shapes that
    ``N`` weight sets would give, and stay connected to the given tensors for autograd.
    """

    def pad(t: Any) -> Any:
        if not isinstance(t, Tensor):
            return t
        if t.dim() == 0 or t.shape[0] != 0:
            raise ValueError(
                f"an input has shape {tuple(t.shape)}; call_batched with 0 weight sets needs a "
                "leading dimension of 0"
            )
        return torch.cat([t, t.new_zeros(1, *t.shape[1:])])

    padded = {k: pad(v) for k, v in weights.items()}
    a, kw = pytree.tree_map(pad, (args, kwargs))
    out = call_batched(target, padded, *a, **kw)
    return pytree.tree_map(lambda t: t[:0] if isinstance(t, Tensor) else t, out)
