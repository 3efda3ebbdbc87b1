"""The pieces of PPO as plain functions (the loop is in ``hyperloom.recipes.rl``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._policy import ActorCritic


def split_observation(obs: np.ndarray | Tensor, context_dim: int) -> tuple[Tensor, Tensor]:
    """Split ``concat(state, context)`` observations into ``(state, context)`` float tensors.

    Example:
        >>> s, c = split_observation(np.zeros((3, 6)), 2)
        >>> tuple(s.shape), tuple(c.shape)
        ((3, 4), (3, 2))
    """
    t = torch.as_tensor(obs, dtype=torch.float32)
    if t.dim() != 2 or t.shape[1] <= context_dim:
        raise ValueError(
            f"observations of shape {tuple(t.shape)} cannot hold a context of {context_dim}"
        )
    return t[:, :-context_dim], t[:, -context_dim:]


def gae(
    rewards: Tensor,
    values: Tensor,
    dones: Tensor,
    last_value: Tensor,
    *,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) over a rollout.

    ``delta_t = r_t + gamma (1 - d_t) V_{t+1} - V_t``, ``A_t = delta_t + gamma lam (1 - d_t)
    A_{t+1}``, where ``d_t = 1`` when the episode ended at step ``t`` (so step ``t + 1`` is the
    next episode's first). Truncated episodes are bootstrapped by the caller, who adds
    ``gamma V(final_obs)`` to the last reward.

    Args:
        rewards: ``(T, N)``.
        values: ``(T, N)``, ``V(s_t)``.
        dones: ``(T, N)``, 1.0 where the episode ended at step ``t``.
        last_value: ``(N,)``, ``V(s_T)`` of the observation after the rollout.
        gamma: discount.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, each ``(T, N)``; ``returns = advantages + values``.

    Example:
        >>> a, r = gae(torch.ones(3, 1), torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(1),
        ...            gamma=1.0, lam=1.0)
        >>> a[:, 0].tolist()
        [3.0, 2.0, 1.0]
    """
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    for t in reversed(range(T)):
        next_value = last_value if t == T - 1 else values[t + 1]
        live = 1.0 - dones[t]
        delta = rewards[t] + gamma * live * next_value - values[t]
        running = delta + gamma * lam * live * running
        adv[t] = running
    return adv, adv + values


def ppo_loss(
    agent: ActorCritic,
    obs: Tensor,
    actions: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    returns: Tensor,
    *,
    context: Tensor,
    clip: float = 0.2,
    vf_coef: float = 0.5,
    ent_coef: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """PPO's clipped surrogate loss with a value loss and an entropy bonus (one minibatch).

    ``L = -E[min(rho A, clip(rho, 1 - eps, 1 + eps) A)] + vf_coef E[(V - R)^2] / 2
    - ent_coef E[H]`` with ``rho = pi(a|s) / pi_old(a|s)``; the advantages are normalised
    within the minibatch (as CleanRL does).

    Args:
        agent: the actor-critic.
        obs: ``(B, obs_dim)``; actions: ``(B, ...)``.
        old_logp: ``(B,)`` log-probabilities under the rollout's policy.
        advantages: ``(B,)``; returns: ``(B,)`` value targets.
        context: ``(B, context_dim)``, keyword-only as everywhere a context is passed.
        clip: the clipping range epsilon.
        vf_coef: weight of the value loss.
        ent_coef: weight of the entropy bonus.

    Returns:
        ``(loss, stats)``: stats holds the policy and value losses, entropy, approximate KL
        and the fraction of clipped ratios.

    Example:
        >>> import gymnasium as gym
        >>> from hyperloom.rl import contextual
        >>> agent = ActorCritic(contextual("none", 4, 1, 2), contextual("none", 4, 1, 1),
        ...                     gym.spaces.Discrete(2))
        >>> o, c = torch.randn(8, 4), torch.zeros(8, 1)
        >>> a, logp, _, _ = agent.act(o, context=c)
        >>> loss, stats = ppo_loss(agent, o, a, logp.detach(), torch.randn(8), torch.randn(8),
        ...                        context=c)
        >>> stats["clipfrac"]
        0.0
    """
    _, logp, entropy, value = agent.act(obs, context=context, action=actions)
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
    v_loss = 0.5 * (value - returns).pow(2).mean()
    ent = entropy.mean()
    loss = pg_loss + vf_coef * v_loss - ent_coef * ent
    with torch.no_grad():
        stats = {
            "policy_loss": pg_loss.item(),
            "value_loss": v_loss.item(),
            "entropy": ent.item(),
            "approx_kl": ((ratio - 1) - log_ratio).mean().item(),
            "clipfrac": ((ratio - 1).abs() > clip).float().mean().item(),
        }
    return loss, stats


@dataclass(frozen=True)
class Evaluation:
    """Returns of greedy episodes, one per environment of an evaluation vector."""

    returns: np.ndarray  # (n_envs,) return of each environment's first episode
    contexts: np.ndarray  # (n_envs, context_dim)
    seconds: float
    steps: int

    @property
    def episodes_per_second(self) -> float:
        return len(self.returns) / self.seconds if self.seconds > 0 else float("inf")


@torch.no_grad()
def evaluate(
    agent: ActorCritic, vec, context_dim: int, *, seed: int, greedy: bool = True
) -> Evaluation:
    """Run one episode in every environment of ``vec`` at once; one forward per step for all.

    Args:
        agent: the actor-critic.
        vec: a vector environment from :func:`make_vector_env` (``fixed=True``: environment
            ``i`` runs context ``i``).
        context_dim: context size.
        seed: reset seed (environment ``i`` gets ``seed + i``).
        greedy: act greedily (most likely action or mean) instead of sampling.

    Returns:
        An :class:`Evaluation`: the return of each environment's first episode.

    Example:
        >>> from hyperloom.rl import contextual, make_vector_env
        >>> vec = make_vector_env("CartPole-v1", ("length",), [[0.0], [1.0]], fixed=True)
        >>> agent = ActorCritic(contextual("none", 4, 1, 2), contextual("none", 4, 1, 1),
        ...                     vec.single_action_space)
        >>> evaluate(agent, vec, 1, seed=0).returns.shape
        (2,)
    """
    start = time.perf_counter()
    obs, _ = vec.reset(seed=seed)
    n = obs.shape[0]
    _, contexts = split_observation(obs, context_dim)
    returns = np.zeros(n)
    running = np.ones(n, dtype=bool)
    steps = 0
    device = next(agent.parameters()).device
    while running.any():
        state, context = (t.to(device) for t in split_observation(obs, context_dim))
        if greedy:
            action = agent.greedy(state, context=context)
        else:
            action = agent.distribution(state, context=context).sample()
        obs, reward, terminated, truncated, _ = vec.step(agent.env_action(action))
        returns += np.where(running, reward, 0.0)
        running &= ~(terminated | truncated)
        steps += 1
    return Evaluation(
        returns, contexts.numpy().astype(np.float64), time.perf_counter() - start, steps
    )
