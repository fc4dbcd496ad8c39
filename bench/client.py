"""The bench's second, lighter client: time to first token, and many streams held open.

wrk sees neither when the first token arrived nor how many streams were open
at once, so this client does: raw asyncio Protocols on uvloop, one connection
per worker (HTTP/1.1 keep-alive), each worker sending the same request again
and again until ``--duration`` is over (a request started in time finishes).
Workers start ``--ramp / --concurrency`` seconds apart, and each sends at least
one request: with the ramp as long as the duration (the 2,000 held streams),
the last worker's start can fall just after the end, and it must still count.
Every answer is checked like wrk's: status 200, the exact text, a stream ends
with [DONE].

Prints one JSON line: counts, errors by kind (with a sample), time to first
token and latency percentiles (ms), and the most requests open at once.

    python bench/client.py --url http://127.0.0.1:8080/v1/chat/completions \\
        --key sk-... --body '{...}' --expect ' w0 w1' --concurrency 64 --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from urllib.parse import urlsplit

_CONTENT = re.compile(rb'"content":\s*"([^"]*)"')
_DONE = b"data: [DONE]\n\n"

HEAD, CHUNK_SIZE, CHUNK_DATA, TRAILER, BODY = range(5)


class ClientError(Exception):
    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.state = HEAD
        self.need = 0
        self.status = 0
        self.close_after = False
        self.body: list[bytes] = []
        self.first: float | None = None
        self.counted = False  # counted in stats.streaming
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._uncount()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ClientError("connection_lost", str(exc or "closed by peer")))

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        self.state, self.status, self.body, self.first = HEAD, 0, [], None
        self.close_after = False
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)  # type: ignore[union-attr]
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(ClientError("bad_http", repr(exc)))
            self.transport.close()  # type: ignore[union-attr]

    def _parse(self) -> None:
        buf = self.buf
        while self.waiter is not None and not self.waiter.done():
            state = self.state
            if state == HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = bytes(buf[:end]).split(b"\r\n")
                del buf[: end + 4]
                self.status = int(lines[0].split(b" ", 2)[1])
                chunked, length = False, 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name, value = name.strip().lower(), value.strip().lower()
                    if name == b"transfer-encoding" and b"chunked" in value:
                        chunked = True
                    elif name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value == b"close":
                        self.close_after = True
                if chunked:
                    self.state = CHUNK_SIZE
                else:
                    self.state, self.need = BODY, length
            elif state == CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";")[0], 16)
                del buf[: end + 2]
                self.state, self.need = (TRAILER, 0) if size == 0 else (CHUNK_DATA, size)
            elif state == CHUNK_DATA:
                if len(buf) < self.need + 2:
                    return
                data = bytes(buf[: self.need])
                del buf[: self.need + 2]
                if self.first is None and b"data:" in data:
                    self.first = time.perf_counter()
                    stats = self.stats
                    self.counted = True
                    stats.streaming += 1
                    stats.max_streaming = max(stats.max_streaming, stats.streaming)
                self.body.append(data)
                self.state = CHUNK_SIZE
            elif state == TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(buf[:end])
                del buf[: end + 2]
                if not line:
                    self._complete()
            else:  # BODY
                if len(buf) < self.need:
                    return
                data = bytes(buf[: self.need])
                del buf[: self.need]
                if self.first is None:
                    self.first = time.perf_counter()
                self.body.append(data)
                self._complete()

    def _uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.stats.streaming -= 1

    def _complete(self) -> None:
        self.state = HEAD
        self._uncount()
        self.waiter.set_result((self.status, b"".join(self.body)))  # type: ignore[union-attr]


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Stats:
    def __init__(self) -> None:
        self.requests = self.ok = self.non2xx = self.bad_body = 0
        self.errors: dict[str, int] = {}
        self.sample = ""
        self.ttft: list[float] = []
        self.latency: list[float] = []
        self.open = self.max_open = 0  # requests sent and not yet answered in full
        self.streaming = self.max_streaming = 0  # streams past their first event
        self.words = 0

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if not self.sample:
            self.sample = f"{kind}: {detail}"[:300]


def check(status: int, body: bytes, stream: bool, expect: bytes) -> str | None:
    """What is wrong with an answer, or None."""
    if status != 200:
        return f"status {status}: {body[:200]!r}"
    if stream:
        if not body.endswith(_DONE):
            return f"the stream does not end with [DONE]: ...{body[-200:]!r}"
        got = b"".join(_CONTENT.findall(body))
    else:
        match = _CONTENT.search(body)
        got = match.group(1) if match else b""
    if got != expect:
        return f"unexpected text: {got[:100]!r}"
    return None


async def worker(
    index: int, args: argparse.Namespace, request: bytes, expect: bytes, stats: Stats, t0: float
) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t0 + args.ramp * index / args.concurrency - time.perf_counter()))
    end = t0 + args.duration
    conn: Connection | None = None
    first = True
    while first or time.perf_counter() < end:
        first = False
        if conn is None or conn.lost:
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: Connection(stats), args.host, args.port),
                    args.timeout,
                )
            except (OSError, TimeoutError) as exc:
                stats.requests += 1
                stats.error("connect", repr(exc))
                conn = None
                await asyncio.sleep(0.1)
                continue
        stats.requests += 1
        stats.open += 1
        stats.max_open = max(stats.max_open, stats.open)
        started = time.perf_counter()
        try:
            status, body = await asyncio.wait_for(conn.send(request), args.timeout)
        except TimeoutError:
            stats.error("timeout", f"no complete answer within {args.timeout}s")
            conn.transport.close()  # type: ignore[union-attr]
            conn = None
            continue
        except ClientError as exc:
            stats.error(exc.kind, str(exc))
            conn = None
            continue
        finally:
            stats.open -= 1
        finished = time.perf_counter()
        problem = check(status, body, args.stream, expect)
        if problem is None:
            stats.ok += 1
            stats.words += args.words
            stats.latency.append((finished - started) * 1000)
            if conn.first is not None:
                stats.ttft.append((conn.first - started) * 1000)
        elif status != 200:
            stats.non2xx += 1
            stats.error("non2xx", problem)
        else:
            stats.bad_body += 1
            stats.error("bad_body", problem)
        if conn.close_after:
            conn.transport.close()  # type: ignore[union-attr]
            conn = None
    if conn is not None and conn.transport is not None:
        conn.transport.close()


async def run(args: argparse.Namespace) -> dict[str, object]:
    url = urlsplit(args.url)
    args.host, args.port = url.hostname, url.port or 80
    body = args.body.encode()
    headers = [
        f"POST {url.path} HTTP/1.1",
        f"host: {url.netloc}",
        "content-type: application/json",
        f"content-length: {len(body)}",
    ]
    if args.key:
        headers.append(f"authorization: Bearer {args.key}")
    request = ("\r\n".join(headers) + "\r\n\r\n").encode() + body
    args.stream = bool(json.loads(body).get("stream"))
    expect = args.expect.encode()
    args.words = len(args.expect.split())
    stats = Stats()
    t0 = time.perf_counter()
    tasks = [
        asyncio.create_task(worker(i, args, request, expect, stats, t0))
        for i in range(args.concurrency)
    ]
    # Bounded: whatever is still running this long after the end is cut and counted.
    _, pending = await asyncio.wait(tasks, timeout=args.ramp + args.duration + args.timeout + 5)
    for task in pending:
        task.cancel()
        stats.error("cut", "still running at the client's hard deadline")
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            stats.error("client_bug", repr(task.exception()))
    elapsed = time.perf_counter() - t0

    def ms(values: list[float], p: float) -> float | None:
        value = percentile(values, p)
        return None if value is None else round(value, 3)

    return {
        "requests": stats.requests,
        "ok": stats.ok,
        "non2xx": stats.non2xx,
        "bad_body": stats.bad_body,
        "errors": stats.errors,
        "sample": stats.sample,
        "elapsed_s": round(elapsed, 3),
        "words": stats.words,
        "max_open": stats.max_open,
        "max_streaming": stats.max_streaming,
        "ttft_p50_ms": ms(stats.ttft, 50),
        "ttft_p90_ms": ms(stats.ttft, 90),
        "ttft_p99_ms": ms(stats.ttft, 99),
        "p50_ms": ms(stats.latency, 50),
        "p99_ms": ms(stats.latency, 99),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", default="")
    parser.add_argument("--body", required=True, help="the JSON request body")
    parser.add_argument("--expect", required=True, help="the answer's exact text")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--ramp", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--cpu", type=int, help="pin this process to one CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    import uvloop

    result = uvloop.run(run(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
