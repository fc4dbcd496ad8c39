"""gateway/routing/retry.py: which failures are retried, where, after what wait, how often.

Upstreams are OpenAI-type providers answered by respx; what a test checks is what
the upstream received (respx's calls), the attempts routing recorded, and the
answer or error the caller got, with its headers.
"""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest
import respx

from gateway.errors import (
    GatewayError,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.routing.call import Attempt
from gateway.routing.retry import Retry
from tests.routing.conftest import GatewayFactory
from tests.routing.support import (
    FIRST,
    LAST,
    ROLE,
    Body,
    chat,
    chunk,
    completion,
    embed,
    error,
    frame,
    names,
    openai_providers,
    sse,
    url,
    whole_stream,
)

OK = httpx.Response(200, json=completion())


def one(retries: str = "{attempts: 3, backoff_ms: 1}", timeout: str = "") -> str:
    """One model on one deployment."""
    return f"""
providers:
{openai_providers("a")}
models:
  m:
    routing: {{retries: {retries}}}
    deployments: [{{provider: a, model: up-a{timeout}}}]
"""


def two(retries: str = "{attempts: 3, backoff_ms: 1}") -> str:
    """One model on two deployments, a chosen first."""
    return f"""
providers:
{openai_providers("a", "b")}
models:
  m:
    routing: {{retries: {retries}}}
    deployments:
      - {{provider: a, model: up-a, weight: {FIRST}}}
      - {{provider: b, model: up-b, weight: {LAST}}}
"""


@pytest.fixture(autouse=True)
def _seeded() -> None:
    random.seed(99)


# ---------------------------------------------------------------- what is retried


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("no answer"),
        error(429),
        error(500),
        error(502),
        error(503),
        error(504),
    ],
    ids=["connect", "connect-timeout", "read-timeout", "429", "500", "502", "503", "504"],
)
async def test_a_retryable_failure_is_retried_on_the_same_deployment(
    gateway: GatewayFactory, upstream: respx.Router, failure: httpx.Response | Exception
) -> None:
    gw = gateway(one())
    route = upstream.post(url("a")).mock(side_effect=[failure, OK])
    call = chat("m")
    answered = await gw.answer(call)
    assert route.call_count == 2
    assert answered.body.choices[0].message.content == "Hello there"  # type: ignore[union-attr]
    assert names(call) == ["a/up-a", "a/up-a"]
    assert isinstance(
        call.attempts[0].error, UpstreamUnavailable | UpstreamTimeout | UpstreamRateLimited
    )


@pytest.mark.parametrize(
    ("status", "raised"),
    [
        (400, UpstreamRejected),
        (401, UpstreamAuthFailed),
        (403, UpstreamAuthFailed),
        (404, UpstreamRejected),
        (413, UpstreamRejected),
        (422, UpstreamRejected),
    ],
)
async def test_a_refusal_is_not_retried(
    gateway: GatewayFactory, upstream: respx.Router, status: int, raised: type[GatewayError]
) -> None:
    gw = gateway(two())
    a = upstream.post(url("a")).mock(return_value=error(status, "model_not_found"))
    b = upstream.post(url("b")).mock(return_value=OK)
    call = chat("m")
    with pytest.raises(raised) as caught:
        await gw.answer(call)
    assert (a.call_count, b.call_count) == (1, 0)
    assert "x-should-retry" not in caught.value.response_headers()


