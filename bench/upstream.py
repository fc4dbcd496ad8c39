"""A lean OpenAI- and Anthropic-compatible upstream for the benchmark: raw asyncio
Protocols on uvloop.

No framework: it shares a core with the load generator and must never be the
bottleneck (the bench prints its direct figure beside the gateway's). It
answers ``POST /v1/chat/completions`` (OpenAI's chat completions) and
``POST /v1/messages`` (Anthropic's Messages API) over HTTP/1.1 keep-alive,
non-stream and SSE (chunked transfer encoding, one write per event), and
``GET /health``.

Per-request knobs come from the body field ``"mock"`` (a gateway's openai provider forwards
unknown fields untouched)::

    {"mock": {"chunks": 20, "ttft_ms": 0, "interval_ms": 0}}

The answer's text is deterministic: ``chunks`` words " w0 w1 ... w{N-1}"; a
stream sends one word per chunk (the first with the role, the last with
``finish_reason``), then a usage chunk when ``stream_options.include_usage``
is true, then ``data: [DONE]``. A non-stream answer carries the whole text and
its usage. Headers of a stream go out at once; its first chunk after
``ttft_ms``, each later one ``interval_ms`` after the previous.

A Messages call answers the same words. A gateway's ``anthropic`` provider
sends only the fields the Messages API knows, so its knobs come from the model
name it asks for: ``chunks-N``, ``ttft-N`` and ``interval-N`` anywhere in it
(``"bench-chunks-20"``: 20 words, no delay; a knob not named: 16 words, 0 ms);
a ``mock`` field, when a client sends one, wins. A stream sends Anthropic's
events in the order its documentation shows, each as ``event: <type>`` and
``data: {...}``: ``message_start`` (``usage.input_tokens``),
``content_block_start`` (an empty text block), one ``ping``, one
``content_block_delta`` (``text_delta``) per word, ``content_block_stop``,
``message_delta`` (``stop_reason: end_turn``, ``usage.output_tokens``) and
``message_stop``; the words are paced as a chat stream's chunks are. A
non-stream call answers a ``message`` with one text block.

    python bench/upstream.py --port 9000 [--cpu 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import sys
import time

DEFAULT_CHUNKS = 16
CREATED = 1_700_000_000
MAX_HEAD = 64 * 1024
MAX_BODY = 8 * 1024 * 1024
_CACHE_MAX = 512

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def text(words: int) -> str:
    """The answer's text: what a checker expects, word by word."""
    return "".join(f" w{i}" for i in range(words))


def _usage(prompt: int, words: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": words, "total_tokens": prompt + words}


def _prompt_tokens(request: dict) -> int:
    chars = 0
    for message in request.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
    return chars // 4 + 1


_completions: dict[tuple[str, int, int], bytes] = {}
_streams: dict[tuple[str, int, int, bool], tuple[bytes, ...]] = {}


def completion_response(model: str, words: int, prompt: int, close: bool) -> bytes:
    key = (model, words, prompt)
    body = _completions.get(key)
    if body is None:
        if len(_completions) >= _CACHE_MAX:
            _completions.clear()
        body = _completions[key] = _dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": CREATED,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text(words)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage(prompt, words),
            }
        ).encode()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n" % (
        len(body),
        b"connection: close\r\n" if close else b"",
    )
    return head + body


def _frame(payload: bytes) -> bytes:
    """One SSE event as one HTTP chunk."""
    data = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def stream_frames(model: str, words: int, prompt: int, usage: bool) -> tuple[bytes, ...]:
    """Every write of a stream's body, in order: the chunks, then [DONE] and the end."""
    key = (model, words, prompt, usage)
    frames = _streams.get(key)
    if frames is not None:
        return frames
    if len(_streams) >= _CACHE_MAX:
        _streams.clear()
    out = []
    for i in range(words):
        delta = {"role": "assistant", "content": f" w{i}"} if i == 0 else {"content": f" w{i}"}
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [
                {"index": 0, "delta": delta, "finish_reason": "stop" if i == words - 1 else None}
            ],
        }
        out.append(_frame(_dumps(chunk).encode()))
    if usage:
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [],
            "usage": _usage(prompt, words),
        }
        out.append(_frame(_dumps(chunk).encode()))
    out.append(_frame(b"[DONE]") + b"0\r\n\r\n")
    frames = _streams[key] = tuple(out)
    return frames


