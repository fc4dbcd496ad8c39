#!/usr/bin/env python3
"""CPU per Redis call of the store's clients, one Redis against a Redis Cluster.

The gateway makes two Redis calls per request (admit, settle), each a Lua script
on one slot. This times what one such call costs the calling process, on one
CPU, at 1 and 16 calls in flight, through:

- the lean client (gateway/limits/resp.py) on one Redis, and on a 3-primary
  Redis Cluster (gateway/limits/cluster.py: slot routing over the same
  connection class);
- redis-py's asyncio clients, ``Redis`` and ``RedisCluster``, on the same servers.

It starts its own servers (a Redis and a 3-primary cluster, no replicas, on free
ports, pinned to the other CPU) and stops them at the end. Figures are µs of
this process's CPU per call, medians of ``--rounds``; the README's
"Performance" quotes them.

    .venv/bin/python bench/redis_clients.py [--calls 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.limits.cluster import ClusterClient  # noqa: E402
from gateway.limits.resp import Credentials, RedisConnection, Script  # noqa: E402

CLIENT_CPU, SERVER_CPU = 0, 1
# An admit-shaped script: reads and writes a few keys of one hash tag.
SCRIPT = Script.of(
    "redis.call('INCR', KEYS[1]) redis.call('PEXPIRE', KEYS[1], 60000) "
    "return redis.call('ZCARD', KEYS[2])"
)


def free_port(below: int = 65536) -> int:
    """A free port under ``below`` (a cluster node also listens on its port + 10000)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < below:
            return port


def wait_ping(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server on {port} did not answer")


@contextlib.contextmanager
def servers() -> Iterator[tuple[int, list[int]]]:
    """A plain Redis and a 3-primary cluster: (port, cluster ports)."""
    work = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    procs: list[subprocess.Popen[bytes]] = []

    def start(port: int, *extra: str) -> None:
        directory = work / str(port)
        directory.mkdir()
        argv = ["taskset", "-c", str(SERVER_CPU), "redis-server", "--port", str(port)]
        argv += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *extra]
        log = (directory / "log").open("wb")
        procs.append(subprocess.Popen(argv, cwd=directory, stdout=log, stderr=log))
        wait_ping(port)

    try:
        single = free_port()
        start(single)
        cluster = [free_port(below=55536) for _ in range(3)]
        for port in cluster:
            start(port, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in cluster), "-y"],
            check=True,
            capture_output=True,
        )
        for _ in range(100):  # until every node agrees
            states = [
                subprocess.run(
                    ["redis-cli", "-p", str(p), "cluster", "info"], capture_output=True, text=True
                ).stdout
                for p in cluster
            ]
            if all("cluster_state:ok" in s for s in states):
                break
            time.sleep(0.1)
        yield single, cluster
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


async def cpu_per_call(call: Callable[[int], Awaitable[object]], calls: int, depth: int) -> float:
    """µs of this process's CPU per call, ``depth`` calls in flight."""
    for i in range(200):  # warm: connections, scripts loaded, slot maps read
        await call(i)
    counter = iter(range(calls))

    async def worker() -> None:
        for i in counter:
            await call(i)

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(depth)))
    return (time.process_time() - started) / calls * 1e6


def keys_of(i: int) -> list[str]:
    tag = f"{{key_{i % 1000}}}"  # many keys, so a cluster's calls spread over its primaries
    return [f"bench:{tag}:rpm", f"bench:{tag}:lease"]


async def measure(single: int, cluster: list[int], calls: int, depth: int) -> dict[str, float]:
    import redis.asyncio as redis_py
    from redis.asyncio.cluster import RedisCluster

    lean_single = RedisConnection("127.0.0.1", single, credentials=Credentials(), timeout=2)
    lean_cluster = ClusterClient([("127.0.0.1", cluster[0])], credentials=Credentials(), timeout=2)
    py_single = redis_py.Redis(port=single)
    py_cluster = RedisCluster(host="127.0.0.1", port=cluster[0])
    py_script_single = py_single.register_script(SCRIPT.source)
    py_script_cluster = py_cluster.register_script(SCRIPT.source)
    clients: dict[str, Callable[[int], Awaitable[object]]] = {
        "lean, one Redis": lambda i: lean_single.evalsha(SCRIPT, keys_of(i), []),
        "lean, Redis Cluster": lambda i: lean_cluster.evalsha(SCRIPT, keys_of(i), []),
        "redis-py, one Redis": lambda i: py_script_single(keys=keys_of(i)),
        "redis-py, Redis Cluster": lambda i: py_script_cluster(keys=keys_of(i)),
    }
    try:
        return {name: await cpu_per_call(call, calls, depth) for name, call in clients.items()}
    finally:
        await lean_single.aclose()
        await lean_cluster.aclose()
        await py_single.aclose()
        await py_cluster.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {CLIENT_CPU})
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with servers() as (single, cluster):
        for depth in (1, 16):
            rounds = [
                asyncio.run(measure(single, cluster, args.calls, depth)) for _ in range(args.rounds)
            ]
            print(f"\n{depth} in flight: µs of client CPU per call (median of {args.rounds})")
            base = statistics.median(r["lean, one Redis"] for r in rounds)
            for name in rounds[0]:
                median = statistics.median(r[name] for r in rounds)
                print(f"  {name:<26} {median:7.1f}  ({median / base:.2f}x the lean one-Redis call)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
