"""Conditioners (criterion 1, inputs; criterion 3, input variability)."""

from .base import Conditioner as Conditioner
from .concat import Concat as Concat
from .noise import Noise as Noise
from .sample import SampleEncoder as SampleEncoder
from .task import TaskEmbedding as TaskEmbedding

# The conditioners a checkpoint can rebuild from its JSON config, by "type".
CONDITIONERS: dict[str, type[Conditioner]] = {
    "task": TaskEmbedding,
    "sample": SampleEncoder,
    "noise": Noise,
    "concat": Concat,
}
