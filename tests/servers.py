"""Real processes for integration tests: the gateway and the mock upstream on free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from tests import secrets_scan

ROOT = Path(__file__).resolve().parent.parent
BYPASSES_ENV = "GATEWAY_FRAMEWORK_BYPASSES"  # gateway/fastpath.py
SLACK = 5.0  # seconds a stalled machine may add to a wait

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = SLACK) -> T:
    """Poll ``check`` until it gives something true, and give that; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A ``gateway ...`` subprocess bound to 127.0.0.1, its output kept in a file."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="gateway-test-", suffix=".log")[1])
        # None of the caller's gateway settings leak in, but the switch of the framework
        # bypasses does: `make test` runs the suite once with them off.
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("GATEWAY_", "OPENAI_", "REDIS_URL")) or k == BYPASSES_ENV
        }
        full_env.update(env or {})
        # The end of the session searches this log for every secret it knows of
        # (tests/secrets_scan.py), this process's own among them.
        self.args = args
        secrets_scan.register_server(args, full_env, env or {})
        secrets_scan.register_log(self.log_path)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                *args,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, path: str = "/health", timeout: float = 20.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self._scrape_metrics()
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def _scrape_metrics(self) -> None:
        """A gateway's /metrics as it ends, holding every label its requests made,
        for the session's secrets scan; none where metrics are off (404)."""
        if self.args[:1] != ["serve"]:
            return
        try:
            r = httpx.get(self.url + "/metrics", timeout=5)
        except httpx.HTTPError:
            return  # wedged or gone: its log is still searched
        if r.status_code == 200:
            secrets_scan.register_scrape(
                f"/metrics of the gateway logging to {self.log_path}", r.text
            )


def start_mock_upstream() -> ServerProcess:
    return ServerProcess(["mock-upstream"]).wait_ready()


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    path = directory / "gateway.yaml"
    # Never the user's data directory: each gateway of a test keeps its own.
    config.setdefault("server", {}).setdefault("data_dir", str(directory / "data"))
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    for secret in secrets_scan.secrets_of_config(config):
        secrets_scan.register_secret(secret)
    return path


def start_gateway(
    config_path: Path, env: dict[str, str] | None = None, args: list[str] = ()
) -> ServerProcess:
    return ServerProcess(["serve", "--config", str(config_path), *args], env=env).wait_ready()


TEST_KEY = "sk-test-integration-key"


def standard_config(upstream_url: str, **server: Any) -> dict[str, Any]:
    """Models on the real mock upstream over HTTP (``up-*``) and the in-process mock."""
    return {
        "providers": {
            "upstream": {
                "type": "openai",
                "base_url": f"{upstream_url}/v1",
                "api_key": "sk-upstream-secret",
            },
            "local": {"type": "mock"},
        },
        "models": {
            "up-chat": {"deployments": [{"provider": "upstream", "model": "mock-chat"}]},
            "up-embed": {"deployments": [{"provider": "upstream", "model": "mock-embedding"}]},
            "up-fast-timeout": {
                "deployments": [
                    {
                        "provider": "upstream",
                        "model": "mock-chat",
                        "timeout": {"first_token": 0.5, "total": 2},
                    }
                ]
            },
            "local-chat": {"deployments": [{"provider": "local", "model": "mock-chat"}]},
            "secret-model": {"deployments": [{"provider": "local", "model": "mock-chat"}]},
        },
        "keys": [
            {"name": "tests", "key": TEST_KEY, "models": ["up-*", "local-*"]},
            {"name": "expired", "key": "sk-test-expired-key", "expires_at": "2020-01-01T00:00:00Z"},
        ],
        "server": server,
    }
