"""Character-level language model: HyperLSTM against nn.LSTM with the same parameter count.

Ha, Dai and Le (ICLR 2017) report that a HyperLSTM, whose weights an auxiliary LSTM rescales at
every character, reaches lower bits per character than an LSTM. This recipe checks it on an
English corpus available offline: the files of Debian's ``fortunes`` package (or any text
file). Both models are ``Embedding -> recurrent layer -> Linear``; the LSTM's hidden size is
chosen so that its total parameter count matches the HyperLSTM model's as closely as possible.
They are trained in one loop on the same minibatches for the same number of steps (Adam, cosine
decay, gradient clipping), each window of ``seq_len`` characters starting from a zero state.

Validation bits per character are measured on held-out fortunes (whole fortunes, chosen at
random), in non-overlapping windows from a zero state: the same protocol for both models.

Outputs under ``runs/<timestamp>-charlm/``: results.json, curves.csv, curves.png (validation
and training bits per character against steps and against training time) and samples.txt.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..architectures import HyperLSTM
from .config import out_field, quiet_field, seed_field
from .distributed import Runtime, amp_field, device_field, nproc_field, runtime
from .reproduce import Recorded
from .runs import count_trainable, make_run_dir, progress, write_results

FORTUNES = Path("/usr/share/games/fortunes")
MODELS = ("hyperlstm", "lstm")


# ``hyperloom reproduce charlm --smoke``: both models, a few steps, on this file's own text (a
# corpus present wherever hyperloom is installed, unlike Debian's fortunes).
SMOKE: dict = {
    "text": __file__,
    "steps": 3,
    "batch_size": 4,
    "seq_len": 16,
    "hidden": 16,
    "hyper_size": 8,
    "eval_every": 2,
    "eval_windows": 4,
    "sample_chars": 10,
    "quiet": True,
}

# docs/results/architectures.md, section 1 (seed 0, 2,000 steps).
RECORDED: tuple[Recorded, ...] = (
    Recorded(
        "2000-steps",
        {"steps": 2000, "quiet": True},
        {
            "HyperLSTM val bits/char": "results.model=hyperlstm.val_bpc",
            "LSTM val bits/char": "results.model=lstm.val_bpc",
            "step time ratio": "step_time_ratio_hyperlstm_over_lstm",
        },
        {
            0: {
                "HyperLSTM val bits/char": 2.247,
                "LSTM val bits/char": 2.536,
                "step time ratio": 2.03,
            }
        },
        page="docs/results/architectures.md",
    ),
)


@dataclass
class Config:
    """Options of ``hyperloom train charlm``."""

    text: str = field(
        default="fortunes",
        metadata={"help": "'fortunes' (Debian's fortunes package files) or a text file path"},
    )
    models: str = field(
        default="both",
        metadata={"help": "which models to train", "choices": ("both", *MODELS)},
    )
    steps: int = field(default=2400, metadata={"help": "training steps (each model)"})
    batch_size: int = field(default=32, metadata={"help": "windows per minibatch"})
    seq_len: int = field(default=128, metadata={"help": "characters per window"})
    hidden: int = field(default=256, metadata={"help": "HyperLSTM main units"})
    hyper_size: int = field(default=64, metadata={"help": "HyperLSTM auxiliary LSTM units"})
    embedding_size: int = field(default=8, metadata={"help": "HyperLSTM z size (N_z)"})
    embed_dim: int = field(default=32, metadata={"help": "character embedding size"})
    lr: float = field(default=2e-3, metadata={"help": "Adam learning rate (cosine to 10%)"})
    clip: float = field(default=1.0, metadata={"help": "gradient norm clipping"})
    eval_every: int = field(default=200, metadata={"help": "steps between validation evals"})
    eval_windows: int = field(
        default=256, metadata={"help": "validation windows of the periodic evals (final: all)"}
    )
    val_fraction: float = field(default=0.05, metadata={"help": "fortunes held out"})
    sample_chars: int = field(default=300, metadata={"help": "characters sampled per model"})
    max_chars: int | None = field(
        default=None, metadata={"help": "use at most this many characters (none: all)"}
    )
    seed: int = seed_field()
    out: str = out_field()
    quiet: bool = quiet_field()
    device: str = device_field()
    amp: str = amp_field()
    nproc: int = nproc_field()


def read_corpus(text: str) -> list[str]:
    """The documents of the corpus: fortunes (``%``-separated) or paragraphs of a text file."""
    if text == "fortunes":
        if not FORTUNES.is_dir():
            raise ValueError(
                f"{FORTUNES} not found: install Debian's fortunes package or pass --text=FILE"
            )
        files = sorted(
            p for p in FORTUNES.iterdir() if p.is_file() and not p.is_symlink() and not p.suffix
        )
        docs = []
        for p in files:
            raw = p.read_text(encoding="utf-8", errors="replace")
            docs += [d.strip("\n") + "\n" for d in raw.split("\n%\n") if d.strip()]
        return docs
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"--text must be 'fortunes' or an existing file, got {text!r}")
    raw = path.read_text(encoding="utf-8", errors="replace")
    return [d.strip("\n") + "\n" for d in raw.split("\n\n") if d.strip()]


class CharModel(nn.Module):
    """``Embedding -> HyperLSTM or LSTM -> Linear``: ``(B, T)`` tokens to ``(B, T, V)`` logits."""

    def __init__(self, rnn: nn.Module, vocab: int, embed_dim: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed_dim)
        self.rnn = rnn
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)  # (B, T, E)
        if isinstance(self.rnn, nn.LSTM) and torch.is_autocast_enabled("cpu"):
            # --amp on the CPU: nn.LSTM's oneDNN kernel refuses bf16 here, so it runs in float32
            with torch.autocast("cpu", enabled=False):
                h = self.rnn(x.float())[0]
        else:
            h = self.rnn(x)[0]
        return self.head(h)  # (B, T, V)


def build_models(config: Config, vocab: int) -> dict[str, CharModel]:
    """The HyperLSTM model and the LSTM model whose parameter count is closest to it."""
    e, h = config.embed_dim, config.hidden
    hyper = CharModel(
        HyperLSTM(
            e,
            h,
            batch_first=True,
            hyper_size=config.hyper_size,
            embedding_size=config.embedding_size,
        ),
        vocab,
        e,
        h,
    )
    goal = count_trainable(hyper)

    def lstm_count(units: int) -> int:  # embedding + LSTM + head
        return vocab * e + 4 * units * (e + units) + 8 * units + units * vocab + vocab

    units = min(range(1, 8 * h), key=lambda u: abs(lstm_count(u) - goal))
    lstm = CharModel(nn.LSTM(e, units, batch_first=True), vocab, e, units)
    return {"hyperlstm": hyper, "lstm": lstm}


@torch.no_grad()
def bits_per_char(model: nn.Module, windows: Tensor, batch: int = 128) -> float:
    """Mean bits per character of ``windows`` ``(N, T + 1)``, each from a zero state."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        w = windows[i : i + batch]
        logits = model(w[:, :-1])  # (b, T, V)
        total += F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum").item()
        count += w[:, 1:].numel()
    model.train()
    return total / count / math.log(2)


