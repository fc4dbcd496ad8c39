"""The shipped deploy/nginx.conf, run for real in front of gateways on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, free_port

NGINX_CONF = ROOT / "deploy" / "nginx.conf"
SETUP_HINT = "run scripts/test-setup.sh (or `make test`), which installs it"


def nginx_binary() -> str:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"nginx is not installed: {SETUP_HINT}")
    return binary


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"deploy/nginx.conf should contain {old!r} exactly once"
    return text.replace(old, new)


def local_nginx_conf(workdir: Path, upstream_ports: Sequence[int], listen_port: int) -> Path:
    """deploy/nginx.conf aimed at gateways on 127.0.0.1 ports (its one ``server`` line
    becomes one per port), with every file it writes in workdir."""
    text = NGINX_CONF.read_text()
    servers = "\n        ".join(f"server 127.0.0.1:{port};" for port in upstream_ports)
    text = _replace_once(text, "server gateway:8080;", servers)
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
    return [nginx_binary(), *prefix, "-g", " ".join(main)]


class NginxProcess:
    """nginx with the shipped config, in front of the gateways on ``upstream_ports``."""

    def __init__(self, workdir: Path, upstream_ports: int | Sequence[int]) -> None:
        ports = [upstream_ports] if isinstance(upstream_ports, int) else list(upstream_ports)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "nginx.log"
        conf = local_nginx_conf(workdir, ports, self.port)
        check = subprocess.run(
            [*nginx_argv(workdir, conf), "-t"], capture_output=True, text=True, timeout=60
        )
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


@contextmanager
def nginx_in_front(workdir: Path, upstream_ports: int | Sequence[int]) -> Iterator[NginxProcess]:
    """nginx with the shipped config, answering, in front of those gateways; stopped after."""
    server = NginxProcess(workdir, upstream_ports)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
