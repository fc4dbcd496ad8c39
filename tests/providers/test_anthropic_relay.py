"""gateway/providers/anthropic/relay.py and the adapter's pass-through calls.

A client's own Messages body goes upstream as it is, with the client's
``anthropic-version`` and ``anthropic-beta``; the answer is parsed once for its
usage; the stream's events are relayed as they came, ``ping`` included, with
the usage of ``message_start`` and ``message_delta`` kept, an ``error`` event
turned into the typed error and a body cut before ``message_stop`` refused.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gateway.config import Deployment, ProviderConfig
from gateway.errors import Reason, UpstreamRateLimited, UpstreamUnavailable
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import CallContext, speaks_messages
from gateway.providers.mock import MockProvider
from gateway.transport import Upstream

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "anthropic"
BODY = b'{"model":"claude-up","max_tokens":9,"messages":[],"cache_control":{"type":"ephemeral"}}'


def _provider(handler: httpx.MockTransport) -> AnthropicProvider:
    config = ProviderConfig(type="anthropic", base_url="https://anthropic.test", api_key="sk-ant-x")
    upstream = Upstream(httpx.AsyncClient(transport=handler), handler)
    return AnthropicProvider("claude", config, upstream)


def _ctx(**headers: str) -> CallContext:
    deployment = Deployment(provider="claude", model="claude-up")
    return CallContext(request_id="req-1", deployment=deployment, client_headers=headers or None)


def _replay(status: int, content: bytes, seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, content=content)

    return httpx.MockTransport(handler)


def test_only_providers_that_speak_the_messages_api_are_passed_through() -> None:
    assert speaks_messages(_provider(_replay(200, b"{}", [])))
    assert not speaks_messages(MockProvider("m", ProviderConfig(type="mock"), None))  # type: ignore[arg-type]


async def test_the_answer_and_its_usage() -> None:
    seen: list[httpx.Request] = []
    content = (FIXTURES / "message.json").read_bytes()
    provider = _provider(_replay(200, content, seen))
    answer, usage = await provider.messages(BODY, _ctx(**{"anthropic-beta": "b1"}))
    assert answer["type"] == "message"
    assert usage.prompt_tokens > 0
    (sent,) = seen
    assert sent.content == BODY
    assert sent.headers["anthropic-beta"] == "b1"
    assert sent.headers["anthropic-version"] == "2023-06-01"


async def test_the_stream_is_relayed_event_by_event() -> None:
    content = (FIXTURES / "stream_tool_use.sse").read_bytes()
    provider = _provider(_replay(200, content, []))
    async with provider.messages_stream(BODY, _ctx()) as events:
        names = [event.event async for event in events]
        usage = events.usage
    expected = [
        line[len("event: ") :]
        for line in content.decode().splitlines()
        if line.startswith("event: ")
    ]
    assert names == expected
    assert "ping" in names
    assert names[-1] == "message_stop"
    assert usage is not None
    assert usage.completion_tokens > 0


async def test_an_error_event_is_the_typed_error() -> None:
    content = (FIXTURES / "stream_error.sse").read_bytes()
    provider = _provider(_replay(200, content, []))
    async with provider.messages_stream(BODY, _ctx()) as events:
        with pytest.raises(UpstreamUnavailable) as caught:
            async for _ in events:
                pass
        assert events.usage is not None  # message_start's input, for the settle
    assert caught.value.reason == Reason.ERROR_EVENT


async def test_a_stream_cut_before_message_stop_is_refused() -> None:
    content = (FIXTURES / "stream_tool_use.sse").read_bytes().split(b"event: message_stop")[0]
    provider = _provider(_replay(200, content, []))
    async with provider.messages_stream(BODY, _ctx()) as events:
        with pytest.raises(UpstreamUnavailable) as caught:
            async for _ in events:
                pass
    assert caught.value.reason == Reason.STREAM_CUT


async def test_an_error_status_is_the_typed_error() -> None:
    content = (FIXTURES / "error_429.json").read_bytes()
    provider = _provider(_replay(429, content, []))
    with pytest.raises(UpstreamRateLimited):
        async with provider.messages_stream(BODY, _ctx()):
            pass
    with pytest.raises(UpstreamRateLimited):
        await provider.messages(BODY, _ctx())
