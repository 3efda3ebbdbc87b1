"""pFedHN: the server step against a hand-computed VJP, partitions, faults, and a Flower run."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import hyperloom as hl
from hyperloom.federated import (
    check_reply,
    class_shares,
    collect_replies,
    dirichlet_shares,
    embedding_optimizer,
    fedavg,
    partition_clients,
    personal_weights,
    pfedhn_grads,
    pfedhn_step,
    train_local,
)
from hyperloom.networks import lenet

HAS_FLWR = importlib.util.find_spec("flwr") is not None
needs_flwr = pytest.mark.skipif(not HAS_FLWR, reason="the fl extra (flwr[simulation]) is missing")


def small_hnet(num: int = 3, personal_head: bool = False) -> hl.HyperNetwork:
    target = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    return hl.HyperNetwork(
        target,
        hl.TaskEmbedding(num, 2),
        hl.HeadsGenerator.factory(hidden=(5, 5)),
        generate="0.*" if personal_head else None,
    )


def hand_vjp(hnet: hl.HyperNetwork, client: int, returned: dict, params: list) -> list:
    """J^T (theta - theta_tilde) with J the full Jacobian of the flattened weights."""

    def flat_theta(*values):
        swapped = dict(zip([id(p) for p in params], values, strict=True))
        named = {n: swapped.get(id(p), p) for n, p in hnet.named_parameters()}
        gen = {n[len("generator.") :]: v for n, v in named.items() if n.startswith("generator.")}
        row = named[f"conditioner.rows.{client}"]
        out = torch.func.functional_call(hnet.generator, gen, (row,))
        return torch.cat([out[n].reshape(-1) for n in hnet.spec.names])  # (T,)

    values = tuple(p.detach() for p in params)
    jac = torch.func.jacrev(flat_theta, argnums=tuple(range(len(params))))(*values)
    theta = flat_theta(*values)
    delta = theta - torch.cat([returned[n].reshape(-1) for n in hnet.spec.names])  # (T,)
    return [
        (j.reshape(theta.numel(), -1).T @ delta).reshape(p.shape)
        for j, p in zip(jac, params, strict=True)
    ]


def moved_weights(hnet: hl.HyperNetwork, client: int, scale: float = 0.1) -> dict:
    torch.manual_seed(client)
    w = hnet.generate(task=torch.tensor(client))
    return {n: (v + scale * torch.randn_like(v)).detach() for n, v in w.items()}


# --------------------------------------------------------------------------------------------
# The server step


def test_pfedhn_grads_equal_hand_vjp():
    hnet = small_hnet()
    params = [p for n, p in hnet.named_parameters() if not n.startswith("target.")]
    returned = moved_weights(hnet, 1)
    got = pfedhn_grads(hnet.generate(task=torch.tensor(1)), returned, params)
    want = hand_vjp(hnet, 1, returned, params)
    names = [n for n, _ in hnet.named_parameters() if not n.startswith("target.")]
    for name, g, w in zip(names, got, want, strict=True):
        if name.startswith("conditioner.rows.") and name != "conditioner.rows.1":
            assert g is None or torch.count_nonzero(g) == 0  # other clients' rows: no signal
            assert torch.count_nonzero(w) == 0
        else:
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=name)


def test_pfedhn_step_is_sgd_on_the_vjp():
    hnet = small_hnet()
    params = [p for n, p in hnet.named_parameters() if not n.startswith("target.")]
    before = [p.detach().clone() for p in params]
    returned = moved_weights(hnet, 2)
    want = hand_vjp(hnet, 2, returned, params)
    opt = torch.optim.SGD(params, lr=0.05)
    pfedhn_step(hnet, returned, opt, task=2, max_grad_norm=None)
    for p, b, g in zip(params, before, want, strict=True):
        torch.testing.assert_close(p.detach(), b - 0.05 * g, rtol=1e-5, atol=1e-6)


def test_preset_server_optimizer_is_adam_on_the_vjp():
    from hyperloom.recipes.federated.recipe import Config, server_optimizer

    cfg = Config()
    hnet = small_hnet()
    params = [p for n, p in hnet.named_parameters() if not n.startswith("target.")]
    before = [p.detach().clone() for p in params]
    returned = moved_weights(hnet, 2)
    want = hand_vjp(hnet, 2, returned, params)
    opt = server_optimizer(cfg, hnet)
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["lr"] == cfg.hn_lr
    pfedhn_step(hnet, returned, opt, task=2, max_grad_norm=None)
    names = [n for n, _ in hnet.named_parameters() if not n.startswith("target.")]
    for name, p, b, g in zip(names, params, before, want, strict=True):
        if name.startswith("conditioner.rows.") and name != "conditioner.rows.2":
            assert torch.equal(p.detach(), b), name  # no gradient: Adam leaves the row alone
            continue
        g = g + cfg.hn_wd * b  # Adam's L2 term
        step = cfg.hn_lr * g / (g.abs() + 1e-8)  # Adam's first step: m / sqrt(v) = g / |g|
        torch.testing.assert_close(p.detach(), b - step, rtol=1e-4, atol=1e-9, msg=name)


def test_pfedhn_step_takes_the_client_as_task():
    """``task=[a, b]`` averages the two clients' gradients; a positional client is refused."""
    one, two = small_hnet(), small_hnet()
    two.load_state_dict(one.state_dict())
    replies = [moved_weights(one, 0), moved_weights(one, 2)]
    params = [p for n, p in one.named_parameters() if not n.startswith("target.")]
    opt = torch.optim.SGD(params, lr=0.1)
    pfedhn_step(one, replies, opt, task=[0, 2], max_grad_norm=None)
    grads = [
        pfedhn_grads(two.generate(task=torch.tensor(c)), r, list(two.parameters()))
        for c, r in zip([0, 2], replies, strict=True)
    ]
    for (name, p), *gs in zip(two.named_parameters(), *grads, strict=True):
        if name.startswith("target."):
            continue
        g = sum((x for x in gs if x is not None), torch.zeros_like(p)) / 2
        torch.testing.assert_close(dict(one.named_parameters())[name], p.detach() - 0.1 * g)
    with pytest.raises(TypeError):
        pfedhn_step(one, 2, replies[0], opt)  # the old positional call
    with pytest.raises(TypeError, match=r"takes one reply .* got int"):
        pfedhn_step(one, 2, opt, task=2)
    with pytest.raises(TypeError, match=r"takes task= as an integer id or a list of ids, got 1\.5"):
        pfedhn_step(one, replies[0], opt, task=1.5)
    with pytest.raises(TypeError, match=r"takes a list of replies, one per client, got dict"):
        pfedhn_step(one, replies[0], opt, task=[0, 2])
    with pytest.raises(TypeError, match=r"takes one client id as task=, got \[0, 1\]"):
        embedding_optimizer(one, task=[0, 1], lr=0.1)


