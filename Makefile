# Everything a fresh machine needs comes from here: `make test` and `make demo` set up the venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
PYTEST_ARGS ?=

.PHONY: help venv test lint typecheck unit demo bench chaos clean

help:
	@echo "make test   - lint, type-check and run the whole test suite (needs PostgreSQL for the store tests)"
	@echo "make demo   - run the reconciler against the embedded sandbox (no AWS account needed)"
	@echo "make bench  - EcsExecutor vs the amazon provider's AwsEcsExecutor (needs PostgreSQL, ~20 min; BENCH_ARGS=--quick, --scenarios 5,6)"
	@echo "make chaos  - the long chaos run (kills, faults, leader kills; ECS and Batch): rewrites docs/reliability.md"
	@echo "make lint / typecheck / unit / clean"

$(STAMP): pyproject.toml sandbox/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]" -e ./sandbox
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src sandbox/src tests chaos
	$(BIN)/ruff format --check src sandbox/src tests chaos

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck unit

# The demo needs Airflow, the executors and the sandbox, not the test tools: a lighter first run.
# A venv that `make test` built already has all of it.
$(DEMO_STAMP): pyproject.toml sandbox/pyproject.toml
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ] && [ $(STAMP) -nt sandbox/pyproject.toml ]; then \
	  touch $@; \
	else \
	  echo "first run: installing Airflow 3.3, the executors and the sandbox into $(VENV) (a few minutes; ~600 MB)"; \
	  $(PYTHON) -m venv $(VENV) && \
	  $(BIN)/pip install --quiet --upgrade pip && \
	  $(BIN)/pip install --progress-bar on -e ".[demo]" -e ./sandbox && \
	  touch $@; \
	fi

demo: $(DEMO_STAMP)
	$(BIN)/python -m aws_reconciler_sandbox.demo

# The long chaos run (the short one is part of `make test`); CHAOS_ARGS=--seed N replays a run.
CHAOS_ARGS ?=

chaos: $(STAMP)
	$(BIN)/python -m chaos.run --long $(CHAOS_ARGS)

BENCH_VENV ?= .venv-bench
BENCH_ARGS ?=

bench:
	PYTHON=$(PYTHON) bench/setup.sh $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache
