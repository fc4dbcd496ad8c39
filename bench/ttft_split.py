"""Where the gateway's added time to first token goes: on the way in, or on the way out.

    python bench/ttft_split.py [--rounds 3] [--streams 60]

Runs the bench's Redis, upstream and gateway as the bench does (gateway on CPU 0, the
rest on CPU 1) and sends stamped streams (``"mock": {"stamp": true}``): the upstream
writes, as the first chunk's text, when the request reached it and when it wrote that
chunk. Every process reads the same clock (``time.perf_counter()``), so each stream
splits into

- *in*: the client sending the request -> the upstream having it (for the gateway:
  auth, parsing, the Redis admit, building the upstream request, and every wake-up
  of a CPU on the way);
- *out*: the upstream writing the first chunk -> the client reading it.

Both are printed for the upstream directly and through the gateway, medians in µs,
for 4 paced streams started spread over one stream's length and for one connection
back to back. Nothing is written: it is a tool for working on the hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time

from common import LOAD_CPU, OUT, venv_python
from procs import Processes, start_gateway, start_redis, start_upstream

_STAMP = re.compile(rb'"content":"@([0-9.]+) ([0-9.]+)"')
# name, connections, ms between chunks, spread of the connections' starts (s)
SHAPES = (("paced c4", 4, 5, 0.105), ("back to back c1", 1, 0, 0.0))


async def _connection(port: int, head: bytes, streams: int, delay: float) -> list[tuple]:
    await asyncio.sleep(delay)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    split = []
    for _ in range(streams):
        sent, first, buf = time.perf_counter(), None, b""
        writer.write(head)
        while not buf.endswith(b"0\r\n\r\n"):
            data = await reader.read(65536)
            if not data:
                raise RuntimeError(f"connection closed; got {buf[:300]!r}")
            if first is None and b"data:" in data:
                first = time.perf_counter()
            buf += data
        stamp = _STAMP.search(buf)
        if stamp is None or first is None:
            raise RuntimeError(f"no stamped first chunk in {buf[:300]!r}")
        arrived, written = float(stamp.group(1)), float(stamp.group(2))
        split.append((arrived - sent, first - written, first - sent))
    writer.close()
    return split


async def _client(port: int, key: str, conns: int, interval: int, spread: float, n: int) -> list:
    body = json.dumps(
        {
            "model": "bench",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Say the benchmark's words, please."}],
            "mock": {"chunks": 20, "ttft_ms": 10, "interval_ms": interval, "stamp": True},
        }
    ).encode()
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\n{auth}content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    await _connection(port, head, 5, 0)  # warm up
    runs = await asyncio.gather(
        *(_connection(port, head, n, spread * i / conns) for i in range(conns))
    )
    return [s for run in runs for s in run]


def _measure(port: int, key: str, shape: tuple, n: int) -> tuple[float, float, float]:
    """Medians of (in, out, total) in µs, from a client process pinned beside the upstream."""
    _, conns, interval, spread = shape
    argv = [venv_python(), __file__, "--client", str(port), key or "-"]
    argv += [str(conns), str(interval), str(spread), str(n)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    split = json.loads(out.stdout)
    return tuple(statistics.median(s[i] for s in split) * 1e6 for i in range(3))  # type: ignore[return-value]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, key, conns, interval, spread, n = sys.argv[2:8]
        os.sched_setaffinity(0, {LOAD_CPU})
        import uvloop

        split = uvloop.run(
            _client(
                int(port),
                "" if key == "-" else key,
                int(conns),
                int(interval),
                float(spread),
                int(n),
            )
        )
        print(json.dumps(split))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=60, help="per connection and round")
    args = parser.parse_args()
    procs = Processes()
    logs = OUT / "ttft-split"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        redis = start_redis(procs, logs)
        upstream = start_upstream(procs, logs)
        gateway, _ = start_gateway(procs, upstream, logs, redis)
        ports = {s.label: int(s.url.split(":")[2].split("/")[0]) for s in (upstream, gateway)}
        print("medians in µs; in = client -> upstream, out = upstream -> client")
        for _ in range(args.rounds):
            for shape in SHAPES:
                d = _measure(ports["direct"], "", shape, args.streams)
                g = _measure(ports["gateway"], gateway.key, shape, args.streams)
                print(
                    f"{shape[0]:16} in {d[0]:5.0f} -> {g[0]:5.0f} (+{g[0] - d[0]:4.0f})"
                    f"   out {d[1]:5.0f} -> {g[1]:5.0f} (+{g[1] - d[1]:4.0f})"
                    f"   added TTFT {g[2] - d[2]:+5.0f}",
                    flush=True,
                )
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
