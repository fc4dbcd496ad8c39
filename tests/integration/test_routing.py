"""Routing through a real gateway over three real mock upstreams (docs/configuration.md).

Three ``gateway mock-upstream`` processes (``up-a``, ``up-b``, ``up-c``) serve the
deployments; a deployment's ``model:`` is unique to its test, so the mock's
per-model counters (``/mock/stats`` ``models``) say which deployments a request
reached, and whose connection was closed, without resetting anything. The body's
``mock`` script fails or stalls one deployment by its model name. The clients are
the official openai SDK (``max_retries=0``), httpx, and raw sockets where a client
has to leave at a given moment.

The context fallback needs an upstream error with a code (``context_length_exceeded``),
which the mock cannot script (a scripted status has the gateway's code for it): it
runs in process at the end, with the upstream replayed by respx.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import respx
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings
from tests.integration.stores import MASTER, create_key, usage
from tests.servers import SLACK, TEST_KEY, ServerProcess, wait_for, write_config

HI = [{"role": "user", "content": "hi"}]
AUTH = {"authorization": f"Bearer {TEST_KEY}"}
FAST_RETRIES = {"attempts": 3, "backoff_ms": 1, "max_backoff_ms": 10}


def _dep(provider: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"provider": provider, "model": model, **extra}


def _two(a: str, b: str, **routing: Any) -> dict[str, Any]:
    """A model on ``a`` at up-a and ``b`` at up-b."""
    model: dict[str, Any] = {"deployments": [_dep("up-a", a), _dep("up-b", b)]}
    if routing:
        model["routing"] = routing
    return model


MODELS: dict[str, Any] = {
    "weighted": {"deployments": [_dep("up-a", "w-heavy", weight=3), _dep("up-b", "w-light")]},
    "busy": _two("busy-1", "busy-2", strategy="least-busy"),
    "fastest": _two("lat-slow", "lat-fast", strategy="latency"),
    "flaky": _two(
        "flaky-good", "flaky-bad", retries=FAST_RETRIES, cooldown={"failures": 2, "seconds": 2}
    ),
    "rl-one": {
        "deployments": [_dep("up-a", "rl-one")],
        "routing": {"retries": {"attempts": 2, "backoff_ms": 1}},
    },
    "rl-two": _two("rl-2a", "rl-2b", retries=FAST_RETRIES, cooldown={"seconds": 1}),
    "cut": _two("cut-a", "cut-b", retries=FAST_RETRIES),
    "down": _two("down-a", "down-b", retries=FAST_RETRIES, cooldown={"failures": 10}),
    "refused": _two("refused-a", "refused-b", retries=FAST_RETRIES),
    "fb-main": {
        **_two("fb-main-1", "fb-main-2", retries={"attempts": 2, "backoff_ms": 1}),
        "fallbacks": ["fb-spare"],
    },
    "fb-spare": {"deployments": [_dep("up-c", "fb-spare-1")]},
    "hedged": _two("hedge-a", "hedge-b", strategy="hedge", hedge_after_ms=200),
    "hedged-drop": _two("drop-a", "drop-b", strategy="hedge", hedge_after_ms=200),
}


# ---------------------------------------------------------------- processes


@pytest.fixture(scope="module")
def processes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, ServerProcess], ServerProcess]]:
    """The three upstreams and the gateway, started together (the gateway does not
    call its upstreams until a request comes)."""
    upstreams = {name: ServerProcess(["mock-upstream"]) for name in ("up-a", "up-b", "up-c")}
    config = {
        "providers": {
            name: {"type": "openai", "base_url": f"{server.url}/v1", "api_key": "sk-upstream"}
            for name, server in upstreams.items()
        },
        "models": MODELS,
        "keys": [{"name": "routing", "key": TEST_KEY}],
    }
    path = write_config(tmp_path_factory.mktemp("routing"), config)
    gateway = ServerProcess(["serve", "--config", str(path)], env={"GATEWAY_MASTER_KEY": MASTER})
    everything = [*upstreams.values(), gateway]
    try:
        for server in everything:
            server.wait_ready()
        yield upstreams, gateway
    finally:
        for server in everything:
            server.stop()


@pytest.fixture(scope="module")
def upstreams(
    processes: tuple[dict[str, ServerProcess], ServerProcess],
) -> dict[str, ServerProcess]:
    return processes[0]


@pytest.fixture(scope="module")
def gateway(processes: tuple[dict[str, ServerProcess], ServerProcess]) -> ServerProcess:
    return processes[1]


@pytest.fixture
def client(gateway: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=TEST_KEY, max_retries=0)


@pytest.fixture
def http(gateway: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=10 + SLACK) as http:
        yield http


# ---------------------------------------------------------------- helpers


class Seen:
    """What the mock upstreams saw of each deployment model, summed over the three."""

    def __init__(self, upstreams: dict[str, ServerProcess]) -> None:
        self._upstreams = list(upstreams.values())

    def _counts(self, model: str) -> dict[str, int]:
        total = {"requests": 0, "disconnects": 0}
        for server in self._upstreams:
            stats = httpx.get(f"{server.url}/mock/stats", timeout=10).json()
            for name, value in stats["models"].get(model, {}).items():
                total[name] += value
        return total

    def requests(self, model: str) -> int:
        return self._counts(model)["requests"]

    def disconnects(self, model: str) -> int:
        return self._counts(model)["disconnects"]


@pytest.fixture
def seen(upstreams: dict[str, ServerProcess]) -> Seen:
    return Seen(upstreams)


def _access_lines(gateway: ServerProcess, *request_ids: str) -> list[str]:
    """The access-log lines of ``request_ids``, in that order, once all are written."""

    def find() -> list[str] | None:
        lines = {}
        for line in gateway.logs().splitlines():
            if "gateway.access" in line and " request_id=" in line:
                lines[line.split(" request_id=", 1)[1].split(" ", 1)[0]] = line
        if all(r in lines for r in request_ids):
            return [lines[r] for r in request_ids]
        return None

    return wait_for(f"access lines for {request_ids}", find)


def _access_line(gateway: ServerProcess, request_id: str) -> str:
    return _access_lines(gateway, request_id)[0]


def _chat(http: httpx.Client, model: str, **extra: Any) -> httpx.Response:
    """A non-streamed chat call, its request id in ``x-request-id``."""
    request_id = f"{model}-{uuid.uuid4().hex[:10]}"
    return http.post(
        "/v1/chat/completions",
        json={"model": model, "messages": HI, **extra},
        headers={"x-request-id": request_id},
    )


def _raw_request(body: dict[str, Any], request_id: str) -> bytes:
    data = json.dumps(body).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {TEST_KEY}\r\nx-request-id: {request_id}\r\n"
        f"content-length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


# ---------------------------------------------------------------- strategies


async def test_weights_split_about_a_thousand_calls(gateway: ServerProcess, seen: Seen) -> None:
    """Weights 3:1 over 1,000 calls: 750 expected on the heavy one, its standard
    deviation 13.7; the tolerance is four of them."""
    calls = 1000
    before = {m: seen.requests(m) for m in ("w-heavy", "w-light")}
    limit = asyncio.Semaphore(8)  # bounded: 8 calls in flight at most
    async with httpx.AsyncClient(base_url=gateway.url, headers=AUTH, timeout=30) as http:

        async def one() -> str:
            async with limit:
                r = await http.post(
                    "/v1/chat/completions",
                    json={"model": "weighted", "messages": HI, "max_tokens": 1},
                )
            assert r.status_code == 200, r.text
            return r.headers["x-gateway-served-by"]

        served = Counter(await asyncio.gather(*(one() for _ in range(calls))))
    assert set(served) <= {"up-a/w-heavy", "up-b/w-light"}, served
    assert abs(served["up-a/w-heavy"] - 750) <= 55, served
    # What the upstreams saw agrees with what the clients were told: one call each.
    after = {m: seen.requests(m) - before[m] for m in before}
    assert after == {"w-heavy": served["up-a/w-heavy"], "w-light": served["up-b/w-light"]}


def test_least_busy_prefers_the_idle_deployment(http: httpx.Client, seen: Seen) -> None:
    # A stream held open on busy-1 (1 token a second there; busy-2 answers at once, and
    # a stream that lands there is read to its end): busy-1 has a call in flight.
    hold = {
        "model": "busy",
        "messages": HI,
        "stream": True,
        "mock": {"models": {"busy-1": {"tokens_per_s": 1, "chunks": 30}}},
    }
    with ExitStack() as holding:
        for _ in range(30):
            response = holding.enter_context(http.stream("POST", "/v1/chat/completions", json=hold))
            assert response.status_code == 200
            if response.headers["x-gateway-served-by"] == "up-a/busy-1":
                # Its first chunk: the stream is on. The iterator is kept, as dropping
                # it would close the connection.
                lines = response.iter_lines()
                next(lines)
                break
            response.read()
        else:
            pytest.fail("no stream landed on busy-1 in 30 tries")
        before = seen.requests("busy-1")
        served = Counter(_chat(http, "busy").headers["x-gateway-served-by"] for _ in range(20))
        # By weight alone (a tie), each would go to busy-1 half the time.
        assert served == {"up-b/busy-2": 20}, served
        assert seen.requests("busy-1") == before
    # Closed by the gateway once its client left; idle again, busy-1 is chosen again.
    wait_for("busy-1's stream closed upstream", lambda: seen.disconnects("busy-1") >= 1)
    for _ in range(30):
        if _chat(http, "busy").headers["x-gateway-served-by"] == "up-a/busy-1":
            break
    else:
        pytest.fail("busy-1 was never chosen again once idle")


def test_latency_prefers_the_faster_deployment_after_warm_up(
    http: httpx.Client, seen: Seen
) -> None:
    script = {"mock": {"models": {"lat-slow": {"ttft_ms": 400}}}}
    # Warm-up: a deployment not measured yet is tried first, so both are measured.
    warm = {_chat(http, "fastest", **script).headers["x-gateway-served-by"] for _ in range(2)}
    assert warm == {"up-a/lat-slow", "up-b/lat-fast"}
    before = seen.requests("lat-slow")
    served = Counter(
        _chat(http, "fastest", **script).headers["x-gateway-served-by"] for _ in range(40)
    )
    # 5% of calls explore by weight, half of those to lat-slow: about one in 40.
    assert served["up-b/lat-fast"] >= 32, served
    assert seen.requests("lat-slow") - before == served["up-a/lat-slow"]


# ---------------------------------------------------------------- retries and cooldowns


def test_a_failing_deployment_is_retried_elsewhere_then_cooled_then_probed(
    http: httpx.Client, gateway: ServerProcess, seen: Seen
) -> None:
    """cooldown: {failures: 2, seconds: 2}; flaky-bad answers 500 to every call."""
    script = {"mock": {"models": {"flaky-bad": {"status": 500}}}}
    retried, failed = [], 0
    for _ in range(60):
        r = _chat(http, "flaky", **script)
        assert r.status_code == 200, r.text
        assert r.headers["x-gateway-served-by"] == "up-a/flaky-good"
        if (now := seen.requests("flaky-bad")) > failed:
            retried.append(r.request.headers["x-request-id"])
            failed = now
        if failed == 2:
            break
    assert failed == 2, "flaky-bad was not tried twice in 60 calls"
    cooled_at = time.monotonic()
    # Each call that reached flaky-bad was answered by flaky-good, its second attempt.
    assert all(" attempts=2" in line for line in _access_lines(gateway, *retried))

    # Two failures in a row: skipped for 2 s. By weight alone, 10 calls would all miss
    # it one time in 1,024.
    calls = [_chat(http, "flaky", **script) for _ in range(10)]
    assert seen.requests("flaky-bad") == 2
    assert [r.status_code for r in calls] == [200] * 10
    ids = [r.request.headers["x-request-id"] for r in calls]
    assert not any("attempts=" in line for line in _access_lines(gateway, *ids))

    # Once the cooldown is over it is tried again (and still fails over at once).
    time.sleep(max(0.0, cooled_at + 2.3 - time.monotonic()))
    for _ in range(30):
        r = _chat(http, "flaky", **script)
        assert r.status_code == 200
        assert r.headers["x-gateway-served-by"] == "up-a/flaky-good"
        if seen.requests("flaky-bad") > 2:
            break
    assert seen.requests("flaky-bad") == 3


def test_a_429_retry_after_is_waited_for_on_the_only_deployment(
    http: httpx.Client, gateway: ServerProcess, seen: Seen
) -> None:
    started = time.monotonic()
    r = _chat(http, "rl-one", mock={"status": 429, "retry_after": 1})
    took = time.monotonic() - started
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "upstream_rate_limited"
    assert r.headers["x-should-retry"] == "false"
    assert seen.requests("rl-one") == 2
    # The retry waited the upstream's Retry-After, not the 1 ms backoff.
    assert took >= 0.9, took
    assert " attempts=2" in _access_line(gateway, r.request.headers["x-request-id"])


def test_a_429_goes_to_the_other_deployment_at_once_and_cools_for_its_retry_after(
    http: httpx.Client, seen: Seen
) -> None:
    """cooldown.seconds is 1; rl-2a's Retry-After of 30 s is longer, and wins."""
    script = {"mock": {"models": {"rl-2a": {"status": 429, "retry_after": 30}}}}
    for _ in range(30):
        started = time.monotonic()
        r = _chat(http, "rl-two", **script)
        took = time.monotonic() - started
        assert r.status_code == 200, r.text
        assert r.headers["x-gateway-served-by"] == "up-b/rl-2b"
        if seen.requests("rl-2a"):
            break
    assert seen.requests("rl-2a") == 1, "rl-2a was never chosen in 30 calls"
    assert took < SLACK, took  # not after the 30 s it asked for
    time.sleep(1.5)  # past cooldown.seconds
    for _ in range(10):
        r = _chat(http, "rl-two", **script)
        assert r.headers["x-gateway-served-by"] == "up-b/rl-2b"
    assert seen.requests("rl-2a") == 1


