"""pFedHN as a Flower app: a message-API ``Strategy``, a ``ClientApp`` and a ``ServerApp``.

The strategy's global state is the hypernetwork (:class:`PFedHNStrategy` holds it and its
optimizer); each sampled node receives the weights generated from its own embedding, trains
them and replies with them, and the server step is :func:`hyperloom.federated.pfedhn_step`.
The baselines use Flower's own :class:`flwr.serverapp.strategy.FedAvg`.

The same two apps run in Flower's simulation engine (:func:`simulate`, used by ``hyperloom
train federated --engine flower``) and, unchanged, on a SuperLink with SuperNodes on several
machines (``flwr run``; see docs/federated.md). Their options are the recipe's
:class:`~hyperloom.recipes.federated.recipe.Config` fields, read from the run config
(``[tool.flwr.app.config]`` in the Flower App's pyproject.toml, or ``flwr run --run-config``),
plus ``method`` (``pfedhn``, ``pfedhn-pc`` or ``fedavg``). Each SuperNode names its data
partition with ``--node-config "partition-id=I num-partitions=N"`` (the simulation engine sets
these itself).

Telemetry is switched off here (``FLWR_TELEMETRY_ENABLED=0``, set before Flower is imported,
unless the environment already sets it): nothing should leave the machines but the model
updates the federation exists to exchange.
"""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning

import functools
import json
import logging
import math
import random
import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Strategy
from torch import Tensor

from ...conditioning import TaskEmbedding
from ...federated import check_reply, evaluate, pfedhn_step, train_local
from ...hypernet import HyperNetwork
from ..runs import make_run_dir, write_json
from .setup import (
    ClientData,
    Config,
    build_hypernet,
    client_seed,
    config_from_mapping,
    dataset_geometry,
    diverged,
    inner,
    lenet_target,
    load_clients,
    server_optimizer,
)

LOGGER = logging.getLogger("hyperloom.federated")

FLOWER_METHODS = ("pfedhn", "pfedhn-pc", "fedavg")
"""What the Flower ServerApp runs (``fedavg`` also reports the fine-tuned ``fedavg-ft``)."""


# --------------------------------------------------------------------------------------------
# Records <-> tensors


def to_record(weights: dict[str, Tensor]) -> ArrayRecord:
    """``name -> tensor`` as an ArrayRecord (detached, on the CPU)."""
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in weights.items()})


def from_record(record: ArrayRecord) -> dict[str, Tensor]:
    """An ArrayRecord as ``name -> float tensor`` (NumPy arrays, so no Flower torch check)."""
    return {k: torch.from_numpy(a.numpy().copy()) for k, a in record.items()}


# --------------------------------------------------------------------------------------------
# The strategy


