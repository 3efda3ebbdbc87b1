"""Generators (criterion 2, outputs; criterion 5, hypernetwork architecture).

Imported in the review's order of output strategies, which is the registry's order.
"""

from .base import Generator as Generator
from .base import GeneratorFactory as GeneratorFactory
from .once import FlatGenerator as FlatGenerator
from .heads import HeadsGenerator as HeadsGenerator
from .chunked import ChunkedGenerator as ChunkedGenerator
from .component import ComponentGenerator as ComponentGenerator
from .lowrank import LowRankGenerator as LowRankGenerator
from .attention import AttentionGenerator as AttentionGenerator
from .conv import ConvGenerator as ConvGenerator
from .tiled import TiledGenerator as TiledGenerator
from .registry import build_generator as build_generator
from .registry import get_generator as get_generator
from .registry import list_generators as list_generators
from .registry import register_generator as register_generator
from .trunk import MLPTrunk as MLPTrunk