_KNOB = re.compile(r"(chunks|ttft|interval)-(\d+)")
_KNOB_NAMES = {"chunks": "chunks", "ttft": "ttft_ms", "interval": "interval_ms"}
_model_knobs: dict[str, dict[str, int]] = {}


def model_knobs(model: str) -> dict[str, int]:
    """The knobs a Messages call's model name carries (``bench-chunks-20-ttft-10``)."""
    knobs = _model_knobs.get(model)
    if knobs is None:
        if len(_model_knobs) >= _CACHE_MAX:
            _model_knobs.clear()
        knobs = _model_knobs[model] = {
            _KNOB_NAMES[name]: int(value) for name, value in _KNOB.findall(model)
        }
    return knobs


def _message_prompt_tokens(request: dict) -> int:
    """A Messages body's prompt size, as ``_prompt_tokens``: its texts' characters / 4."""
    chars = 0
    for message in request.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and isinstance(block.get("text"), str):
                    chars += len(block["text"])
    return chars // 4 + 1


_message_answers: dict[tuple[str, int, int], bytes] = {}
_message_streams: dict[tuple[str, int, int], tuple[bytes, ...]] = {}


def message_response(model: str, words: int, prompt: int, close: bool) -> bytes:
    """A non-stream Messages answer: one ``message`` with the words in one text block."""
    key = (model, words, prompt)
    body = _message_answers.get(key)
    if body is None:
        if len(_message_answers) >= _CACHE_MAX:
            _message_answers.clear()
        body = _message_answers[key] = _dumps(
            {
                "id": "msg_bench",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text(words)}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": prompt, "output_tokens": words},
            }
        ).encode()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n" % (
        len(body),
        b"connection: close\r\n" if close else b"",
    )
    return head + body


def _event(kind: str, payload: dict) -> bytes:
    """One named SSE event (``event:`` and ``data:`` lines) as one HTTP chunk."""
    data = b"event: %s\ndata: %s\n\n" % (kind.encode(), _dumps(payload).encode())
    return b"%x\r\n%s\r\n" % (len(data), data)


def message_frames(model: str, words: int, prompt: int) -> tuple[bytes, ...]:
    """Every write of a Messages stream's body, in order, one event each: the three
    before the first word (``MESSAGE_WORDS_FROM``), a delta per word, the three after
    it (``message_stop`` with the body's end)."""
    key = (model, words, prompt)
    frames = _message_streams.get(key)
    if frames is not None:
        return frames
    if len(_message_streams) >= _CACHE_MAX:
        _message_streams.clear()
    start = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": 1},
    }
    block = {"type": "text", "text": ""}
    out = [
        _event("message_start", {"type": "message_start", "message": start}),
        _event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        ),
        _event("ping", {"type": "ping"}),
    ]
    for i in range(words):
        delta = {"type": "text_delta", "text": f" w{i}"}
        out.append(
            _event(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        )
    stop = {"stop_reason": "end_turn", "stop_sequence": None}
    out += [
        _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _event(
            "message_delta",
            {"type": "message_delta", "delta": stop, "usage": {"output_tokens": words}},
        ),
        _event("message_stop", {"type": "message_stop"}) + b"0\r\n\r\n",
    ]
    frames = _message_streams[key] = tuple(out)
    return frames


MESSAGE_WORDS_FROM = 3  # the index of a Messages stream's first word in its writes


def stamp_frame(arrived: float) -> bytes:
    """A stamped stream's first chunk: its text is when the request arrived and when
    this chunk was written (``time.perf_counter()``, the same clock in every process
    of the machine), for bench/ttft_split.py."""
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "delta": {
                    "role": "assistant",
                    "content": f"@{arrived:.7f} {time.perf_counter():.7f}",
                },
                "finish_reason": None,
            }
        ],
    }
    return _frame(_dumps(chunk).encode())


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n"
)