def test_new_client_moves_only_its_embedding():
    hnet = small_hnet()
    (new,) = hnet.conditioner.add(1)
    before = {n: p.detach().clone() for n, p in hnet.named_parameters()}
    opt = embedding_optimizer(hnet, task=new, lr=0.1)
    pfedhn_step(hnet, moved_weights(hnet, new), opt, task=new, max_grad_norm=None)
    for n, p in hnet.named_parameters():
        if n == f"conditioner.rows.{new}":
            assert not torch.equal(p, before[n])
        else:
            assert torch.equal(p, before[n]), n


def test_personal_head_is_not_generated():
    net = lenet()
    spec = hl.select(net, "conv*", "fc*")
    head = personal_weights(net, spec)
    assert sorted(head) == ["out.bias", "out.weight"]
    assert not set(head) & set(spec.names)


# --------------------------------------------------------------------------------------------
# Replies: validation and faults


def test_check_reply_reasons():
    spec = hl.select(nn.Linear(3, 2))
    good = {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}
    assert check_reply(spec, good) is None
    assert "missing" in check_reply(spec, {"weight": torch.zeros(2, 3)})
    assert "unexpected" in check_reply(spec, {**good, "extra": torch.zeros(1)})
    assert "shape" in check_reply(spec, {**good, "bias": torch.zeros(3)})
    assert "non-finite" in check_reply(spec, {**good, "bias": torch.tensor([0.0, float("inf")])})
    assert "dtype" in check_reply(spec, {**good, "bias": torch.zeros(2, dtype=torch.long)})
    assert "mapping" in check_reply(spec, [1, 2])
    assert "not a tensor" in check_reply(spec, {**good, "bias": [0.0, 0.0]})


def test_collect_replies_skips_and_logs_faults(caplog):
    def work(c):
        if c == "fails":
            raise RuntimeError("disk full")
        if c == "slow":
            time.sleep(1.0)
            return "late"
        if c == "drops":
            return None
        return f"ok-{c}"

    with caplog.at_level(logging.WARNING, logger="hyperloom.federated"):
        r = collect_replies(["a", "fails", "slow", "drops", "b"], work, timeout=0.2, round_=7)
    assert r.ok == {"a": "ok-a", "b": "ok-b"}
    assert set(r.skipped) == {"fails", "slow", "drops"}
    assert "disk full" in r.skipped["fails"]
    assert "timed out" in r.skipped["slow"]
    assert "dropped" in r.skipped["drops"]
    logged = caplog.text
    assert "round 7" in logged and "disk full" in logged and "timed out" in logged


