# Set-up and the main jobs. Every target creates .venv on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0

.PHONY: demo test lint bench clean docs docs-check docs-serve

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,data,plot,fl,causal,pareto,rl,nlp,docs]'
	# Debian's fortunes files: the texts of the charlm and adapters recipes (root: installs them).
	test -d /usr/share/games/fortunes || { apt-get update -qq && apt-get install -y -qq fortunes; } \
		|| echo "make: could not install Debian's fortunes (apt-get install fortunes)"
	touch $@

demo: $(STAMP)
	$(BIN)/hyperloom demo

lint: $(STAMP)
	$(BIN)/ruff check src tests tools
	$(BIN)/ruff format --check src tests tools
	$(BIN)/mypy

# One thread per worker, one worker per core (pytest-xdist): the suite is thousands of small
# ops, which thread synchronisation only slows, and whole tests run side by side instead.
# Then the oracle tests once more on ATen's baseline CPU kernels (no AVX2/AVX-512): another
# kernel order, as on another CPU, so a tolerance tuned to one machine fails here too.
ORACLE_TESTS := tests/test_dispatch.py tests/test_fastpaths.py tests/test_functional.py \
	tests/test_perf.py tests/test_trust.py tests/test_hypernet.py
test: $(STAMP) lint docs
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto
	ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto $(ORACLE_TESTS)

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache

# The documentation site (mkdocs.yml): README as the home page, one page per topic, the API
# reference from the docstrings and the recorded results. --strict: a broken link, anchor or
# cross-reference fails the build.
export NO_MKDOCS_2_WARNING := 1
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet --site-dir site

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve

# The built site in headless Chromium (Debian's chromium package, installed here when absent):
# the home page and a results page have their headings, and every image loads.
docs-check: docs
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	$(BIN)/python -m pytest tests/test_docs_site.py -q

# Benchmarks in their own environment: the peer libraries are benchmark-only. torch is pinned as
# for .venv; a requirement that fails to install is skipped (bench.py reports missing peers).
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): benchmarks/requirements.txt pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check $(TORCH)
	grep -v '^#' benchmarks/requirements.txt | grep . | while read -r req; do \
		$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check "$$req" \
			|| echo "bench: could not install $$req"; \
	done
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check -e .
	touch $@

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/bench.py --out benchmarks/results.md
