r"""Hyperfan initialisation of generators (Chang, Flokas and Lipson, ICLR 2020).

A generator's output (readout) layer computes every generated element as
:math:`\theta = a^\top h + b` from the features :math:`h` it reads. With :math:`b = 0` and the
entries of :math:`a` drawn i.i.d. from :math:`N(0, \sigma^2)`,

.. math:: \operatorname{Var}(\theta) = \sigma^2 \sum_k E[h_k^2].

Hyperfan-in asks each generated weight of a target layer with fan-in :math:`d_{in}` for
:math:`\operatorname{Var}(\theta) = g^2 / d_{in}`, the variance that keeps a layer's
activations at the scale of its inputs (He/LeCun initialisation, gain :math:`g`); hyperfan-out
asks for :math:`g^2 / d_{out}`, which keeps gradients at scale. So
:math:`\sigma^2 = \operatorname{Var}(\theta) / \sum_k E[h_k^2]`.

Chang et al. derive :math:`\sum_k E[h_k^2]` in closed form for a linear hypernetwork on a
unit-variance embedding; we measure it instead, by running the generator on a probe batch of
conditioning vectors :math:`c \sim N(0, s^2 I)`, which gives the same answer in their case and
a correct one for any trunk (MLP, attention, ...) and for the inputs of chunk-wise and
component-wise heads, where the learned chunk or component embedding is part of :math:`h`.
The built-in MLP trunk RMS-normalises its features, so :math:`\sum_k h_k^2` equals the width
for every context and the variance holds per context, not only on average; and the factors of
low-rank generators, both read from the same :math:`h`, multiply without a fourth-moment
correction.

Biases are generated with the variance of PyTorch's default bias initialisation,
:math:`1 / (3 d_{in})`; tensors the target initialised to a constant (normalisation scales and
shifts) get zero readout rows, so they start exactly at that constant (the generator adds it).

Shared heads (chunk-wise, component-wise) have one readout row for every position, serving
elements of several tensors: the row aims at the mean of their variances. Component-wise heads
serve tensors of one shape, hence one fan-in, and constant-initialised tensors have heads of
their own: exact. A chunk-wise row serves position :math:`j` of every chunk, so it is exact
when every generated weight has the same fan and an average of the fans otherwise.
"""

from __future__ import annotations

import torch
from torch import nn

from .generators.base import Generator
from .target import ParamInfo


def target_variance(p: ParamInfo, mode: str, gain: float) -> float:
    """The variance hyperfan initialisation aims at for the elements of one target tensor.

    Args:
        p: the tensor's :class:`~hyperloom.ParamInfo`.
        mode: ``"fan_in"`` or ``"fan_out"``.
        gain: the activation gain (``nn.init.calculate_gain``).

    Returns:
        ``gain^2 / fan`` for weights (2-D or more), ``1 / (3 fan_in)`` for biases and other
        vectors, 0 for tensors the target initialised to a constant.
    """
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    if p.init_const is not None:
        return 0.0
    if len(p.shape) >= 2:
        return gain**2 / (p.fan_in if mode == "fan_in" else p.fan_out)
    return 1.0 / (3.0 * p.fan_in)


class _ProbeDone(Exception):
    """Raised by the probe's hooks once every readout has seen its features."""


@torch.no_grad()
def _hyperfan(gen: Generator, mode: str, gain: float, cond_std: float, probe: int) -> Generator:
    if not isinstance(gen, Generator):
        raise TypeError(f"hyperfan initialisation takes a Generator, got {type(gen).__name__}")
    spec = gen.spec
    variance = {p.name: target_variance(p, mode, gain) for p in spec}
    readouts = gen._readouts(variance)
    # The probe only needs the features each readout reads, sum_k E[h_k^2]: each hook reduces
    # them to that number as they arrive, and once every readout has had its input the probe
    # stops, before the last readout's output (probe x every generated weight) is computed.
    moments: dict[int, float] = {}
    waiting = {id(lin) for lin, _ in readouts}

    def measure(module: nn.Module, args: tuple) -> None:
        feats = args[0]
        moments[id(module)] = feats.pow(2).reshape(-1, feats.shape[-1]).mean(0).sum().item()
        waiting.discard(id(module))
        if not waiting:
            raise _ProbeDone

    hooks = [lin.register_forward_pre_hook(measure) for lin, _ in readouts]
    try:
        ref = next(gen.parameters())
        g = torch.Generator(device="cpu").manual_seed(0)
        c = torch.randn(probe, gen.cond_dim, generator=g).to(ref.device, ref.dtype) * cond_std
        gen(c)
    except _ProbeDone:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    for lin, row_var in readouts:
        second_moment = moments[id(lin)]  # sum E[h^2] over the probe batch
        if not second_moment > 0:
            raise ValueError(
                f"the features read by {type(gen).__name__}'s output layer are all zero on the "
                "probe batch (dead units?); hyperfan initialisation cannot scale it"
            )
        std = (row_var.to(lin.weight) / second_moment).sqrt()  # (out_features,)
        lin.weight.normal_().mul_(std[:, None])
        if lin.bias is not None:
            lin.bias.zero_()
    return gen


