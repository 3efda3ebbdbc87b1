"""The review's illustrative example: a DNN trained directly against HyperDNNs generating it.

Chauhan et al. (2023) introduce hypernetworks with one picture: a deep network F(X; Θ) trained
directly, and the same network F(X; H(C; Φ)) whose weights Θ a hypernetwork H generates, so that
gradients flow through Θ into Φ. This recipe is that picture on real data, in two parts:

1. single task: the plain DNN against HyperDNNs with the generate-once, multiple-heads,
   chunk-wise and component-wise generators (accuracy, trainable parameters, wall time);
2. soft weight sharing: the data split into tasks, one task-conditioned hypernetwork generating
   every task's network against one separately trained network per task.

Outputs under ``runs/<timestamp>-illustrative/``: results.json, results.csv, curves.png and the
shared hypernetwork's checkpoint (``hyperloom describe``/``export`` read it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import checkpoint
from ..conditioning import TaskEmbedding
from ..data import Dataset, load_dataset, split_by_classes
from ..data.datasets import fashion_mnist_available
from ..generators import get_generator
from ..hypernet import HyperNetwork
from ..networks import build_target
from .config import check_ranges, data_dir_field, dataset_field, out_field, quiet_field, seed_field
from .distributed import Runtime, amp_field, device_field, nproc_field, runtime
from .reproduce import Recorded
from .runs import (
    Stopwatch,
    batched_accuracy,
    count_trainable,
    format_table,
    make_run_dir,
    progress,
    write_results,
)

GENERATORS = ("once", "heads", "chunked", "component")

BUDGETS = {"fashion-mnist": (3, 3), "digits": (60, 60)}
"""Epochs (single task, soft weight sharing) per dataset when ``--epochs`` is not given.

Every model gets the same number of steps. On Fashion-MNIST 3 epochs are 1,407 steps. The
1,347 training images of digits make 11 steps an epoch, and 3 epochs (33 steps) left the plain
DNN far from converged (82.4% against 92-93% for the HyperDNNs). Its test accuracy levels off
after about 60 epochs (660 steps; 78-81% after 3, 94.2-94.7% after 30, 95.6-96.0% after 60,
96.0-96.4% after 100 epochs, seeds 0-2), and the 2-class task networks after 40-50 (3 steps an
epoch), so digits gets 60 epochs for both parts.
"""


# ``hyperloom reproduce illustrative --smoke``: both parts on 200 digit images, one epoch each.
SMOKE: dict = {
    "dataset": "digits",
    "epochs": 1,
    "shared_epochs": 1,
    "max_train": 200,
    "chunk_size": 512,
    "quiet": True,
}

# The README's ``make demo`` table (Fashion-MNIST, the defaults, seed 0).
RECORDED: tuple[Recorded, ...] = (
    Recorded(
        "demo",
        {"dataset": "fashion-mnist", "quiet": True},
        {
            "plain DNN (%)": "single_task.model=plain DNN.test_acc",
            "generate-once (%)": "single_task.model=HyperDNN (once).test_acc",
            "multiple heads (%)": "single_task.model=HyperDNN (heads).test_acc",
            "chunk-wise (%)": "single_task.model=HyperDNN (chunked).test_acc",
            "component-wise (%)": "single_task.model=HyperDNN (component).test_acc",
            "5 separate DNNs (%)": "soft_weight_sharing.model=5 separate DNNs.test_acc",
            "1 shared HyperDNN (%)": (
                "soft_weight_sharing.model=1 shared HyperDNN (chunked).test_acc"
            ),
        },
        {
            0: {
                "plain DNN (%)": 84.58,
                "generate-once (%)": 85.36,
                "multiple heads (%)": 85.69,
                "chunk-wise (%)": 84.36,
                "component-wise (%)": 86.52,
                "5 separate DNNs (%)": 99.03,
                "1 shared HyperDNN (%)": 99.01,
            }
        },
        page="README.md",
    ),
)


@dataclass
class Config:
    """Options of ``hyperloom demo`` / ``hyperloom train illustrative``."""

    dataset: str = dataset_field()
    data_dir: str | None = data_dir_field()
    hidden: tuple[int, ...] = field(default=(100,), metadata={"help": "target MLP hidden sizes"})
    epochs: int | None = field(
        default=None,
        metadata={"help": "epochs of the single-task part (none: the dataset's budget, BUDGETS)"},
    )
    shared_epochs: int | None = field(
        default=None,
        metadata={"help": "epochs of the multi-task part (none: the dataset's budget, BUDGETS)"},
    )
    tasks: int = field(default=5, metadata={"help": "tasks of the soft weight sharing part"})
    batch_size: int = field(default=128, metadata={"help": "minibatch size"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (plain DNN)"})
    hnet_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (hypernetworks)"})
    cond_dim: int = field(default=32, metadata={"help": "task embedding size"})
    hnet_hidden: tuple[int, ...] = field(
        default=(32,), metadata={"help": "hidden sizes of the generators' MLP trunk"}
    )
    chunk_size: int = field(default=4096, metadata={"help": "chunk size of chunk-wise generators"})
    max_train: int | None = field(
        default=None, metadata={"help": "use at most this many training images (none: all)"}
    )
    seed: int = seed_field()
    threads: int = field(
        default=1,
        metadata={
            "help": "torch CPU threads (0: torch's default); these small models run "
            "fastest on one, with no thread synchronisation"
        },
    )
    out: str = out_field()
    quiet: bool = quiet_field()
    device: str = device_field()
    amp: str = amp_field()
    nproc: int = nproc_field()


def _generator(name: str, config: Config):
    options: dict = {"hidden": config.hnet_hidden}
    if name == "chunked":
        options["chunk_size"] = config.chunk_size
    return get_generator(name).factory(**options)


def _by_task(hnet: HyperNetwork) -> Callable[[Tensor, int], Tensor]:
    """``(x, t) -> hnet(x, task=t)``."""
    return lambda x, t: hnet(x, task=t)


def _ignoring_task(net: nn.Module) -> Callable[[Tensor, int], Tensor]:
    """``(x, t) -> net(x)``: a plain network in the loop's ``forward(x, t)`` form."""
    return lambda x, t: net(x)


