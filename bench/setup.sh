#!/usr/bin/env bash
# What the bench needs besides the project's venv: wrk, taskset and redis-server,
# installed from Debian's packages when missing. The bench starts its own Redis
# (pinned, on a free port, stopped at the end), so nothing here is started.
# bench/run.py runs this when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'bench-setup: %s\n' "$*"; }

source scripts/apt-install.sh

command -v wrk >/dev/null || apt_install wrk
command -v taskset >/dev/null || apt_install util-linux
command -v redis-server >/dev/null || apt_install redis-server