def test_a_stream_broken_after_its_first_chunk_is_not_retried(
    client: openai.OpenAI, seen: Seen
) -> None:
    stream = client.chat.completions.create(
        model="cut", messages=HI, stream=True, extra_body={"mock": {"cut_after": 2}}
    )
    text = ""
    with pytest.raises(openai.APIError):
        for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
    assert text, "the error came before any output"
    assert seen.requests("cut-a") + seen.requests("cut-b") == 1


def test_an_error_after_retries_tells_the_sdk_not_to_retry(
    http: httpx.Client, gateway: ServerProcess, seen: Seen
) -> None:
    r = _chat(http, "down", mock={"status": 503})
    assert r.status_code == 502, r.text
    assert r.headers["x-should-retry"] == "false"
    # Both deployments, then one of them again.
    assert sorted([seen.requests("down-a"), seen.requests("down-b")]) == [1, 2]
    line = _access_line(gateway, r.request.headers["x-request-id"])
    assert " status=502 " in line, line
    assert " attempts=3" in line, line

    # A refusal of the request itself is not retried, and leaves the SDK its own choice.
    r = _chat(http, "refused", mock={"status": 400, "message": "no such parameter"})
    assert r.status_code == 400, r.text
    assert "x-should-retry" not in r.headers
    assert seen.requests("refused-a") + seen.requests("refused-b") == 1
    assert "attempts=" not in _access_line(gateway, r.request.headers["x-request-id"])


