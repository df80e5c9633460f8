# ferlab: `make train` and `make test` each do all set-up on a fresh machine (Python 3.10-3.13 and make).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= sweep,infer,timm,dev
ARGS ?=
# test workers (pytest-xdist): `auto` is one per core, at most 4 (tests/conftest.py); WORKERS=0 runs in this process
WORKERS ?= auto

.PHONY: install train test test-fast lint tb bench docs docs-serve clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes; the package itself is editable.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

train: install  ## the main job: synthetic faces, small ResNet, a few minutes on a laptop CPU
	$(BIN)/ferlab train $(ARGS)

test: install  ## the whole suite (about 7 minutes on 2 cores)
	$(BIN)/python -m pytest -n $(WORKERS) $(ARGS)

test-fast: install  ## the edit-run loop: pure-Python, config and model-shape tests (`not slow`), under a minute
	$(BIN)/python -m pytest -n $(WORKERS) -m "not slow" $(ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks

tb: install  ## TensorBoard over every run and sweep
	$(BIN)/tensorboard --logdir outputs

bench: install  ## every benchmark; tables go to benchmarks/results/
	$(BIN)/python -m benchmarks.run_all

docs: install  ## the documentation site, strictly (a broken link or anchor fails), into site/
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: install  ## the site at http://127.0.0.1:8000, rebuilt as pages change
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

clean:
	rm -rf outputs .cache .pytest_cache .ruff_cache site
