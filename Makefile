# Two commands on a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed first, from the local CPU wheel; the package's own
# requirement is a range that it satisfies, so pip never pulls another build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= pyro_compare_report
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: venv install install-test demo test lint docs docs-refresh docs-full docs-execute docs-noexec clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install torch==2.13.0

venv: $(BIN)/python

install: venv
	$(BIN)/python -m pip install -e .

install-test: venv
	$(BIN)/python -m pip install -e ".[test]"

demo: install
	$(BIN)/pyro-compare demo --out $(OUT)

test: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PYRO_COMPARE_TEST_THREADS=$${PYRO_COMPARE_TEST_THREADS:-2} $(BIN)/python -m pytest

lint: install-test
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# The tutorials are executed at build time (myst-nb) and cached (jupyter-cache, keyed by
# their code): `make docs` runs them in fast mode, and only those whose code changed.
# `make docs-refresh` empties that cache (and Sphinx's saved pages) first, after a
# package change that changes the outputs; `make docs-full` runs them in full mode (long; its own cache);
# `make docs-noexec` renders code only.
SPHINX := $(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html

docs: install-test
	PYRO_COMPARE_FAST=1 $(SPHINX)

docs-refresh: install-test
	rm -rf docs/_build/.jupyter_cache-fast docs/_build/html/.doctrees
	PYRO_COMPARE_FAST=1 $(SPHINX)

docs-full: install-test
	PYRO_COMPARE_FAST=0 $(SPHINX)

docs-execute: docs-full

docs-noexec: install-test
	PYRO_COMPARE_DOCS_EXECUTE=0 $(SPHINX)

clean:
	rm -rf docs/_build docs/api docs/tutorials $(OUT) .pytest_cache
