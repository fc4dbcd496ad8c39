"""Starting and stopping what the bench runs: Redis, the upstream, the gateway, the ceiling, a peer.

Every process is pinned with taskset (the system under test on GATEWAY_CPU; the upstream
and Redis on LOAD_CPU, beside the load generators), binds 127.0.0.1 on a free port, runs
in its own session, and is stopped by its own process group at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from against import Source
from common import BENCH, GATEWAY_CPU, LOAD_CPU, OUT, ROOT, loud, say, venv_python
from measure import Kind, Run, System
from scenarios import Scenario, gateway_config

PEER_SCRIPTS = {"litellm": BENCH / "peers" / "litellm.sh"}
PEER_NOTES = {"litellm": "no per-key limits: needs a database"}

Popen = subprocess.Popen[bytes]


class Processes:
    """Everything the bench started, stopped by its own id (process group) at the end."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, Popen]] = []

    def start(self, name: str, argv: list[str], log: Path, **kw: Any) -> Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw
            )
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: Popen, grace: float = 8.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Children that outlived their leader (same group) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            self.stop(proc, grace=3.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict[str, str]:
    """This environment without anything that would configure a gateway behind our back."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GATEWAY_", "OPENAI_", "REDIS_URL", "LITELLM_"))
    }


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def http(url: str, body: str, key: str = "", timeout: float = 5.0) -> tuple[int, str]:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=body.encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def wait_ready(system: System, proc: Popen, log: Path, timeout: float) -> None:
    """Ready when it answers the bench's own request correctly."""
    scenario = Scenario("ready", 1)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{system.label} exited with {proc.returncode} while starting:\n{tail(log)}"
            )
        try:
            status, text = http(system.url, scenario.body(), system.key, timeout=5)
            if status == 200 and scenario.expect() in text:
                return
            last = f"status {status}: {text[:300]}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{system.label} not ready after {timeout:.0f}s ({last}):\n{tail(log)}")