# --------------------------------------------------------------------------------------------
# Partitions and baselines


def test_class_shares_two_classes_per_client():
    s = class_shares(10, 10, 2, seed=3)
    assert ((s > 0).sum(1) == 2).all()
    torch.testing.assert_close(s.sum(0), torch.ones(10))
    y = torch.arange(10).repeat(50)
    parts = partition_clients(y, s, seed=0)
    allidx = torch.cat(parts)
    assert len(allidx) == len(y) and len(torch.unique(allidx)) == len(y)  # disjoint, complete
    for i, idx in enumerate(parts):
        assert set(y[idx].tolist()) <= set(torch.nonzero(s[i]).flatten().tolist())


def test_sized_partition_few_samples_per_client():
    """100 clients of 50-200 training examples, 3 classes each: the few-shot split."""
    from hyperloom.recipes.federated.setup import Config, client_sizes

    y_train, y_test = torch.arange(10).repeat(6000), torch.arange(10).repeat(1000)  # F-MNIST
    shares = class_shares(100, 10, 3, seed=0)
    sizes = client_sizes(Config(samples_per_client=(50, 200), seed=0), 100)
    train = partition_clients(y_train, shares, seed=0, sizes=sizes)
    test = partition_clients(y_test, shares, seed=1)
    assert [len(p) for p in train] == sizes.tolist()
    assert min(sizes.tolist()) >= 50 and max(sizes.tolist()) <= 200
    assert len(set(sizes.tolist())) > 50  # drawn, not one value
    everything = torch.cat(train)
    assert len(torch.unique(everything)) == len(everything)  # no example in two clients
    for i in range(100):
        mine = set(torch.nonzero(shares[i]).flatten().tolist())
        assert set(y_train[train[i]].tolist()) == mine == set(y_test[test[i]].tolist())
        # the same class proportions in train and test: each within rounding of its share
        n_train = torch.bincount(y_train[train[i]], minlength=10).double()
        n_test = torch.bincount(y_test[test[i]], minlength=10).double()
        want = shares[i].double() / shares[i].sum()
        assert ((n_train - sizes[i] * want).abs() < 1).all()
        assert ((n_test - 1000 * shares[i].double()).abs() <= 1).all()
    again = partition_clients(y_train, shares, seed=0, sizes=sizes)
    assert all(torch.equal(a, b) for a, b in zip(train, again, strict=True))  # seeded
    other = partition_clients(y_train, shares, seed=1, sizes=sizes)
    assert not all(torch.equal(a, b) for a, b in zip(train, other, strict=True))
    assert not torch.equal(sizes, client_sizes(Config(samples_per_client=(50, 200), seed=1), 100))
    # without sizes, the whole shares, as before
    whole = partition_clients(y_train, shares, seed=0)
    assert sum(len(p) for p in whole) == len(y_train)


def test_sized_partition_errors_name_the_values():
    y = torch.arange(10).repeat(20)  # 20 examples per class
    shares = class_shares(5, 10, 2, seed=0)
    with pytest.raises(ValueError, match=r"class \d has 20 examples, but the clients' sizes"):
        partition_clients(y, shares, sizes=[100] * 5)
    with pytest.raises(ValueError, match="sizes has 3 entries for 5 clients"):
        partition_clients(y, shares, sizes=[1, 2, 3])
    with pytest.raises(ValueError, match="sizes must be >= 0, got -1"):
        partition_clients(y, shares, sizes=[1, 2, 3, 4, -1])


def test_recipe_few_shot_split_on_digits():
    from hyperloom.recipes.federated.setup import Config, load_clients

    config = Config(
        dataset="digits", num_clients=20, new_clients=2, classes_per_client=3,
        samples_per_client=(20, 40), seed=5,
    )  # fmt: skip
    clients, _, _ = load_clients(config)
    assert len(clients) == 22
    assert all(20 <= len(c.y_train) <= 40 for c in clients)
    assert all(len(torch.unique(c.y_train)) <= 3 for c in clients)
    for c in clients:  # tested on the classes it trains on
        assert set(c.y_test.tolist()) <= set(c.y_train.tolist())
    again, _, _ = load_clients(config)
    assert all(torch.equal(a.y_train, b.y_train) for a, b in zip(clients, again, strict=True))


def test_class_shares_fifty_clients_use_every_class_evenly():
    s = class_shares(50, 10, 2, seed=0)
    assert ((s > 0).sum(0) == 10).all()  # 100 slots over 10 classes


