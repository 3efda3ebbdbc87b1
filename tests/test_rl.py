"""hyperloom.rl: contextual environments, context-conditioned networks, PPO and the recipe."""

import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import hyperloom as hl
import hyperloom.rl as rl
from hyperloom.recipes import rl as recipe

# ---------------------------------------------------------------- environments


def test_contextual_env_sets_physics_and_appends_context():
    env = rl.ContextualEnv(gym.make("CartPole-v1"), ("length", "masspole"), [[1.0, -1.0]])
    obs, _ = env.reset(seed=0)
    raw = env.unwrapped
    assert raw.length == pytest.approx(1.0) and raw.masspole == pytest.approx(0.05)
    # CartPole caches these in its constructor; the wrapper must recompute them
    assert raw.polemass_length == pytest.approx(0.05 * 1.0)
    assert raw.total_mass == pytest.approx(1.05)
    assert obs.shape == (6,) and obs[-2:].tolist() == [1.0, -1.0]
    assert env.observation_space.contains(obs)
    obs, *_ = env.step(0)
    assert obs[-2:].tolist() == [1.0, -1.0]
    obs, _ = env.reset(options={"context": [0.0, 0.0]})
    assert raw.length == pytest.approx(0.5) and obs[-2:].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("env_id", sorted(rl.PARAMETERS))
def test_every_listed_parameter_is_scaled(env_id):
    names = tuple(rl.PARAMETERS[env_id])
    env = rl.ContextualEnv(gym.make(env_id), names, [np.linspace(-1.0, 1.0, len(names))])
    obs, _ = env.reset(seed=0)
    for name, c in zip(names, np.linspace(-1.0, 1.0, len(names)), strict=True):
        assert getattr(env.unwrapped, name) == pytest.approx(rl.PARAMETERS[env_id][name] * 2**c)
    obs, *_ = env.step(env.action_space.sample())
    assert obs.shape == env.observation_space.shape


def test_vector_env_resets_draw_new_contexts():
    contexts = [[-1.0], [0.0], [1.0]]
    vec = rl.make_vector_env("CartPole-v1", ("length",), contexts, num_envs=4, seed=3)
    obs, _ = vec.reset(seed=0)
    seen = {float(c) for c in obs[:, -1]}
    for _ in range(300):  # random actions end episodes quickly: new contexts appear
        obs, *_ = vec.step(vec.action_space.sample())
        seen |= {float(c) for c in obs[:, -1]}
        for i, e in enumerate(vec.envs):  # the observed context is the one in the physics
            assert e.unwrapped.length == pytest.approx(0.5 * 2.0 ** float(obs[i, -1]))
    assert seen == {-1.0, 0.0, 1.0}


def test_sample_contexts_inside_and_outside():
    rng = np.random.default_rng(0)
    inside = rl.sample_contexts(200, 3, inside=(0.5, 2.0), rng=rng)
    assert inside.shape == (200, 3) and (np.abs(inside) <= 1.0).all()
    out = rl.sample_contexts(200, 3, inside=(0.5, 2.0), outside=(0.25, 4.0), rng=rng)
    assert (np.abs(out) <= 2.0).all()
    assert (np.abs(out) > 1.0).any(axis=1).all()  # every one has a parameter outside
    with pytest.raises(ValueError, match="strictly contain"):
        rl.sample_contexts(1, 1, inside=(0.5, 2.0), outside=(0.5, 2.0), rng=rng)


@pytest.mark.parametrize(
    ("bad", "match"),
    [([0.0, 1.0], r"shape \((1, )?2,?\); expected \(\*, 1\)"), ([math.nan], "non-finite")],
)
def test_bad_context_refused_by_env(bad, match):
    with pytest.raises(ValueError, match=match):
        rl.make_vector_env("CartPole-v1", ("length",), [bad])
    env = rl.ContextualEnv(gym.make("CartPole-v1"), ("length",), [[0.0]])
    with pytest.raises(ValueError, match=match):
        env.reset(options={"context": bad})
    with pytest.raises(ValueError, match=match):
        rl.ContextualEnv(gym.make("CartPole-v1"), ("length",), [bad])


