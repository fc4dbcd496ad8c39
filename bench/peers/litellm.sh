#!/usr/bin/env bash
# LiteLLM's proxy as the bench's peer gateway, installed from PyPI into its own
# virtualenv (bench/.peers/litellm, git-ignored). One worker, its master key
# only: LiteLLM's per-key limits need a database, which the bench does not run.
#
#   bench/peers/litellm.sh        install (once) and print the version
#
# With BENCH_UPSTREAM (the lean upstream's /v1 URL), BENCH_PORT, BENCH_KEY (the
# master key) and BENCH_OUT (a directory for its config) set, it also writes
# the proxy's config and prints the command that starts it, as the lines
#   BENCH_VERSION litellm <version>
#   BENCH_CMD <command>
# which bench/run.py reads (`python bench/run.py --peer litellm`).
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=bench/.peers/litellm
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/litellm" ]; then
  echo "litellm.sh: creating $VENV and installing 'litellm[proxy]' from PyPI" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --upgrade pip >&2
  "$VENV/bin/pip" install --quiet 'litellm[proxy]' >&2
fi
version=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')
echo "BENCH_VERSION litellm $version"

[ -n "${BENCH_PORT:-}" ] || exit 0
: "${BENCH_UPSTREAM:?set BENCH_UPSTREAM to the /v1 URL of the upstream}"
: "${BENCH_KEY:?set BENCH_KEY to the master key}"
: "${BENCH_OUT:?set BENCH_OUT to a directory for the config}"
mkdir -p "$BENCH_OUT"
config="$BENCH_OUT/litellm.yaml"
cat >"$config" <<YAML
# Written by bench/peers/litellm.sh: model "bench" on the bench's lean upstream.
model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench-upstream
      api_base: ${BENCH_UPSTREAM}
      api_key: sk-bench-upstream-unused
general_settings:
  master_key: ${BENCH_KEY}
YAML
# No network at start (the bundled model cost map), no telemetry, logs as shipped.
echo "BENCH_CMD env LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False" \
  "$PWD/$VENV/bin/litellm --config $config --host 127.0.0.1 --port $BENCH_PORT --num_workers 1"
