"""``benchmarks/bench.py``'s claims table: one row per stated target, rebuilt, never stacked."""

import importlib.util
from pathlib import Path


def _bench():
    path = Path(__file__).parents[1] / "benchmarks" / "bench.py"
    spec = importlib.util.spec_from_file_location("bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_claims_table_lists_every_target_and_is_rebuilt_in_place():
    bench = _bench()
    text = "\n".join(
        [
            "# hyperloom benchmarks",
            "",
            "- machine: test",
            "",
            "## Static step: details",
            "- a / b = **1.039** [1.0, 1.1] (target <= 1.05: met)",
            "- c / d = **1.431** [1.3, 1.5] (target <= 1.05: NOT met)",
            "## Per-sample",
            "- x = **0.76x the floor** (target <= 2: met); y / z = **1/143** (target <= 1/50: met)",
            "- no target here = **3.0**",
        ]
    )
    out = bench.with_claims(text)
    assert "| Static step: a / b | 1.039 | <= 1.05 | held |" in out
    assert "| Static step: c / d | 1.431 | <= 1.05 | **not held** |" in out
    assert "| Per-sample: x | 0.76x the floor | <= 2 | held |" in out
    assert "| Per-sample: y / z | 1/143 | <= 1/50 | held |" in out
    assert "no target here" not in out.split("- machine:")[0]
    assert out.index("## Claims") < out.index("- machine: test")
    assert bench.with_claims(out) == out  # rebuilt, not stacked
    assert bench.with_claims("# no targets\n\n- machine: x\n") == "# no targets\n\n- machine: x\n"
