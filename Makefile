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

# The suite, then a second pass with the framework bypasses off (gateway/fastpath.py),
# so an upgrade of FastAPI, Starlette, uvicorn or pydantic cannot break one unnoticed.
# The second pass runs the tests that serve requests through the app or a real
# gateway and read what a client sees of them (SDKs, streams, errors, disconnects,
# every provider's translation): every bypass is on their path. The rest (limits and
# stores, routing's choices, deployment files) meet the same bypasses no other way,
# and running them again would take the test target past its budget.
BYPASS_TESTS := tests/api tests/ingress tests/schemas tests/test_app.py tests/test_deps.py \
	tests/test_pipeline.py tests/test_server.py tests/test_server_edge.py \
	$(addprefix tests/integration/,test_chat_sdk.py test_anthropic_ingress.py \
	test_stream_lifecycle.py test_client_disconnect.py test_upstream_failures.py \
	test_node_sdk.py test_security.py test_fuzz.py test_mock_tool_calls.py test_fanout.py \
	test_tool_round_trip.py test_settle_after_answer.py test_cost.py test_model_card.py)

# Test processes in parallel: most tests wait on servers of their own, so three share
# two cores well (about 40% off the suite's time there).
TEST_WORKERS ?= 3

test: setup
	bash scripts/test-setup.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n $(TEST_WORKERS)
	GATEWAY_FRAMEWORK_BYPASSES=0 $(BIN)/pytest -n $(TEST_WORKERS) $(BYPASS_TESTS)

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