def test_unknown_parameter_or_env_refused():
    with pytest.raises(ValueError, match="'mass'"):
        rl.ContextualEnv(gym.make("CartPole-v1"), ("mass",), [[0.0]])
    with pytest.raises(ValueError, match="Acrobot-v1"):
        rl.ContextualEnv(gym.make("Acrobot-v1"), ("length",), [[0.0]])


# ---------------------------------------------------------------- networks


@pytest.mark.parametrize("method", rl.METHODS)
@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.zeros(5, 2), r"shape \(5, 2\); expected \(B, 3\)"),
        (torch.zeros(4, 3), "4 rows but the observations have 5"),
        (torch.tensor([[0.0, 0, 0]] * 3 + [[math.nan, 0, 0], [0, 0, math.inf]]), r"rows \[3, 4\]"),
    ],
)
def test_bad_context_refused_by_networks(method, bad, match):
    net = rl.contextual(method, 4, 3, 2)
    with pytest.raises(ValueError, match=match):
        net(torch.randn(5, 4), context=bad)


def test_hyper_context_equals_one_generation_per_row():
    net = rl.contextual("hyper", 4, 3, 2, hidden=(16,), hnet_hidden=(8,))
    ctx = torch.randn(3, 3)[torch.tensor([0, 2, 2, 1, 0, 2, 1])]  # repeated contexts
    x = torch.randn(7, 4)
    out = net(x, context=ctx)
    out.square().sum().backward()
    trained = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trained and all(n.startswith("hnet.generator.") for n in trained)
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
    net.zero_grad()
    # oracle: generate one weight set per row and run a plain copy of the target on it
    rows = []
    for i in range(7):
        w = net.hnet.generate(context=ctx[i : i + 1])
        rows.append(hl.call(net.hnet.target, {k: v[0] for k, v in w.items()}, x[i : i + 1]))
    ref = torch.cat(rows)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref)
    for n in trained:
        torch.testing.assert_close(grads[n], net.get_parameter(n).grad, msg=n)


def test_hyper_context_generates_only_the_target_and_describes_itself():
    net = rl.contextual("hyper", 4, 3, 2, hidden=(8,))
    target_numel = sum(p.numel() for p in net.hnet.target.parameters())
    assert net.hnet.spec.numel == target_numel
    crit = net.hnet.describe()
    assert crit.inputs == "task-conditioned" and crit.input_variability == "dynamic"


def test_actor_critic_continuous_actions_are_rescaled():
    space = gym.spaces.Box(-2.0, 2.0, (1,))
    agent = rl.ActorCritic(rl.contextual("none", 3, 2, 1), rl.contextual("none", 3, 2, 1), space)
    a, logp, ent, v = agent.act(torch.randn(6, 3), context=torch.zeros(6, 2))
    assert a.shape == (6, 1) and logp.shape == ent.shape == v.shape == (6,)
    env_a = agent.env_action(torch.tensor([[-3.0], [0.5], [3.0]]))
    assert env_a.tolist() == [[-2.0], [1.0], [2.0]]
    with pytest.raises(TypeError, match="unsupported action space"):
        rl.ActorCritic(nn.Linear(1, 1), nn.Linear(1, 1), gym.spaces.MultiBinary(3))


# ---------------------------------------------------------------- PPO pieces


def test_gae_matches_the_recursion_across_episode_ends():
    g = torch.Generator().manual_seed(0)
    T, N, gamma, lam = 6, 3, 0.9, 0.8
    r, v = torch.randn(T, N, generator=g), torch.randn(T, N, generator=g)
    d = (torch.rand(T, N, generator=g) < 0.3).float()
    last = torch.randn(N, generator=g)
    adv, ret = rl.gae(r, v, d, last, gamma=gamma, lam=lam)
    for n in range(N):  # plain Python, one environment at a time
        a, nxt = 0.0, float(last[n])
        for t in reversed(range(T)):
            live = 1.0 - float(d[t, n])
            delta = float(r[t, n]) + gamma * live * nxt - float(v[t, n])
            a = delta + gamma * lam * live * a
            assert float(adv[t, n]) == pytest.approx(a, abs=1e-5)
            nxt = float(v[t, n])
    torch.testing.assert_close(ret, adv + v)