def test_dirichlet_shares_reproducible():
    a, b = dirichlet_shares(6, 10, 0.3, seed=1), dirichlet_shares(6, 10, 0.3, seed=1)
    assert torch.equal(a, b)
    torch.testing.assert_close(a.sum(0), torch.ones(10))
    assert not torch.equal(a, dirichlet_shares(6, 10, 0.3, seed=2))


def test_fedavg_weighted_mean():
    out = fedavg([{"w": torch.zeros(3)}, {"w": torch.full((3,), 4.0)}], [3, 1])
    torch.testing.assert_close(out["w"], torch.ones(3))


def test_train_local_leaves_inputs_and_target_alone():
    net = lenet(image_size=8)
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    new, loss = train_local(net, start, x, y, steps=3, lr=0.1)
    assert loss > 0
    for n, p in net.named_parameters():
        assert torch.equal(p, start[n])
    assert any(not torch.equal(new[n], start[n]) for n in start)


def test_train_local_clips_the_gradient_norm():
    net = nn.Linear(5, 3)
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    x, y = torch.randn(16, 5) * 10, torch.randint(0, 3, (16,))
    plain = dict(steps=1, lr=1.0, momentum=0.0, weight_decay=0.0)
    free, _ = train_local(net, start, x, y, **plain)
    clipped, _ = train_local(net, start, x, y, max_grad_norm=1e-3, **plain)
    step = lambda w: torch.cat([(w[n] - start[n]).flatten() for n in start])  # noqa: E731
    assert step(free).norm() > 1e-2  # one plain SGD step moves by the gradient's norm
    torch.testing.assert_close(step(clipped).norm(), torch.tensor(1e-3))
    direction = step(free) / step(free).norm()  # the same, up to float32 cancellation:
    torch.testing.assert_close(step(clipped) / 1e-3, direction, rtol=0, atol=1e-4)
    same, _ = train_local(net, start, x, y, max_grad_norm=1e6, **plain)  # above: untouched
    torch.testing.assert_close(same, free)
    with pytest.raises(ValueError, match="max_grad_norm must be > 0 or None, got 0"):
        train_local(net, start, x, y, max_grad_norm=0, **plain)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"methods": ("pfedhn", "nope")}, "unknown methods"),
        ({"methods": ()}, "unknown methods"),
        ({"num_clients": 1}, "num_clients must be >= 2, got 1"),
        ({"clients_per_round": 11}, r"clients_per_round must be in \[1, num_clients=10\], got 11"),
        ({"rounds": 0}, "rounds must be >= 1, got 0"),
        ({"inner_steps": 0}, "inner_steps must be >= 1, got 0"),
        ({"new_clients": -1}, "new_clients must be >= 0, got -1"),
        ({"inner_clip": 0.0}, "inner_clip must be > 0 or none, got 0.0"),
        ({"eval_every": -1}, "eval_every must be >= 0, got -1"),
        ({"eval_every": 5, "engine": "flower"}, "eval_every needs engine=inprocess"),
        ({"samples_per_client": (200, 50)}, "samples_per_client must be LOW,HIGH with LOW"),
        ({"samples_per_client": (1, 2, 3)}, "samples_per_client must be LOW,HIGH"),
        ({"samples_per_client": (0, 5)}, "samples_per_client must be >= 1, got 0"),
    ],
)
def test_recipe_config_errors_name_the_option(bad, message):
    from hyperloom.recipes.federated.recipe import Config, check_config

    check_config(Config(inner_clip=5.0))  # a valid clip passes
    with pytest.raises(ValueError, match=message):
        check_config(Config(**bad))


PNG = b"\x89PNG\r\n\x1a\n"  # the first bytes of every PNG file
TINY_RUN = dict(  # a whole recipe run in seconds: digits, 4 clients (+1 new), tiny budgets
    dataset="digits",
    num_clients=4,
    new_clients=1,
    clients_per_round=2,
    inner_steps=3,
    finetune_steps=3,
    new_client_rounds=2,
    hn_hidden=16,
    hn_layers=1,
    quiet=True,
)


def test_recipe_inprocess_all_methods(tmp_path):
    from hyperloom.recipes.federated.recipe import Config, run

    out = run(Config(**TINY_RUN, rounds=3, out=str(tmp_path)))["results"]
    assert list(out) == ["pfedhn", "pfedhn-pc", "fedavg", "fedavg-ft", "local"]
    for res in out.values():
        assert len(res["client_accs"]) == 4 and len(res["new_client_accs"]) == 1
        assert all(0 <= a <= 100 for a in res["client_accs"] + res["new_client_accs"])
        assert res["skipped"] == []
    run_dir = tmp_path / next(p.name for p in tmp_path.iterdir())
    assert (run_dir / "results.json").exists()
    assert (run_dir / "clients.png").read_bytes()[:8] == PNG


