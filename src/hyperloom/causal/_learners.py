"""ITE learners: the plain T-learner, S-learner and TARNet, and their HyperITE versions.

Every learner is an ``nn.Module`` whose ``forward(x)`` returns both potential outcomes of every
unit, ``(n, 2)``: column 0 under control, column 1 under treatment. Training fits the factual
column only (:func:`~hyperloom.causal.factual_loss`); the estimated effect is column 1 minus
column 0 (:func:`~hyperloom.causal.effects`).

The HyperITE versions (Chauhan et al., AISTATS 2024) keep the learner's structure but let a
task-conditioned hypernetwork generate the per-arm networks from one learned embedding per
treatment arm, so the arms share the hypernetwork's parameters (soft weight sharing) instead of
being trained on their own arm's units only. Both arms' networks are generated in one call
(``task=[0, 1]``) and run on all units with one :func:`hyperloom.call_batched`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..conditioning import TaskEmbedding
from ..functional import call, call_batched
from ..generators import FlatGenerator, Generator, GeneratorFactory
from ..hypernet import HyperNetwork


def mlp(in_features: int, hidden: Sequence[int], out_features: int | None = 1) -> nn.Sequential:
    """``Linear -> ReLU`` per hidden size, then a linear output (``None``: end on the ReLU).

    Example:
        >>> mlp(5, (8, 8), 1)
        Sequential(
          (0): Linear(in_features=5, out_features=8, bias=True)
          (1): ReLU()
          (2): Linear(in_features=8, out_features=8, bias=True)
          (3): ReLU()
          (4): Linear(in_features=8, out_features=1, bias=True)
        )
    """
    if in_features < 1 or any(h < 1 for h in hidden):
        raise ValueError(
            f"layer sizes must be >= 1, got in_features={in_features}, hidden={tuple(hidden)}"
        )
    sizes = [in_features, *hidden]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    if out_features is not None:
        layers.append(nn.Linear(sizes[-1], out_features))
    return nn.Sequential(*layers)


def _check_x(x: Tensor, in_features: int, who: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != in_features:
        raise ValueError(f"{who}: x must be (n, {in_features}), got shape {tuple(x.shape)}")


def _with_treatment(x: Tensor) -> Tensor:
    """``(2, n, d + 1)``: every unit with t = 0 appended, then with t = 1."""
    n = x.shape[0]
    t = torch.arange(2, dtype=x.dtype, device=x.device).view(2, 1, 1).expand(2, n, 1)
    return torch.cat([x.expand(2, *x.shape), t], dim=2)  # (2, n, d + 1)


def _arm_hypernet(
    target: nn.Module, num: int, emb_dim: int, generator: Generator | GeneratorFactory | None
):
    gen = FlatGenerator.factory(hidden=(100,)) if generator is None else generator
    if not isinstance(gen, Generator | GeneratorFactory):
        raise TypeError(
            f"generator must be a hyperloom Generator or its factory, got {type(gen).__name__}"
        )
    return HyperNetwork(target, TaskEmbedding(num, emb_dim), gen)


class TLearner(nn.Module):
    """One outcome network per arm, each fitted on its own arm's units only.

    Args:
        in_features: number of covariates.
        hidden: hidden sizes of each arm's MLP.

    Shapes:
        ``forward(x)``: ``(n, in_features) -> (n, 2)`` potential outcomes.

    Example:
        >>> TLearner(5, hidden=(8,))(torch.randn(3, 5)).shape
        torch.Size([3, 2])
    """

    def __init__(self, in_features: int, *, hidden: Sequence[int] = (100, 100)) -> None:
        super().__init__()
        self.in_features = in_features
        self.arms = nn.ModuleList([mlp(in_features, hidden) for _ in range(2)])

    def forward(self, x: Tensor) -> Tensor:
        _check_x(x, self.in_features, type(self).__name__)
        return torch.cat([arm(x) for arm in self.arms], dim=1)  # (n, 2)


class SLearner(nn.Module):
    """One outcome network with the treatment as an extra input.

    Args:
        in_features: number of covariates (the network reads ``in_features + 1``).
        hidden: hidden sizes of the MLP.

    Example:
        >>> SLearner(5, hidden=(8,))(torch.randn(3, 5)).shape
        torch.Size([3, 2])
    """

    def __init__(self, in_features: int, *, hidden: Sequence[int] = (100, 100)) -> None:
        super().__init__()
        self.in_features = in_features
        self.net = mlp(in_features + 1, hidden)

    def forward(self, x: Tensor) -> Tensor:
        _check_x(x, self.in_features, type(self).__name__)
        return self.net(_with_treatment(x)).squeeze(-1).T  # (2, n, 1) -> (n, 2)


class TARNet(nn.Module):
    """A shared representation and one outcome head per arm (Shalit et al., 2017, without the
    balancing term).

    Args:
        in_features: number of covariates.
        hidden: representation layer sizes (each ``Linear -> ReLU``).
        head: hidden sizes of each arm's head.

    Example:
        >>> TARNet(5, hidden=(8,), head=(4,))(torch.randn(3, 5)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        in_features: int,
        *,
        hidden: Sequence[int] = (100, 100),
        head: Sequence[int] = (100,),
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("TARNet needs at least one representation layer, got hidden=()")
        self.in_features = in_features
        self.phi = mlp(in_features, hidden, None)
        self.heads = nn.ModuleList([mlp(hidden[-1], head) for _ in range(2)])

    def forward(self, x: Tensor) -> Tensor:
        _check_x(x, self.in_features, type(self).__name__)
        h = self.phi(x)  # (n, hidden[-1])
        return torch.cat([head(h) for head in self.heads], dim=1)  # (n, 2)


class HyperTLearner(nn.Module):
    """HyperTLearner: a hypernetwork generates both arms' outcome networks from one embedding
    per arm; every unit's loss reaches the shared hypernetwork.

    Args:
        in_features: number of covariates.
        hidden: hidden sizes of each (generated) arm MLP.
        emb_dim: size of each arm's learned embedding.
        generator: a generator factory (``hl.FlatGenerator.factory()``,
            ``hl.ChunkedGenerator.factory(chunk_size=...)``, ...); default
            ``FlatGenerator.factory(hidden=(100,))``.

    Attributes:
        hnet: the ``hl.HyperNetwork`` over one arm's MLP (its target).

    Example:
        >>> import hyperloom as hl
        >>> m = HyperTLearner(5, hidden=(8,), generator=hl.ChunkedGenerator.factory(chunk_size=16))
        >>> m(torch.randn(3, 5)).shape
        torch.Size([3, 2])
        >>> m.hnet.describe().outputs
        'chunk-wise'
    """

    def __init__(
        self,
        in_features: int,
        *,
        hidden: Sequence[int] = (100, 100),
        emb_dim: int = 8,
        generator: Generator | GeneratorFactory | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.hnet = _arm_hypernet(mlp(in_features, hidden), 2, emb_dim, generator)

    def forward(self, x: Tensor) -> Tensor:
        _check_x(x, self.in_features, type(self).__name__)
        w = self.hnet.generate(task=torch.arange(2, device=x.device))  # {name: (2, *shape)}
        out = call_batched(self.hnet.target, w, x.expand(2, *x.shape))  # (2, n, 1)
        return out.squeeze(-1).T  # (n, 2)


class HyperSLearner(nn.Module):
    """HyperSLearner: the S-learner's one network (treatment as an input) generated by a
    hypernetwork from a single learned embedding, as in the HyperITE paper's S variant (an
    S-learner has one network, so there is no per-arm context to condition on).

    Args:
        in_features: number of covariates.
        hidden: hidden sizes of the generated MLP.
        emb_dim: embedding size (the paper used 1 for this learner).
        generator: a generator factory; default ``FlatGenerator.factory(hidden=(100,))``.

    Example:
        >>> HyperSLearner(5, hidden=(8,))(torch.randn(3, 5)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        in_features: int,
        *,
        hidden: Sequence[int] = (100, 100),
        emb_dim: int = 1,
        generator: Generator | GeneratorFactory | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.hnet = _arm_hypernet(mlp(in_features + 1, hidden), 1, emb_dim, generator)

    def forward(self, x: Tensor) -> Tensor:
        _check_x(x, self.in_features, type(self).__name__)
        w = self.hnet.generate(task=torch.tensor(0, device=x.device))  # one weight set
        return call(self.hnet.target, w, _with_treatment(x)).squeeze(-1).T  # (n, 2)


class HyperTARNet(nn.Module):
    """HyperTARNet: TARNet whose two outcome heads a hypernetwork generates from one embedding
    per arm; the representation stays an ordinary shared network.

    Args:
        in_features: number of covariates.
        hidden: representation layer sizes.
        head: hidden sizes of each (generated) head.
        emb_dim: size of each arm's learned embedding.
        generator: a generator factory; default ``FlatGenerator.factory(hidden=(100,))``.

    Example:
        >>> HyperTARNet(5, hidden=(8,), head=(4,))(torch.randn(3, 5)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        in_features: int,
        *,
        hidden: Sequence[int] = (100, 100),
        head: Sequence[int] = (100,),
        emb_dim: int = 8,
        generator: Generator | GeneratorFactory | None = None,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("HyperTARNet needs at least one representation layer, got hidden=()")
        self.in_features = in_features
        self.phi = mlp(in_features, hidden, None)
        self.hnet = _arm_hypernet(mlp(hidden[-1], head), 2, emb_dim, generator)

    def forward(self, x: Tensor) -> Tensor:
        _check_x(x, self.in_features, type(self).__name__)
        h = self.phi(x)  # (n, hidden[-1])
        w = self.hnet.generate(task=torch.arange(2, device=x.device))  # {name: (2, *shape)}
        out = call_batched(self.hnet.target, w, h.expand(2, *h.shape))  # (2, n, 1)
        return out.squeeze(-1).T  # (n, 2)


LEARNERS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "t": (TLearner, HyperTLearner),
    "s": (SLearner, HyperSLearner),
    "tarnet": (TARNet, HyperTARNet),
}
"""Learner name -> (plain class, HyperITE class)."""


def build_learner(
    name: str,
    in_features: int,
    *,
    hyper: bool = False,
    hidden: Sequence[int] = (100, 100),
    head: Sequence[int] = (100,),
    emb_dim: int | None = None,
    generator: Generator | GeneratorFactory | None = None,
) -> nn.Module:
    """A learner by name: ``"t"``, ``"s"`` or ``"tarnet"``, plain or HyperITE.

    Args:
        name: a key of :data:`LEARNERS`.
        in_features: number of covariates.
        hyper: the hypernetwork version.
        hidden: MLP hidden sizes (TARNet: the representation's).
        head: TARNet's head hidden sizes (ignored by the others).
        emb_dim: the hypernetwork's embedding size (``None``: 8, or 1 for ``"s"``).
        generator: a generator factory for the hypernetwork (``None``: the default).

    Example:
        >>> type(build_learner("tarnet", 5, hyper=True, hidden=(8,), head=(4,))).__name__
        'HyperTARNet'
    """
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; available: {', '.join(LEARNERS)}")
    plain, hyper_cls = LEARNERS[name]
    kwargs: dict = {"hidden": tuple(hidden)}
    if name == "tarnet":
        kwargs["head"] = tuple(head)
    if not hyper:
        if generator is not None:
            raise ValueError(f"generator is for hypernetwork learners, got one for plain {name!r}")
        return plain(in_features, **kwargs)
    kwargs["emb_dim"] = (1 if name == "s" else 8) if emb_dim is None else emb_dim
    return hyper_cls(in_features, generator=generator, **kwargs)
