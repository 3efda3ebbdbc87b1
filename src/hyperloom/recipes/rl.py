"""PPO across a family of MDPs: hypernetwork policies against concatenation and no context.

A context vector of log2 scale factors sets the physics of a Gymnasium classic-control task per
episode (CartPole: pole length, pole mass, push force; Pendulum: mass and length). PPO
(Schulman et al., 2017; CleanRL's single-file layout, the loop below) trains one actor-critic
per method on ``n_train_contexts`` contexts drawn in the training range, each environment of
the vector drawing one of them at every reset:

* ``hyper``: a hypernetwork maps the context to the weights of the policy MLP and of the value
  MLP, which then read the state alone (Rezaei-Shoshtari et al., 2023; Sarafian et al., 2021);
  the vector's environments, each with its own context, run as one batched forward;
* ``concat``: the MLPs read ``concat(state, context)`` (the standard baseline);
* ``none``: the MLPs read the state alone.

Every ``eval_every`` environment steps, and at the end, the greedy policy runs one episode on
each of three sets of contexts: the training contexts, held-out contexts inside the training
range and held-out contexts outside it (each parameter drawn in the wider range, at least one
outside the training range). The contexts are drawn from the seed and are the same for every
method. Options left at ``none`` take the environment's preset (:data:`PRESETS`).

Outputs under ``runs/<timestamp>-rl/``: results.json (final returns per set, method and seed,
their mean and std over seeds, environment steps and episodes per second, curves),
results.csv, curves.png (greedy return on each set along training, mean ± std over seeds).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypedDict, cast

import gymnasium as gym
import numpy as np
import torch

from ..rl import (
    METHODS,
    ActorCritic,
    contextual,
    evaluate,
    gae,
    make_vector_env,
    ppo_loss,
    sample_contexts,
    split_observation,
)
from .config import out_field, quiet_field, seeds_field
from .distributed import Runtime, amp_field, device_field, nproc_field, runtime
from .reproduce import Recorded
from .runs import (
    Stopwatch,
    count_trainable,
    format_table,
    make_run_dir,
    write_results,
)

SETS = ("train", "inside", "outside")


class Preset(TypedDict):
    """Per-environment defaults of the options left at ``none``."""

    env_id: str
    params: tuple[str, ...]
    steps: int
    num_envs: int
    num_steps: int
    minibatch: int
    epochs: int
    lr: float
    hnet_lr: float
    gamma: float
    lam: float
    ent_coef: float
    reward_scale: float


PRESETS: dict[str, Preset] = {
    # RL Baselines3 Zoo's tuned PPO for CartPole-v1 (8 envs x 32 steps, minibatch 256, 20 epochs,
    # gamma 0.98, lambda 0.8, lr 1e-3, no entropy bonus), with CleanRL's 64-64 tanh networks.
    "cartpole": {
        "env_id": "CartPole-v1",
        "params": ("length", "masspole", "force_mag"),
        "steps": 100_000,
        "num_envs": 8,
        "num_steps": 32,
        "minibatch": 256,
        "epochs": 20,
        "lr": 1e-3,
        "hnet_lr": 1e-3,
        "gamma": 0.98,
        "lam": 0.8,
        "ent_coef": 0.0,
        "reward_scale": 1.0,
    },
    # The Zoo's PPO for Pendulum-v1 (gamma 0.9, lambda 0.95, 10 epochs, lr 1e-3, 100k steps) with
    # 8 envs x 256 steps and minibatches of 256 instead of 64 (a quarter of the gradient steps:
    # the CPU budget); rewards scaled by 0.1 instead of the Zoo's running normalisation.
    "pendulum": {
        "env_id": "Pendulum-v1",
        "params": ("m", "l"),
        "steps": 100_000,
        "num_envs": 8,
        "num_steps": 256,
        "minibatch": 256,
        "epochs": 10,
        "lr": 1e-3,
        "hnet_lr": 1e-3,
        "gamma": 0.9,
        "lam": 0.95,
        "ent_coef": 0.0,
        "reward_scale": 0.1,
    },
}


def _preset(text: str) -> str:
    return f"{text}; none: the environment's preset"


@dataclass
class Config:
    """Options of ``hyperloom train rl``."""

    env: str = field(
        default="cartpole", metadata={"help": "the task family", "choices": tuple(PRESETS)}
    )
    methods: tuple[str, ...] = field(
        default=METHODS, metadata={"help": f"methods to run, any of {','.join(METHODS)}"}
    )
    seeds: tuple[int, ...] = seeds_field((0, 1, 2), "random seeds")
    params: tuple[str, ...] | None = field(
        default=None, metadata={"help": _preset("physical parameters the context varies")}
    )
    train_range: tuple[float, ...] = field(
        default=(0.5, 2.0), metadata={"help": "scale factors (low,high) of the training range"}
    )
    outside_range: tuple[float, ...] = field(
        default=(0.25, 4.0),
        metadata={"help": "scale factors (low,high) of the wider range for 'outside' contexts"},
    )
    n_train_contexts: int = field(default=10, metadata={"help": "contexts trained on"})
    n_eval_contexts: int = field(
        default=20, metadata={"help": "held-out contexts per set (inside, outside)"}
    )
    steps: int | None = field(default=None, metadata={"help": _preset("environment steps")})
    num_envs: int | None = field(default=None, metadata={"help": _preset("parallel environments")})
    num_steps: int | None = field(
        default=None, metadata={"help": _preset("steps per environment per rollout")}
    )
    minibatch: int | None = field(default=None, metadata={"help": _preset("minibatch size")})
    epochs: int | None = field(default=None, metadata={"help": _preset("epochs per rollout")})
    lr: float | None = field(default=None, metadata={"help": _preset("Adam lr, annealed to 0")})
    hnet_lr: float | None = field(
        default=None, metadata={"help": _preset("Adam lr of the hypernetworks, annealed to 0")}
    )
    gamma: float | None = field(default=None, metadata={"help": _preset("discount")})
    lam: float | None = field(default=None, metadata={"help": _preset("GAE lambda")})
    ent_coef: float | None = field(default=None, metadata={"help": _preset("entropy bonus")})
    reward_scale: float | None = field(
        default=None, metadata={"help": _preset("rewards are multiplied by this for training")}
    )
    clip: float = field(default=0.2, metadata={"help": "PPO clipping range"})
    vf_coef: float = field(default=0.5, metadata={"help": "value loss weight"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "gradient norm clipping"})
    hidden: tuple[int, ...] = field(
        default=(64, 64), metadata={"help": "hidden sizes of the policy and value MLPs"}
    )
    hnet_hidden: tuple[int, ...] = field(
        default=(64,), metadata={"help": "trunk of the hypernetworks (FlatGenerator)"}
    )
    eval_every: int = field(
        default=10_000,
        metadata={"help": "environment steps between evaluations; 0: only at the end"},
    )
    valid: bool = field(
        default=False,
        metadata={
            "help": "draw the held-out contexts from a separate validation stream (for choosing "
            "settings) instead of the test contexts"
        },
    )
    out: str = out_field()
    quiet: bool = quiet_field("print only the summary")
    device: str = device_field()
    amp: str = amp_field()
    nproc: int = nproc_field()


# ``hyperloom reproduce rl --smoke``: every method on one seed of CartPole with the tiny sizes of
# tests/test_rl.py (256 environment steps, 8-unit networks, two contexts per set): seconds.
SMOKE: dict = {
    "seeds": (0,),
    "steps": 256,
    "num_envs": 2,
    "num_steps": 32,
    "minibatch": 32,
    "epochs": 1,
    "n_train_contexts": 2,
    "n_eval_contexts": 2,
    "eval_every": 128,
    "hidden": (8,),
    "hnet_hidden": (8,),
    "quiet": True,
}

# label -> path: each method's final greedy return on each context set, and its training
# environment steps per second (a run with one seed has one row per method).
_METRICS = {f"{m} {s}": f"rows.method={m}.{s}" for m in METHODS for s in SETS} | {
    f"{m} steps/s": f"rows.method={m}.steps/s" for m in METHODS
}


def _figures(rows: dict[str, tuple[float, float, float, float]]) -> dict[str, float]:
    """method -> (train, inside, outside, env steps/s) as the page records them, by label."""
    return {
        f"{m} {key}": value
        for m, figures in rows.items()
        for key, value in zip((*SETS, "steps/s"), figures, strict=True)
    }


# docs/results/rl.md, "Figures per run": per task, method and seed, the final greedy returns on
# the train contexts, inside and outside, and the training env steps/s (the commands of the
# page's "Commands", one seed per run).
RECORDED: tuple[Recorded, ...] = (
    Recorded(
        "cartpole",
        {"hnet_lr": 0.0003, "eval_every": 20000, "quiet": True},
        _METRICS,
        {
            0: _figures(
                {
                    "hyper": (469.6, 470.2, 436.4, 553),
                    "concat": (462.8, 500.0, 359.9, 1717),
                    "none": (500.0, 500.0, 395.3, 1875),
                }
            ),
            1: _figures(
                {
                    "hyper": (406.3, 454.3, 404.9, 519),
                    "concat": (500.0, 500.0, 456.4, 1604),
                    "none": (107.6, 109.2, 101.8, 1821),
                }
            ),
            2: _figures(
                {
                    "hyper": (457.7, 425.2, 371.0, 553),
                    "concat": (500.0, 500.0, 337.1, 1806),
                    "none": (500.0, 429.9, 307.6, 2020),
                }
            ),
        },
        seed_field="seeds",
        page="docs/results/rl.md",
    ),
    Recorded(
        "pendulum",
        {"env": "pendulum", "hnet_lr": 0.0003, "eval_every": 20000, "quiet": True},
        _METRICS,
        {
            0: _figures(
                {
                    "hyper": (-197.3, -275.3, -571.7, 699),
                    "concat": (-193.6, -192.0, -508.4, 2411),
                    "none": (-275.5, -253.1, -527.5, 2152),
                }
            ),
            1: _figures(
                {
                    "hyper": (-419.8, -571.8, -681.8, 850),
                    "concat": (-190.2, -307.5, -534.2, 2791),
                    "none": (-230.6, -323.1, -519.2, 2696),
                }
            ),
            2: _figures(
                {
                    "hyper": (-430.7, -542.4, -722.8, 727),
                    "concat": (-232.6, -272.1, -532.2, 1920),
                    "none": (-225.8, -301.2, -564.9, 2000),
                }
            ),
        },
        seed_field="seeds",
        page="docs/results/rl.md",
    ),
)


def resolve(config: Config) -> Config:
    """``config`` with every ``none`` option replaced by the environment's preset, checked."""
    if config.env not in PRESETS:
        raise ValueError(f"unknown env {config.env!r}; choose one of {tuple(PRESETS)}")
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown or not config.methods:
        raise ValueError(f"unknown methods {unknown or '(none given)'}; choose from {METHODS}")
    if not config.seeds:
        raise ValueError("seeds must not be empty")
    preset = PRESETS[config.env]
    filled: dict[str, Any] = {
        k: v for k, v in preset.items() if k != "env_id" and getattr(config, k) is None
    }
    out = replace(config, **filled)
    p = settings(out)
    counts = {
        "steps": p["steps"],
        "num_envs": p["num_envs"],
        "num_steps": p["num_steps"],
        "minibatch": p["minibatch"],
        "epochs": p["epochs"],
        "n_train_contexts": out.n_train_contexts,
    }
    for name, count in counts.items():
        if count < 1:
            raise ValueError(f"{name} must be >= 1, got {count}")
    if out.n_eval_contexts < 1 or out.eval_every < 0:
        raise ValueError(
            f"n_eval_contexts must be >= 1 and eval_every >= 0, got {out.n_eval_contexts}, "
            f"{out.eval_every}"
        )
    if (p["num_envs"] * p["num_steps"]) % p["minibatch"]:
        raise ValueError(
            f"minibatch={p['minibatch']} must divide num_envs*num_steps="
            f"{p['num_envs'] * p['num_steps']}"
        )
    return out


