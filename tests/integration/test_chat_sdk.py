"""The gateway as the official openai SDK sees it: a real gateway process in front
of the real mock upstream, both on free loopback ports."""

from __future__ import annotations

import asyncio
import base64
import struct
import time

import httpx
import openai
import pytest

from tests.servers import TEST_KEY, ServerProcess

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def client(gateway: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=TEST_KEY, max_retries=0)


@pytest.fixture
def aclient(gateway: ServerProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=TEST_KEY, max_retries=0)


def stream_text(stream) -> tuple[str, list]:
    text, usage = "", []
    for chunk in stream:
        if chunk.usage:
            usage.append(chunk.usage)
        for choice in chunk.choices:
            text += choice.delta.content or ""
    return text, usage


@pytest.mark.parametrize("model", ["up-chat", "local-chat"])
def test_stream_text_equals_non_stream_text(client: openai.OpenAI, model: str) -> None:
    answer = client.chat.completions.create(model=model, messages=HELLO)
    assert answer.object == "chat.completion"
    assert answer.model == model
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 12

    stream = client.chat.completions.create(
        model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    text, usage = stream_text(stream)
    assert text == answer.choices[0].message.content
    assert len(usage) == 1
    assert usage[0].completion_tokens == answer.usage.completion_tokens
    assert usage[0].prompt_tokens == answer.usage.prompt_tokens


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="up-chat", messages=HELLO, stream=True))
    assert chunks, "no chunks"
    assert all(chunk.choices for chunk in chunks), "a usage-only chunk leaked"
    assert all(chunk.usage is None for chunk in chunks)
    assert {chunk.model for chunk in chunks} == {"up-chat"}
    assert len({chunk.id for chunk in chunks}) == 1


async def test_async_client_stream_and_non_stream(aclient: openai.AsyncOpenAI) -> None:
    answer = await aclient.chat.completions.create(model="up-chat", messages=HELLO)
    stream = await aclient.chat.completions.create(model="up-chat", messages=HELLO, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == answer.choices[0].message.content


def test_raw_stream_frames_end_with_done(gateway: ServerProcess) -> None:
    body = {"model": "up-chat", "messages": HELLO, "stream": True, "mock": {"chunks": 5}}
    headers = {"authorization": f"Bearer {TEST_KEY}", "x-request-id": "trace-abc-123"}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"] == "trace-abc-123"
        assert r.headers["x-gateway-served-by"] == "upstream/mock-chat"
        raw = r.read().decode()
    frames = [f for f in raw.split("\n\n") if f and not f.startswith(":")]
    assert all(f.startswith("data: ") for f in frames)
    assert frames[-1] == "data: [DONE]"
    assert len(frames) == 5 + 1 + 1  # five tokens, the finish chunk, [DONE]


def test_request_id_is_forwarded_upstream(gateway: ServerProcess, upstream: ServerProcess) -> None:
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "up-chat", "messages": HELLO},
        headers={"authorization": f"Bearer {TEST_KEY}", "x-request-id": "req-forward-me-42"},
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "req-forward-me-42"
    assert "req-forward-me-42" in httpx.get(f"{upstream.url}/mock/stats").json()["request_ids"]


def test_generated_request_id_when_client_sends_none(gateway: ServerProcess) -> None:
    r = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {TEST_KEY}"})
    assert r.status_code == 200
    assert len(r.headers["x-request-id"]) >= 16