@torch.no_grad()
def sample(model: CharModel, chars: list[str], prompt: str, length: int, seed: int) -> str:
    """Sample ``length`` characters after ``prompt`` (temperature 0.8, 64 characters of context).

    Each character reruns the model on the last 64 characters from a zero state, as in training
    (the HyperLSTM's auxiliary state is not carried between calls).
    """
    model.eval()
    g = torch.Generator().manual_seed(seed)
    index = {c: i for i, c in enumerate(chars)}
    tokens = [index[c] for c in prompt if c in index]
    device = model.head.weight.device
    for _ in range(length):
        logits = model(torch.tensor([tokens[-64:]], device=device))[0, -1] / 0.8
        tokens.append(int(torch.multinomial(logits.softmax(-1).cpu(), 1, generator=g)))
    model.train()
    return "".join(chars[t] for t in tokens)


def run(config: Config) -> dict:
    if config.seq_len < 2 or config.steps < 1 or config.eval_every < 1:
        raise ValueError("seq_len must be >= 2 and steps, eval_every >= 1")
    with runtime(device=config.device, amp=config.amp) as rt:
        return _run(config, rt)


def _run(config: Config, rt: Runtime) -> dict:
    torch.manual_seed(config.seed)
    docs = read_corpus(config.text)
    random.Random(config.seed).shuffle(docs)
    n_val = max(1, round(config.val_fraction * len(docs)))
    val_text, train_text = "".join(docs[:n_val]), "".join(docs[n_val:])
    if config.max_chars is not None:
        train_text = train_text[: config.max_chars]
        val_text = val_text[: max(config.max_chars // 20, 4 * config.seq_len)]
    chars = sorted(set(train_text) | set(val_text))
    index = {c: i for i, c in enumerate(chars)}
    train = torch.tensor([index[c] for c in train_text])
    val = torch.tensor([index[c] for c in val_text])
    T = config.seq_len
    n_win = (len(val) - 1) // T
    val_windows = val[: n_win * T + 1].unfold(0, T + 1, T)  # (n_win, T + 1), overlapping by 1
    g = torch.Generator().manual_seed(config.seed)
    eval_windows = val_windows[torch.randperm(n_win, generator=g)[: config.eval_windows]]
    train, val_windows, eval_windows = rt.move((train, val_windows, eval_windows))
    print(
        f"corpus: {config.text}, {len(docs):,} documents, {len(train):,} train / "
        f"{len(val):,} validation characters, vocabulary {len(chars)}"
    )

    models = {n: m.to(rt.device) for n, m in build_models(config, len(chars)).items()}
    names = list(MODELS) if config.models == "both" else [config.models]
    params = {n: count_trainable(m) for n, m in models.items()}
    opts = {n: torch.optim.Adam(models[n].parameters(), lr=config.lr) for n in names}

    def lr_at(step: int) -> float:  # cosine from lr to lr / 10
        return config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * step / config.steps)))

    curves: list[dict] = []
    step_seconds: dict[str, list[float]] = {n: [] for n in names}
    train_bpc: dict[str, list[float]] = {n: [] for n in names}
    t_start = time.perf_counter()
    for step in progress(range(1, config.steps + 1), quiet=config.quiet, desc="charlm"):
        starts = torch.randint(0, len(train) - T - 1, (config.batch_size,), generator=g)
        batch = torch.stack([train[s : s + T + 1] for s in starts.tolist()])  # (B, T + 1)
        batch = batch[rt.part(torch.arange(len(batch)))]  # this process's windows
        for name in names:  # the same minibatch for every model
            model, opt = models[name], opts[name]
            for group in opt.param_groups:
                group["lr"] = lr_at(step - 1)
            t0 = time.perf_counter()
            with rt.autocast():  # the loss in float32
                logits = model(batch[:, :-1]).float()  # (B, T, V)
                loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            rt.sync_grads(opt)  # data-parallel: the mean over processes, then clipped
            nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            opt.step()
            step_seconds[name].append(time.perf_counter() - t0)
            train_bpc[name].append(rt.average(loss.item()) / math.log(2))
        if step % config.eval_every == 0 or step == config.steps:
            for name in names:
                recent = train_bpc[name][-config.eval_every :]
                curves.append(
                    {
                        "model": name,
                        "step": step,
                        "train_seconds": sum(step_seconds[name]),
                        "train_bpc": sum(recent) / len(recent),
                        "val_bpc": bits_per_char(models[name], eval_windows),
                    }
                )

    rows: list[dict[str, Any]] = []
    for name in names:
        rows.append(
            {
                "model": name,
                "params": params[name],
                "hidden": models[name].rnn.hidden_size,
                "steps": config.steps,
                "val_bpc": bits_per_char(models[name], val_windows),
                "train_bpc_last": statistics.fmean(train_bpc[name][-config.eval_every :]),
                "train_minutes": sum(step_seconds[name]) / 60,
                "median_step_s": statistics.median(step_seconds[name]),
            }
        )
    ratio = None
    if len(names) == 2:
        ratio = statistics.median(step_seconds[names[0]]) / statistics.median(
            step_seconds[names[1]]
        )
    if not rt.is_main:  # rank 0 alone samples, prints and writes the run folder
        return {"results": rows, "curves": curves}
    run_dir = make_run_dir(config.out, "charlm")
    prompt = "The "
    samples = {n: sample(models[n], chars, prompt, config.sample_chars, config.seed) for n in names}
    (run_dir / "samples.txt").write_text("".join(f"==== {n}\n{s}\n\n" for n, s in samples.items()))
    result = {
        "config": asdict(config),
        "results": rows,
        "step_time_ratio_hyperlstm_over_lstm": ratio,
        "curves": curves,
        "vocab": len(chars),
        "train_chars": len(train),
        "val_chars": len(val),
        "val_windows": n_win,
        "wall_seconds": time.perf_counter() - t_start,
        "threads": torch.get_num_threads(),
    }
    write_results(
        run_dir,
        result,
        curves,
        csv_name="curves.csv",
        plot=lambda path: _plot(curves, names, path),
        plot_name="curves.png",
        table=rows,
    )
    if ratio is not None:
        print(f"HyperLSTM step time / LSTM step time (medians): {ratio:.2f}")
    print(run_dir)
    return result


def _plot(curves: list[dict], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        pts = [c for c in curves if c["model"] == name]
        for ax, x in zip(axes, ("step", "train_seconds"), strict=True):
            xs = [c[x] / (60 if x == "train_seconds" else 1) for c in pts]
            (line,) = ax.plot(xs, [c["val_bpc"] for c in pts], label=f"{name} validation")
            ax.plot(
                xs,
                [c["train_bpc"] for c in pts],
                "--",
                color=line.get_color(),
                alpha=0.6,
                label=f"{name} training",
            )
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("training time (minutes, this model only)")
    for ax in axes:
        ax.set_ylabel("bits per character")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Character LM: HyperLSTM vs LSTM (equal parameter count)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