def test_ppo_loss_at_the_old_policy():
    agent = rl.ActorCritic(
        rl.contextual("concat", 4, 1, 2), rl.contextual("concat", 4, 1, 1), gym.spaces.Discrete(2)
    )
    o, c = torch.randn(32, 4), torch.randn(32, 1)
    a, logp, ent, v = agent.act(o, context=c)
    adv, ret = torch.randn(32), torch.randn(32)
    loss, stats = rl.ppo_loss(agent, o, a, logp.detach(), adv, ret, context=c, ent_coef=0.1)
    # ratio 1: the surrogate is minus the mean normalised advantage, i.e. zero
    assert stats["clipfrac"] == 0.0 and abs(stats["approx_kl"]) < 1e-6
    assert stats["policy_loss"] == pytest.approx(0.0, abs=1e-6)
    expected = 0.5 * 0.5 * (v - ret).pow(2).mean() - 0.1 * ent.mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


# ---------------------------------------------------------------- the algorithm and the recipe


def _config(**kw) -> recipe.Config:
    return recipe.resolve(recipe.Config(**{"quiet": True, **kw}))


def test_ppo_solves_fixed_cartpole():
    """The known result: PPO reaches CartPole-v1's reward threshold (475) on the nominal MDP."""
    threshold = gym.spec("CartPole-v1").reward_threshold
    assert threshold == 475.0
    config = _config(params=("length",), steps=100_000, eval_every=0)  # the Zoo's budget
    nominal = np.zeros((1, 1))
    out = recipe.train(config, "none", {"train": nominal, "nominal": np.zeros((10, 1))}, seed=0)
    assert np.mean(out["final"]["nominal"]) >= threshold, out["final"]


def _tiny(**kw) -> recipe.Config:
    base = dict(
        steps=256, num_envs=2, num_steps=32, minibatch=32, epochs=1, n_train_contexts=2,
        n_eval_contexts=2, eval_every=128, hidden=(8,), hnet_hidden=(8,),
    )  # fmt: skip
    return _config(**{**base, **kw})


@pytest.mark.parametrize("env", ["cartpole", "pendulum"])
def test_training_is_deterministic_under_a_seed(env):
    config = _tiny(env=env)
    contexts = recipe.draw_contexts(config, 0)
    a = recipe.train(config, "hyper", contexts, seed=0)
    b = recipe.train(config, "hyper", contexts, seed=0)
    assert a["final"] == b["final"] and a["curve"] == b["curve"]
    assert a["train_returns"] == b["train_returns"]
    c = recipe.train(config, "hyper", contexts, seed=1)
    assert c["final"] != a["final"]


def test_recipe_run_writes_results(tmp_path):
    out = recipe.run(_tiny(seeds=(0, 1), out=str(tmp_path)))
    run_dir = tmp_path / next(p.name for p in tmp_path.iterdir())
    saved = json.loads((run_dir / "results.json").read_text())
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["method"] for r in saved["summary"]] == list(rl.METHODS)
    assert len(saved["rows"]) == 6 and out["run_dir"] == str(run_dir)
    for row in saved["summary"]:
        for key in ("train", "inside", "outside", "steps/s"):
            assert math.isfinite(row[key]) and math.isfinite(row[f"{key} std"])
    contexts = saved["contexts"]["0"]
    assert np.abs(contexts["inside"]).max() <= 1.0 < np.abs(contexts["outside"]).max(axis=1).min()


def test_held_out_contexts_differ_between_valid_and_test():
    test = recipe.draw_contexts(_tiny(), 0)
    valid = recipe.draw_contexts(_tiny(valid=True), 0)
    np.testing.assert_array_equal(test["train"], valid["train"])
    assert not np.allclose(test["inside"], valid["inside"])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"env": "acrobot"}, "unknown env 'acrobot'"),
        ({"methods": ("hyper", "film")}, r"unknown methods \['film'\]"),
        ({"seeds": ()}, "seeds"),
        ({"minibatch": 100}, "minibatch=100"),
        ({"steps": 0}, "steps must be >= 1"),
    ],
)
def test_config_refuses_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        recipe.resolve(recipe.Config(**kw))