def _serve(
    procs: Processes,
    system: System,
    cpu: int,
    argv: list[str],
    log: Path,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> Popen:
    """Start ``argv`` pinned to ``cpu`` and wait until ``system`` answers; its pid goes in."""
    proc = procs.start(system.label, ["taskset", "-c", str(cpu), *argv], log, env=env, cwd=cwd)
    system.pid = proc.pid
    try:
        wait_ready(system, proc, log, timeout)
    except BaseException:
        procs.stop(proc)
        raise
    return proc


def _system(label: str, kind: Kind, port: int, key: str = "") -> System:
    return System(label, kind, f"http://127.0.0.1:{port}/v1/chat/completions", key, pid=0)


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(procs: Processes, log_dir: Path) -> tuple[int, int]:
    """The bench's own Redis (no persistence), pinned beside the upstream: (port, pid)."""
    port = free_port()
    log = log_dir / "redis.log"
    argv = [
        "taskset", "-c", str(LOAD_CPU), "redis-server", "--port", str(port),
        "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
    ]  # fmt: skip
    proc = procs.start("redis", argv, log, cwd=log_dir)
    deadline = time.monotonic() + 10
    while not redis_ping(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            procs.stop(proc)
            raise RuntimeError(f"redis-server did not start on port {port}:\n{tail(log)}")
        time.sleep(0.05)
    return port, proc.pid


def start_upstream(procs: Processes, log_dir: Path) -> System:
    port = free_port()
    system = _system("direct", "direct", port)
    argv = [venv_python(), str(BENCH / "upstream.py"), "--host", "127.0.0.1", "--port", str(port)]
    _serve(procs, system, LOAD_CPU, argv, log_dir / "upstream.log", 20)
    return system


def start_gateway(
    procs: Processes,
    upstream: System,
    log_dir: Path,
    redis: tuple[int, int],
    base: Source | None = None,
    quiet: bool = False,
) -> tuple[System, Popen]:
    """The gateway (one uvicorn worker) on the bench's Redis (``redis``: its port and pid):
    this tree's, or with ``base`` that commit's, under its own name, files and Redis database.
    ``quiet``: without its metrics and its access log (what they cost is the difference)."""
    port = free_port()
    key = f"sk-bench-{uuid.uuid4().hex}"
    name = f"base-{base.commit}" if base else "gateway"
    config = log_dir / f"{name}.yaml"  # JSON is YAML: no dependency needed to write it
    cwd = base.root if base else ROOT
    data = gateway_config(upstream.url.rsplit("/chat/", 1)[0], key, log_dir / f"{name}-data", cwd)
    if quiet:
        data["server"]["metrics"] = False
    config.write_text(json.dumps(data, indent=2) + "\n")
    env = {**clean_env(), "REDIS_URL": f"redis://127.0.0.1:{redis[0]}/{1 if base else 0}"}
    system = _system(name, "base" if base else "gateway", port, key)
    system.redis_pid = redis[1]
    argv = [
        venv_python(), "-m", "gateway", "serve", "--config", str(config),
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING" if quiet else "INFO",
    ]  # fmt: skip
    log = log_dir / f"{name}.log"
    proc = _serve(procs, system, GATEWAY_CPU, argv, log, 30, env, cwd)
    return system, proc


def start_ceiling(procs: Processes, log_dir: Path) -> tuple[System, Popen]:
    """bench/ceiling.py: the cheapest FastAPI route, served as the gateway is."""
    port = free_port()
    system = _system("ceiling", "ceiling", port)
    argv = [venv_python(), str(BENCH / "ceiling.py"), "--host", "127.0.0.1", "--port", str(port)]
    proc = _serve(procs, system, GATEWAY_CPU, argv, log_dir / "ceiling.log", 30, clean_env())
    return system, proc


def peer_command(
    args: argparse.Namespace, upstream: System, port: int, key: str
) -> tuple[str, str]:
    """(command, version) of the peer: from its script, or the --peer-cmd template."""
    base = upstream.url.rsplit("/chat/", 1)[0]
    if args.peer_cmd:
        return args.peer_cmd.format(port=port, upstream=base, key=key), ""
    script = PEER_SCRIPTS[args.peer]
    env = {
        **clean_env(),
        "BENCH_UPSTREAM": base,
        "BENCH_PORT": str(port),
        "BENCH_KEY": key,
        "BENCH_OUT": str(OUT / f"peer-{args.peer}"),
    }
    done = subprocess.run(
        ["bash", str(script)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{script.relative_to(ROOT)} failed (exit {done.returncode}):\n"
            f"{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
        )
    command = version = ""
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_CMD "):
            command = line.removeprefix("BENCH_CMD ")
        elif line.startswith("BENCH_VERSION "):
            version = line.removeprefix("BENCH_VERSION ")
    if not command:
        raise RuntimeError(f"{script.relative_to(ROOT)} printed no BENCH_CMD line")
    return command, version


def start_peer(
    procs: Processes, args: argparse.Namespace, upstream: System, run: Run
) -> tuple[System, Popen] | None:
    """The peer gateway, or None (reported in ``run``) when it fails to start."""
    name = args.peer or args.peer_name
    note = args.peer_note if args.peer_note is not None else PEER_NOTES.get(name, "")
    run.peer.update(name=name, note=note, status="starting")
    port = free_port()
    key = args.peer_key or f"sk-bench-peer-{uuid.uuid4().hex[:16]}"
    system = _system(name, "peer", port, key)
    try:
        command, version = peer_command(args, upstream, port, key)
        run.peer.update(version=version, cmd=command.replace(str(ROOT) + "/", ""))
        say(f"starting the peer {name}: {run.peer['cmd']}")
        log = OUT / f"peer-{name}.log"
        argv = shlex.split(command)
        proc = _serve(procs, system, GATEWAY_CPU, argv, log, args.peer_start_timeout, clean_env())
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        reason = str(exc)
        run.peer["status"] = f"failed to start: {reason}"
        loud(f"the peer {name} failed to start; the run goes on without it:\n{reason}")
        run.problems.append(f"peer {name} failed to start: {reason.splitlines()[0]}")
        return None
    run.peer["status"] = "ran"
    return system, proc
