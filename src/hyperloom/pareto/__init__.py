"""Multi-objective learning: Pareto hypernetworks that produce the whole front in one model.

A hypernetwork conditioned on a preference ray ``r`` on the simplex generates the weights of a
network for every trade-off between ``m`` objectives (Pareto HyperNetworks, Navon et al., ICLR
2021; Lin et al., 2020). Training draws a ray per step from a Dirichlet distribution and
minimises a scalarisation of the objective losses for that ray; evaluation sweeps rays and
returns the front, scored by its hypervolume.

Example:
    >>> import torch, hyperloom as hl
    >>> from torch import nn
    >>> from hyperloom import pareto
    >>> hnet = hl.HyperNetwork(
    ...     nn.Linear(1, 1), pareto.Preference(2, dim=8), hl.ChunkedGenerator.factory(chunk_size=2)
    ... )
    >>> x, y = torch.randn(32, 1), torch.randn(32, 2)
    >>> ray = pareto.dirichlet_rays(1, 2, generator=torch.Generator().manual_seed(0))[0]
    >>> losses = ((hnet(x, ray=ray) - y) ** 2).mean(0)  # (2,): one MSE per objective
    >>> pareto.linear_scalarization(losses, ray).backward()
    >>> mse = lambda o, y: ((o - y) ** 2).mean(1)  # (R, 2)
    >>> pareto.front(hnet, x, y, mse, ray=pareto.ray_grid(5)).shape
    torch.Size([5, 2])
"""

from ._preference import Preference as Preference
from ._preference import check_preference as check_preference
from ._preference import dirichlet_rays as dirichlet_rays
from ._preference import ray_grid as ray_grid
from ._losses import SCALARIZATIONS as SCALARIZATIONS
from ._losses import chebyshev as chebyshev
from ._losses import linear_scalarization as linear_scalarization
from ._losses import scalarize as scalarize
from ._front import evaluate as evaluate
from ._front import front as front
from ._front import hypervolume as hypervolume
from ._front import non_dominated as non_dominated
from ._data import MULTI_DATASETS as MULTI_DATASETS
from ._data import MultiObjectiveData as MultiObjectiveData
from ._data import load_multi as load_multi
from ._data import overlay_pairs as overlay_pairs
from ._data import regression_toy as regression_toy
from ._data import toy_functions as toy_functions
