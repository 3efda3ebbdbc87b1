"""The readout route: per-sample calls straight from a generator's linear readout.

:func:`call_from_readout` runs sample ``i`` through the target with the weights
``readout(h[i])``; a ``Linear`` layer takes them without forming them
(:class:`~hyperloom.functional.autograd.ReadoutLinear`), other layers as in ``call_batched``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .autograd import ReadoutLinear
from .dispatch import known_layers, layer_batched


def call_from_readout(
    target: nn.Module,
    names: list[str],
    sizes: list[int],
    h: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    x: Tensor,
    consts: list[float | None] | None = None,
) -> Tensor | None:
    """Sample ``i`` of ``x`` through ``target`` with the weights ``F.linear(h[i], weight, bias)``.

    The per-sample call of a hypernetwork whose generated weights are one linear readout of
    features ``h``, split in order into the tensors ``names`` of sizes ``sizes`` (plus each
    tensor's constant ``consts``): ``w_i = weight @ h_i + bias``. The result equals
    ``call_batched(target, weights, x.unsqueeze(1)).flatten(0, 1)`` with those weights
    generated, but a ``Linear`` layer that meets one row per weight set never forms its
    ``(B, out, in)`` weights: since ``W_i x_i = sum_k h_ik (R_k x_i) + r x_i`` (``R_k`` the
    readout's column ``k`` viewed as ``(out, in)``), it computes ``R_k x_i`` for every ``k`` in
    one batched matmul (:class:`ReadoutLinear`). For per-sample weights that is the
    generation's FLOPs in a better-shaped matmul, no ``B x out x in`` weights written and read,
    and a backward of one such matmul instead of two. Other layers get their weights generated
    (only theirs) and run as in :func:`call_batched`.

    Args:
        target: the target module.
        names: the generated tensors, in the readout's order.
        sizes: their numbers of elements.
        h: ``(B, K)`` readout features, one row per sample.
        weight: ``(sum(sizes), K)`` readout weight.
        bias: ``(sum(sizes),)`` readout bias, or ``None``.
        x: ``(B, ...)`` the target's input, one sample per weight set.
        consts: a constant added to each generated tensor (``None``: zeros).

    Returns:
        ``(B, ...)`` outputs, or ``None`` when the target is not a stack of known layers (the
        caller then generates the weights and goes through :func:`call_batched`).

    Example:
        >>> from hyperloom import call_batched
        >>> target, readout = nn.Linear(3, 2), nn.Linear(4, 8)  # rows: weight (6), bias (2)
        >>> h, x = torch.randn(5, 4), torch.randn(5, 3)
        >>> y = call_from_readout(
        ...     target, ["weight", "bias"], [6, 2], h, readout.weight, readout.bias, x
        ... )
        >>> w = readout(h)  # (5, 8): the weights, formed
        >>> ref = call_batched(target, {"weight": w[:, :6].view(5, 2, 3), "bias": w[:, 6:]},
        ...                    x.unsqueeze(1))
        >>> torch.allclose(y, ref.flatten(0, 1), atol=1e-6)
        True
    """
    layers = known_layers(target)
    if (
        layers is None
        or h.dim() != 2
        or h.shape[0] == 0
        or x.dim() < 2
        or x.shape[0] != h.shape[0]
        or weight.dtype != h.dtype
        or x.dtype != h.dtype
    ):
        return None
    n = h.shape[0]
    consts = consts if consts is not None else [0.0] * len(names)
    parts = weight.split(sizes)  # rows of each tensor, (numel_p, K) views
    bparts = bias.split(sizes) if bias is not None else [None] * len(names)
    where: dict[int, tuple[Tensor, Tensor | None, float | None, torch.Size]] = {}
    for name, w_p, b_p, c in zip(names, parts, bparts, consts, strict=True):
        own = target.get_parameter(name)
        if own.dtype != h.dtype:
            return None
        where[id(own)] = (w_p, b_p, c, own.shape)
    made: dict[int, Tensor] = {}

    def generated(param: Tensor | None) -> Tensor | None:
        """``param``'s per-sample weights ``(B, *shape)``, or the module's own when shared."""
        if param is None or id(param) not in where:
            return param
        key = id(param)
        if key not in made:
            w_p, b_p, c, shape = where[key]
            t = F.linear(h, w_p, b_p)  # (B, numel_p)
            made[key] = (t + c if c else t).view(n, *shape)
        return made[key]

    x = x.unsqueeze(1)  # (B, 1, ...): each sample a batch of one, as in a per-sample call
    for m in layers:
        entry = where.get(id(m.weight)) if type(m) is nn.Linear else None
        if entry is not None and not entry[2] and x.dim() == 3 and x.shape[1] == 1:
            w_p, b_p, _, _ = entry
            y = ReadoutLinear.apply(x[:, 0], h, w_p, b_p)  # (B, out)
            b = generated(m._parameters.get("bias"))  # m.bias, without Module.__getattr__
            x = (y if b is None else y + b).unsqueeze(1)  # bias (B, out) or shared (out,)
        else:  # its own weights formed, then as in call_batched
            by_id = {id(p): t for p in m._parameters.values() if (t := generated(p)) is not None}
            x = layer_batched(m, by_id, x)
    return x.flatten(0, 1)