def test_recipe_eval_every_records_curves_without_changing_training(tmp_path):
    from hyperloom.recipes.federated.recipe import Config, run

    kw = dict(TINY_RUN, rounds=5, methods=("pfedhn-pc", "fedavg", "fedavg-ft", "local"))
    plain = run(Config(**kw, out=str(tmp_path / "plain")))["results"]
    traced = run(Config(**kw, eval_every=2, out=str(tmp_path / "traced")))["results"]
    for name, res in traced.items():
        # evaluating along the way draws no random numbers and moves no weight
        assert res["client_accs"] == plain[name]["client_accs"]
        assert res["new_client_accs"] == plain[name]["new_client_accs"]
        if name == "fedavg-ft":  # it fine-tunes only at the end: no curve
            assert "curve" not in res
            continue
        assert [p["round"] for p in res["curve"]] == [2, 4, 5]  # and the last round
        assert res["curve"][-1]["acc"] == pytest.approx(res["acc"])  # the same final weights
    assert "curve" not in plain["local"]
    (run_dir,) = (tmp_path / "traced").iterdir()
    assert (run_dir / "curves.png").read_bytes()[:8] == PNG
    (run_dir,) = (tmp_path / "plain").iterdir()
    assert not (run_dir / "curves.png").exists()


def test_plot_clients_reads_a_results_file_without_new_clients(tmp_path):
    from hyperloom.recipes.federated.recipe import plot_clients

    # the flower engine records no new-client accuracy; results.json round-trips through JSON
    results = {
        "pfedhn": {"client_accs": [97.5, 88.0, 99.0], "new_client_accs": []},
        "local": {"client_accs": [96.0, 90.5, 98.0]},
    }
    plot_clients(json.loads(json.dumps(results)), tmp_path / "clients.png", title="t")
    assert (tmp_path / "clients.png").read_bytes()[:8] == PNG


def test_diverged_pc_client_keeps_its_head_and_is_rejected(caplog):
    from hyperloom.recipes.federated.recipe import ClientData, Config, pfedhn_client

    target = lenet(1, 8, 10)
    spec = hl.select(target, "conv*", "fc*")
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    clients = [ClientData(x, y, x, y)]
    sent = {0: {n: p.detach().clone() for n, p in target.named_parameters() if n in spec.names}}
    head = personal_weights(target, spec)
    personal = {0: dict(head)}
    cfg = Config(inner_steps=5, inner_lr=1e12, inner_momentum=0.0)  # blows up at once
    with caplog.at_level(logging.WARNING, logger="hyperloom.federated"):
        reply, new_head = pfedhn_client(target, clients, sent, personal, cfg, 1, 0)
    assert check_reply(spec, reply) is not None  # the server rejects the reply
    assert new_head is None  # the client keeps its head
    assert all(torch.equal(personal[0][n], head[n]) for n in head)  # nothing shared moved
    assert "client 0 diverged" in caplog.text
    ok, new_head = pfedhn_client(target, clients, sent, personal, Config(inner_steps=2), 2, 0)
    assert check_reply(spec, ok) is None
    assert not torch.equal(new_head["out.weight"], head["out.weight"])  # a sane round moves it
    assert all(torch.equal(personal[0][n], head[n]) for n in head)  # the caller applies it