# ---------------------------------------------------------------- fallbacks


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
def test_fallback_model_answers_when_every_deployment_fails(
    client: openai.OpenAI, gateway: ServerProcess, seen: Seen, stream: bool
) -> None:
    before = {m: seen.requests(m) for m in ("fb-main-1", "fb-main-2", "fb-spare-1")}
    request_id = f"fallback-{uuid.uuid4().hex[:10]}"
    script = {"models": {"fb-main-1": {"status": 500}, "fb-main-2": {"status": 502}}}
    raw = client.chat.completions.with_raw_response.create(
        model="fb-main",
        messages=HI,
        stream=stream,
        extra_body={"mock": script},
        extra_headers={"x-request-id": request_id},
    )
    assert raw.headers["x-gateway-served-by"] == "up-c/fb-spare-1"
    if stream:
        chunks = list(raw.parse())
        assert chunks
        assert {c.model for c in chunks} == {"fb-spare"}
    else:
        answer = raw.parse()
        assert answer.model == "fb-spare"
        assert answer.choices[0].message.content
    after = {m: seen.requests(m) - before[m] for m in before}
    assert after == {"fb-main-1": 1, "fb-main-2": 1, "fb-spare-1": 1}
    assert " attempts=3" in _access_line(gateway, request_id)


# ---------------------------------------------------------------- hedging


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
def test_hedge_answers_from_the_second_deployment_and_closes_the_first(
    gateway: ServerProcess, seen: Seen, stream: bool
) -> None:
    """hedge-a stalls 3 s; hedge-b starts 200 ms in and answers. The strategy picks
    the first deployment by weight: the call is repeated until hedge-a was first."""
    key_id, key = create_key(gateway.url, {})
    hedged = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    script = {"models": {"hedge-a": {"ttft_ms": 3000}}}
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if stream else {}
    for _ in range(20):
        stalled = seen.requests("hedge-a")
        closed = seen.disconnects("hedge-a")
        spent = usage(gateway.url, key_id)
        request_id = f"hedge-{uuid.uuid4().hex[:10]}"
        started = time.monotonic()
        raw = hedged.chat.completions.with_raw_response.create(
            model="hedged",
            messages=HI,
            stream=stream,
            extra_body={"mock": script},
            extra_headers={"x-request-id": request_id},
            **extra,
        )
        if stream:
            chunks = list(raw.parse())
            (reported,) = [c.usage for c in chunks if c.usage]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            answer = raw.parse()
            reported, text = answer.usage, answer.choices[0].message.content
        took = time.monotonic() - started
        assert raw.headers["x-gateway-served-by"] == "up-b/hedge-b"
        assert text
        if seen.requests("hedge-a") > stalled:
            break
    else:
        pytest.fail("hedge-a was never the first deployment in 20 calls")
    assert took < 2.5, took  # well before hedge-a's 3 s
    wait_for("hedge-a's call closed", lambda: seen.disconnects("hedge-a") > closed)
    assert " attempts=2" in _access_line(gateway, request_id)
    # Both calls recorded: the winner as it reported, the loser billed its prompt.
    now = usage(gateway.url, key_id)
    assert reported is not None
    assert now["requests"] - spent["requests"] == 2, now
    assert now["errors"] == spent["errors"], now
    assert now["output_tokens"] - spent["output_tokens"] == reported.completion_tokens
    assert now["input_tokens"] - spent["input_tokens"] > reported.prompt_tokens


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
def test_a_client_leaving_a_hedge_closes_every_upstream_call(
    gateway: ServerProcess, seen: Seen, stream: bool
) -> None:
    before = {m: (seen.requests(m), seen.disconnects(m)) for m in ("drop-a", "drop-b")}
    body = {
        "model": "hedged-drop",
        "messages": HI,
        "stream": stream,
        "mock": {"ttft_ms": 8000},  # both stall, well past the waits below
    }
    request_id = f"hedge-drop-{uuid.uuid4().hex[:10]}"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(_raw_request(body, request_id))
        wait_for(
            "both deployments called",
            lambda: all(seen.requests(m) > before[m][0] for m in before),
        )
    wait_for(
        "both upstream calls closed",
        lambda: all(seen.disconnects(m) > before[m][1] for m in before),
    )
    line = _access_line(gateway, request_id)
    assert " status=499 " in line, line
    assert "outcome=client_disconnect" in line, line


