# D²VLM Lab — two commands: `make repro` (the pipeline) and `make test` (the test suite).
# Both bootstrap .venv from pyproject.toml on first use and reuse it afterwards.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# Run everything with the venv first on PATH (dvc stages call papermill from it); keep HF libraries
# offline: nothing is downloaded at run time. The numeric environment (threads, CPU kernel ISA) is pinned
# in one place, d2lib/core/numenv.py: the runner and each stage's command apply it, `make test` runs under it.
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1

.PHONY: repro test venv data benchmark bench clean-venv plots-assets book-assets book

# A .venv whose interpreter no longer runs (its base Python was removed or upgraded) is rebuilt, not reused.
ifneq ($(wildcard $(STAMP)),)
ifneq ($(shell $(BIN)/python -c 'print("ok")' 2>/dev/null),ok)
$(info make: $(VENV) is broken (its python does not run); rebuilding it)
$(shell rm -rf $(VENV))
endif
endif

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required, found " + sys.version' 
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

venv: $(STAMP)

# The embedded Shapes benchmark (val/test) comes from the DVC remote committed in dvc-store/.
data: venv
	@test -d dvc-store || { echo "make data: the DVC remote folder dvc-store/ (named in .dvc/config) is missing;" \
	  "it is part of the repository: restore it with 'git checkout -- dvc-store'" >&2; exit 1; }
	@$(BIN)/dvc pull data.dvc || { echo "make data: 'dvc pull data.dvc' failed, DVC's reason is above;" \
	  "the benchmark comes from dvc-store/ (restore it with 'git checkout -- dvc-store');" \
	  "if $(VENV) is damaged, run 'make clean-venv' and try again" >&2; exit 1; }

# `dvc repro`'s stages on a Dask LocalCluster of this machine's cores, each with the threads its command
# declares (d2lib/tools/repro.py); plain `dvc repro` gives the same bits one stage at a time.
# REPRO_ARGS: e.g. --scheduler tcp://host:8786 for a running Dask cluster sharing this workspace.
repro: data
	$(BIN)/python -m d2lib.tools.repro $(REPRO_ARGS)

test: data plots-assets book-assets
	$(BIN)/python -m d2lib.core.numenv --threads $$(nproc) $(BIN)/python -m pytest -q -n $$(nproc) --dist loadfile

# Re-render the benchmark from params (world, benchmark) and version it; maintainers only.
benchmark: venv
	$(BIN)/python -m d2lib.world.synth benchmark --out data/shapes
	$(BIN)/dvc add data
	$(BIN)/dvc push -r local data.dvc

bench: venv
	$(BIN)/python -m d2lib.tools.bench

clean-venv:
	rm -rf $(VENV)

# Offline `dvc plots show` / `dvc plots diff`: vega, vega-lite and vega-embed at the versions pinned in
# tools/vega/package-lock.json, inlined into the page template .dvc/config names (no CDN).
plots-assets: tools/vega/dvc_plots.html

tools/vega/dvc_plots.html: tools/vega/package.json tools/vega/package-lock.json tools/vega/build.py
	npm ci --prefix tools/vega --no-audit --no-fund --ignore-scripts --loglevel=error
	$(PYTHON) tools/vega/build.py

# The course as a book: the executed lessons committed under artifacts/notebooks/ -> book/_build/html
# (Sphinx + myst-nb + sphinx-book-theme from pip, MathJax from npm: nothing fetched at build or read time).
# Read it: python -m http.server -d book/_build/html
book: venv book-assets
	$(BIN)/python -m d2lib.tools.book

book-assets: tools/book/node_modules/.installed

tools/book/node_modules/.installed: tools/book/package.json tools/book/package-lock.json
	npm ci --prefix tools/book --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@
