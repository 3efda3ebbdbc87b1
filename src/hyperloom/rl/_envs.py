"""Families of MDPs indexed by a context vector: Gymnasium classic control with varied physics."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

# The physical parameters a context may vary, per environment, with their nominal values (the
# attribute names of the unwrapped Gymnasium environment).
PARAMETERS: dict[str, dict[str, float]] = {
    "CartPole-v1": {
        "length": 0.5,
        "masspole": 0.1,
        "masscart": 1.0,
        "force_mag": 10.0,
        "gravity": 9.8,
    },
    "Pendulum-v1": {"m": 1.0, "l": 1.0, "g": 10.0, "max_torque": 2.0},
    "MountainCarContinuous-v0": {"power": 0.0015},
}


def _recompute_cartpole(env: Any) -> None:
    # CartPole caches two derived quantities in its constructor.
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length


_DERIVED: dict[str, Callable[[Any], None]] = {"CartPole-v1": _recompute_cartpole}


def check_context(context: Any, dim: int, *, name: str = "context") -> np.ndarray:
    """Check one context vector (or a stack of them) and return it as a float64 array.

    Args:
        context: array-like of shape ``(*, dim)``.
        dim: the expected last dimension.
        name: how the error messages call the value.

    Returns:
        ``np.ndarray`` of shape ``(*, dim)``.

    Raises:
        ValueError: a wrong last dimension, or a NaN or infinite entry (the message gives the
            shape, or the positions of the bad entries).

    Example:
        >>> check_context([0.0, 1.0], 2).shape
        (2,)
    """
    arr = np.asarray(context, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] != dim:
        raise ValueError(f"{name} has shape {arr.shape}; expected (*, {dim})")
    bad = ~np.isfinite(arr)
    if bad.any():
        where = [tuple(int(i) for i in ix) for ix in np.argwhere(bad)[:5]]
        raise ValueError(f"{name} has {int(bad.sum())} non-finite entries (NaN or inf) at {where}")
    return arr


class ContextualEnv(gym.Wrapper):
    """One environment of a family of MDPs: physical parameters set per episode from a context.

    A context is a vector ``c`` of log2 scale factors, one per varied parameter: parameter ``p``
    takes the value ``nominal_p * 2 ** c_p`` (so ``c = 0`` is Gymnasium's own environment and
    ``c_p = 1`` doubles ``p``). At every ``reset`` the wrapper draws the episode's context from
    ``contexts`` (uniformly, with its own seeded generator) unless ``reset(options={"context":
    c})`` gives one, writes the parameters into the unwrapped environment and appends ``c`` to
    every observation: the agent observes ``concat(state, c)`` and each method decides what to
    do with ``c``. The context therefore arrives together with the first observation of its
    episode, also under a vector environment's automatic resets.

    Args:
        env: a Gymnasium environment whose id is in :data:`PARAMETERS`.
        params: the varied parameter names (attributes of ``env.unwrapped``).
        contexts: ``(K, len(params))`` contexts to draw from at each reset.
        seed: seed of the context draws.

    Raises:
        ValueError: an unknown environment or parameter, or a bad context (wrong size, NaN).

    Example:
        >>> env = ContextualEnv(gym.make("CartPole-v1"), ("length",), [[1.0]])
        >>> obs, _ = env.reset(seed=0)
        >>> obs.shape, float(obs[-1]), env.unwrapped.length
        ((5,), 1.0, 1.0)
    """

    def __init__(
        self,
        env: gym.Env,
        params: Sequence[str],
        contexts: Any,
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(env)
        env_id = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
        if env_id not in PARAMETERS:
            raise ValueError(
                f"no context parameters known for {env_id!r}; known: {list(PARAMETERS)}"
            )
        unknown = [p for p in params if p not in PARAMETERS[env_id]]
        if unknown or not params:
            raise ValueError(
                f"unknown parameters {unknown or '(none given)'} for {env_id}; "
                f"choose from {list(PARAMETERS[env_id])}"
            )
        self.env_id = env_id
        self.params = tuple(params)
        self.nominal = np.array([PARAMETERS[env_id][p] for p in self.params])
        self.contexts = check_context(contexts, len(self.params), name="contexts")
        if self.contexts.ndim != 2 or len(self.contexts) == 0:
            raise ValueError(f"contexts must be (K, {len(self.params)}), got {self.contexts.shape}")
        self._rng = np.random.default_rng(seed)
        self.context = np.zeros(len(self.params))
        space = self.env.observation_space
        if not isinstance(space, gym.spaces.Box):
            raise TypeError(f"{env_id}: expected a Box observation space, got {space}")
        low, high = space.low, space.high
        inf = np.full(len(self.params), np.inf, dtype=low.dtype)
        self.observation_space = gym.spaces.Box(
            np.concatenate([low, -inf]), np.concatenate([high, inf]), dtype=low.dtype
        )

    def set_context(self, context: Any) -> None:
        """Write the parameters of ``context`` (log2 scale factors) into the environment."""
        c = check_context(context, len(self.params))
        if c.ndim != 1:
            raise ValueError(f"context has shape {c.shape}; expected ({len(self.params)},)")
        raw = self.env.unwrapped
        for name, nominal, ci in zip(self.params, self.nominal, c, strict=True):
            setattr(raw, name, float(nominal * 2.0**ci))
        if self.env_id in _DERIVED:
            _DERIVED[self.env_id](raw)
        self.context = c

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        return np.concatenate([obs, self.context.astype(obs.dtype)])

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> Any:
        if options is not None and "context" in options:
            self.set_context(options["context"])
        else:
            self.set_context(self.contexts[self._rng.integers(len(self.contexts))])
        obs, info = self.env.reset(seed=seed, options=options)
        return self._observe(obs), info

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._observe(obs), reward, terminated, truncated, info


def make_vector_env(
    env_id: str,
    params: Sequence[str],
    contexts: Any,
    *,
    num_envs: int | None = None,
    fixed: bool = False,
    seed: int = 0,
) -> gym.vector.SyncVectorEnv:
    """A ``gymnasium.vector.SyncVectorEnv`` of :class:`ContextualEnv` copies.

    Automatic resets happen in the same step (``AutoresetMode.SAME_STEP``): an episode's last
    observation is in ``infos["final_obs"]`` and the returned observation is the next episode's
    first, with its new context.

    Args:
        env_id: a key of :data:`PARAMETERS`.
        params: the varied parameters.
        contexts: ``(K, len(params))`` contexts.
        num_envs: number of environments; with ``fixed=True`` it must be ``K`` (default).
        fixed: environment ``i`` always runs context ``i`` (evaluation); otherwise every
            environment draws a context from all ``K`` at each reset (training).
        seed: seeds the context draws (environment ``i`` uses ``seed + i``).

    Returns:
        The vector environment (not yet reset).

    Example:
        >>> vec = make_vector_env("CartPole-v1", ("length",), [[0.0], [1.0]], fixed=True)
        >>> obs, _ = vec.reset(seed=0)
        >>> obs[:, -1].tolist()
        [0.0, 1.0]
    """
    ctx = check_context(contexts, len(params), name="contexts")
    if ctx.ndim != 2:
        raise ValueError(f"contexts must be (K, {len(params)}), got {ctx.shape}")
    n = len(ctx) if num_envs is None else int(num_envs)
    if fixed and n != len(ctx):
        raise ValueError(f"fixed=True needs num_envs == number of contexts ({len(ctx)}), got {n}")
    if n < 1:
        raise ValueError(f"num_envs must be >= 1, got {n}")

    def factory(i: int) -> Callable[[], gym.Env]:
        own = ctx[i : i + 1] if fixed else ctx
        return lambda: ContextualEnv(gym.make(env_id), params, own, seed=seed + i)

    return gym.vector.SyncVectorEnv(
        [factory(i) for i in range(n)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )


def sample_contexts(
    n: int,
    dim: int,
    *,
    inside: tuple[float, float],
    outside: tuple[float, float] | None = None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw contexts (log2 scale factors) inside a training range or outside it.

    Args:
        n: number of contexts.
        dim: context size.
        inside: ``(low, high)`` scale factors of the training range, e.g. ``(0.5, 2.0)``; each
            parameter is drawn log-uniformly in it.
        outside: ``None`` draws inside the training range. ``(low, high)`` scale factors of a
            wider range: each parameter is drawn log-uniformly in it, and a context is kept only
            when at least one parameter falls outside ``inside`` (rejection sampling).
        rng: the generator.

    Returns:
        ``(n, dim)`` array of log2 scale factors.

    Example:
        >>> c = sample_contexts(4, 2, inside=(0.5, 2.0), rng=np.random.default_rng(0))
        >>> bool((abs(c) <= 1).all())
        True
    """
    lo, hi = (math.log2(v) for v in _check_range(inside, "inside"))
    if outside is None:
        return rng.uniform(lo, hi, size=(n, dim))
    olo, ohi = (math.log2(v) for v in _check_range(outside, "outside"))
    if not (olo <= lo and ohi >= hi and (olo < lo or ohi > hi)):
        raise ValueError(f"outside={outside} must strictly contain inside={inside}")
    out: list[np.ndarray] = []
    while len(out) < n:
        c = rng.uniform(olo, ohi, size=dim)
        if ((c < lo) | (c > hi)).any():
            out.append(c)
    return np.stack(out)


def _check_range(r: tuple[float, float], name: str) -> tuple[float, float]:
    if len(r) != 2 or not (0 < r[0] <= r[1]) or not all(math.isfinite(v) for v in r):
        raise ValueError(f"{name} must be (low, high) scale factors with 0 < low <= high, got {r}")
    return float(r[0]), float(r[1])