class PFedHNStrategy(Strategy):
    """pFedHN on Flower's message API; the global state is the hypernetwork.

    Each node gets an embedding row the first time it is seen (in sorted node-id order for the
    nodes connected at the first round, then in order of appearance; rows are added to the
    :class:`~hyperloom.TaskEmbedding` and to the optimizer as needed). ``configure_train`` sends
    each sampled node the weights generated from its row; ``aggregate_train`` checks every reply
    (:func:`hyperloom.federated.check_reply`, with the trust bound against what that node was
    sent) and applies one server step per valid reply, at most one per node and round.
    Nodes that reply with an error, or do not reply in time (Flower's ``send_and_receive``
    timeout) or drop out, are skipped and logged; invalid, unsolicited and duplicate replies are
    rejected, logged, and change nothing.

    Args:
        hnet: the hypernetwork (its conditioner a ``TaskEmbedding``).
        optimizer: the server optimizer on the hypernetwork's parameters and embeddings.
        clients_per_round: nodes sampled per training round.
        min_available_nodes: wait for this many connected nodes before sampling.
        max_grad_norm: server gradient clipping (``None``: none).
        trust_bound: refuse replies whose update norm exceeds this many times the norm of the
            weights sent (``None``: no bound).
        idle: what the server step does to embeddings no reply reached
            (:func:`hyperloom.federated.pfedhn_step`).
        evaluate_rounds: rounds after which every node evaluates its personal model.
        seed: seed of the node sampling.
        personal_head: pFedHN-PC (nodes keep the non-generated tensors; for the log only).
    """

    def __init__(
        self,
        hnet: HyperNetwork,
        optimizer: torch.optim.Optimizer,
        *,
        clients_per_round: int = 1,
        min_available_nodes: int = 2,
        max_grad_norm: float | None = 50.0,
        trust_bound: float | None = None,
        idle: str = "skip",
        evaluate_rounds: Iterable[int] = (),
        seed: int = 0,
        personal_head: bool = False,
    ) -> None:
        self.hnet = hnet
        self.optimizer = optimizer
        self.clients_per_round = clients_per_round
        self.min_available_nodes = min_available_nodes
        self.max_grad_norm = max_grad_norm
        self.trust_bound = trust_bound
        self.idle = idle
        self.sent_weights: dict[int, dict[int, dict[str, Tensor]]] = {}
        self.evaluate_rounds = set(evaluate_rounds)
        self.personal_head = personal_head
        self.rng = random.Random(seed)
        self.slots: dict[int, int] = {}
        self.sent: dict[int, set[int]] = {}
        self.skipped: list[dict[str, Any]] = []
        self.evaluations: dict[int, dict[int, dict[str, float]]] = {}

    def summary(self) -> None:
        LOGGER.info(
            "pFedHN%s: %d clients per round, hypernetwork of %d parameters, %d floats per message",
            "-PC" if self.personal_head else "",
            self.clients_per_round,
            sum(p.numel() for g in self.optimizer.param_groups for p in g["params"]),
            self.hnet.spec.numel,
        )

    def slot(self, node: int) -> int:
        """The embedding row of ``node`` (a new row for a node seen for the first time)."""
        if node not in self.slots:
            emb = self.hnet.conditioner
            if not isinstance(emb, TaskEmbedding):
                raise TypeError(
                    f"PFedHNStrategy needs a TaskEmbedding conditioner, got {type(emb).__name__}"
                )
            if len(self.slots) >= emb.num:
                (row,) = emb.add(1)
                self.optimizer.add_param_group({"params": [emb.rows[row]]})
            self.slots[node] = len(self.slots)
        return self.slots[node]

    def _nodes(self, grid: Grid) -> list[int]:
        while len(nodes := sorted(grid.get_node_ids())) < self.min_available_nodes:
            LOGGER.info("waiting for nodes: %d of %d", len(nodes), self.min_available_nodes)
            time.sleep(1.0)
        for node in nodes:
            self.slot(node)
        return nodes

    def _messages(
        self, nodes: list[int], config: ConfigRecord, server_round: int, kind: str
    ) -> list[Message]:
        config["server-round"] = server_round
        messages = []
        for node in nodes:
            with torch.no_grad():
                theta = self.hnet.generate(task=torch.tensor(self.slot(node)))
            if kind == MessageType.TRAIN:  # what the trust bound compares the reply with
                self.sent_weights.setdefault(server_round, {})[node] = theta
            content = RecordDict({"arrays": to_record(theta), "config": config})
            messages.append(Message(content=content, dst_node_id=node, message_type=kind))
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self._nodes(grid)
        sampled = self.rng.sample(nodes, min(self.clients_per_round, len(nodes)))
        self.sent[server_round] = set(sampled)
        return self._messages(sampled, config, server_round, MessageType.TRAIN)

    def _skip(self, server_round: int, node: int, reason: str) -> None:
        LOGGER.warning("round %d: skipped node %d: %s", server_round, node, reason)
        self.skipped.append({"round": server_round, "node": node, "reason": reason})

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        seen, moved = set(), []
        sent = self.sent_weights.pop(server_round, {})
        for msg in replies:
            node = msg.metadata.src_node_id
            if node not in self.sent.get(server_round, ()):
                self._skip(server_round, node, "replied without being sampled this round")
                continue
            if node in seen:
                self._skip(server_round, node, "rejected: a second reply in the same round")
                continue
            seen.add(node)
            if msg.has_error():
                self._skip(server_round, node, f"failed: {msg.error.reason}")
                continue
            record = msg.content.array_records.get("arrays")
            if record is None:
                self._skip(server_round, node, "rejected: the reply has no 'arrays' record")
                continue
            try:
                weights = from_record(record)
            except Exception as e:  # a malformed array must not stop the round
                self._skip(server_round, node, f"rejected: unreadable arrays ({e})")
                continue
            reason = check_reply(
                self.hnet.spec, weights, sent=sent.get(node), trust_bound=self.trust_bound
            )
            if reason is not None:
                self._skip(server_round, node, f"rejected: {reason}")
                continue
            try:
                moved.append(
                    pfedhn_step(
                        self.hnet,
                        weights,
                        self.optimizer,
                        task=self.slot(node),
                        max_grad_norm=self.max_grad_norm,
                        trust_bound=self.trust_bound,
                        idle=self.idle,
                    )
                )
            except ValueError as e:
                self._skip(server_round, node, f"rejected: {e}")
        for node in sorted(self.sent.get(server_round, set()) - seen):
            self._skip(server_round, node, "no reply (timed out or dropped out)")
        metrics = MetricRecord({"num-updates": len(moved)})
        if moved:
            metrics["mean-update-norm"] = sum(moved) / len(moved)
        return None, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if server_round not in self.evaluate_rounds:
            return []
        return self._messages(self._nodes(grid), config, server_round, MessageType.EVALUATE)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        found = record_evaluations(replies, server_round, self._skip)
        self.evaluations[server_round] = found
        return mean_metrics(found)