def hyperfan_in_(
    gen: Generator, *, gain: float = 1.0, cond_std: float = 1.0, probe: int = 256
) -> Generator:
    """Hyperfan-in: generated weights get variance ``gain^2 / fan_in`` (forward signal kept).

    Args:
        gen: a generator; its output layers are re-initialised in place.
        gain: target activation gain, e.g. ``nn.init.calculate_gain("relu")`` (``sqrt(2)``) for
            ReLU targets; ``1/sqrt(3)`` reproduces PyTorch's default ``nn.Linear`` scale.
        cond_std: the scale of the conditioning vectors the generator will see (1 for
            ``TaskEmbedding`` and ``Noise`` with their defaults).
        probe: size of the probe batch used to measure the features' second moment.

    Returns:
        ``gen``.

    Example:
        >>> from hyperloom import ChunkedGenerator, select
        >>> net = nn.Linear(100, 50)
        >>> gen = hyperfan_in_(ChunkedGenerator(select(net), 8, chunk_size=500))
        >>> w = gen(torch.randn(64, 8))["weight"]
        >>> round(w.var().item() * 100, 1)  # about 1 / fan_in = 1 / 100
        1.0
    """
    return _hyperfan(gen, "fan_in", gain, cond_std, probe)


def hyperfan_out_(
    gen: Generator, *, gain: float = 1.0, cond_std: float = 1.0, probe: int = 256
) -> Generator:
    """Hyperfan-out: generated weights get variance ``gain^2 / fan_out`` (gradients kept).

    Arguments as :func:`hyperfan_in_`.
    """
    return _hyperfan(gen, "fan_out", gain, cond_std, probe)


@torch.no_grad()
def pretrained_init_(gen: Generator, target: nn.Module) -> Generator:
    """Start a generator at a target's current weights: every context generates them at first.

    The output layer's weight is zeroed and its bias set to the target's values (less each
    constant-initialised tensor's constant, which the generator adds), so the hypernetwork's
    first output equals the pretrained model for any context; training then moves away from it
    (hyperlight's ``from_existing``). Needs a generator whose output rows are the target's
    elements (``FlatGenerator``, ``HeadsGenerator``); shared heads (chunk-wise,
    component-wise) cannot hold one value per element.

    Args:
        gen: a generator.
        target: the module whose parameters (by the spec's names) the generator starts at.

    Returns:
        ``gen``.

    Raises:
        ValueError: the generator's outputs are not one row per element.

    Example:
        >>> from hyperloom import FlatGenerator, select
        >>> net = nn.Linear(3, 2)
        >>> gen = pretrained_init_(FlatGenerator(select(net), 4), net)
        >>> torch.equal(gen(torch.randn(4))["weight"], net.weight)
        True
    """
    readouts = gen._element_readouts()
    spec = gen.spec
    if readouts is None:
        raise ValueError(
            f"{type(gen).__name__} cannot start at a target's weights: its output rows are shared "
            "between elements; use FlatGenerator or HeadsGenerator"
        )
    for linear, names in readouts:
        values = [
            target.get_parameter(n).detach().reshape(-1) - (spec[n].init_const or 0.0)
            for n in names
        ]
        linear.weight.zero_()
        linear.bias.copy_(torch.cat(values))
    return gen
