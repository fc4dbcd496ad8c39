"""gateway/providers/sse.py: incremental SSE decoding and the stream's deadlines."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.errors import UpstreamTimeout, UpstreamUnavailable
from gateway.providers.sse import SSEDecoder, SSEEvent, SSEStream

# Comments, CRLF and LF endings, multi-line data, event names, ignored id and
# retry fields, UTF-8, and a last event without its closing blank line.
WIRE = (
    b": keep-alive\r\n"
    b"event: message_start\r\n"
    b'data: {"a": 1}\r\n'
    b"\r\n"
    b"data: line one\n"
    b"data: line two\n"
    b"\n"
    b": ping\n"
    b"\n"
    b"data:no-space\n"
    b"\n"
    b"data:  two spaces\n"
    b"\n"
    b"id: 7\n"
    b"retry: 1000\n"
    b'data: {"caf\xc3\xa9": "\xe2\x82\xac"}\n'
    b"\n"
    b"event: lonely\n"
    b"\n"
    b"event: done\n"
    b"data: [DONE]"
)
EVENTS = [
    SSEEvent("message_start", b'{"a": 1}'),
    SSEEvent(None, b"line one\nline two"),
    SSEEvent(None, b"no-space"),
    SSEEvent(None, b" two spaces"),
    SSEEvent(None, '{"café": "€"}'.encode()),
    SSEEvent("done", b"[DONE]"),
]


def decode(parts: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for part in parts:
        events.extend(decoder.feed(part))
    events.extend(decoder.close())
    return events


def test_whole_input() -> None:
    assert decode([WIRE]) == EVENTS


def test_byte_by_byte() -> None:
    assert decode([WIRE[i : i + 1] for i in range(len(WIRE))]) == EVENTS


@pytest.mark.parametrize("seed", range(40))
def test_random_splits(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(WIRE)), rng.randint(1, 30)))
    parts = [WIRE[a:b] for a, b in zip([0, *cuts], [*cuts, len(WIRE)], strict=True)]
    assert b"".join(parts) == WIRE
    assert decode(parts) == EVENTS


def test_crlf_split_between_cr_and_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r") == []
    assert decoder.feed(b"\n\r") == []
    assert decoder.feed(b"\n") == [SSEEvent(None, b"x")]


def test_events_are_returned_as_soon_as_complete() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: 1\n\ndata: 2\n") == [SSEEvent(None, b"1")]
    assert decoder.feed(b"\n") == [SSEEvent(None, b"2")]
    assert decoder.close() == []


def test_event_name_does_not_leak_into_the_next_event() -> None:
    assert decode([b"event: a\ndata: 1\n\ndata: 2\n\n"]) == [
        SSEEvent("a", b"1"),
        SSEEvent(None, b"2"),
    ]


def test_empty_data_field_is_an_event() -> None:
    assert decode([b"data\n\ndata:\n\n"]) == [SSEEvent(None, b""), SSEEvent(None, b"")]


def test_comments_and_blank_lines_alone_are_no_events() -> None:
    assert decode([b": ping\n\n\n\n: ping\r\n\r\n"]) == []


def test_close_without_pending_input_is_empty_and_idempotent() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: 1\n\n") == [SSEEvent(None, b"1")]
    assert decoder.close() == []
    assert decoder.close() == []


def test_close_flushes_data_without_trailing_newline() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\ndata: b\n") == []
    assert decoder.close() == [SSEEvent(None, b"a\nb")]


# ---------------------------------------------------------------- SSEStream


async def source(*parts: tuple[float, bytes]) -> AsyncIterator[bytes]:
    """Yield each part after its delay in seconds."""
    for delay, data in parts:
        if delay:
            await asyncio.sleep(delay)
        yield data


def stream(raw: AsyncIterator[bytes], *, first: float, idle: float, total: float) -> SSEStream:
    deadline = asyncio.get_running_loop().time() + total
    return SSEStream(raw, first_token=first, idle=idle, deadline=deadline)


async def test_stream_yields_events_then_stops() -> None:
    raw = source((0, b"data: 1\n\nda"), (0.01, b"ta: 2\n\n"), (0, b": ping\n\n"), (0, b"data: 3"))
    events = [e async for e in stream(raw, first=1, idle=1, total=5)]
    assert events == [SSEEvent(None, b"1"), SSEEvent(None, b"2"), SSEEvent(None, b"3")]


async def test_stream_of_nothing_stops() -> None:
    assert [e async for e in stream(source(), first=1, idle=1, total=5)] == []


async def test_first_token_timeout() -> None:
    loop = asyncio.get_running_loop()
    events = stream(source((5, b"data: late\n\n")), first=0.1, idle=10, total=10)
    started = loop.time()
    with pytest.raises(UpstreamTimeout) as info:
        await anext(events)
    assert info.value.message == "the upstream timed out waiting for the first token"
    assert info.value.status == 504
    assert loop.time() - started < 1


async def test_first_token_counts_until_a_whole_event() -> None:
    # Bytes arrive in time, but no complete event: still waiting for the first token.
    raw = source((0, b"data: par"), (5, b"tial\n\n"))
    events = stream(raw, first=0.1, idle=10, total=10)
    with pytest.raises(UpstreamTimeout, match="waiting for the first token"):
        await anext(events)


async def test_idle_timeout() -> None:
    raw = source((0, b"data: 1\n\n"), (5, b"data: 2\n\n"))
    events = stream(raw, first=10, idle=0.1, total=10)
    assert await anext(events) == SSEEvent(None, b"1")
    with pytest.raises(UpstreamTimeout) as info:
        await anext(events)
    assert info.value.message == "the upstream sent nothing for longer than the idle timeout"
    assert info.value.reason == "timeout_idle"


async def test_idle_gaps_shorter_than_the_limit_are_fine() -> None:
    raw = source(*((0.05, f"data: {i}\n\n".encode()) for i in range(5)))
    events = [e async for e in stream(raw, first=0.5, idle=0.5, total=5)]
    assert [e.data for e in events] == [b"0", b"1", b"2", b"3", b"4"]


async def test_total_deadline_bounds_a_steady_stream() -> None:
    async def forever() -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0.02)
            yield b"data: tick\n\n"

    loop = asyncio.get_running_loop()
    events = stream(forever(), first=5, idle=5, total=0.3)
    started, seen = loop.time(), 0
    with pytest.raises(UpstreamTimeout):
        async for _ in events:
            seen += 1
    assert 3 <= seen < 20
    assert 0.25 <= loop.time() - started < 1.5


async def test_total_deadline_already_passed() -> None:
    events = stream(source((0, b"data: 1\n\n")), first=5, idle=5, total=-1)
    with pytest.raises(UpstreamTimeout) as info:
        await anext(events)
    assert info.value.message == "the upstream took longer than the deployment's total timeout"


class _Numbers(SSEStream):
    """A provider's translation: ints, skipping "skip", ending at "end"."""

    def __init__(self, raw: AsyncIterator[bytes]) -> None:
        deadline = asyncio.get_running_loop().time() + 5
        super().__init__(raw, first_token=1, idle=1, deadline=deadline)
        self.ends = 0

    def translate(self, event: SSEEvent) -> int | None:
        if event.data == b"skip":
            return None
        if event.data == b"end":
            raise StopAsyncIteration
        return int(event.data)

    def ended(self) -> None:
        self.ends += 1
        raise UpstreamUnavailable("ended early")