def record_evaluations(replies: Iterable[Message], server_round: int, skip: Any) -> dict:
    """``node -> metrics`` of the evaluation replies without errors (the others are skipped)."""
    found: dict[int, dict[str, float]] = {}
    for msg in replies:
        node = msg.metadata.src_node_id
        if msg.has_error():
            skip(server_round, node, f"evaluation failed: {msg.error.reason}")
            continue
        metrics = msg.content.metric_records.get("metrics")
        if metrics is None:
            skip(server_round, node, "evaluation reply has no 'metrics' record")
            continue
        found[node] = {k: float(v) for k, v in metrics.items()}  # type: ignore[arg-type]
    return found


def mean_metrics(found: dict[int, dict[str, float]]) -> MetricRecord | None:
    """Unweighted means over clients of their accuracies."""
    if not found:
        return None
    keys = [k for k in next(iter(found.values())) if k.startswith("accuracy")]
    return MetricRecord({k: sum(m[k] for m in found.values()) / len(found) for k in keys})


class FinalEvalFedAvg(FedAvg):
    """Flower's FedAvg that evaluates only in ``evaluate_rounds`` and keeps each reply."""

    def __init__(self, *, evaluate_rounds: Iterable[int] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.evaluate_rounds = set(evaluate_rounds)
        self.evaluations: dict[int, dict[int, dict[str, float]]] = {}
        self.skipped: list[dict[str, Any]] = []

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if server_round not in self.evaluate_rounds:
            return []
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)

        def skip(rnd: int, node: int, reason: str) -> None:
            LOGGER.warning("round %d: skipped node %d: %s", rnd, node, reason)
            self.skipped.append({"round": rnd, "node": node, "reason": reason})

        self.evaluations[server_round] = record_evaluations(replies, server_round, skip)
        return super().aggregate_evaluate(server_round, replies)


# --------------------------------------------------------------------------------------------
# The apps


def app_config(context: Context, overrides: dict[str, Any] | None) -> tuple[Config, str]:
    """The recipe config and method from Flower's run config, with ``overrides`` on top."""
    values = {**dict(context.run_config), **(overrides or {})}
    method = str(values.get("method", "pfedhn"))
    if method not in FLOWER_METHODS:
        raise ValueError(f"method {method!r} does not run on Flower; choose from {FLOWER_METHODS}")
    return config_from_mapping(values), method


@functools.lru_cache(maxsize=2)
def _clients(config_key: str) -> tuple[list[ClientData], int, tuple[int, ...]]:
    return load_clients(config_from_mapping(json.loads(config_key)))


