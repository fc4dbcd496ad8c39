"""gateway/routing/deployments.py: choosing a usable deployment, and one call to it.

Choosing: a call skips deployments that are cooling down, at their
``max_parallel`` or (on a retry) already tried, while another is usable; when
every one is cooling, the one whose cooldown ends first is tried; an embeddings
call goes only to deployments that embed. Calling a stream: ``open`` reads it up
to its first output and no further; a bare role announcement is not output.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
import respx

from gateway.errors import InvalidRequest, UpstreamUnavailable
from gateway.routing.deployments import DeploymentsBusy
from gateway.schemas.openai import ChatCompletionChunk
from tests.routing.conftest import GatewayFactory
from tests.routing.support import (
    DONE,
    FIRST,
    LAST,
    ROLE,
    USAGE,
    Body,
    Clock,
    Gateway,
    chat,
    chunk,
    completion,
    embed,
    frame,
    names,
    openai_providers,
    read_all,
    sse,
    url,
    whole_stream,
)


async def served_by(gw: Gateway, model: str = "m", **fields: Any) -> str:
    answered = await gw.answer(chat(model, **fields))
    return answered.attempt.target.name


# ---------------------------------------------------------------- choosing

TWO = f"""
providers:
  demo: {{type: mock}}
models:
  m:
    routing: {{retries: {{attempts: 1}}, cooldown: {{failures: 1, seconds: 30}}}}
    deployments:
      - {{provider: demo, model: a, weight: {FIRST}}}
      - {{provider: demo, model: b, weight: {LAST}}}
"""


async def test_a_cooling_deployment_is_skipped_then_tried_again(gateway: GatewayFactory) -> None:
    clock = Clock()
    gw = gateway(TWO, clock=clock)
    random.seed(1)
    with pytest.raises(UpstreamUnavailable):
        await served_by(gw, mock={"models": {"a": {"status": 500}}})
    assert {await served_by(gw) for _ in range(20)} == {"demo/b"}
    clock.now += 29.9
    assert await served_by(gw) == "demo/b"
    clock.now += 0.1
    assert await served_by(gw) == "demo/a"


async def test_when_every_deployment_cools_the_first_to_end_is_tried(
    gateway: GatewayFactory,
) -> None:
    clock = Clock()
    gw = gateway(TWO, clock=clock)
    random.seed(2)
    with pytest.raises(UpstreamUnavailable):  # a: cooling until 1030
        await served_by(gw, mock={"models": {"a": {"status": 500}}})
    clock.now += 10
    with pytest.raises(UpstreamUnavailable):  # b: cooling until 1040
        await served_by(gw, mock={"models": {"b": {"status": 500}}})
    clock.now += 10
    assert await served_by(gw) == "demo/a"
    # Still cooling (a success does not end a cooldown): the next call goes there too.
    assert await served_by(gw) == "demo/a"


async def test_a_single_deployment_is_tried_even_while_cooling(gateway: GatewayFactory) -> None:
    gw = gateway(TWO.replace(f"      - {{provider: demo, model: b, weight: {LAST}}}\n", ""))
    with pytest.raises(UpstreamUnavailable):
        await served_by(gw, mock={"status": 500})
    assert gw.state["demo/a"].cooling(gw.state.clock())
    assert await served_by(gw) == "demo/a"


async def test_a_retry_goes_to_the_deployments_not_tried_yet(gateway: GatewayFactory) -> None:
    gw = gateway(
        f"""
providers:
  demo: {{type: mock}}
models:
  m:
    routing: {{retries: {{attempts: 4, backoff_ms: 1}}}}
    deployments:
      - {{provider: demo, model: a, weight: {FIRST}}}
      - {{provider: demo, model: b, weight: 1000}}
      - {{provider: demo, model: c, weight: {LAST}}}
"""
    )
    random.seed(3)
    call = chat("m", mock={"models": {"a": {"status": 500}, "b": {"status": 503}}})
    answered = await gw.answer(call)
    assert names(call) == ["demo/a", "demo/b", "demo/c"]
    assert answered.attempt is call.attempts[-1]
    assert [a.error is not None for a in call.attempts] == [True, True, False]


BUSY = f"""
providers:
  demo: {{type: mock}}
models:
  m:
    deployments:
      - {{provider: demo, model: a, weight: {FIRST}, max_parallel: 1}}
      - {{provider: demo, model: b, weight: {LAST}, max_parallel: 1}}
"""


async def test_a_deployment_at_its_max_parallel_is_skipped(gateway: GatewayFactory) -> None:
    gw = gateway(BUSY)
    random.seed(4)
    held_a = await gw.stream(chat("m", stream=True))
    await held_a.open()
    assert names(held_a.call) == ["demo/a"]
    assert {await served_by(gw) for _ in range(10)} == {"demo/b"}

    held_b = await gw.stream(chat("m", stream=True))
    await held_b.open()
    assert names(held_b.call) == ["demo/b"]
    call = chat("m")
    with pytest.raises(DeploymentsBusy) as raised:
        await gw.answer(call)
    assert raised.value.status == 429
    assert raised.value.code == "deployments_busy"
    assert raised.value.response_headers()["retry-after"] == "1"
    assert call.attempts == []  # no upstream was called

    await held_a.close(None, None, 1, left=False)
    assert await served_by(gw) == "demo/a"
    await held_b.close(None, None, 1, left=False)


EMBEDS = f"""
providers:
  chat-only: {{type: anthropic, base_url: 'https://chat-only.test', api_key: sk-anthropic-x}}
  demo: {{type: mock}}