def test_paced_stream_is_not_buffered(client: openai.OpenAI) -> None:
    started = time.monotonic()
    arrivals = []
    stream = client.chat.completions.create(
        model="up-chat",
        messages=HELLO,
        stream=True,
        extra_body={"mock": {"chunks": 10, "tokens_per_s": 10}},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 10
    # The upstream needs 0.9 s for the last token; the first must not wait for it.
    assert arrivals[0] < 0.45, arrivals
    assert arrivals[-1] - arrivals[0] > 0.7, arrivals


def test_embeddings_base64_default_and_float(client: openai.OpenAI, gateway: ServerProcess) -> None:
    # The SDK asks for base64 by default and decodes it; compare with floats.
    decoded = client.embeddings.create(model="up-embed", input=["alpha", "beta"])
    floats = client.embeddings.create(
        model="up-embed", input=["alpha", "beta"], encoding_format="float"
    )
    assert decoded.model == floats.model == "up-embed"
    assert [d.index for d in decoded.data] == [0, 1]
    for a, b in zip(decoded.data, floats.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    assert decoded.usage.prompt_tokens > 0

    raw = httpx.post(
        f"{gateway.url}/v1/embeddings",
        json={"model": "up-embed", "input": "alpha", "encoding_format": "base64"},
        headers={"authorization": f"Bearer {TEST_KEY}"},
    ).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    vector = struct.unpack(f"<{len(packed) // 4}f", packed)
    assert vector == pytest.approx(floats.data[0].embedding, abs=1e-6)


def test_models_lists_what_the_key_may_use(client: openai.OpenAI) -> None:
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["local-chat", "up-chat", "up-embed", "up-fast-timeout"]


# ---------------------------------------------------------------- errors


def _chat(client: openai.OpenAI, model: str = "up-chat", **extra):
    return client.chat.completions.create(model=model, messages=HELLO, **extra)


@pytest.mark.parametrize(
    ("call", "error", "status", "code"),
    [
        (lambda c: _chat(c, "no-such-model"), openai.NotFoundError, 404, "model_not_found"),
        (
            lambda c: _chat(c, "secret-model"),
            openai.PermissionDeniedError,
            403,
            "model_not_allowed",
        ),
        (lambda c: _chat(c, extra_body={"n": 0}), openai.BadRequestError, 400, "invalid_value"),
        (
            lambda c: _chat(c, extra_body={"mock": {"status": 400, "message": "bad things"}}),
            openai.BadRequestError,
            400,
            None,
        ),
        (
            lambda c: _chat(c, extra_body={"mock": {"status": 422}}),
            openai.BadRequestError,
            400,
            None,
        ),
        (
            lambda c: _chat(c, extra_body={"mock": {"status": 404}}),
            openai.NotFoundError,
            404,
            None,
        ),
        (
            lambda c: _chat(c, extra_body={"mock": {"status": 401}}),
            openai.InternalServerError,
            502,
            "upstream_auth_failed",
        ),
        (
            lambda c: _chat(c, extra_body={"mock": {"status": 429, "retry_after": 7}}),
            openai.RateLimitError,
            429,
            "upstream_rate_limited",
        ),
        (
            lambda c: _chat(c, extra_body={"mock": {"status": 503}}),
            openai.InternalServerError,
            502,
            "upstream_error",
        ),
        (
            lambda c: _chat(c, extra_body={"mock": {"malformed_after": 0}}),
            openai.InternalServerError,
            502,
            "upstream_error",
        ),
        (
            lambda c: _chat(
                c, "up-fast-timeout", stream=True, extra_body={"mock": {"ttft_ms": 1500}}
            ),
            openai.InternalServerError,
            504,
            "upstream_timeout",
        ),
    ],
    ids=[
        "unknown-model",
        "model-not-allowed",
        "bad-field",
        "upstream-400",
        "upstream-422",
        "upstream-404",
        "upstream-401",
        "upstream-429",
        "upstream-503",
        "upstream-malformed",
        "upstream-timeout",
    ],
)
def test_errors_raise_the_sdk_class(client, call, error, status, code) -> None:
    with pytest.raises(error) as caught:
        call(client)
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict), body
    assert body["code"] == code
    assert "sk-upstream-secret" not in str(body)


def test_upstream_429_carries_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        _chat(client, extra_body={"mock": {"status": 429, "retry_after": 7}})
    assert caught.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize(
    "key", ["sk-not-a-known-key", "sk-test-expired-key"], ids=["unknown", "expired"]
)
def test_bad_keys_are_401(gateway: ServerProcess, key: str) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        _chat(client)
    assert caught.value.body["code"] == "invalid_api_key"


def test_missing_key_is_401(gateway: ServerProcess) -> None:
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions", json={"model": "up-chat", "messages": HELLO}
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_malformed_json_is_400_not_422(gateway: ServerProcess) -> None:
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=b'{"model": "up-chat", "messages": [',
        headers={"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["code"] == "invalid_value"


def test_oversized_body_is_413(client: openai.OpenAI) -> None:
    huge = [{"role": "user", "content": "x" * (33 * 1024 * 1024)}]
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="up-chat", messages=huge)
    assert caught.value.status_code == 413
    assert caught.value.body["code"] == "request_too_large"


def test_error_after_stream_started_is_a_final_error_event(
    client: openai.OpenAI, gateway: ServerProcess
) -> None:
    stream = _chat(client, stream=True, extra_body={"mock": {"cut_after": 3}})
    seen = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
    assert len(seen) == 3
    assert caught.value.body["code"] == "upstream_error"

    body = {"model": "up-chat", "messages": HELLO, "stream": True, "mock": {"malformed_after": 2}}
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {TEST_KEY}"},
    )
    assert r.status_code == 200
    frames = [f for f in r.text.split("\n\n") if f.startswith("data: ")]
    assert len(frames) == 3
    assert '"error"' in frames[-1]
    assert "upstream_error" in frames[-1]
    assert "[DONE]" not in r.text