def _simple(status: bytes, body: bytes, close: bool = False) -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        b"connection: close\r\n" if close else b"",
        body,
    )


class Upstream(asyncio.Protocol):
    """One client connection: requests are answered one at a time, in order."""

    __slots__ = (
        "_buf",
        "_busy",
        "_close_after",
        "_frames",
        "_handle",
        "_interval",
        "_loop",
        "_next",
        "_paced_from",
        "_paced_to",
        "_paused",
        "_stalled",
        "_stamp",
        "_transport",
    )

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self._busy = False
        self._transport: asyncio.Transport | None = None
        self._handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._frames: tuple[bytes, ...] = ()
        self._next = 0
        # Writes paced ``interval`` apart: those of the words after the first.
        self._paced_from = self._paced_to = 0
        self._interval = 0.0
        self._close_after = False
        self._paused = False
        self._stalled = False
        self._stamp: float | None = None  # when a stamped stream's request arrived

    # ---------------------------------------------------------------- transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._transport = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._stalled:
            self._stalled = False
            self._step()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._process()

    # ---------------------------------------------------------------- requests

    def _process(self) -> None:
        buf = self._buf
        while not self._busy and self._transport is not None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._fail(b"431 Request Header Fields Too Large")
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            try:
                method, target, version = lines[0].split(b" ", 2)
            except ValueError:
                self._fail(b"400 Bad Request")
                return
            length = 0
            close = version == b"HTTP/1.0"
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip() or b"0")
                elif name == b"connection":
                    token = value.strip().lower()
                    close = token == b"close" or (close and token != b"keep-alive")
                elif name == b"transfer-encoding":
                    self._fail(b"411 Length Required")
                    return
            if length > MAX_BODY:
                self._fail(b"413 Content Too Large")
                return
            if len(buf) < end + 4 + length:
                return
            body = bytes(buf[end + 4 : end + 4 + length])
            del buf[: end + 4 + length]
            self._close_after = close
            self._route(method, target, body)

    def _fail(self, status: bytes) -> None:
        if self._transport is not None:
            self._transport.write(_simple(status, status + b"\n", close=True))
            self._transport.close()

    def _route(self, method: bytes, target: bytes, body: bytes) -> None:
        path = target.partition(b"?")[0]
        if method == b"POST" and path.endswith(b"/chat/completions"):
            self._chat(body)
        elif method == b"POST" and path.endswith(b"/v1/messages"):
            self._messages(body)
        elif method == b"GET" and path in (b"/health", b"/v1/health"):
            self._reply(_simple(b"200 OK", b"ok\n", self._close_after))
        else:
            self._reply(_simple(b"404 Not Found", b"not found\n", self._close_after))

    def _reply(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        transport.write(data)
        if self._close_after:
            transport.close()

    def _bad_request(self, exc: Exception) -> None:
        message = _dumps({"error": {"message": f"bad request: {exc}", "type": "bench"}})
        self._reply(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(message), message.encode())
        )

    def _chat(self, body: bytes) -> None:
        try:
            request = json.loads(body)
            mock = request.get("mock") or {}
            words = int(mock.get("chunks", DEFAULT_CHUNKS))
            ttft = float(mock.get("ttft_ms", 0)) / 1000
            interval = float(mock.get("interval_ms", 0)) / 1000
            model = str(request.get("model") or "bench")
            if words < 1:
                raise ValueError("chunks must be at least 1")
        except (ValueError, TypeError, AttributeError) as exc:
            self._bad_request(exc)
            return
        prompt = _prompt_tokens(request)
        if not request.get("stream"):
            self._answer(completion_response(model, words, prompt, self._close_after), ttft)
            return
        options = request.get("stream_options") or {}
        usage = bool(isinstance(options, dict) and options.get("include_usage"))
        self._stamp = time.perf_counter() if mock.get("stamp") else None
        self._stream(stream_frames(model, words, prompt, usage), 0, words, ttft, interval)

    def _messages(self, body: bytes) -> None:
        """Anthropic's Messages API: the knobs from ``mock``, else from the model's name."""
        try:
            request = json.loads(body)
            model = str(request.get("model") or "bench")
            mock = request.get("mock") or model_knobs(model)
            words = int(mock.get("chunks", DEFAULT_CHUNKS))
            ttft = float(mock.get("ttft_ms", 0)) / 1000
            interval = float(mock.get("interval_ms", 0)) / 1000
            if words < 1:
                raise ValueError("chunks must be at least 1")
        except (ValueError, TypeError, AttributeError) as exc:
            self._bad_request(exc)
            return
        prompt = _message_prompt_tokens(request)
        if not request.get("stream"):
            self._answer(message_response(model, words, prompt, self._close_after), ttft)
            return
        self._stamp = None
        frames = message_frames(model, words, prompt)
        self._stream(frames, MESSAGE_WORDS_FROM, words, ttft, interval)

    def _answer(self, data: bytes, ttft: float) -> None:
        if ttft > 0:
            self._busy = True
            self._handle = self._loop.call_later(ttft, self._delayed, data)
        else:
            self._reply(data)

    def _stream(
        self, frames: tuple[bytes, ...], first: int, words: int, ttft: float, interval: float
    ) -> None:
        """Send ``frames``, the first word's at index ``first``: the head at once, the
        frames from ``ttft`` on, each word after the first ``interval`` after the previous."""
        self._busy = True
        self._frames = frames
        self._next = 0
        self._paced_from, self._paced_to = first + 1, first + words
        self._interval = interval
        head = STREAM_HEAD + (b"connection: close\r\n\r\n" if self._close_after else b"\r\n")
        self._transport.write(head)  # type: ignore[union-attr]
        if ttft > 0:
            self._handle = self._loop.call_later(ttft, self._step)
        else:
            self._handle = self._loop.call_soon(self._step)

    def _delayed(self, data: bytes) -> None:
        self._handle = None
        self._busy = False
        self._reply(data)
        self._process()

    def _step(self) -> None:
        """Write the stream's next chunk, each with its own write (its own send).

        Paced chunks are written one per timer; unpaced ones (and the usage chunk
        and [DONE], which follow the last word at once, as OpenAI's do; a Messages
        stream's events around its words likewise) back to back, until the
        transport asks to pause.
        """
        self._handle = None
        transport = self._transport
        if transport is None:
            return
        frames = self._frames
        end = len(frames)
        i = self._next
        while not self._paused:
            if i == 0 and self._stamp is not None:
                transport.write(stamp_frame(self._stamp))
            else:
                transport.write(frames[i])
            i += 1
            if i == end:
                break
            if self._interval > 0 and self._paced_from <= i < self._paced_to:
                self._next = i
                self._handle = self._loop.call_later(self._interval, self._step)
                return
        self._next = i
        if i < end:
            self._stalled = True  # resume_writing goes on
            return
        self._busy = False
        self._frames = ()
        if self._close_after:
            transport.close()
            return
        if self._buf:
            self._process()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, host, port, backlog=8192, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"upstream: http://{host}:{port}/v1 (pid {os.getpid()})", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--cpu", type=int, help="pin this process to one CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    try:
        import uvloop
    except ImportError:
        print("upstream: uvloop is missing (run with the project's venv)", file=sys.stderr)
        return 1
    uvloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
