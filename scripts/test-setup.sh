#!/usr/bin/env bash
# What the tests need besides the Python packages: Redis running (and redis-server
# itself, for the cluster tests' own servers), nginx and docker-compose installed
# (config checks), Chromium for the browser tests, and the Node SDK test's packages.
# Installs what is missing; fails loudly with what to do when it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'test-setup: %s\n' "$*"; }

redis_up() { "${VENV:-.venv}/bin/python" - <<'PY'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", 6379), timeout=1) as s:
        s.sendall(b"PING\r\n"); sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
}

if ! redis_up; then
  if command -v redis-server >/dev/null; then
    say "Redis is not answering on 127.0.0.1:6379; starting redis-server"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 50); do redis_up && break; sleep 0.1; done
  fi
  redis_up || { say "FAIL: the tests need Redis on 127.0.0.1:6379 (apt-get install redis-server)"; exit 1; }
fi

source scripts/apt-install.sh

# The Redis Cluster, Sentinel and TLS tests start their own redis-server processes.
command -v redis-server >/dev/null || apt_install redis-server

command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  apt_install docker-compose
fi

# The browser tests (tests/browser/) drive Debian's Chromium through Playwright, which
# is told its path and never downloads a browser of its own.
command -v chromium >/dev/null || apt_install chromium

if command -v node >/dev/null; then
  if [ ! -d tests/node/node_modules ] || [ tests/node/package-lock.json -nt tests/node/node_modules ]; then
    say "installing the Node SDK test's packages"
    (cd tests/node && npm ci --silent --no-audit --no-fund)
  fi
else
  say "FAIL: node is missing (the openai npm SDK test needs Node 20+)"; exit 1
fi
