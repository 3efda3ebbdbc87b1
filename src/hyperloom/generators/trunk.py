"""The MLP trunk shared by the built-in generators (criterion 5: hypernetwork architecture)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


class MLPTrunk(nn.Module):
    """``Linear -> act`` for each hidden size, then (by default) RMS normalisation of the features.

    The features every readout layer reads have a root-mean-square of 1 for every context, so
    the scale of the generated weights is what the hyperfan initialisation set, for each
    context and not only on average over contexts: otherwise a context whose features happen to
    be 15% larger scales every generated layer by 15%, and a 10-layer target by a factor of 4.

    Args:
        in_dim: input size.
        hidden: hidden sizes.
        activation: one of ``relu``, ``elu``, ``gelu``, ``silu``, ``tanh``.
        norm: RMS-normalise the features (default). ``False`` leaves them as the last
            activation gives them, the plain MLP of most hypernetworks (Ha et al.; von Oswald et
            al.): a few fewer operations per call, and the scale of the generated weights then
            holds on average over contexts only.

    Shapes:
        ``(*, in_dim) -> (*, out_dim)`` with ``out_dim = hidden[-1]`` (``in_dim`` without
        layers, when the trunk only normalises).

    Example:
        >>> MLPTrunk(8, (32, 16))(torch.randn(3, 8)).shape
        torch.Size([3, 16])
    """

    def __init__(
        self, in_dim: int, hidden: Sequence[int], activation: str = "relu", *, norm: bool = True
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}"
            )
        if any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be >= 1, got {tuple(hidden)}")
        sizes = [in_dim, *(int(h) for h in hidden)]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.act = ACTIVATIONS[activation]()
        self.out_dim = sizes[-1]
        self.norm = bool(norm)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = self.act(layer(x))
        return F.rms_norm(x, (x.shape[-1],)) if self.norm else x

    def forward_pair(self, c: Tensor, e: Tensor) -> Tensor:
        """The trunk on ``cat([c broadcast over K], e broadcast over M)`` without building it.

        Args:
            c: ``(M, d_c)`` conditioning vectors.
            e: ``(K, d_e)`` learned embeddings (chunks or components).

        Returns:
            ``(M, K, out_dim)``; the first layer's matmul is split between the two parts, so the
            ``(M, K, d_c + d_e)`` concatenation is never materialised.
        """
        if not self.layers:
            m, k = c.shape[0], e.shape[0]
            x = torch.cat([c[:, None].expand(m, k, -1), e[None].expand(m, k, -1)], dim=-1)
            return F.rms_norm(x, (x.shape[-1],)) if self.norm else x
        first = self.layers[0]
        d = c.shape[-1]
        h = F.linear(c, first.weight[:, :d])[:, None] + F.linear(e, first.weight[:, d:], first.bias)
        x = self.act(h)  # (M, K, hidden[0])
        for layer in self.layers[1:]:
            x = self.act(layer(x))
        return F.rms_norm(x, (x.shape[-1],)) if self.norm else x  # (M, K, out_dim)