# ---------------------------------------------------------------- context fallback, in process

CONTEXT_CONFIG = """
providers:
  up: {type: openai, base_url: "https://upstream.test/v1", api_key: sk-upstream}
models:
  small: {deployments: [{provider: up, model: small-upstream}], context_fallbacks: [large]}
  large: {deployments: [{provider: up, model: large-upstream}]}
keys:
  - {name: app, key: sk-test-context-key}
server: {data_dir: data}
"""


def _upstream_answer(request: httpx.Request) -> httpx.Response:
    """small-upstream finds every prompt too long, large-upstream answers; a prompt
    that says "bad" is refused by both for another reason."""
    body = json.loads(request.content)
    refused = None
    if "bad" in body["messages"][0]["content"]:
        refused = ("Invalid value for 'temperature'.", "invalid_value")
    elif body["model"] == "small-upstream":
        refused = ("This model's maximum context length is 8192 tokens.", "context_length_exceeded")
    if refused is not None:
        error = {"message": refused[0], "type": "invalid_request_error", "param": None}
        return httpx.Response(400, json={"error": {**error, "code": refused[1]}})
    return httpx.Response(
        200,
        json={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1741569952,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "plenty of room"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        },
    )


@pytest.fixture
def context_upstream() -> respx.Router:
    router = respx.Router(base_url="https://upstream.test/v1", assert_all_mocked=True)
    router.post("/chat/completions").mock(side_effect=_upstream_answer)
    return router