async def test_a_translating_stream_skips_ends_and_stays_ended() -> None:
    numbers = _Numbers(source((0, b"data: 1\n\ndata: skip\n\n"), (0, b"data: 2\n\ndata: end\n\n")))
    assert [n async for n in numbers] == [1, 2]
    assert numbers.ends == 0, "a translated end is not an early end"
    with pytest.raises(StopAsyncIteration):
        await anext(numbers)


async def test_a_body_ending_before_the_translated_end_is_the_providers_call() -> None:
    numbers = _Numbers(source((0, b"data: 1\n\ndata: 2")))
    assert await anext(numbers) == 1
    assert await anext(numbers) == 2  # the last event, without its blank line, still counts
    with pytest.raises(UpstreamUnavailable, match="ended early"):
        await anext(numbers)
    assert numbers.ends == 1
    with pytest.raises(StopAsyncIteration):
        await anext(numbers)


async def test_a_failed_read_is_a_gateway_error() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        raise httpx.ReadError("connection reset")

    events = stream(broken(), first=1, idle=1, total=5)
    assert await anext(events) == SSEEvent(None, b"1")
    with pytest.raises(UpstreamUnavailable) as info:
        await anext(events)
    assert info.value.message == "the upstream closed the connection mid-answer"
    assert info.value.reason == "stream_cut"


class _Expanding(SSEStream):
    """A translation that makes several items of one event (``emit``).

    ``"3"``: 3a, 3b, 3c; ``"none"``: nothing; ``"later 2"``: none returned, two
    emitted; ``"last 2"``: two emitted, then the end; at the body's end: "flushed".
    """

    def __init__(self, raw: AsyncIterator[bytes]) -> None:
        deadline = asyncio.get_running_loop().time() + 5
        super().__init__(raw, first_token=1, idle=1, deadline=deadline)

    def translate(self, event: SSEEvent) -> str | None:
        text = event.data.decode()
        if text == "none":
            return None
        word, _, count = text.partition(" ")
        if word in ("later", "last"):
            for i in range(int(count)):
                self.emit(f"{word}{i}")
            if word == "last":
                raise StopAsyncIteration
            return None
        items = [f"{text}{letter}" for letter in "abcdefgh"[: int(text)]]
        for item in items[1:]:
            self.emit(item)
        return items[0]

    def ended(self) -> None:
        self.emit("flushed")


async def test_one_event_may_make_several_items_in_order() -> None:
    raw = source((0, b"data: 3\n\ndata: none\n\n"), (0, b"data: 1\n\ndata: later 2\n\n"))
    items = [item async for item in _Expanding(raw)]
    assert items == ["3a", "3b", "3c", "1a", "later0", "later1", "flushed"]


async def test_emitted_items_come_before_the_next_read() -> None:
    reads: list[str] = []

    async def tracked() -> AsyncIterator[bytes]:
        for data in (b"data: 2\n\n", b"data: 1\n\n"):
            reads.append(data.decode().strip())
            yield data

    items = _Expanding(tracked())
    assert await anext(items) == "2a"
    assert await anext(items) == "2b"
    assert reads == ["data: 2"], "the second part is not read while items are due"
    assert await anext(items) == "1a"


async def test_items_emitted_before_the_end_still_come_out() -> None:
    items = _Expanding(source((0, b"data: last 2\n\ndata: 5\n\n")))
    assert [item async for item in items] == ["last0", "last1"]
    with pytest.raises(StopAsyncIteration):
        await anext(items)