def _config_int(msg: Message, key: str) -> int:
    """The integer ``key`` of a message's ``"config"`` record (0 when absent)."""
    value = msg.content.config_records["config"].get(key, 0)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"config value {key!r} must be an integer, got {value!r}")
    return int(value)


def _partition_id(context: Context) -> int:
    """The ``partition-id`` of this node's node config, as an int."""
    value = context.node_config["partition-id"]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"partition-id must be an integer, got {value!r}")
    return int(value)


def node_data(context: Context, config: Config) -> tuple[ClientData, int, tuple[int, ...]]:
    """This node's partition (``partition-id`` of its node config), loaded once per process."""
    if "partition-id" not in context.node_config:
        raise ValueError(
            "this SuperNode has no 'partition-id' in its node config; start it with "
            '--node-config "partition-id=I num-partitions=N"'
        )
    pid = _partition_id(context)
    clients, num_classes, shape = _clients(json.dumps(asdict(config), sort_keys=True))
    if not 0 <= pid < len(clients):
        raise ValueError(f"partition-id {pid} is outside [0, {len(clients)})")
    return clients[pid], num_classes, shape


def make_client_app(overrides: dict[str, Any] | None = None) -> ClientApp:
    """The ClientApp: trains the received weights for ``inner_steps`` and replies with them.

    In pFedHN-PC the tensors the server does not send (the classifier head) live in the node's
    ``context.state`` between rounds and never leave it. For ``evaluate`` messages it tests the
    received (and personal) weights on its test split and, when the config asks for
    ``finetune-steps``, also after fine-tuning them (FedAvg + FT).
    """
    app = ClientApp()

    def personal_state(context: Context, target: Any, received: dict[str, Tensor]) -> dict:
        """pFedHN-PC's head: from the node's state, or the target's own tensors at first."""
        if "personal" in context.state.array_records:
            return from_record(context.state.array_records["personal"])
        return {n: p.detach().clone() for n, p in target.named_parameters() if n not in received}

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config, _ = app_config(context, overrides)
        data, num_classes, shape = node_data(context, config)
        pid = _partition_id(context)
        rnd = _config_int(msg, "server-round")
        torch.manual_seed(client_seed(config, rnd, pid))
        target = lenet_target(num_classes, shape)
        received = from_record(msg.content.array_records["arrays"])
        personal = personal_state(context, target, received)
        new, loss = train_local(
            target,
            {**received, **personal},
            data.x_train,
            data.y_train,
            steps=config.inner_steps,
            seed=client_seed(config, rnd, pid),
            **inner(config),
        )
        if personal and not diverged(new, pid, rnd):  # a diverged round keeps the old head
            context.state["personal"] = to_record({n: new[n] for n in personal})
        metrics = MetricRecord({"num-examples": len(data.y_train), "train-loss": loss})
        reply = RecordDict({"arrays": to_record({n: new[n] for n in received}), "metrics": metrics})
        return Message(reply, reply_to=msg)

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        config, _ = app_config(context, overrides)
        data, num_classes, shape = node_data(context, config)
        pid = _partition_id(context)
        torch.manual_seed(client_seed(config, -1, pid))
        target = lenet_target(num_classes, shape)
        received = from_record(msg.content.array_records["arrays"])
        weights = {**received, **personal_state(context, target, received)}
        _, acc, n = evaluate(target, weights, data.x_test, data.y_test)
        metrics = MetricRecord({"num-examples": n, "accuracy": acc, "partition-id": pid})
        steps = _config_int(msg, "finetune-steps")
        if steps > 0:
            tuned, _ = train_local(
                target,
                weights,
                data.x_train,
                data.y_train,
                steps=steps,
                seed=client_seed(config, -1, pid),
                **inner(config),
            )
            metrics["accuracy-ft"] = evaluate(target, tuned, data.x_test, data.y_test)[1]
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def make_server_app(
    overrides: dict[str, Any] | None = None, sink: dict[str, Any] | None = None
) -> ServerApp:
    """The ServerApp: builds the strategy for the run config's ``method`` and runs it.

    It writes ``results.json`` (per-node accuracies, skipped nodes) into a new run folder under
    the config's ``out``, and also puts the results into ``sink`` when one is given (how
    :func:`simulate` gets them back).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config, method = app_config(context, overrides)
        n, k = config.num_clients, config.clients_per_round
        torch.manual_seed(config.seed)
        random.seed(config.seed)  # Flower's FedAvg samples nodes with the random module
        target = lenet_target(*dataset_geometry(config))  # the server needs no data
        last = {config.rounds}
        train_config = ConfigRecord({"inner-steps": config.inner_steps})
        if method == "fedavg":
            strategy: Strategy = FinalEvalFedAvg(
                fraction_train=k / n,
                min_train_nodes=k,
                min_evaluate_nodes=n,
                min_available_nodes=n,
                evaluate_rounds=last,
            )
            initial = to_record(dict(target.named_parameters()))
            evaluate_config = ConfigRecord({"finetune-steps": config.finetune_steps})
        else:
            hnet = build_hypernet(config, target, personal_head=method == "pfedhn-pc")
            strategy = PFedHNStrategy(
                hnet,
                server_optimizer(config, hnet),
                clients_per_round=k,
                min_available_nodes=n,
                max_grad_norm=config.max_grad_norm,
                trust_bound=config.trust_bound,
                idle=config.idle_embeddings,
                evaluate_rounds=last,
                seed=config.seed,
                personal_head=method == "pfedhn-pc",
            )
            initial = ArrayRecord()  # the hypernetwork stays on the server, in the strategy
            evaluate_config = ConfigRecord()
        strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=config.rounds,
            timeout=config.client_timeout if config.client_timeout is not None else 3600.0,
            train_config=train_config,
            evaluate_config=evaluate_config,
        )
        found = strategy.evaluations.get(config.rounds, {})  # type: ignore[attr-defined]
        by_partition = sorted(found.values(), key=lambda m: m["partition-id"])
        results = {}
        names = {"accuracy": method} if method != "fedavg" else {}
        if method == "fedavg":
            names = {"accuracy": "fedavg", "accuracy-ft": "fedavg-ft"}
        for key, name in names.items():
            accs = [m[key] for m in by_partition if key in m]
            results[name] = {
                "method": name,
                "engine": "flower",
                "acc": 100 * sum(accs) / len(accs) if accs else math.nan,
                "new_client_acc": math.nan,
                "client_accs": [100 * a for a in accs],
                "new_client_accs": [],
                "partitions": [int(m["partition-id"]) for m in by_partition if key in m],
                "skipped": list(getattr(strategy, "skipped", [])),
            }
        out = make_run_dir(config.out, f"federated-flower-{method}")
        write_json(out / "results.json", {"config": asdict(config), "results": results})
        LOGGER.info("results in %s", out)
        if sink is not None:
            sink.update(results)

    return app


def simulate(config: Config, method: str) -> dict[str, dict]:
    """Run ``method`` in Flower's simulation engine with ``num_clients`` SuperNodes.

    Returns:
        ``name -> result`` (``fedavg`` also gives ``fedavg-ft``), as the recipe records them.
    """
    if method not in FLOWER_METHODS:
        raise ValueError(f"method {method!r} does not run on Flower; choose from {FLOWER_METHODS}")
    from flwr.simulation import run_simulation

    overrides = {**asdict(config), "method": method}
    sink: dict[str, Any] = {}
    run_simulation(
        server_app=make_server_app(overrides, sink),
        client_app=make_client_app(overrides),
        num_supernodes=config.num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": config.flower_cpus, "include_dashboard": False},
        },
    )
    if not sink:
        raise RuntimeError(f"the Flower simulation of {method!r} returned no results (see log)")
    return sink


server_app = make_server_app()
"""The ServerApp for ``flwr run`` (options from the run config)."""

client_app = make_client_app()
"""The ClientApp for ``flwr run`` (each SuperNode names its ``partition-id``)."""

__all__ = [
    "FLOWER_METHODS",
    "FinalEvalFedAvg",
    "PFedHNStrategy",
    "client_app",
    "from_record",
    "make_client_app",
    "make_server_app",
    "server_app",
    "simulate",
    "to_record",
]
