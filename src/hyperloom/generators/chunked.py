"""Chunk-wise: learned chunk embeddings, one shared head emitting fixed-size chunks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..target import TargetSpec
from .base import Generator, per_element_variance
from .registry import register_generator
from .trunk import Activation


@register_generator("chunked")
class ChunkedGenerator(Generator):
    """Generate the flattened weights in fixed-size chunks (criterion 2: chunk-wise).

    Each chunk ``j`` has a learned embedding ``e_j``; the trunk reads ``[c; e_j]`` and one
    shared head emits ``chunk_size`` numbers; the chunks are concatenated and the last one cut
    to the spec's size (von Oswald et al., 2020). The hypernetwork can then be far smaller than
    the target.

    Args:
        spec: the target spec (the tensors to generate).
        cond_dim: conditioning size (or ``None``).
        chunk_size: numbers per chunk.
        chunk_dim: size of each chunk embedding.
        hidden: trunk hidden sizes.
        activation: trunk activation (a name or a ``torch.nn`` activation module).
        norm: RMS-normalise the trunk's features (default; see :class:`MLPTrunk`).
        final_activation: end the trunk with its activation (default); ``False`` ends it on a
            linear layer (pFedHN's hypernetwork).
        per_context_chunks: the chunk embeddings come with the conditioning instead of being
            shared parameters (hypnettorch's ``cond_chunk_embs``: one set per task when the
            conditioner is a ``TaskEmbedding``). The last ``num_chunks * chunk_dim`` numbers of
            each conditioning vector are its chunk embeddings; size the conditioner with
            :meth:`context_size`.

    Example:
        >>> from hyperloom import select
        >>> gen = ChunkedGenerator(select(nn.Linear(30, 20)), 8, chunk_size=100)
        >>> gen.num_chunks, gen(torch.randn(8))["weight"].shape
        (7, torch.Size([20, 30]))
    """

    strategy = "chunk-wise"

    def __init__(
        self,
        spec: TargetSpec,
        cond_dim: int,
        *,
        chunk_size: int = 1024,
        chunk_dim: int = 8,
        hidden: Sequence[int] = (64,),
        activation: Activation = "relu",
        norm: bool = True,
        final_activation: bool = True,
        per_context_chunks: bool = False,
    ) -> None:
        if chunk_size < 1 or chunk_dim < 1:
            raise ValueError(
                f"chunk_size and chunk_dim must be >= 1, got {chunk_size} and {chunk_dim}"
            )
        super().__init__(
            spec,
            cond_dim,
            {
                "chunk_size": chunk_size,
                "chunk_dim": chunk_dim,
                "hidden": tuple(hidden),
                "activation": activation,
                "norm": norm,
                "final_activation": final_activation,
                "per_context_chunks": per_context_chunks,
            },
        )

    @property
    def num_chunks(self) -> int:
        """Number of chunks covering the spec."""
        return -(-self.spec.numel // self.options["chunk_size"])

    @staticmethod
    def context_size(spec: TargetSpec, dim: int, *, chunk_size: int, chunk_dim: int = 8) -> int:
        """The conditioning size for ``per_context_chunks``: ``dim`` + every chunk's embedding.

        Example:
            >>> from hyperloom import select
            >>> ChunkedGenerator.context_size(select(nn.Linear(30, 20)), 8, chunk_size=100)
            64
        """
        return dim + -(-spec.numel // chunk_size) * chunk_dim

    def _build(self) -> None:
        o = self.options
        if o.get("per_context_chunks", False):
            own = self.cond_dim - self.num_chunks * o["chunk_dim"]  # the context proper
            if own < 0:
                raise ValueError(
                    f"per_context_chunks needs conditioning of at least {self.num_chunks} chunks "
                    f"x {o['chunk_dim']} = {self.num_chunks * o['chunk_dim']} numbers, got "
                    f"cond_dim={self.cond_dim} (see ChunkedGenerator.context_size)"
                )
            self.trunk = self._trunk(own + o["chunk_dim"])
        else:
            self.chunk_embeddings = nn.Parameter(torch.randn(self.num_chunks, o["chunk_dim"]))
            self.trunk = self._trunk(self.cond_dim + o["chunk_dim"])
        self.readout = nn.Linear(self.trunk.out_dim, o["chunk_size"])

    def features(self, cond: Tensor) -> Tensor:
        """The trunk's features of every chunk, ``(M, cond_dim) -> (M, n_chunks, h)``."""
        if not self.options.get("per_context_chunks", False):
            return self.trunk.forward_pair(cond, self.chunk_embeddings)
        k, d = self.num_chunks, self.options["chunk_dim"]
        own = cond.shape[-1] - k * d
        chunks = cond[:, own:].view(cond.shape[0], k, d)  # (M, n_chunks, chunk_dim)
        return self.trunk.forward_pair(cond[:, :own], chunks)

    def _generate(self, cond: Tensor) -> dict[str, Tensor]:
        h = self.features(cond)  # (M, n_chunks, h)
        chunks = self.readout(h)  # (M, n_chunks, chunk_size)
        flat = chunks.flatten(1)[:, : self.spec.numel]  # (M, numel)
        return self._split(flat)

    def _readouts(self, variance: dict[str, float]) -> list[tuple[nn.Linear, Tensor]]:
        # Row j of the shared head writes position j of every chunk, so it can only aim at the
        # mean of the variances it serves: exact when those are equal (every generated weight
        # has one fan), an average otherwise.
        n, size = self.num_chunks, self.options["chunk_size"]
        v = per_element_variance(self.spec, variance)
        padded = torch.full((n * size,), float("nan"))
        padded[: v.numel()] = v
        # a row that serves no element (one chunk longer than the whole target) gets zeros
        return [(self.readout, padded.view(n, size).nanmean(dim=0).nan_to_num(0.0))]
