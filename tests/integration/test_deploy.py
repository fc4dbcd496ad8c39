"""The production files: Dockerfile, docker-compose.yml and deploy/nginx.conf.

No container engine is needed: the compose file is validated by the compose
CLI, the nginx config by ``nginx -t``, and then that very config runs in a
host nginx (bound to 127.0.0.1) in front of the session gateway, to show a
stream passes through it as it is produced. Missing tools fail the test with
what to install; ``scripts/test-setup.sh`` installs them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.servers import ROOT, TEST_KEY, ServerProcess, free_port

NGINX_CONF = ROOT / "deploy" / "nginx.conf"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SETUP_HINT = "run scripts/test-setup.sh (or `make test`), which installs it"

STREAM_BODY = {
    "model": "up-chat",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "mock": {"chunks": 10, "tokens_per_s": 10},
}
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)


# --- docker-compose.yml -------------------------------------------------------


def _compose_command() -> list[str]:
    if shutil.which("docker") and _run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(f"neither `docker compose` nor `docker-compose` is installed: {SETUP_HINT}")


def _words(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_file_validates() -> None:
    cmd = [*_compose_command(), "-f", str(COMPOSE_FILE), "config", "-q"]
    # Validation needs no engine, and must not depend on the caller's secrets.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENAI_"))}
    result = _run(cmd, cwd=ROOT, env=env)
    assert result.returncode == 0, f"{shlex.join(cmd)} failed:\n{result.stdout}{result.stderr}"


def test_compose_file_wires_the_stack() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    assert set(services) == {"redis", "gateway", "nginx"}

    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert "--appendonly yes" in " ".join(_words(redis["command"]))
    volume = next(v for v in redis["volumes"] if v.split(":")[1] == "/data")
    assert volume.split(":")[0] in compose["volumes"], "redis /data should be a named volume"
    assert "redis-cli" in redis["healthcheck"]["test"]

    gateway = services["gateway"]
    assert gateway["build"] == "."
    words = " ".join(_words(gateway["command"]))
    assert words.startswith("gateway serve")
    assert "--workers 2" in words
    assert "--host 0.0.0.0" in words
    assert "--port 8080" in words
    env = _environment(gateway)
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["GATEWAY_MASTER_KEY"] == "${GATEWAY_MASTER_KEY:-}"
    assert env["OPENAI_API_KEY"] == "${OPENAI_API_KEY:-}"
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    assert gateway["restart"] == "unless-stopped"
    grace = re.fullmatch(r"(\d+)s", gateway["stop_grace_period"])
    assert grace, gateway["stop_grace_period"]
    assert int(grace.group(1)) > 30, "must outlast the gateway's 30 s drain"
    assert "ports" not in gateway, "only nginx is published"

    nginx = services["nginx"]
    assert nginx["image"].startswith("nginx:")
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert nginx["ports"] == ["127.0.0.1:8080:8080"]


# --- Dockerfile ---------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_runs_the_gateway_as_non_root() -> None:
    instructions = _dockerfile_instructions()
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    assert final[0] == ("FROM", "python:3.11-slim")
    users = [arg for op, arg in final if op == "USER"]
    assert users, "the image should switch to a non-root USER"
    assert users[-1] not in ("root", "0")
    assert ("EXPOSE", "8080") in final
    cmd = [arg for op, arg in final if op == "CMD"]
    assert json.loads(cmd[-1]) == ["gateway", "serve", "--host", "0.0.0.0", "--port", "8080"]
    assert any(op == "RUN" and "pip install ." in arg for op, arg in instructions)


def _healthcheck_code() -> str:
    (check,) = [arg for op, arg in _dockerfile_instructions() if op == "HEALTHCHECK"]
    argv = json.loads(check[check.index("CMD") + 3 :])
    assert argv[:2] == ["python", "-c"], "the slim image has no curl: check with python"
    return argv[2]


def test_dockerfile_healthcheck_probes_health(gateway: ServerProcess) -> None:
    code = _healthcheck_code()
    assert "127.0.0.1:8080/health" in code
    alive = _run([sys.executable, "-c", code.replace(":8080/", f":{gateway.port}/")])
    assert alive.returncode == 0, alive.stderr
    dead = _run([sys.executable, "-c", code.replace(":8080/", f":{free_port()}/")])
    assert dead.returncode != 0


# --- deploy/nginx.conf --------------------------------------------------------


def _nginx_binary() -> str:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"nginx is not installed: {SETUP_HINT}")
    return binary


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"deploy/nginx.conf should contain {old!r} exactly once"
    return text.replace(old, new)


def local_nginx_conf(workdir: Path, upstream_port: int, listen_port: int) -> Path:
    """deploy/nginx.conf aimed at 127.0.0.1 ports, with every file it writes in workdir."""
    text = NGINX_CONF.read_text()
    text = _replace_once(text, "server gateway:8080;", f"server 127.0.0.1:{upstream_port};")
    text = _replace_once(text, "listen 8080;", f"listen 127.0.0.1:{listen_port};")
    text = _replace_once(text, "worker_processes auto;", "worker_processes 2;")
    temp_paths = "".join(
        f"    {kind}_temp_path {workdir / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = _replace_once(text, "\nhttp {\n", "\nhttp {\n" + temp_paths)
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


def nginx_argv(workdir: Path, conf: Path, *directives: str) -> list[str]:
    main = [f"pid {workdir / 'nginx.pid'};", *directives]
    if os.geteuid() == 0:
        # The shipped config leaves `user` to the image (nginx); here workers
        # must read the private tmp dir, and Debian's default `nobody` cannot.
        main.append("user root;")
    prefix = ["-p", str(workdir), "-e", "stderr", "-c", str(conf)]
    return [_nginx_binary(), *prefix, "-g", " ".join(main)]


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    conf = local_nginx_conf(tmp_path, free_port(), free_port())
    result = _run([*nginx_argv(tmp_path, conf), "-t"])
    assert result.returncode == 0, f"nginx -t rejected deploy/nginx.conf:\n{result.stderr}"
    assert "test is successful" in result.stderr


def test_nginx_config_is_set_up_for_streams() -> None:
    directives = {
        " ".join(line.split()).rstrip(";")
        for line in NGINX_CONF.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    }
    for expected in (
        "proxy_buffering off",
        "proxy_cache off",
        "proxy_http_version 1.1",
        'proxy_set_header Connection ""',
        "chunked_transfer_encoding on",
        "gzip off",
        "client_max_body_size 8m",
        "keepalive 64",
        "access_log /dev/stdout gateway",
        "error_log stderr warn",
    ):
        assert expected in directives, f"deploy/nginx.conf lacks `{expected};`"
    for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
        (value,) = [d.split()[1] for d in directives if d.startswith(timeout + " ")]
        assert int(value.removesuffix("s")) >= 600, f"{timeout} {value} would cut long streams"


class NginxProcess:
    def __init__(self, workdir: Path, upstream_port: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "nginx.log"
        conf = local_nginx_conf(workdir, upstream_port, self.port)
        check = _run([*nginx_argv(workdir, conf), "-t"])
        assert check.returncode == 0, f"nginx -t rejected deploy/nginx.conf:\n{check.stderr}"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            nginx_argv(workdir, conf, "daemon off;"),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers share the master's process group
        )

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"nginx exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"nginx not answering after {timeout}s:\n{self.logs()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def nginx(
    gateway: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NginxProcess]:
    server = NginxProcess(tmp_path_factory.mktemp("nginx"), gateway.port)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_stream_through_nginx_arrives_as_it_is_produced(nginx: NginxProcess) -> None:
    arrivals: list[tuple[float, str]] = []
    with httpx.Client(timeout=10) as client:
        started = time.monotonic()
        with client.stream(
            "POST", f"{nginx.url}/v1/chat/completions", json=STREAM_BODY, headers=AUTH
        ) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers.get("x-request-id")
            assert response.headers.get("x-gateway-served-by") == "upstream/mock-chat"
            assert "content-length" not in response.headers
            assert "content-encoding" not in response.headers  # httpx asks for gzip
            for line in response.iter_lines():
                if line.startswith("data:"):
                    arrivals.append((time.monotonic() - started, line))

    assert arrivals, f"no data lines arrived; nginx log:\n{nginx.logs()}"
    assert arrivals[-1][1] == "data: [DONE]"
    chunks = [json.loads(line[5:]) for _, line in arrivals[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([c for c in content if c]) == 10

    first, last = arrivals[0][0], arrivals[-1][0]
    timeline = ", ".join(f"{t:.2f}" for t, _ in arrivals)
    # Ten tokens at 10/s: the first at once, the last about 0.9 s later.
    # A buffering proxy would deliver them all together at the end.
    assert first < 0.6, f"first chunk after {first:.2f}s (arrivals: {timeline})"
    assert last >= 0.8, f"whole stream in {last:.2f}s (arrivals: {timeline})"
    assert last - first >= 0.6, f"chunks arrived bunched together (arrivals: {timeline})"


def test_request_id_is_shared_through_nginx(nginx: NginxProcess) -> None:
    body = {**STREAM_BODY, "stream": False, "mock": {}}
    sent = httpx.post(
        f"{nginx.url}/v1/chat/completions",
        json=body,
        headers={**AUTH, "X-Request-Id": "deploy-test-42"},
        timeout=10,
    )
    assert sent.status_code == 200, sent.text
    assert sent.headers["x-request-id"] == "deploy-test-42"
    assert sent.json()["object"] == "chat.completion"

    # Without one, nginx makes the id, and its access log names the id the
    # gateway answered with.
    made = httpx.get(f"{nginx.url}/v1/models", headers=AUTH, timeout=10)
    assert made.status_code == 200, made.text
    request_id = made.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    deadline = time.monotonic() + 5
    while f"request_id={request_id}" not in nginx.logs():
        assert time.monotonic() < deadline, f"{request_id} not in nginx's log:\n{nginx.logs()}"
        time.sleep(0.05)