async def test_a_retry_goes_to_another_deployment_at_once(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    # Retry-After far past the deadline: had the retry waited for it, or gone to
    # the same deployment, no second attempt could start.
    gw = gateway(two("{attempts: 3, backoff_ms: 1, deadline_seconds: 5}"))
    a = upstream.post(url("a")).mock(return_value=error(429, **{"retry-after": "60"}))
    b = upstream.post(url("b")).mock(return_value=OK)
    call = chat("m")
    await gw.answer(call)
    assert (a.call_count, b.call_count) == (1, 1)
    assert names(call) == ["a/up-a", "b/up-b"]


async def test_every_deployment_is_tried_before_any_is_tried_again(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(two("{attempts: 3, backoff_ms: 1}"))
    a = upstream.post(url("a")).mock(side_effect=[error(500), OK])
    b = upstream.post(url("b")).mock(return_value=error(503))
    call = chat("m")
    await gw.answer(call)
    assert names(call) == ["a/up-a", "b/up-b", "a/up-a"]
    assert (a.call_count, b.call_count) == (2, 1)
    assert call.attempts[-1].error is None


# The deployment a call can go to answers 429 with a Retry-After past the deadline;
# the model's other deployment cannot take the call, so a retry would have to wait
# for the first one: none is made.
LIMITED = {"status": 429, "retry_after": 30}


async def test_a_deployment_that_does_not_embed_is_no_reason_not_to_wait(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(
        """
providers:
  chat-only: {type: anthropic, base_url: 'https://chat-only.test', api_key: sk-anthropic-x}
  demo: {type: mock}
models:
  m:
    routing: {retries: {attempts: 3, backoff_ms: 1, deadline_seconds: 5}}
    deployments:
      - {provider: demo, model: embedder}
      - {provider: chat-only, model: claude-x}
"""
    )
    call = embed("m", mock=LIMITED)
    with pytest.raises(UpstreamRateLimited):
        await gw.answer(call)
    assert names(call) == ["demo/embedder"]


async def test_a_deployment_at_its_max_parallel_is_no_reason_not_to_wait(
    gateway: GatewayFactory,
) -> None:
    gw = gateway(
        f"""
providers:
  demo: {{type: mock}}
models:
  m:
    routing: {{retries: {{attempts: 3, backoff_ms: 1, deadline_seconds: 5}}}}
    deployments:
      - {{provider: demo, model: a, weight: {FIRST}}}
      - {{provider: demo, model: b, weight: {LAST}, max_parallel: 1}}
"""
    )
    held = await gw.stream(chat("m", stream=True, mock={"models": {"a": {"status": 500}}}))
    await held.open()
    assert names(held.call) == ["demo/a", "demo/b"]  # b now at its max_parallel
    call = chat("m", mock=LIMITED)
    with pytest.raises(UpstreamRateLimited):
        await gw.answer(call)
    assert names(call) == ["demo/a"]
    await held.close(None, None, 1, left=False)


# ---------------------------------------------------------------- how many, how long


async def test_attempts_are_bounded_and_the_error_says_not_to_retry(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(one("{attempts: 3, backoff_ms: 1}"))
    route = upstream.post(url("a")).mock(return_value=error(500))
    call = chat("m")
    with pytest.raises(UpstreamUnavailable) as raised:
        await gw.answer(call)
    assert route.call_count == 3
    assert len(call.attempts) == 3
    assert raised.value.status == 502
    assert raised.value.response_headers()["x-should-retry"] == "false"


async def test_one_attempt_is_no_retry_and_leaves_the_sdk_its_own(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(one("{attempts: 1}"))
    route = upstream.post(url("a")).mock(return_value=error(503))
    with pytest.raises(UpstreamUnavailable) as raised:
        await gw.answer(chat("m"))
    assert route.call_count == 1
    assert "x-should-retry" not in raised.value.response_headers()


async def test_no_attempt_starts_past_the_deadline(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(one("{attempts: 5, backoff_ms: 1, deadline_seconds: 2}"))
    route = upstream.post(url("a")).mock(return_value=error(429, **{"retry-after": "30"}))
    with pytest.raises(UpstreamRateLimited) as raised:
        await gw.answer(chat("m"))
    assert route.call_count == 1
    assert raised.value.response_headers()["retry-after"] == "30"


async def test_a_retry_on_the_same_deployment_waits_out_retry_after(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(one("{attempts: 2, backoff_ms: 1}"))
    loop = asyncio.get_running_loop()
    sent: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(loop.time())
        return error(429, **{"retry-after-ms": "150"}) if len(sent) == 1 else OK

    upstream.post(url("a")).mock(side_effect=answer)
    await gw.answer(chat("m"))
    assert len(sent) == 2
    assert sent[1] - sent[0] >= 0.150 - 0.005  # never sooner (a lower bound only)


async def test_a_retry_after_longer_than_the_longest_backoff_goes_back_to_the_client(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    # 20 s to wait, the backoff never waits more than 1 s: the client is told, not held.
    gw = gateway(one("{attempts: 3, backoff_ms: 1, max_backoff_ms: 1000}"))
    route = upstream.post(url("a")).mock(return_value=error(429, **{"retry-after": "20"}))
    with pytest.raises(UpstreamRateLimited) as raised:
        await asyncio.wait_for(gw.answer(chat("m")), 15)  # had it waited: TimeoutError
    assert route.call_count == 1
    assert raised.value.response_headers()["retry-after"] == "20"
    assert "x-should-retry" not in raised.value.response_headers()  # the SDK may retry


def test_the_wait_is_exponential_with_jitter_capped_and_never_below_retry_after(
    gateway: GatewayFactory,
) -> None:
    gw = gateway(one("{attempts: 5, backoff_ms: 100, max_backoff_ms: 250}"))
    retry = gw.route("m").caller
    assert isinstance(retry, Retry)
    call = chat("m")
    call.attempts.append(Attempt(gw.route("m").targets[0]))  # the one deployment, tried
    failed = UpstreamUnavailable("500")
    for failures, (low, high) in {1: (0.05, 0.1), 2: (0.1, 0.2), 3: (0.125, 0.25)}.items():
        waits = [retry._delay(call, failed, failures) for _ in range(200)]
        assert low <= min(waits)
        assert max(waits) <= high
        assert max(waits) - min(waits) > (high - low) / 4  # jittered, not fixed
    limited = UpstreamRateLimited("429", retry_after=2.0)
    assert retry._delay(call, limited, 1) == 2.0


def test_no_wait_while_another_deployment_is_untried(gateway: GatewayFactory) -> None:
    gw = gateway(two("{attempts: 3, backoff_ms: 1000}"))
    retry = gw.route("m").caller
    assert isinstance(retry, Retry)
    limited = UpstreamRateLimited("429", retry_after=60)
    assert retry._delay(chat("m"), limited, 1) == 0.0


# ---------------------------------------------------------------- streams


async def test_a_stream_failing_before_its_first_output_is_retried(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(one("{attempts: 3, backoff_ms: 1}", ", timeout: {first_token: 0.05, idle: 0.05}"))
    stalled = Body([frame(ROLE), asyncio.Event()])  # the role, then nothing in time
    route = upstream.post(url("a")).mock(
        side_effect=[error(500), sse(stalled), sse(Body(whole_stream("Hi")))]
    )
    stream = await gw.stream(chat("m", stream=True))
    opened = await stream.open()
    assert route.call_count == 3
    assert [type(a.error) for a in stream.call.attempts] == [
        UpstreamUnavailable,
        UpstreamTimeout,
        type(None),
    ]
    assert stalled.closed
    assert [c.choices[0].delta.content for c in opened.head] == ["", "Hi"]
    await stream.close(None, None, 2, left=False)


async def test_a_stream_is_never_retried_after_its_first_output(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(two())
    cut = Body([frame(ROLE), frame(chunk({"content": "Hel"}))])  # ends mid-answer
    a = upstream.post(url("a")).mock(return_value=sse(cut))
    b = upstream.post(url("b")).mock(return_value=sse(Body(whole_stream("Hello"))))
    stream = await gw.stream(chat("m", stream=True))
    opened = await stream.open()
    with pytest.raises(UpstreamUnavailable) as raised:
        async for _ in opened.rest:
            pass
    assert raised.value.reason == "stream_cut"
    await stream.close(raised.value, None, 2, left=False)
    assert (a.call_count, b.call_count) == (1, 0)
    assert names(stream.call) == ["a/up-a"]
    assert stream.call.attempts[0].error is raised.value
    assert cut.closed


async def test_a_stream_error_after_retries_says_not_to_retry(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(two("{attempts: 2, backoff_ms: 1}"))
    upstream.post(url("a")).mock(return_value=error(500))
    upstream.post(url("b")).mock(return_value=error(502))
    stream = await gw.stream(chat("m", stream=True))
    with pytest.raises(UpstreamUnavailable) as raised:
        await stream.open()
    assert names(stream.call) == ["a/up-a", "b/up-b"]
    assert raised.value.response_headers()["x-should-retry"] == "false"
    await stream.close(None, None, 0, left=False)
