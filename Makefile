# D²VLM Lab — two commands: `make repro` (the pipeline) and `make test` (the test suite).
# Both bootstrap .venv from pyproject.toml on first use and reuse it afterwards.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# Run everything with the venv first on PATH (dvc stages call papermill from it), one torch thread
# per core budget handled in d2lib; keep HF libraries offline: nothing is downloaded at run time.
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1

.PHONY: repro test venv data benchmark bench clean-venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required, found " + sys.version' 
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

venv: $(STAMP)

# The embedded Shapes benchmark (val/test) comes from the DVC remote committed in dvc-store/.
data: venv
	$(BIN)/dvc pull --quiet data.dvc

# `dvc repro`'s stages, independent ones side by side on the cores (d2lib/repro.py); plain
# `dvc repro` gives the same results one stage at a time.
repro: data
	$(BIN)/python -m d2lib.repro

test: data
	$(BIN)/python -m pytest -q

# Re-render the benchmark from params (world, benchmark) and version it; maintainers only.
benchmark: venv
	$(BIN)/python -m d2lib.synth benchmark --out data/shapes
	$(BIN)/dvc add data
	$(BIN)/dvc push -r local data.dvc

bench: venv
	$(BIN)/python -m d2lib.bench

clean-venv:
	rm -rf $(VENV)
