# Two commands for a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test setup lint format bench bench-quick

$(BIN)/gateway: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

setup: $(BIN)/gateway

# Flags for `gateway serve`, e.g. make run ARGS="--port 9000".
ARGS ?=

run: setup
	$(BIN)/gateway serve $(ARGS)

test: setup
	bash scripts/test-setup.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

# The benchmark (bench/run.py, figures in bench/RESULTS.md): the full run with
# LiteLLM's proxy beside the gateway (installed into bench/.peers on first use;
# a peer that cannot be installed or started is reported and the run goes on),
# and the quick regression check: this tree beside the commit of bench/baseline.json
# (BASE=REV for another), measured in turns in one run.
bench: setup
	bash bench/setup.sh
	-bash bench/peers/litellm.sh
	$(BIN)/python bench/run.py --peer litellm

bench-quick: setup
	bash bench/setup.sh
	$(BIN)/python bench/run.py --quick $(if $(BASE),--against $(BASE))