def test_recipe_imports_without_flower():
    code = (
        "import sys, hyperloom.recipes.federated.recipe as r; "
        "print(any(m.split('.')[0] in ('flwr', 'ray') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------
# The Flower strategy without Ray, and a Flower simulation


class FakeGrid:
    """The part of Flower's Grid the strategy uses: the connected node ids."""

    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return self.nodes


@pytest.fixture
def task_identity():
    """Outside a running ServerApp, Flower's messages need a run, node and task id set."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def strategy_setup(clients_per_round=4, lr=0.05):
    from hyperloom.recipes.federated.flower_app import PFedHNStrategy

    hnet = small_hnet(num=4)
    params = [p for n, p in hnet.named_parameters() if not n.startswith("target.")]
    strategy = PFedHNStrategy(
        hnet,
        torch.optim.SGD(params, lr=lr),
        clients_per_round=clients_per_round,
        min_available_nodes=4,
        max_grad_norm=None,
    )
    return strategy, hnet, params


def reply(msg, arrays, n=10):
    from flwr.app import Message, MetricRecord, RecordDict

    from hyperloom.recipes.federated.flower_app import to_record

    content = RecordDict(
        {"arrays": to_record(arrays), "metrics": MetricRecord({"num-examples": n})}
    )
    return Message(content, reply_to=msg)


@needs_flwr
def test_strategy_update_equals_hand_vjp(task_identity):
    from flwr.app import ArrayRecord, ConfigRecord

    from hyperloom.recipes.federated.flower_app import from_record

    strategy, hnet, params = strategy_setup(clients_per_round=1)
    (msg,) = strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid([40, 10, 30, 20]))
    node = msg.metadata.dst_node_id
    slot = strategy.slots[node]
    assert strategy.slots == {10: 0, 20: 1, 30: 2, 40: 3}  # sorted node ids
    sent = from_record(msg.content["arrays"])
    for name, t in hnet.generate(task=torch.tensor(slot)).items():
        torch.testing.assert_close(sent[name], t.detach())
    returned = {n: v + 0.1 * torch.randn_like(v) for n, v in sent.items()}
    before = [p.detach().clone() for p in params]
    want = hand_vjp(hnet, slot, returned, params)
    _, metrics = strategy.aggregate_train(1, [reply(msg, returned)])
    assert metrics["num-updates"] == 1
    for p, b, g in zip(params, before, want, strict=True):
        torch.testing.assert_close(p.detach(), b - 0.05 * g, rtol=1e-5, atol=1e-6)


@needs_flwr
def test_strategy_skips_faults_and_rejects_bad_replies(task_identity, caplog):
    from flwr.app import ArrayRecord, ConfigRecord, Error, Message

    from hyperloom.recipes.federated.flower_app import from_record

    strategy, hnet, params = strategy_setup(clients_per_round=4)
    msgs = list(strategy.configure_train(3, ArrayRecord(), ConfigRecord(), FakeGrid([1, 2, 3, 4])))
    by_node = {m.metadata.dst_node_id: m for m in msgs}
    sent = {node: from_record(m.content["arrays"]) for node, m in by_node.items()}
    bad_names = {("renamed." + n): v for n, v in sent[1].items()}
    bad_shape = {**sent[2], "2.bias": torch.zeros(5)}
    not_finite = {**sent[3], "0.weight": torch.full_like(sent[3]["0.weight"], float("nan"))}
    replies = [
        reply(by_node[1], bad_names),
        reply(by_node[2], bad_shape),
        reply(by_node[3], not_finite),
        Message(Error(code=0, reason="client crashed"), reply_to=by_node[4]),
    ]
    before = {n: p.detach().clone() for n, p in hnet.named_parameters()}
    with caplog.at_level(logging.WARNING, logger="hyperloom.federated"):
        _, metrics = strategy.aggregate_train(3, replies)
    assert metrics["num-updates"] == 0
    for n, p in hnet.named_parameters():
        assert torch.equal(p, before[n]), n
    reasons = {s["node"]: s["reason"] for s in strategy.skipped}
    assert "unexpected" in reasons[1] or "missing" in reasons[1]
    assert "shape" in reasons[2]
    assert "non-finite" in reasons[3]
    assert "client crashed" in reasons[4]
    for node in (1, 2, 3, 4):
        assert f"skipped node {node}" in caplog.text

    # Round 4: one good reply, two nodes never answer (timed out or dropped): only node 1 counts.
    msgs = list(strategy.configure_train(4, ArrayRecord(), ConfigRecord(), FakeGrid([1, 2, 3, 4])))
    by_node = {m.metadata.dst_node_id: m for m in msgs}
    good = {n: v + 0.05 for n, v in from_record(by_node[1].content["arrays"]).items()}
    want = hand_vjp(hnet, strategy.slots[1], good, params)
    before = [p.detach().clone() for p in params]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hyperloom.federated"):
        _, metrics = strategy.aggregate_train(
            4, [reply(by_node[1], good), reply(by_node[2], {"x": torch.zeros(1)})]
        )
    assert metrics["num-updates"] == 1
    for p, b, g in zip(params, before, want, strict=True):
        torch.testing.assert_close(p.detach(), b - 0.05 * g, rtol=1e-5, atol=1e-6)
    assert "no reply (timed out or dropped out)" in caplog.text
    late = [s for s in strategy.skipped if s["round"] == 4]
    assert {s["node"] for s in late} == {2, 3, 4}


@needs_flwr
def test_flower_simulation_end_to_end(tmp_path):
    from hyperloom.recipes.federated.flower_app import simulate
    from hyperloom.recipes.federated.recipe import Config

    cfg = Config(**dict(TINY_RUN, new_clients=0), rounds=2, out=str(tmp_path))
    res = simulate(cfg, "pfedhn-pc")["pfedhn-pc"]
    assert res["engine"] == "flower"
    assert sorted(res["partitions"]) == [0, 1, 2, 3]  # every SuperNode evaluated
    assert all(0 <= a <= 100 for a in res["client_accs"])
    assert res["skipped"] == []
    assert list(tmp_path.glob("*-federated-flower-pfedhn-pc/results.json"))


def test_plot_curves_draws_only_the_methods_with_a_curve(tmp_path, monkeypatch):
    import matplotlib.axes

    from hyperloom.recipes.federated.recipe import plot_curves

    drawn = []
    real_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "plot",
        lambda ax, *a, **kw: drawn.append(kw.get("label")) or real_plot(ax, *a, **kw),
    )
    results = {
        "pfedhn": {"curve": [{"round": 5, "acc": 60.0}, {"round": 10, "acc": 80.0}]},
        "fedavg-ft": {"client_accs": [90.0]},  # fine-tuned at the end only: no curve
    }
    plot_curves(results, tmp_path / "curves.png", title="t")
    assert drawn == ["pfedhn"]
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG


# --------------------------------------------------------------------------------------------
# Hostile and faulty clients (issue 19)


def test_check_reply_checks_finiteness_after_the_cast_and_the_trust_bound():
    spec = hl.select(nn.Linear(3, 2))
    sent = {"weight": torch.ones(2, 3), "bias": torch.ones(2)}
    huge64 = {"weight": torch.full((2, 3), 1e300, dtype=torch.float64), "bias": torch.ones(2)}
    assert "6 non-finite values of 6 (as float32)" in check_reply(spec, huge64)
    huge32 = {"weight": torch.full((2, 3), 3e38), "bias": torch.ones(2)}
    assert check_reply(spec, huge32) is None  # finite: only the trust bound can refuse it
    assert "exceeds the trust bound 10" in check_reply(spec, huge32, sent=sent, trust_bound=10)
    honest = {n: t + 0.1 for n, t in sent.items()}
    assert check_reply(spec, honest, sent=sent, trust_bound=10) is None
    assert "not a string" in check_reply(spec, {0: torch.zeros(2, 3), "bias": torch.zeros(2)})


def test_pfedhn_step_validates_as_check_reply_does():
    hnet = small_hnet()
    opt = torch.optim.SGD(hnet.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in hnet.named_parameters()}
    good = moved_weights(hnet, 1)
    bad = [
        ({**good, "2.bias": torch.zeros(5)}, "shape"),
        ({**good, "2.bias": torch.tensor([float("nan"), 0.0])}, "non-finite"),
        ({**good, "2.bias": torch.tensor([1e300, 0.0], dtype=torch.float64)}, "non-finite"),
        ({k: torch.full_like(v, 3e38) for k, v in good.items()}, "gradient norm|trust bound"),
    ]
    for reply, reason in bad:
        with pytest.raises(ValueError, match=f"refused the .*client.* {reason}|{reason}"):
            pfedhn_step(hnet, reply, opt, task=1, max_grad_norm=None, trust_bound=None)
    with pytest.raises(ValueError, match="trust bound"):
        pfedhn_step(hnet, {k: v * 100 for k, v in good.items()}, opt, task=1, trust_bound=10.0)
    with pytest.raises(ValueError, match="max_grad_norm must be > 0 or None, got -1"):
        pfedhn_step(hnet, good, opt, task=1, max_grad_norm=-1)
    for n, p in hnet.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None, n


def test_idle_embeddings_step_moves_every_row_as_pfedhns_code():
    hnet = small_hnet(num=3)
    rows = hnet.conditioner.rows
    for idle, moves in (("skip", False), ("step", True)):
        opt = torch.optim.SGD(hnet.parameters(), lr=0.1, weight_decay=0.5)
        before = rows[2].detach().clone()
        pfedhn_step(hnet, moved_weights(hnet, 0), opt, task=0, idle=idle)
        assert (not torch.equal(rows[2], before)) is moves, idle
        if moves:  # a zero gradient: only the weight decay acts on it
            torch.testing.assert_close(rows[2].detach(), before * (1 - 0.1 * 0.5))


POISONS = {
    "float64 1e300": lambda w: {
        k: torch.full_like(v, 1e300, dtype=torch.float64) for k, v in w.items()
    },
    "float32 3e38": lambda w: {k: torch.full_like(v, 3e38) for k, v in w.items()},
}


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_poisoned_client_among_honest_ones_inprocess(tmp_path, monkeypatch, poison):
    from hyperloom.recipes.federated import recipe

    honest_client = recipe.pfedhn_client

    def run_with(client_zero):
        def client(target, clients, sent, personal, config, rnd, c):
            reply, head = honest_client(target, clients, sent, personal, config, rnd, c)
            return client_zero(reply, head) if c == 0 else (reply, head)

        monkeypatch.setattr(recipe, "pfedhn_client", client)
        cfg = recipe.Config(**TINY_RUN, rounds=4, methods=("pfedhn",), out=str(tmp_path))
        return recipe.run(cfg)["results"]["pfedhn"]

    poisoned = run_with(lambda reply, head: (POISONS[poison](reply), head))
    dropped = run_with(lambda reply, head: None)  # client 0 never answers
    assert any(s["client"] == 0 for s in poisoned["skipped"])
    assert all(s["client"] == 0 for s in poisoned["skipped"])  # every honest reply was used
    assert all(math.isfinite(a) for a in poisoned["client_accs"])
    # the server ignored the poison exactly as a silent client: every accuracy is the same
    assert poisoned["client_accs"] == dropped["client_accs"]
    assert poisoned["new_client_accs"] == dropped["new_client_accs"]


def test_timed_out_client_is_discarded_and_touches_nothing_shared():
    from hyperloom.recipes.federated.recipe import ClientData, Config, pfedhn_client

    torch.manual_seed(0)
    target = lenet(1, 8, 10)
    spec = hl.select(target, "conv*", "fc*")
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    clients = [ClientData(x, y, x, y), ClientData(x.flip(0), y.flip(0), x, y)]
    theta = {n: p.detach().clone() for n, p in target.named_parameters() if n in spec.names}
    sent = {0: theta, 1: {n: t + 0.01 for n, t in theta.items()}}
    head = personal_weights(target, spec)
    personal = {0: dict(head), 1: dict(head)}
    fast, slow = Config(inner_steps=10), Config(inner_steps=2000)
    alone, _ = pfedhn_client(target, clients, sent, personal, fast, 1, 1)
    import threading

    slow_done = threading.Event()

    def work(c):
        if c == 1:
            return pfedhn_client(target, clients, sent, personal, fast, 1, c)
        try:  # runs on beside client 1 after its time-out
            return pfedhn_client(target, clients, sent, personal, slow, 1, c)
        finally:
            slow_done.set()

    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    r = collect_replies([0, 1], work, timeout=2.0, round_=1)
    assert set(r.ok) == {1} and "timed out" in r.skipped[0]
    assert not slow_done.is_set()  # client 0 was still training while client 1 trained
    assert slow_done.wait(120)
    reply, _ = r.ok[1]
    for n in reply:  # trained beside the timed-out client, as if alone
        torch.testing.assert_close(reply[n], alone[n], rtol=0, atol=0)
    for n, p in target.named_parameters():
        assert torch.equal(p, before[n]), n
    assert all(torch.equal(personal[0][n], head[n]) for n in head)


@needs_flwr
@pytest.mark.parametrize("poison", sorted(POISONS))
def test_strategy_poisoned_node_among_honest_ones(task_identity, poison):
    from flwr.app import ArrayRecord, ConfigRecord

    from hyperloom.recipes.federated.flower_app import from_record

    def one_round(with_poison):
        torch.manual_seed(0)
        strategy, hnet, _params = strategy_setup(clients_per_round=4)
        strategy.trust_bound = 10.0
        msgs = list(
            strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid([1, 2, 3, 4]))
        )
        by_node = {m.metadata.dst_node_id: m for m in msgs}
        sent = {node: from_record(m.content["arrays"]) for node, m in by_node.items()}
        replies = []
        for node in (1, 2, 3, 4):
            w = {n: v + 0.01 * node for n, v in sent[node].items()}
            if node == 2:
                if not with_poison:
                    continue
                w = POISONS[poison](w)
            replies.append(reply(by_node[node], w))
        _, metrics = strategy.aggregate_train(1, replies)
        return hnet, metrics, strategy

    hnet, metrics, strategy = one_round(True)
    clean, clean_metrics, _ = one_round(False)
    assert metrics["num-updates"] == clean_metrics["num-updates"] == 3
    assert [s["node"] for s in strategy.skipped] == [2]
    for (n, p), q in zip(hnet.named_parameters(), clean.parameters(), strict=True):
        assert torch.isfinite(p).all(), n
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@needs_flwr
def test_strategy_applies_one_reply_per_node_and_round(task_identity):
    from flwr.app import ArrayRecord, ConfigRecord

    from hyperloom.recipes.federated.flower_app import from_record

    def run(copies):
        torch.manual_seed(0)
        strategy, _hnet, params = strategy_setup(clients_per_round=1)
        (msg,) = strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid([1, 2, 3, 4]))
        w = {n: v + 0.1 for n, v in from_record(msg.content["arrays"]).items()}
        _, metrics = strategy.aggregate_train(1, [reply(msg, w) for _ in range(copies)])
        return params, metrics, strategy

    once, m1, _ = run(1)
    thrice, m3, strategy = run(3)
    assert m1["num-updates"] == m3["num-updates"] == 1
    assert sum("second reply" in s["reason"] for s in strategy.skipped) == 2
    for a, b in zip(once, thrice, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
