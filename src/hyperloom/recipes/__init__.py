"""Recipes: one file each, one visible training loop, run by ``hyperloom train <name>``.

A recipe module defines a ``Config`` dataclass (its typed options, each with a default and a
``help`` in the field's metadata) and ``run(config: Config) -> dict`` that trains, writes its
run folder and returns the results. The registry maps names to module paths, so that listing
recipes imports none of them.
"""

from .registry import RECIPES as RECIPES
from .registry import load_recipe as load_recipe