# ---------------------------------------------------------------- disconnects and load


def _stats(upstream: ServerProcess) -> dict:
    return httpx.get(f"{upstream.url}/mock/stats").json()


def _assert_upstream_saw_the_client_leave(upstream: ServerProcess, before: dict, by: float) -> None:
    """By ``by`` (monotonic), the upstream stopped one more stream for a gone client."""
    while time.monotonic() < by:
        after = _stats(upstream)
        if after["streams_disconnected"] > before["streams_disconnected"]:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the upstream never saw the client leave: {after}")
    assert after["streams_completed"] == before["streams_completed"]
    assert after["in_flight"] == 0


def test_client_disconnect_cancels_the_upstream(
    gateway: ServerProcess, upstream: ServerProcess
) -> None:
    before = _stats(upstream)
    body = {
        "model": "up-chat",
        "messages": HELLO,
        "stream": True,
        "mock": {"chunks": 100, "tokens_per_s": 10},
    }
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {TEST_KEY}"},
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break
    # The client is gone after one chunk; the 10 s upstream stream must stop now.
    _assert_upstream_saw_the_client_leave(upstream, before, by=time.monotonic() + 3)


def test_client_leaving_before_the_first_token_cancels_the_upstream(
    gateway: ServerProcess, upstream: ServerProcess
) -> None:
    before = _stats(upstream)
    body = {"model": "up-chat", "messages": HELLO, "stream": True, "mock": {"ttft_ms": 4000}}
    # Headers are held for the first token (or 5 s): the client sees nothing and leaves.
    left = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {TEST_KEY}"},
            timeout=httpx.Timeout(10, read=0.3),
        )
    # Seen at once, not when the first token would have come (4 s).
    _assert_upstream_saw_the_client_leave(upstream, before, by=left + 2.5)


async def test_fifty_concurrent_streams_complete_intact(aclient: openai.AsyncOpenAI) -> None:
    async def one(i: int) -> tuple[str, str]:
        messages = [{"role": "user", "content": f"prompt number {i}"}]
        answer = await aclient.chat.completions.create(model="up-chat", messages=messages)
        stream = await aclient.chat.completions.create(
            model="up-chat",
            messages=messages,
            stream=True,
            extra_body={"mock": {"tokens_per_s": 100}},
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        return text, answer.choices[0].message.content

    results = await asyncio.gather(*(one(i) for i in range(50)))
    assert all(text == expected for text, expected in results)
    assert len({text for text, _ in results}) > 40  # distinct prompts, distinct answers


# ---------------------------------------------------------------- the access log


def test_one_access_log_line_per_request_without_secrets(gateway: ServerProcess) -> None:
    prompt = "my very private prompt about zebras"
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "up-chat", "messages": [{"role": "user", "content": prompt}]},
        headers={"authorization": f"Bearer {TEST_KEY}", "x-request-id": "log-line-check-1"},
    )
    assert r.status_code == 200
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        lines = [
            line for line in gateway.logs().splitlines() if "request_id=log-line-check-1" in line
        ]
        if lines:
            break
        time.sleep(0.05)
    assert len(lines) == 1, lines
    line = lines[0]
    for part in (
        "gateway.access",
        "status=200",
        "key=tests",
        "model=up-chat",
        "served_by=upstream/mock-chat",
        "input_tokens=",
        "output_tokens=12",
        "latency_ms=",
        "ttft_ms=",
    ):
        assert part in line, (part, line)
    logs = gateway.logs()
    assert prompt not in logs
    assert TEST_KEY not in logs
    assert "sk-upstream-secret" not in logs
