"""Context-conditioned networks and the actor-critic that holds them.

Three ways for a network to use the context ``c`` of its environment, all called as
``net(obs, context=c)`` (the context by keyword, as everywhere) with ``obs`` of shape
``(B, obs_dim)`` and ``c`` of shape ``(B, context_dim)``:

* :class:`HyperContext`: a hypernetwork maps ``c`` to the weights of the target, which then
  reads ``obs`` alone (Rezaei-Shoshtari et al., 2023; Sarafian et al., 2021). Every
  environment of a vector gets its own weights in one batched call.
* :class:`ConcatContext`: the target reads ``concat(obs, c)`` (the standard baseline).
* :class:`NoContext`: the target reads ``obs`` and ignores ``c``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from ..conditioning.base import Conditioner
from ..functional import call_batched
from ..generators.base import Generator, GeneratorFactory
from ..generators.once import FlatGenerator
from ..hypernet import HyperNetwork

METHODS = ("hyper", "concat", "none")


def check_context_tensor(context: Any, dim: int, batch: int | None = None) -> Tensor:
    """Refuse a context tensor of the wrong size or with NaN/inf entries.

    Args:
        context: a tensor ``(B, dim)``.
        dim: expected context size.
        batch: expected ``B`` (the observations' batch), or ``None``.

    Returns:
        ``context`` itself.

    Raises:
        TypeError: not a tensor.
        ValueError: wrong shape, or non-finite entries (the message names the rows).

    Example:
        >>> check_context_tensor(torch.zeros(4, 2), 2).shape
        torch.Size([4, 2])
    """
    if not isinstance(context, Tensor):
        raise TypeError(f"context must be a Tensor, got {type(context).__name__}")
    if context.dim() != 2 or context.shape[-1] != dim:
        raise ValueError(f"context has shape {tuple(context.shape)}; expected (B, {dim})")
    if batch is not None and context.shape[0] != batch:
        raise ValueError(
            f"context has {context.shape[0]} rows but the observations have {batch}: "
            "one context per environment"
        )
    bad = ~torch.isfinite(context)
    if bool(bad.any()):
        rows = sorted({int(i) for i in bad.nonzero()[:, 0]})
        raise ValueError(
            f"context has {int(bad.sum())} non-finite entries (NaN or inf) in rows {rows[:8]}"
        )
    return context


class ContextConditioner(Conditioner):
    """The environment's context vector as the hypernetwork's input (task-conditioned).

    The context describes the task (the MDP's physical parameters); it is checked and passed
    through unchanged: the generator's trunk is the learned part. Each row is one
    environment's context and gets its own weight set (criterion 3: dynamic).

    Args:
        dim: context size.
        key: the call keyword carrying the context.

    Example:
        >>> cond = ContextConditioner(3)
        >>> cond.from_call((), {"context": torch.zeros(5, 3)})[0].shape
        torch.Size([5, 3])
    """

    kind = "task-conditioned"
    dynamic = True

    def __init__(self, dim: int, *, key: str = "context") -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"context dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.key = key
        self.keys = (key,)

    def forward(self, context: Tensor) -> Tensor:
        return check_context_tensor(context, self.dim)  # (B, dim)

    def from_call(self, args: tuple, context: Mapping[str, Any]) -> tuple[Tensor, Tensor | None]:
        if self.key not in context:
            raise TypeError(f"pass the environments' contexts as {self.key}=... (B, {self.dim})")
        return self(context[self.key]), None

    def config(self) -> dict:
        return {"type": "context", "dim": self.dim, "key": self.key}


def group_rows(context: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct rows of ``context`` and, for each row, the index of its distinct row.

    Example:
        >>> distinct, index = group_rows(torch.tensor([[1.0], [2.0], [1.0]]))
        >>> distinct.tolist(), index.tolist()
        ([[1.0], [2.0]], [0, 1, 0])
    """
    seen: dict[tuple, int] = {}
    index = [seen.setdefault(tuple(row), len(seen)) for row in context.tolist()]
    first = torch.tensor([index.index(i) for i in range(len(seen))])
    return context[first], torch.tensor(index)  # (M, d), (B,)


class HyperContext(nn.Module):
    """``target(obs)`` with weights generated from the context: one weight set per context.

    A call generates the weights of each distinct context once, ``{name: (M, *shape)}``, and
    runs the target on all rows in one :func:`~hyperloom.call_batched` call: the rows are
    grouped by context into ``(M, G, obs_dim)`` (``G`` the largest group, shorter groups
    padded), so a vector of environments with different contexts is one forward, and so is a
    PPO minibatch drawn from a handful of training MDPs, without forming a weight set per row.

    Args:
        target: any ``nn.Module`` reading ``(B, obs_dim)``; its parameters are generated.
        context_dim: context size.
        generator: a generator factory (default ``FlatGenerator.factory(hidden=(64,))``, whose
            per-sample call never forms the per-row weights of ``Linear`` layers).

    Example:
        >>> net = HyperContext(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)), 3)
        >>> net(torch.randn(6, 4), context=torch.randn(6, 3)).shape
        torch.Size([6, 2])
    """

    def __init__(
        self,
        target: nn.Module,
        context_dim: int,
        *,
        generator: Generator | GeneratorFactory | None = None,
    ) -> None:
        super().__init__()
        gen = generator if generator is not None else FlatGenerator.factory(hidden=(64,))
        self.context_dim = int(context_dim)
        self.hnet = HyperNetwork(target, ContextConditioner(context_dim), gen)
        # Every parameter of the target is generated, so its own tensors are never used.
        # HyperNetwork leaves them out of its parameters() only when it is the root module;
        # nested here, they would reach the optimizer and parameter counts: freeze them.
        for p in target.parameters():
            p.requires_grad_(False)

    def forward(self, obs: Tensor, *, context: Tensor) -> Tensor:
        check_context_tensor(context, self.context_dim, obs.shape[0])
        distinct, index = group_rows(context.to(obs.dtype))  # (M, d), (B,)
        weights = self.hnet.generate(context=distinct)  # {name: (M, *shape)}
        m, b = distinct.shape[0], obs.shape[0]
        order = torch.argsort(index, stable=True)
        counts = torch.bincount(index, minlength=m)
        starts = torch.cumsum(counts, 0) - counts
        group = index[order]
        slot = torch.arange(b) - starts[group]  # position of each sorted row in its group
        grouped = obs.new_zeros(m, int(counts.max()), *obs.shape[1:])  # (M, G, obs_dim)
        grouped[group, slot] = obs[order]
        out = call_batched(self.hnet.target, weights, grouped)  # (M, G, out)
        result = out.new_empty(b, *out.shape[2:])
        result[order] = out[group, slot]
        return result  # (B, out)


class ConcatContext(nn.Module):
    """``target(concat(obs, context))``: the context as extra input features.

    Args:
        target: any ``nn.Module`` reading ``(B, obs_dim + context_dim)``.
        context_dim: context size.

    Example:
        >>> net = ConcatContext(nn.Linear(7, 2), 3)
        >>> net(torch.randn(6, 4), context=torch.randn(6, 3)).shape
        torch.Size([6, 2])
    """

    def __init__(self, target: nn.Module, context_dim: int) -> None:
        super().__init__()
        self.target = target
        self.context_dim = int(context_dim)

    def forward(self, obs: Tensor, *, context: Tensor) -> Tensor:
        check_context_tensor(context, self.context_dim, obs.shape[0])
        return self.target(torch.cat([obs, context.to(obs.dtype)], dim=-1))


class NoContext(nn.Module):
    """``target(obs)``: the context is checked and then ignored (the no-context baseline).

    Example:
        >>> NoContext(nn.Linear(4, 2), 3)(torch.randn(6, 4), context=torch.zeros(6, 3)).shape
        torch.Size([6, 2])
    """

    def __init__(self, target: nn.Module, context_dim: int) -> None:
        super().__init__()
        self.target = target
        self.context_dim = int(context_dim)

    def forward(self, obs: Tensor, *, context: Tensor) -> Tensor:
        check_context_tensor(context, self.context_dim, obs.shape[0])
        return self.target(obs)


def mlp(in_dim: int, out_dim: int, hidden: tuple[int, ...] = (64, 64)) -> nn.Sequential:
    """``Linear -> Tanh`` per hidden size, then ``Linear`` (CleanRL's PPO networks).

    Example:
        >>> mlp(4, 2)(torch.randn(3, 4)).shape
        torch.Size([3, 2])
    """
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.Tanh()]
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def contextual(
    method: str,
    obs_dim: int,
    context_dim: int,
    out_dim: int,
    *,
    hidden: tuple[int, ...] = (64, 64),
    hnet_hidden: tuple[int, ...] = (64,),
) -> nn.Module:
    """An MLP that uses the context by ``method``: ``hyper``, ``concat`` or ``none``.

    Args:
        method: one of :data:`METHODS`.
        obs_dim: observation size (without the context).
        context_dim: context size.
        out_dim: output size.
        hidden: hidden sizes of the MLP (the target).
        hnet_hidden: trunk of the hypernetwork's ``FlatGenerator`` (``hyper`` only).

    Returns:
        A module called as ``net(obs, context=c)``.

    Example:
        >>> net = contextual("hyper", 4, 3, 2)
        >>> net(torch.randn(5, 4), context=torch.zeros(5, 3)).shape
        torch.Size([5, 2])
    """
    if method == "hyper":
        gen = FlatGenerator.factory(hidden=hnet_hidden)
        return HyperContext(mlp(obs_dim, out_dim, hidden), context_dim, generator=gen)
    if method == "concat":
        return ConcatContext(mlp(obs_dim + context_dim, out_dim, hidden), context_dim)
    if method == "none":
        return NoContext(mlp(obs_dim, out_dim, hidden), context_dim)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


class ActorCritic(nn.Module):
    """A policy and a value function, both ``net(obs, context=c)`` modules.

    Discrete action spaces get a categorical policy over the actor's logits; ``Box`` spaces a
    diagonal Gaussian with the actor's output as mean and a learned, state-independent log
    standard deviation (CleanRL's ``ppo_continuous_action``); actions are in units of the
    space's half-range and are rescaled by :meth:`env_action`.

    Args:
        actor: ``(obs, context=c) -> logits | mean``.
        critic: ``(obs, context=c) -> (B, 1)``.
        action_space: the single environment's action space.
        log_std_init: initial log standard deviation (``Box`` only).

    Example:
        >>> space = gym.spaces.Discrete(2)
        >>> agent = ActorCritic(contextual("none", 4, 1, 2), contextual("none", 4, 1, 1), space)
        >>> action, logp, entropy, value = agent.act(torch.randn(3, 4), context=torch.zeros(3, 1))
        >>> action.shape, value.shape
        (torch.Size([3]), torch.Size([3]))
    """

    def __init__(
        self,
        actor: nn.Module,
        critic: nn.Module,
        action_space: gym.Space,
        *,
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.actor = actor
        self.critic = critic
        if isinstance(action_space, gym.spaces.Discrete):
            self.continuous = False
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            self.continuous = True
            n = action_space.shape[0]
            self.log_std = nn.Parameter(torch.full((n,), float(log_std_init)))
            low = torch.as_tensor(action_space.low, dtype=torch.float32)
            high = torch.as_tensor(action_space.high, dtype=torch.float32)
            self.action_center: Tensor
            self.action_scale: Tensor
            self.register_buffer("action_center", (high + low) / 2, persistent=False)
            self.register_buffer("action_scale", (high - low) / 2, persistent=False)
        else:
            raise TypeError(f"unsupported action space {action_space}; Discrete or 1-d Box")

    def value(self, obs: Tensor, *, context: Tensor) -> Tensor:
        """``V(obs; context)``, shape ``(B,)``."""
        return self.critic(obs, context=context).squeeze(-1).float()  # float32 under autocast

    def distribution(self, obs: Tensor, *, context: Tensor) -> Distribution:
        """The policy's action distribution for each row."""
        out = self.actor(obs, context=context).float()  # float32 log-probabilities (autocast)
        if not self.continuous:
            return Categorical(logits=out)
        return Independent(Normal(out, self.log_std.exp().expand_as(out)), 1)

    def act(
        self, obs: Tensor, *, context: Tensor, action: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Sample (or score given) actions: ``(action, log_prob, entropy, value)``, rows ``B``."""
        dist = self.distribution(obs, context=context)
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.value(obs, context=context)

    def greedy(self, obs: Tensor, *, context: Tensor) -> Tensor:
        """The deterministic action: the most likely class, or the Gaussian's mean."""
        out = self.actor(obs, context=context)
        return out if self.continuous else out.argmax(-1)

    def env_action(self, action: Tensor) -> np.ndarray:
        """The action as the environment takes it (rescaled and clipped for ``Box`` spaces)."""
        if not self.continuous:
            return action.cpu().numpy()
        a = (self.action_center + self.action_scale * action.clamp(-1.0, 1.0)).cpu()
        return a.numpy()