models:
  mixed:
    deployments:
      - {{provider: chat-only, model: claude-x, weight: {FIRST}}}
      - {{provider: demo, model: embedder, weight: {LAST}}}
  talk:
    deployments: [{{provider: chat-only, model: claude-x}}]
"""


async def test_an_embeddings_call_goes_only_to_deployments_that_embed(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(EMBEDS)
    random.seed(5)
    for _ in range(10):
        call = embed("mixed")
        answered = await gw.answer(call)
        assert names(call) == ["demo/embedder"]
        assert answered.usage is not None
        assert answered.usage.prompt_tokens > 0
    with pytest.raises(InvalidRequest) as raised:
        await gw.answer(embed("talk"))
    assert (raised.value.status, raised.value.param) == (400, "model")
    assert "does not support embeddings" in raised.value.message
    assert upstream.calls.call_count == 0


# ---------------------------------------------------------------- one call

STREAMED = f"""
providers:
{openai_providers("a", "b")}
models:
  m:
    routing: {{retries: {{attempts: 2, backoff_ms: 1}}}}
    deployments:
      - {{provider: a, model: up-a, weight: {FIRST}}}
      - {{provider: b, model: up-b, weight: {LAST}}}
"""


async def test_open_reads_up_to_the_first_output_and_no_further(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(STREAMED)
    rest = asyncio.Event()
    body = Body(
        [
            frame(ROLE),
            frame(chunk({"content": "Hel"})),
            rest,  # nothing more arrives until the test says so
            frame(chunk({"content": "lo"})),
            frame(chunk({}, "stop")),
            frame(USAGE),
            DONE,
        ]
    )
    route = upstream.post(url("a")).mock(return_value=sse(body))
    random.seed(6)
    stream = await gw.stream(chat("m", stream=True))
    assert route.call_count == 0  # run() hands back a stream not opened yet

    opened = await stream.open()
    assert json.loads(route.calls.last.request.content)["model"] == "up-a"
    assert [c.choices[0].delta.content for c in opened.head] == ["", "Hel"]
    assert body.read == 2
    assert gw.state["a/up-a"].in_flight == 1

    rest.set()
    tail = [item async for item in opened.rest]
    assert [c.choices[0].delta.content for c in tail if c.choices] == ["lo", None]
    assert tail[-1].usage is not None
    await stream.close(None, tail[-1].usage, 4, left=False)
    assert body.closed
    attempt = stream.call.attempts[0]
    assert (attempt.usage, attempt.outputs, attempt.error) == (tail[-1].usage, 4, None)
    assert gw.state["a/up-a"].in_flight == 0


@pytest.mark.parametrize(
    "first_output",
    [
        chunk({"content": "Hi"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f"}}]}),
        chunk({"reasoning_content": "thinking"}),
        chunk({}, "stop"),
        USAGE,
    ],
    ids=["text", "tool-call", "reasoning", "finish", "usage"],
)
async def test_the_first_output_is_any_content_not_a_role_announcement(
    gateway: GatewayFactory, upstream: respx.Router, first_output: dict[str, Any]
) -> None:
    gw = gateway(STREAMED)
    body = Body(
        [frame(ROLE), frame(chunk({"role": "assistant"})), frame(first_output), asyncio.Event()]
    )
    upstream.post(url("a")).mock(return_value=sse(body))
    random.seed(7)
    stream = await gw.stream(chat("m", stream=True))
    opened = await stream.open()
    assert len(opened.head) == 3
    assert opened.head[-1] == ChatCompletionChunk.model_validate(first_output)
    await stream.close(None, None, 3, left=True)
    assert body.closed


@pytest.mark.parametrize(
    "after_role",
    [[], [frame({"error": {"message": "overloaded", "type": "server_error"}})]],
    ids=["stream-cut", "error-event"],
)
async def test_a_stream_failing_after_its_role_chunk_is_retried_elsewhere(
    gateway: GatewayFactory, upstream: respx.Router, after_role: list[bytes]
) -> None:
    gw = gateway(STREAMED)
    broken = Body([frame(ROLE), *after_role])
    upstream.post(url("a")).mock(return_value=sse(broken))
    upstream.post(url("b")).mock(return_value=sse(Body(whole_stream("Hello"))))
    random.seed(8)
    stream = await gw.stream(chat("m", stream=True))
    opened = await stream.open()
    assert names(stream.call) == ["a/up-a", "b/up-b"]
    assert isinstance(stream.call.attempts[0].error, UpstreamUnavailable)
    assert broken.closed
    items = await read_all(opened)
    assert "".join(c.choices[0].delta.content or "" for c in items if c.choices) == "Hello"
    await stream.close(None, items[-1].usage, len(items), left=False)


async def test_a_non_streamed_answer_is_the_deployments_with_its_usage(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(STREAMED)
    route = upstream.post(url("a")).respond(200, json=completion("Bonjour"))
    random.seed(9)
    call = chat("m")
    answered = await gw.answer(call)
    assert json.loads(route.calls.last.request.content)["model"] == "up-a"
    assert answered.body.choices[0].message.content == "Bonjour"  # type: ignore[union-attr]
    assert answered.usage is not None
    assert answered.usage.total_tokens == 11
    assert answered.attempt.usage == answered.usage
    assert call.served_model == "m"
    assert gw.state["a/up-a"].in_flight == 0
    assert gw.state["a/up-a"].latency is not None
