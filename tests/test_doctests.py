"""Every docstring example of the package runs, seeded, as a test.

Each module of ``hyperloom`` is imported and its docstrings are collected with
:class:`doctest.DocTestFinder`; every docstring with examples is one test, run in its module's
namespace (plus ``torch``, ``nn`` and ``hl``, as a ``doctest_namespace`` would give them) after
seeding ``random``, NumPy and torch with 0 (so printed random values are reproducible). A
module whose optional dependency is missing is skipped, by name.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import random

import numpy as np
import pytest
import torch

import hyperloom

OPTIONAL = {"flwr", "sklearn", "matplotlib"}  # extras a module may need


def _modules() -> list[str]:
    names = [hyperloom.__name__]
    for info in pkgutil.walk_packages(hyperloom.__path__, prefix="hyperloom."):
        names.append(info.name)
    return sorted(names)


def _collect() -> list:
    params = []
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] in OPTIONAL:
                params.append(pytest.param(None, id=name, marks=pytest.mark.skip(str(e))))
                continue
            raise
        for test in finder.find(module, name, globs=vars(module).copy()):
            if test.examples and test.name.split(".")[0] == "hyperloom":
                params.append(pytest.param(test, id=test.name))
    return params


DOCTESTS = _collect()


def test_docstring_examples_are_collected():
    ids = [p.id for p in DOCTESTS]
    assert len(ids) > 80  # every docstring with an example (89 when this test was written)
    assert "hyperloom.functional.call" in ids and "hyperloom.recipes.reproduce.lookup" in ids


@pytest.mark.parametrize("test", DOCTESTS)
def test_docstring_example(test, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    failures: list[str] = []

    def report_failure(out, test_, example, got):
        failures.append(
            f"line {example.lineno}: {example.source.strip()}\n"
            f"  expected: {example.want.strip()}\n  got: {got.strip()}"
        )

    def report_unexpected_exception(out, test_, example, exc_info):
        failures.append(
            f"line {example.lineno}: {example.source.strip()}\n  raised: {exc_info[1]!r}"
        )

    runner.report_failure = report_failure
    runner.report_unexpected_exception = report_unexpected_exception
    test.globs = {"torch": torch, "nn": torch.nn, "hl": hyperloom, **test.globs}
    runner.run(test, out=lambda _: None, clear_globs=True)
    assert not failures, f"{test.name} ({test.filename}):\n" + "\n".join(failures)
