"""The recipe registry: name -> module path, imported on demand."""

from __future__ import annotations

import importlib
from types import ModuleType

RECIPES: dict[str, str] = {
    "illustrative": "hyperloom.recipes.illustrative",
    "continual": "hyperloom.recipes.continual",
    "uncertainty": "hyperloom.recipes.uncertainty",
    "charlm": "hyperloom.recipes.charlm",
    "hyperconv": "hyperloom.recipes.hyperconv",
    "federated": "hyperloom.recipes.federated.recipe",
    "ghn": "hyperloom.recipes.ghn",
    "causal": "hyperloom.recipes.causal",
    "pareto": "hyperloom.recipes.pareto",
    "rl": "hyperloom.recipes.rl",
    "adapters": "hyperloom.recipes.adapters",
}


def load_recipe(name: str) -> ModuleType:
    """Import the recipe module registered as ``name`` (it has ``Config`` and ``run``)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}")
    return importlib.import_module(RECIPES[name])
