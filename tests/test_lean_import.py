"""``import hyperloom`` imports no recipe, no optional dependency, and initialises no CUDA."""

import subprocess
import sys

CODE = """
import sys
import torch
import hyperloom
loaded = sorted(sys.modules)
heavy = [m for m in loaded if m.split(".")[0] in {"sklearn", "matplotlib", "flwr", "ray", "scipy"}]
recipes = [m for m in loaded if m.startswith(("hyperloom.recipes", "hyperloom.cli"))]
print(repr((heavy, recipes, torch.cuda.is_initialized())))
"""


def test_import_is_lean():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    heavy, recipes, cuda = eval(out.stdout.strip().splitlines()[-1])
    assert heavy == []
    assert recipes == []
    assert cuda is False