def settings(config: Config) -> Preset:
    """The options a preset fills, as ``config`` (from :func:`resolve`) sets them.

    Raises:
        ValueError: an option is still ``none`` (``config`` did not go through :func:`resolve`).
    """
    values = {k: getattr(config, k) for k in Preset.__annotations__ if k != "env_id"}
    unset = sorted(k for k, v in values.items() if v is None)
    if unset:
        raise ValueError(f"options {unset} are unset: pass the config through resolve() first")
    return cast(Preset, {"env_id": PRESETS[config.env]["env_id"], **values})


def _pair(values: tuple[float, ...], name: str) -> tuple[float, float]:
    if len(values) != 2:
        raise ValueError(f"{name} must be two numbers (low,high), got {values}")
    return values[0], values[1]


def draw_contexts(config: Config, seed: int) -> dict[str, np.ndarray]:
    """The training contexts and the held-out sets ``inside`` and ``outside``, from ``seed``.

    The training contexts come from ``seed`` alone; the held-out ones from a second stream
    (``valid=True`` draws them from a third, so that settings chosen on them never saw the
    test contexts).
    """
    dim = len(settings(config)["params"])
    inside = _pair(config.train_range, "train_range")
    rng = np.random.default_rng([seed, 0])
    train = sample_contexts(config.n_train_contexts, dim, inside=inside, rng=rng)
    held = np.random.default_rng([seed, 2 if config.valid else 1])
    n = config.n_eval_contexts
    return {
        "train": train,
        "inside": sample_contexts(n, dim, inside=inside, rng=held),
        "outside": sample_contexts(
            n, dim, inside=inside, outside=_pair(config.outside_range, "outside_range"), rng=held
        ),
    }