@pytest.fixture
def in_process(tmp_path: Path, context_upstream: respx.Router) -> Iterator[TestClient]:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONTEXT_CONFIG)
    settings = load_settings(path, env={})
    transport = httpx.MockTransport(context_upstream.async_handler)
    with TestClient(create_app(settings, transport=transport)) as http:
        yield http


def _models_sent(router: respx.Router) -> list[str]:
    return [json.loads(call.request.content)["model"] for call in router.calls]


def test_a_too_long_prompt_goes_down_context_fallbacks(
    in_process: TestClient, context_upstream: respx.Router
) -> None:
    sdk = openai.OpenAI(
        api_key="sk-test-context-key",
        base_url="http://testserver/v1",
        http_client=in_process,
        max_retries=0,
    )
    raw = sdk.chat.completions.with_raw_response.create(model="small", messages=HI)
    assert raw.headers["x-gateway-served-by"] == "up/large-upstream"
    answer = raw.parse()
    assert answer.model == "large"
    assert answer.choices[0].message.content == "plenty of room"
    assert _models_sent(context_upstream) == ["small-upstream", "large-upstream"]

    # Any other refusal is the client's to fix: returned as it is, no fallback.
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="small", messages=[{"role": "user", "content": "bad"}])
    assert refused.value.code == "invalid_value"
    assert _models_sent(context_upstream)[2:] == ["small-upstream"]
