"""Attention: one token per target tensor or chunk, a transformer encoder across the tokens."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..target import TargetSpec
from .base import Generator, per_element_variance
from .registry import register_generator

OUTPUTS = {"component": "component-wise", "chunked": "chunk-wise", "heads": "multiple heads"}


@register_generator("attention")
class AttentionGenerator(Generator):
    r"""A transformer over the target's tensors (criterion 5: attention architecture).

    Every token :math:`j` is a target tensor (``output="component"`` or ``"heads"``) or a
    fixed-size chunk of the flattened weights (``output="chunked"``). Its input is its learned
    embedding plus the projected conditioning vector, :math:`t_j = e_j + W_c c`; ``depth``
    pre-norm transformer blocks (self-attention across the tokens, then a feed-forward layer)
    mix them, and a per-token readout emits the tensor or chunk:

    .. math:: \theta_j = A_{g(j)}\, \mathrm{rms}\big(\mathrm{Encoder}(t_1, \dots, t_K)_j\big),

    so the weights generated for one layer can depend on those generated for every other layer,
    which MLP trunks reading :math:`[c; e_j]` token by token cannot do. The readouts are shared as
    in the MLP generators: one per group of same-shaped tensors (``component``, tensors
    initialised to a constant grouped apart), one per tensor (``heads``) or one for every chunk
    (``chunked``). The encoder's output is RMS-normalised, as the MLP trunk's is, so hyperfan
    initialisation sets the generated variance for every context.

    Args:
        spec: the target spec (the tensors to generate).
        cond_dim: conditioning size (or ``None``).
        output: ``"component"``, ``"heads"`` or ``"chunked"``.
        chunk_size: numbers per chunk (``output="chunked"`` only).
        token_dim: width of the tokens.
        depth: transformer blocks (0: no attention, each token read on its own).
        num_heads: attention heads (must divide ``token_dim``).
        ff_dim: hidden size of the feed-forward layers.

    Example:
        >>> from hyperloom import select
        >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> gen = AttentionGenerator(select(net), 4, token_dim=16, num_heads=2)
        >>> gen.num_tokens, gen(torch.randn(3, 4))["2.weight"].shape
        (4, torch.Size([3, 2, 8]))
    """

    strategy = "component-wise"
    architecture = "attention"

    def __init__(
        self,
        spec: TargetSpec,
        cond_dim: int,
        *,
        output: str = "component",
        chunk_size: int = 1024,
        token_dim: int = 32,
        depth: int = 2,
        num_heads: int = 4,
        ff_dim: int = 64,
    ) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {list(OUTPUTS)}, got {output!r}")
        for name, value in (("chunk_size", chunk_size), ("token_dim", token_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if depth < 0 or num_heads < 1 or ff_dim < 1:
            raise ValueError(
                f"need depth >= 0, num_heads >= 1, ff_dim >= 1; got {depth}, {num_heads}, {ff_dim}"
            )
        if token_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide token_dim={token_dim}")
        super().__init__(
            spec,
            cond_dim,
            {
                "output": output,
                "chunk_size": chunk_size,
                "token_dim": token_dim,
                "depth": depth,
                "num_heads": num_heads,
                "ff_dim": ff_dim,
            },
        )
        self.strategy = OUTPUTS[output]  # type: ignore[misc]

    @property
    def num_tokens(self) -> int:
        """Tokens the encoder attends across: tensors, or chunks covering the spec."""
        spec = self.spec
        if self.options["output"] == "chunked":
            return -(-spec.numel // self.options["chunk_size"])
        return len(spec)

    def _build(self) -> None:
        o = self.options
        d = o["token_dim"]
        self.token_embeddings = nn.Parameter(torch.randn(self.num_tokens, d))
        self.cond_proj = nn.Linear(self.cond_dim, d)
        self.blocks = nn.ModuleList(
            _Block(d, o["num_heads"], o["ff_dim"]) for _ in range(o["depth"])
        )
        if o["output"] == "chunked":
            self.groups = [list(range(self.num_tokens))]
            self.readouts = nn.ModuleList([nn.Linear(d, o["chunk_size"])])
            return
        groups: dict[object, list[int]] = {}
        for i, p in enumerate(self.spec):
            key = i if o["output"] == "heads" else (p.shape, p.init_const is not None)
            groups.setdefault(key, []).append(i)
        self.groups = list(groups.values())  # token (tensor) indices per readout
        self.readouts = nn.ModuleList(
            nn.Linear(d, self.spec.params[g[0]].numel) for g in self.groups
        )

    def _generate(self, cond: Tensor) -> dict[str, Tensor]:
        x = self.cond_proj(cond)[:, None] + self.token_embeddings  # (M, K, D)
        for block in self.blocks:
            x = block(x)
        h = F.rms_norm(x, (x.shape[-1],))  # (M, K, D)
        if self.options["output"] == "chunked":
            chunks = self.readouts[0](h)  # (M, K, chunk_size)
            return self._split(chunks.flatten(1)[:, : self.spec.numel])  # (M, numel) -> tensors
        out = {}
        for members, readout in zip(self.groups, self.readouts, strict=True):
            y = readout(h[:, members])  # (M, n_group, numel)
            for j, i in enumerate(members):
                p = self.spec.params[i]
                out[p.name] = y[:, j].view(-1, *p.shape)
        return out

    def _readouts(self, variance: dict[str, float]) -> list[tuple[nn.Linear, Tensor]]:
        if self.options["output"] == "chunked":
            # as ChunkedGenerator: row j serves position j of every chunk, aims at their mean
            n, size = self.num_tokens, self.options["chunk_size"]
            v = per_element_variance(self.spec, variance)
            padded = torch.full((n * size,), float("nan"))
            padded[: v.numel()] = v
            first = cast(nn.Linear, self.readouts[0])
            return [(first, padded.view(n, size).nanmean(dim=0).nan_to_num(0.0))]
        out: list[tuple[nn.Linear, Tensor]] = []
        for members, readout in zip(self.groups, self.readouts, strict=True):
            readout = cast(nn.Linear, readout)
            mean = sum(variance[self.spec.params[i].name] for i in members) / len(members)
            out.append((readout, torch.full((readout.out_features,), float(mean))))
        return out


class _Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + ff(ln(x))``; ``(M, K, D)``."""

    def __init__(self, dim: int, num_heads: int, ff_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Linear(ff_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        m, k, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(m, k, 3, self.num_heads, d // self.num_heads)
        q, kk, v = qkv.permute(2, 0, 3, 1, 4)  # (M, heads, K, D / heads) each
        a = F.scaled_dot_product_attention(q, kk, v)  # (M, heads, K, D / heads)
        x = x + self.proj(a.transpose(1, 2).reshape(m, k, d))
        return x + self.ff(self.norm2(x))