def rollout_seed(seed: int, rank: int) -> int:
    """The training environments' seed of process ``rank``: each process collects its own.

    Example:
        >>> rollout_seed(2, 0), rollout_seed(2, 1)
        (2000, 1002000)
    """
    return 1000 * seed + 1_000_000 * rank


def train(
    config: Config,
    method: str,
    contexts: dict[str, np.ndarray],
    seed: int,
    rt: Runtime | None = None,
) -> dict:
    """Train one actor-critic with PPO and evaluate it on every set of ``contexts``.

    Data-parallel (``rt`` of several processes): every process starts from the same networks,
    collects its own rollouts (its environments seeded by :func:`rollout_seed`, its actions
    by its own torch seed) and trains on its own minibatches; the gradients are averaged.

    Args:
        config: a resolved :class:`Config`.
        method: ``hyper``, ``concat`` or ``none``.
        contexts: ``{"train": (K, d), <eval set>: (M, d), ...}``.
        seed: seeds the networks, the actions and the environments.
        rt: where and how to train (``None``: one process on the CPU, full precision).

    Returns:
        ``{"final": {set: returns}, "curve": [...], "train_seconds", "env_steps_per_second",
        "train_episodes", "eval_episodes_per_second", "params"}``.
    """
    rt = rt or Runtime(torch.device("cpu"))
    s = settings(config)
    env_id = s["env_id"]
    dim = len(s["params"])
    torch.manual_seed(seed)
    env_seed = rollout_seed(seed, rt.rank)
    vec = make_vector_env(
        env_id, s["params"], contexts["train"], num_envs=s["num_envs"], seed=env_seed
    )
    evals = {
        name: make_vector_env(env_id, s["params"], c, fixed=True, seed=0)
        for name, c in contexts.items()
    }
    obs_space, act_space = vec.single_observation_space, vec.single_action_space
    if not isinstance(obs_space, gym.spaces.Box):
        raise TypeError(f"{env_id}: expected a Box observation space, got {obs_space}")
    obs_dim = obs_space.shape[0] - dim
    act_shape: tuple[int, ...] = ()  # of one action: () for a discrete one
    if isinstance(act_space, gym.spaces.Discrete):
        out_dim = int(act_space.n)
    elif isinstance(act_space, gym.spaces.Box):
        out_dim, act_shape = int(act_space.shape[0]), act_space.shape
    else:
        raise TypeError(f"{env_id}: unsupported action space {act_space}; Discrete or Box")

    def net(out: int) -> torch.nn.Module:
        return contextual(
            method, obs_dim, dim, out, hidden=config.hidden, hnet_hidden=config.hnet_hidden
        )

    agent = ActorCritic(net(out_dim), net(1), act_space).to(rt.device)
    if env_seed != rollout_seed(seed, 0):  # the same networks everywhere; own action noise
        torch.manual_seed(env_seed)
    hyper = [p for n, p in agent.named_parameters() if ".hnet." in n]
    rest = [p for n, p in agent.named_parameters() if ".hnet." not in n]
    groups = [{"params": rest, "base_lr": s["lr"]}]
    if hyper:
        groups.append({"params": hyper, "base_lr": s["hnet_lr"]})
    opt = torch.optim.Adam(groups, lr=s["lr"], eps=1e-5)

    T, N = s["num_steps"], s["num_envs"]
    updates = max(1, s["steps"] // (T * N))
    states = torch.zeros(T, N, obs_dim, device=rt.device)
    ctxs = torch.zeros(T, N, dim, device=rt.device)
    act_dtype = torch.float32 if act_shape else torch.long
    actions = torch.zeros((T, N, *act_shape), dtype=act_dtype, device=rt.device)
    logps, rewards, dones, values = (torch.zeros(T, N, device=rt.device) for _ in range(4))

    curve: list[dict] = []
    episode_return = np.zeros(N)
    train_returns: list[tuple[int, float]] = []
    step = 0
    next_eval = config.eval_every if config.eval_every else None
    eval_seconds = 0.0
    obs, _ = vec.reset(seed=env_seed)
    with Stopwatch() as total:
        for update in range(updates):
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * (1.0 - update / updates)
            # Rollout: every environment, each with its own context, in one forward per step.
            for t in range(T):
                state, ctx = rt.move(split_observation(obs, dim))
                with torch.no_grad(), rt.autocast():
                    action, logp, _, value = agent.act(state, context=ctx)
                obs, raw, term, trunc, info = vec.step(agent.env_action(action))
                episode_return += raw
                for i in np.flatnonzero(term | trunc):  # the training episodes' own returns
                    train_returns.append((step + N, float(episode_return[i])))
                    episode_return[i] = 0.0
                reward = raw * s["reward_scale"]
                cut = trunc & ~term
                if cut.any():  # time limit, not a terminal state: bootstrap from the last state
                    final = np.stack([info["final_obs"][i] for i in np.flatnonzero(cut)])
                    with torch.no_grad(), rt.autocast():
                        s_final, c_final = rt.move(split_observation(final, dim))
                        v_final = agent.value(s_final, context=c_final).cpu().numpy()
                    reward[cut] += s["gamma"] * v_final
                states[t], ctxs[t], actions[t], logps[t], values[t] = (
                    state,
                    ctx,
                    action,
                    logp,
                    value,
                )
                rewards[t] = torch.as_tensor(reward, dtype=torch.float32)
                dones[t] = torch.as_tensor(term | trunc, dtype=torch.float32)
                step += N
            with torch.no_grad(), rt.autocast():
                s_last, c_last = rt.move(split_observation(obs, dim))
                last_value = agent.value(s_last, context=c_last)
            adv, ret = gae(rewards, values, dones, last_value, gamma=s["gamma"], lam=s["lam"])

            # Update: epochs of shuffled minibatches over the flattened rollout.
            b_state, b_ctx = states.reshape(T * N, obs_dim), ctxs.reshape(T * N, dim)
            b_act = actions.reshape(T * N, *act_shape)
            b_logp, b_adv, b_ret = logps.reshape(-1), adv.reshape(-1), ret.reshape(-1)
            for _ in range(s["epochs"]):
                for idx in torch.randperm(T * N).split(s["minibatch"]):  # this process's rollout
                    with rt.autocast():  # log-probabilities and values in float32 (ActorCritic)
                        loss, stats = ppo_loss(
                            agent, b_state[idx], b_act[idx], b_logp[idx], b_adv[idx], b_ret[idx],
                            context=b_ctx[idx], clip=config.clip, vf_coef=config.vf_coef,
                            ent_coef=s["ent_coef"],
                        )  # fmt: skip
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    rt.sync_grads(opt)  # data-parallel: the mean over processes, then clipped
                    torch.nn.utils.clip_grad_norm_(agent.parameters(), config.max_grad_norm)
                    opt.step()

            if next_eval is not None and step >= next_eval and update < updates - 1:
                with Stopwatch() as sw:
                    point = {"step": step, **_evaluate_sets(agent, evals, dim, seed)}
                eval_seconds += sw.seconds
                curve.append(point)
                next_eval += config.eval_every
                if not config.quiet:
                    print(
                        f"  {method} seed {seed} step {step:>7}: "
                        + ", ".join(f"{k} {point[k]:.1f}" for k in SETS if k in point)
                        + f" (kl {stats['approx_kl']:.4f})"
                    )
    train_seconds = total.seconds - eval_seconds
    finals, eps = {}, {}
    for name, vec_eval in evals.items():
        result = evaluate(agent, vec_eval, dim, seed=10_000 + seed)
        finals[name] = result.returns.tolist()
        eps[name] = result.episodes_per_second
    curve.append({"step": step, **{k: float(np.mean(v)) for k, v in finals.items()}})
    vec.close()
    return {
        "final": finals,
        "curve": curve,
        "train_seconds": train_seconds,
        "env_steps": step,
        "env_steps_per_second": step / train_seconds,
        "train_episodes": len(train_returns),
        "train_returns": train_returns,
        "eval_episodes_per_second": eps,
        "params": count_trainable(agent),
    }


def _evaluate_sets(agent: ActorCritic, evals: dict, dim: int, seed: int) -> dict[str, float]:
    return {
        name: float(evaluate(agent, vec, dim, seed=10_000 + seed).returns.mean())
        for name, vec in evals.items()
    }


def run(config: Config) -> dict:
    with runtime(device=config.device, amp=config.amp) as rt:
        return _run(config, rt)


def _run(config: Config, rt: Runtime) -> dict:
    config = resolve(config)
    print(
        f"rl: {PRESETS[config.env]['env_id']}, context = log2 scale of {config.params}, "
        f"methods {config.methods}, seeds {config.seeds}, {settings(config)['steps']:,} steps each"
    )
    rows: list[dict] = []
    runs: dict[str, dict] = {}
    for seed in config.seeds:
        contexts = draw_contexts(config, seed)
        for method in config.methods:
            result = train(config, method, contexts, seed, rt)
            runs[f"{method}/{seed}"] = result
            row = {"method": method, "seed": seed}
            row.update({s: float(np.mean(result["final"][s])) for s in SETS})
            row["steps/s"] = result["env_steps_per_second"]
            row["train s"] = result["train_seconds"]
            row["eval eps/s"] = result["eval_episodes_per_second"]["inside"]
            row["params"] = result["params"]
            rows.append(row)
            if not config.quiet:
                print(format_table([row]))
    summary = summarise(rows, config.methods)
    env_id = PRESETS[config.env]["env_id"]
    results = {
        "config": asdict(config),
        "env_id": env_id,
        "summary": summary,
        "rows": rows,
        "runs": runs,
        "contexts": {
            str(s): {k: v.tolist() for k, v in draw_contexts(config, s).items()}
            for s in config.seeds
        },
    }
    if not rt.is_main:  # rank 0 alone writes the run folder
        return results
    run_dir = make_run_dir(config.out, "rl")
    write_results(
        run_dir,
        results,
        rows,
        plot=lambda path: plot_curves(runs, config.methods, path, title=env_id),
        plot_name="curves.png",
        table=summary,
    )
    print(run_dir)
    return {**results, "run_dir": str(run_dir)}


def summarise(rows: list[dict], methods: tuple[str, ...]) -> list[dict]:
    """Mean and standard deviation over seeds of each method's final returns and throughput."""
    out = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        row: dict = {"method": method, "seeds": len(mine)}
        for key in (*SETS, "steps/s", "eval eps/s"):
            vals = [r[key] for r in mine]
            row[key] = statistics.fmean(vals)
            row[f"{key} std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        row["params"] = mine[0]["params"]
        out.append(row)
    return out


def plot_curves(runs: dict[str, dict], methods: tuple[str, ...], path, *, title: str = "") -> None:
    """Greedy return on each context set along training, mean ± std over seeds, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SETS), figsize=(4.2 * len(SETS), 3.4), sharey=True)
    for ax, name in zip(axes, SETS, strict=True):
        for method in methods:
            curves = [r["curve"] for k, r in runs.items() if k.split("/")[0] == method]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            x = np.array([p["step"] for p in curves[0][:n]])
            y = np.array([[p[name] for p in c[:n]] for c in curves])
            mean, std = y.mean(0), y.std(0)
            ax.plot(x, mean, label=method)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.set_title(f"{name} contexts")
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("greedy return")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