def _at_task(forward: Callable[[Tensor, int], Tensor], task: int) -> Callable[[Tensor], Tensor]:
    """``x -> forward(x, task)``."""
    return lambda x: forward(x, task)


def run(config: Config) -> dict:
    check_ranges(config)
    with runtime(device=config.device, amp=config.amp) as rt:
        return _run(config, rt)


def _run(config: Config, rt: Runtime) -> dict:
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    t_start = time.perf_counter()
    data = load_dataset(config.dataset, config.data_dir)
    if config.dataset == "auto" and not fashion_mnist_available(config.data_dir):
        print("Fashion-MNIST files not found: using scikit-learn's digits instead")
    if config.max_train is not None and config.max_train < len(data.x_train):
        data = data.subset(n_train=config.max_train, seed=config.seed)
    data = rt.move(data)
    print(f"data: {data.name}, {len(data.x_train):,} train / {len(data.x_test):,} test images")
    default_epochs, default_shared = BUDGETS.get(data.name, BUDGETS["fashion-mnist"])
    epochs = config.epochs if config.epochs is not None else default_epochs
    shared_epochs = config.shared_epochs if config.shared_epochs is not None else default_shared
    per_epoch = -(-len(data.x_train) // config.batch_size)
    print(
        f"budget: {epochs} epochs = {epochs * per_epoch} steps for every single-task model, "
        f"{shared_epochs} epochs for the soft weight sharing part"
        + (f" ({data.name}'s preset)" if config.epochs is None else "")
    )
    in_features = data.x_train[0].numel()

    def make_target(num_classes: int) -> nn.Module:
        return build_target(
            "mlp", in_features=in_features, hidden=list(config.hidden), out_features=num_classes
        ).to(rt.device)

    def fit(
        name: str,
        params: list[nn.Parameter],
        lr: float,
        batches: Callable[[torch.Generator], list[list[tuple[Tensor, Tensor, int]]]],
        forward: Callable[[Tensor, int], Tensor],
        evaluate: Callable[[], float],
        epochs: int,
    ) -> dict:
        """The one training loop: Adam on the summed task losses of each step."""
        # The fused kernel updates millions of generator parameters ~3x faster on CPU.
        opt = torch.optim.Adam(params, lr=lr, fused=True)
        g = torch.Generator().manual_seed(config.seed)
        curve, taken = [], 0
        with Stopwatch() as sw:
            for epoch in range(epochs):
                steps = batches(g)
                for step in progress(
                    steps, quiet=config.quiet, desc=f"{name} {epoch + 1}/{epochs}"
                ):
                    opt.zero_grad(set_to_none=True)
                    with rt.autocast():
                        total = sum(F.cross_entropy(forward(x, t), y) for x, y, t in step)
                        loss = cast(Tensor, total) / len(step)  # a sum of tensors is one
                    loss.backward()
                    rt.sync_grads(params)  # data-parallel: the mean over every process's slice
                    opt.step()
                    taken += 1
                curve.append(evaluate())
        print(f"  {name}: {taken} steps, {sw.seconds:.1f} s, test accuracy {curve[-1]:.2f}%")
        return {"curve": curve, "seconds": sw.seconds, "steps": taken}

    def epoch_of(x: Tensor, y: Tensor, task: int) -> Callable[[torch.Generator], list]:
        def batches(g: torch.Generator) -> list[list[tuple[Tensor, Tensor, int]]]:
            order = torch.randperm(len(x), generator=g)
            return [[(x[idx], y[idx], task)] for idx in rt.shard(order.split(config.batch_size))]

        return batches

    # ---- Part 1: one task, the plain DNN against HyperDNNs --------------------------------
    single: list[dict] = []
    curves: dict[str, list[float]] = {}
    criteria: dict[str, dict] = {}
    target_params = count_trainable(make_target(data.num_classes))
    contenders: dict[str, tuple[nn.Module, Callable[[Tensor, int], Tensor]]] = {}
    plain = make_target(data.num_classes)
    contenders["plain DNN"] = (plain, lambda x, t: plain(x))
    for gname in GENERATORS:
        hnet = HyperNetwork(
            make_target(data.num_classes),
            TaskEmbedding(1, config.cond_dim),
            _generator(gname, config),
        ).to(rt.device)
        contenders[f"HyperDNN ({gname})"] = (hnet, _by_task(hnet))
        criteria[f"HyperDNN ({gname})"] = hnet.describe().to_dict()
    for name, (model, forward) in contenders.items():
        lr = config.lr if name == "plain DNN" else config.hnet_lr
        result = fit(
            name,
            list(model.parameters()),
            lr,
            epoch_of(data.x_train, data.y_train, 0),
            forward,
            partial(batched_accuracy, _at_task(forward, 0), data.x_test, data.y_test),
            epochs,
        )
        n = count_trainable(model)
        curves[name] = result["curve"]
        single.append(
            {
                "part": "single task",
                "model": name,
                "test_acc": result["curve"][-1],
                "steps": result["steps"],
                "trainable_params": n,
                "params_vs_target": n / target_params,
                "seconds": result["seconds"],
            }
        )

    # ---- Part 2: soft weight sharing across tasks ------------------------------------------
    tasks = split_by_classes(data, config.tasks)
    task_names = [" vs ".join(data.classes[c] for c in t.classes) for t in tasks]
    per_task_classes = tasks[0].num_classes
    separate_acc, separate_params, separate_seconds = [], 0, 0.0
    separate_curves = []
    for t in tasks:
        net = make_target(per_task_classes)
        result = fit(
            f"separate net {t.id}",
            list(net.parameters()),
            config.lr,
            epoch_of(t.x_train, t.y_train, t.id),
            _ignoring_task(net),
            partial(batched_accuracy, net, t.x_test, t.y_test),
            shared_epochs,
        )
        separate_acc.append(result["curve"][-1])
        separate_params += count_trainable(net)
        separate_seconds += result["seconds"]
        separate_curves.append(result["curve"])

    shared = HyperNetwork(
        make_target(per_task_classes),
        TaskEmbedding(len(tasks), config.cond_dim),
        _generator("chunked", config),
    ).to(rt.device)
    criteria["shared HyperDNN (chunked)"] = shared.describe().to_dict()

    def shared_batches(g: torch.Generator) -> list[list[tuple[Tensor, Tensor, int]]]:
        # one minibatch of every task per step, as many steps as the largest task has batches
        per_task = [epoch_of(t.x_train, t.y_train, t.id)(g) for t in tasks]
        longest = max(len(b) for b in per_task)
        return [[b[i % len(b)][0] for b in per_task] for i in range(longest)]

    def shared_eval() -> float:
        accs = [batched_accuracy(partial(shared, task=t.id), t.x_test, t.y_test) for t in tasks]
        shared_eval.per_task = accs  # type: ignore[attr-defined]
        return sum(accs) / len(accs)

    result = fit(
        "shared HyperDNN",
        list(shared.parameters()),
        config.hnet_lr,
        shared_batches,
        lambda x, t: shared(x, task=t),
        shared_eval,
        shared_epochs,
    )
    shared_acc = shared_eval.per_task  # type: ignore[attr-defined]
    curves[f"{len(tasks)} separate DNNs (mean over tasks)"] = [
        sum(c) / len(c) for c in zip(*separate_curves, strict=True)
    ]
    curves["shared HyperDNN (mean over tasks)"] = result["curve"]
    sharing = [
        {
            "part": "soft weight sharing",
            "model": f"{len(tasks)} separate DNNs",
            "test_acc": sum(separate_acc) / len(separate_acc),
            **{f"task_{i}": a for i, a in enumerate(separate_acc)},
            "trainable_params": separate_params,
            "seconds": separate_seconds,
        },
        {
            "part": "soft weight sharing",
            "model": "1 shared HyperDNN (chunked)",
            "test_acc": sum(shared_acc) / len(shared_acc),
            **{f"task_{i}": a for i, a in enumerate(shared_acc)},
            "trainable_params": count_trainable(shared),
            "seconds": result["seconds"],
        },
    ]

    # ---- Report ------------------------------------------------------------------------------
    if not rt.is_main:  # rank 0 alone prints, writes the run folder and saves the checkpoint
        return {"single_task": single, "soft_weight_sharing": sharing}
    run_dir = make_run_dir(config.out, "illustrative")
    print(f"\nSingle task ({data.name}, {epochs} epochs): test accuracy in %")
    print(format_table(single, floats="{:.2f}"))
    print(f"\nSoft weight sharing ({len(tasks)} tasks: {', '.join(task_names)}):")
    print(format_table(sharing, floats="{:.2f}"))
    print("\nThe five design criteria of each hypernetwork:")
    for name, c in criteria.items():
        print(f"  {name}")
        for key, value in c.items():
            print(f"    {key.replace('_', ' '):<20}{value}")
    write_results(
        run_dir,
        {
            "config": asdict(config),
            "dataset": data.name,
            "epochs": epochs,
            "shared_epochs": shared_epochs,
            "single_task": single,
            "soft_weight_sharing": sharing,
            "task_names": task_names,
            "criteria": criteria,
            "curves": curves,
            "separate_curves_per_task": separate_curves,
            "total_seconds": time.perf_counter() - t_start,
        },
        single + sharing,
        plot=lambda path: _plot(curves, path, data),
        plot_name="curves.png",
        table=(),  # printed above, in two parts
    )
    checkpoint.save(
        shared,
        run_dir / "shared_hypernetwork.safetensors",
        tasks=task_names,
        extra={"recipe": "illustrative", "config": asdict(config)},
    )
    print(f"\ntotal time {time.perf_counter() - t_start:.0f} s")
    print(f"run folder: {run_dir}")
    return {"run_dir": str(run_dir), "single_task": single, "soft_weight_sharing": sharing}


def _plot(curves: dict[str, list[float]], path, data: Dataset) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name, curve in curves.items():
        ax = axes[1] if ("separate" in name or "shared" in name) else axes[0]
        style = "--" if "separate" in name else "-"
        ax.plot(range(1, len(curve) + 1), curve, style, marker="o", label=name, alpha=0.85)
    axes[0].set_title(f"Single task on {data.name}: DNN vs HyperDNNs")
    axes[1].set_title("Soft weight sharing: separate DNNs vs one HyperDNN")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)
