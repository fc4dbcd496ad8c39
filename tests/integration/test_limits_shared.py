"""Per-key limits shared by two gateway processes through one real Redis (docs/limits.md).

Two gateways on two ports run the same config with the same Redis prefix, so
every limit below is exact across them: requests are split alternately
between the two. The mock upstream is this module's own, so its counters
(``/mock/stats``) count only what these tests sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from gateway.limits import estimate
from gateway.schemas.openai import ChatCompletionRequest
from tests.servers import (
    TEST_KEY,
    ServerProcess,
    standard_config,
    start_gateway,
    start_mock_upstream,
    write_config,
)

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MASTER = "sk-master-" + uuid.uuid4().hex
ADMIN = {"authorization": f"Bearer {MASTER}"}

K_RPM50 = "sk-shared-rpm50-" + uuid.uuid4().hex
K_PAR5 = "sk-shared-par5-" + uuid.uuid4().hex
K_TPM = "sk-shared-tpm2000-" + uuid.uuid4().hex
K_DISC = "sk-shared-par20-" + uuid.uuid4().hex
K_SDK = "sk-shared-rpm1-" + uuid.uuid4().hex
K_BUDGET = "sk-shared-budget-" + uuid.uuid4().hex

HI = [{"role": "user", "content": "hi"}]


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def config_key_id(secret: str) -> str:
    """The stable id the gateway gives a key from its config file."""
    return f"key_cfg_{hashlib.sha256(secret.encode()).hexdigest()[:12]}"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def prefix() -> Iterator[str]:
    """A Redis prefix of this module's own; its keys are deleted at the end."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:  # a missing Redis fails these tests, never skips them
        pytest.fail(f"these tests need a Redis at {REDIS_URL}: {exc}")
    name = f"gwtest-{uuid.uuid4().hex[:8]}:"
    yield name
    try:
        for key in client.scan_iter(match=f"{name}*", count=1000):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    server = start_mock_upstream()
    yield server
    server.stop()


def _config(upstream: ServerProcess, prefix: str) -> dict[str, Any]:
    config = standard_config(upstream.url, redis_prefix=prefix)
    config["models"]["priced-chat"] = {
        "deployments": [
            {"provider": "local", "model": "mock-chat", "price": {"input": 1000, "output": 1000}}
        ]
    }
    # Two deployments on the one upstream, told apart by the model it receives.
    config["models"]["up-shared-cool"] = {
        "deployments": [
            {"provider": "upstream", "model": "cool-bad"},
            {"provider": "upstream", "model": "cool-good"},
        ],
        "routing": {"retries": {"attempts": 2}, "cooldown": {"failures": 1, "seconds": 60}},
    }
    config["keys"] += [
        {"name": "rpm50", "key": K_RPM50, "limits": {"rpm": 50}},
        {"name": "par5", "key": K_PAR5, "limits": {"max_parallel": 5}},
        {"name": "tpm2000", "key": K_TPM, "limits": {"tpm": 2000}},
        {"name": "par20", "key": K_DISC, "limits": {"max_parallel": 20}},
        {"name": "rpm1", "key": K_SDK, "limits": {"rpm": 1}},
        {
            "name": "budget",
            "key": K_BUDGET,
            "models": ["priced-chat"],
            "limits": {"budget_usd": 0.000001, "budget_period": "day"},
        },
    ]
    return config


@pytest.fixture(scope="module")
def gateways(
    upstream: ServerProcess, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    path = write_config(tmp_path_factory.mktemp("shared"), _config(upstream, prefix))
    env = {"REDIS_URL": REDIS_URL, "GATEWAY_MASTER_KEY": MASTER}
    started: list[ServerProcess] = []
    try:
        # Both processes boot at once; wait_ready stops a server that never comes up.
        servers = [
            ServerProcess(["serve", "--config", str(path)], env=env),
            ServerProcess(["serve", "--config", str(path)], env=env),
        ]
        started += servers
        for server in servers:
            server.wait_ready()
        yield servers[0], servers[1]
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def a(gateways: tuple[ServerProcess, ServerProcess]) -> ServerProcess:
    return gateways[0]


@pytest.fixture
def b(gateways: tuple[ServerProcess, ServerProcess]) -> ServerProcess:
    return gateways[1]


def _client(**kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(20, connect=5),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=50),
        **kwargs,
    )


def _chat(model: str = "local-chat", messages: list | None = None, **extra: Any) -> dict:
    return {"model": model, "messages": messages or HI, **extra}


def _retry_after(response: httpx.Response) -> int:
    value = response.headers.get("retry-after")
    assert value is not None, response.headers
    assert re.fullmatch(r"\d+", value), value
    return int(value)


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "param", "code"} <= set(body["error"]), body
    return body["error"]


async def _stats(upstream: ServerProcess) -> dict:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"{upstream.url}/mock/stats")).json()


async def _reset(upstream: ServerProcess) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        (await client.post(f"{upstream.url}/mock/reset")).raise_for_status()


# ---------------------------------------------------------------- rpm, exact across processes


async def test_rpm_is_exact_across_two_gateways(a: ServerProcess, b: ServerProcess) -> None:
    async with _client() as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    f"{(a, b)[i % 2].url}/v1/chat/completions",
                    json=_chat(messages=[{"role": "user", "content": f"request {i}"}]),
                    headers=auth(K_RPM50),
                )
                for i in range(200)
            )
        )
    statuses = Counter(r.status_code for r in responses)
    outcomes = Counter((r.status_code, r.json().get("error", {}).get("code")) for r in responses)
    assert statuses == {200: 50, 429: 150}, outcomes
    # Each gateway answered 100 requests: with a limit per process, up to 100 would
    # have passed. Which gateway wins the 50 slots is a race, so it is not asserted.
    per_gateway = Counter(i % 2 for i, r in enumerate(responses) if r.status_code in (200, 429))
    assert per_gateway == {0: 100, 1: 100}
    for r in responses:
        if r.status_code == 429:
            assert 1 <= _retry_after(r) <= 60
            error = _error(r)
            assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
            assert r.headers["x-ratelimit-limit-requests"] == "50"
            assert r.headers["x-ratelimit-remaining-requests"] == "0"


# ---------------------------------------------------------------- max_parallel


async def test_max_parallel_is_exact_across_two_gateways(
    a: ServerProcess, b: ServerProcess, upstream: ServerProcess
) -> None:
    await _reset(upstream)
    body = _chat("up-chat", stream=True, mock={"tokens_per_s": 10, "chunks": 10})
    async with _client() as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    f"{(a, b)[i % 2].url}/v1/chat/completions", json=body, headers=auth(K_PAR5)
                )
                for i in range(20)
            )
        )
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 5, 429: 15}, statuses
    for r in responses:
        if r.status_code == 200:
            data = [line for line in r.text.split("\n") if line.startswith("data: ")]
            assert data[-1] == "data: [DONE]", r.text[-300:]
            assert len(data) == 10 + 1 + 1  # ten tokens, the finish chunk, [DONE]
        else:
            assert _retry_after(r) >= 1
            error = _error(r)
            assert (error["type"], error["code"]) == ("rate_limit_error", "max_parallel_exceeded")
    stats = await _stats(upstream)
    # Refused requests never reached the upstream; admitted ones never exceeded five at once.
    assert stats["requests"] == 5, stats
    assert stats["streams_completed"] == 5, stats
    assert 1 <= stats["max_in_flight"] <= 5, stats


# ---------------------------------------------------------------- tpm settles to real usage


async def test_tpm_reservation_settles_to_the_real_usage(
    a: ServerProcess, b: ServerProcess
) -> None:
    body = _chat(messages=[{"role": "user", "content": "count my tokens"}], max_tokens=500)
    reserved = estimate.prompt_tokens(ChatCompletionRequest.model_validate(body)) + 500
    async with _client() as client:
        first = await client.post(f"{a.url}/v1/chat/completions", json=body, headers=auth(K_TPM))
        assert first.status_code == 200, first.text
        second = await client.post(f"{b.url}/v1/chat/completions", json=body, headers=auth(K_TPM))
        assert second.status_code == 200, second.text
    real = first.json()["usage"]["total_tokens"]
    assert 0 < real < reserved  # otherwise settling would change nothing
    assert first.headers["x-ratelimit-limit-tokens"] == "2000"
    # The first answer shows its own reservation; the second shows the first at its real
    # usage plus its own reservation.
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == 2000 - reserved
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == 2000 - real - reserved
    assert re.fullmatch(r"\d+m\d+s|\d+s|\d+ms", second.headers["x-ratelimit-reset-tokens"])


# ---------------------------------------------------------------- client disconnects


async def _read_one_chunk(
    client: httpx.AsyncClient, url: str, opened: list[tuple[httpx.Response, Any]]
) -> None:
    """Open a slow stream and read its first chunk, leaving the connection open."""
    request = client.build_request(
        "POST",
        f"{url}/v1/chat/completions",
        json=_chat("up-chat", stream=True, mock={"tokens_per_s": 2, "chunks": 40}),
        headers=auth(K_DISC),
    )
    response = await client.send(request, stream=True)
    # The line iterator is kept: a dropped one would close the connection when collected.
    lines = response.aiter_lines()
    opened.append((response, lines))
    assert response.status_code == 200, await response.aread()
    while True:
        line = await anext(lines)  # StopAsyncIteration: the stream ended before a chunk
        if line.startswith("data: "):
            assert line != "data: [DONE]"
            return


async def test_disconnected_streams_release_their_leases_and_record_usage(
    a: ServerProcess, b: ServerProcess, upstream: ServerProcess
) -> None:
    await _reset(upstream)
    key_id = config_key_id(K_DISC)
    streams_client = _client()
    opened: list[tuple[httpx.Response, Any]] = []
    try:
        await asyncio.gather(
            *(_read_one_chunk(streams_client, (a, b)[i % 2].url, opened) for i in range(20))
        )
        async with _client() as client:
            # All twenty slots are taken while the streams run.
            full = await client.post(
                f"{a.url}/v1/chat/completions", json=_chat(), headers=auth(K_DISC)
            )
            assert full.status_code == 429, full.text
            assert _error(full)["code"] == "max_parallel_exceeded"
    finally:
        for response, lines in opened:
            await lines.aclose()
            await response.aclose()
        await streams_client.aclose()
    closed_at = time.monotonic()

    # Twenty new requests that overlap (each holds its lease 0.3 s) are admitted within 2 s:
    # the leases were released, not left to their 30 s TTL.
    slow = _chat(mock={"ttft_ms": 300})
    async with _client() as client:
        while True:
            again = await asyncio.gather(
                *(
                    client.post(
                        f"{(a, b)[i % 2].url}/v1/chat/completions", json=slow, headers=auth(K_DISC)
                    )
                    for i in range(20)
                )
            )
            statuses = Counter(r.status_code for r in again)
            assert set(statuses) <= {200, 429}, statuses
            if statuses[200] == 20:
                break
            assert time.monotonic() - closed_at < 2, f"leases still held after 2 s: {statuses}"
            await asyncio.sleep(0.1)
        assert time.monotonic() - closed_at < 2 + 0.5

        # The abandoned streams are in the usage, with the tokens streamed so far.
        deadline = time.monotonic() + 3
        while True:
            usage = (await client.get(f"{a.url}/admin/keys/{key_id}/usage", headers=ADMIN)).json()
            streamed = {m["model"]: m for m in usage["by_model"]}.get("up-chat", {})
            if streamed.get("requests") == 20 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    assert streamed.get("requests") == 20, usage
    assert streamed["output_tokens"] >= 20, usage
    assert streamed["input_tokens"] > 0, usage

    # And the gateway closed its upstream calls rather than reading them to the end.
    for _ in range(30):
        stats = await _stats(upstream)
        if stats["streams_disconnected"] >= 20:
            break
        await asyncio.sleep(0.1)
    assert stats["streams_disconnected"] == 20, stats
    assert stats["streams_completed"] == 0, stats


# ---------------------------------------------------------------- the admin API


def _all_keys(url: str) -> tuple[list[dict], list[str]]:
    """Every key record, page by page, and the raw answers."""
    records, raws, after = [], [], None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        r = httpx.get(f"{url}/admin/keys", params=params, headers=ADMIN, timeout=5)
        assert r.status_code == 200, r.text
        raws.append(r.text)
        page = r.json()
        assert page["object"] == "list"
        records += page["data"]
        if not page["has_more"]:
            return records, raws
        after = page["last_id"]
        assert after == page["data"][-1]["id"]


def _wait_for_status(
    url: str, key: str, status: int, meanwhile: int, since: float, within: float
) -> float:
    """Send one request at a time until one answers ``status`` (the others ``meanwhile``)."""
    while True:
        r = httpx.post(f"{url}/v1/chat/completions", json=_chat(), headers=auth(key), timeout=5)
        if r.status_code == status:
            return time.monotonic() - since
        assert r.status_code == meanwhile, r.text
        assert time.monotonic() - since < within, (r.status_code, r.text)
        time.sleep(0.1)


def test_admin_changes_on_one_gateway_apply_on_the_other(
    a: ServerProcess, b: ServerProcess
) -> None:
    created = httpx.post(
        f"{a.url}/admin/keys",
        json={"name": "shared-admin", "limits": {"rpm": 100}, "metadata": {"team": "qa"}},
        headers=ADMIN,
        timeout=5,
    )
    assert created.status_code == 201, created.text
    record = created.json()
    key_id, secret = record["id"], record["key"]
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert secret.startswith("sk-")
    assert record["key_hint"] == f"sk-...{secret[-4:]}"
    assert record["source"] == "api"
    assert record["limits"]["rpm"] == 100
    answers: list[str] = []  # every admin answer after creation: none may hold the key

    reported = {"requests": 0, "input_tokens": 0, "output_tokens": 0}

    def use(url: str, content: str) -> httpx.Response:
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json=_chat(messages=[{"role": "user", "content": content}]),
            headers=auth(secret),
            timeout=5,
        )
        if r.status_code == 200:
            usage = r.json()["usage"]
            reported["requests"] += 1
            reported["input_tokens"] += usage["prompt_tokens"]
            reported["output_tokens"] += usage["completion_tokens"]
        return r

    first = use(b.url, "first request, on the other gateway")
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-requests"] == "100"

    patched = httpx.patch(
        f"{a.url}/admin/keys/{key_id}", json={"limits": {"rpm": 2}}, headers=ADMIN, timeout=5
    )
    patched_at = time.monotonic()
    assert patched.status_code == 200, patched.text
    answers.append(patched.text)
    assert patched.json()["limits"]["rpm"] == 2
    assert patched.json()["metadata"] == {"team": "qa"}  # untouched fields stay
    # B caches keys for at most a second; after that it must see rpm 2.
    time.sleep(1.1)
    second = use(b.url, "second request")
    assert second.status_code == 200, second.text
    assert second.headers["x-ratelimit-limit-requests"] == "2"
    third = use(b.url, "third request")
    assert third.status_code == 429, third.text
    assert _error(third)["code"] == "rate_limit_exceeded"
    assert time.monotonic() - patched_at < 1.5

    revoked = httpx.delete(f"{a.url}/admin/keys/{key_id}", headers=ADMIN, timeout=5)
    revoked_at = time.monotonic()
    assert revoked.status_code == 204, revoked.text
    assert use(a.url, "after revoke, same gateway").status_code == 401
    # Until B sees the revocation the key is still out of requests: nothing is admitted.
    _wait_for_status(b.url, secret, 401, 429, revoked_at, within=1.5)
    gone = use(b.url, "after revoke, other gateway")
    assert gone.status_code == 401
    assert _error(gone)["code"] == "invalid_api_key"

    for url in (a.url, b.url):
        records, raws = _all_keys(url)
        answers += raws
        listed = {r["id"]: r for r in records}
        assert key_id in listed
        assert listed[key_id]["revoked_at"] is not None
        assert listed[key_id]["source"] == "api"
        got = httpx.get(f"{url}/admin/keys/{key_id}", headers=ADMIN, timeout=5)
        assert got.status_code == 200
        assert got.json()["revoked_at"] is not None
        answers.append(got.text)
        usage = httpx.get(f"{url}/admin/keys/{key_id}/usage", headers=ADMIN, timeout=5)
        assert usage.status_code == 200
        answers.append(usage.text)
        doc = usage.json()
        assert doc["key_id"] == key_id
        assert reported["requests"] == 2
        assert {k: doc[k] for k in reported} == reported, (doc, reported)
        assert [m["model"] for m in doc["by_model"]] == ["local-chat"]
        assert sum(d["requests"] for d in doc["by_day"]) == 2

    for text in answers:
        assert secret not in text
        assert digest not in text


def test_config_keys_are_read_only(a: ServerProcess) -> None:
    records, _ = _all_keys(a.url)
    config_ids = [r["id"] for r in records if r["source"] == "config"]
    assert config_key_id(K_RPM50) in config_ids
    for key_id in config_ids[:2]:
        for method in ("PATCH", "DELETE"):
            r = httpx.request(
                method,
                f"{a.url}/admin/keys/{key_id}",
                json={"limits": {"rpm": 1}} if method == "PATCH" else None,
                headers=ADMIN,
                timeout=5,
            )
            assert r.status_code == 409, (method, r.text)
            assert _error(r)["message"]
    # Still unchanged and usable.
    assert (
        httpx.get(f"{a.url}/admin/keys/{config_ids[0]}", headers=ADMIN).json()["revoked_at"] is None
    )


def test_master_key_is_for_admin_only(a: ServerProcess) -> None:
    for method, path, body in (
        ("POST", "/v1/chat/completions", _chat()),
        ("GET", "/v1/models", None),
    ):
        r = httpx.request(method, f"{a.url}{path}", json=body, headers=ADMIN, timeout=5)
        assert r.status_code == 401, (path, r.text)
        assert _error(r)["code"] == "invalid_api_key"
    wrong = httpx.get(f"{a.url}/admin/keys", headers=auth(MASTER + "x"), timeout=5)
    assert wrong.status_code == 401
    app_key = httpx.get(f"{a.url}/admin/keys", headers=auth(K_RPM50), timeout=5)
    assert app_key.status_code == 401
    missing = httpx.get(f"{a.url}/admin/keys", timeout=5)
    assert missing.status_code == 401


def test_admin_api_is_disabled_without_a_master_key(
    upstream: ServerProcess, tmp_path: Path
) -> None:
    server = start_gateway(write_config(tmp_path, standard_config(upstream.url)))
    try:
        for headers in ({}, ADMIN):
            r = httpx.get(f"{server.url}/admin/keys", headers=headers, timeout=5)
            assert r.status_code == 401, r.text
            assert _error(r)["message"] == "admin API disabled: set GATEWAY_MASTER_KEY"
        r = httpx.post(f"{server.url}/admin/keys", json={"name": "x"}, headers=ADMIN, timeout=5)
        assert r.status_code == 401
    finally:
        server.stop()


# ---------------------------------------------------------------- through the openai SDK


def test_sdk_sees_rate_limit_errors_with_their_headers(a: ServerProcess, b: ServerProcess) -> None:
    first = openai.OpenAI(base_url=f"{a.url}/v1", api_key=K_SDK, max_retries=0, timeout=10)
    second = openai.OpenAI(base_url=f"{b.url}/v1", api_key=K_SDK, max_retries=0, timeout=10)
    answer = first.chat.completions.create(model="local-chat", messages=HI)
    assert answer.choices[0].message.content
    with pytest.raises(openai.RateLimitError) as caught:
        second.chat.completions.create(model="local-chat", messages=HI)
    error = caught.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    headers = error.response.headers
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert re.fullmatch(r"\d+m\d+s|\d+s|\d+ms", headers["x-ratelimit-reset-requests"])
    assert 1 <= int(headers["retry-after"]) <= 60
    # Retry-After is the reset, rounded up to whole seconds.
    reset = headers["x-ratelimit-reset-requests"]
    m = re.fullmatch(r"(?:(\d+)m)?(\d+)s", reset)
    if m:
        assert int(headers["retry-after"]) == math.ceil(int(m.group(1) or 0) * 60 + int(m.group(2)))


def test_exhausted_budget_is_insufficient_quota(a: ServerProcess, b: ServerProcess) -> None:
    clients = [
        openai.OpenAI(base_url=f"{s.url}/v1", api_key=K_BUDGET, max_retries=0, timeout=10)
        for s in (a, b)
    ]
    refused: list[openai.RateLimitError] = []
    for i in range(3):
        try:
            clients[i % 2].chat.completions.create(model="priced-chat", messages=HI)
        except openai.RateLimitError as exc:
            refused.append(exc)
    # At most the first may pass: $0.000001 is less than one token at $1000 per million.
    assert len(refused) >= 2, refused
    for exc in refused:
        assert exc.status_code == 429
        assert exc.code == "insufficient_quota"
        assert exc.type == "insufficient_quota"
        assert exc.response.headers["x-should-retry"] == "false"


def test_workers_each_write_the_access_log(
    upstream: ServerProcess, prefix: str, tmp_path: Path
) -> None:
    # --workers N starts fresh processes: each must set up its own logging.
    path = write_config(tmp_path, _config(upstream, prefix))
    server = ServerProcess(
        ["serve", "--config", str(path), "--workers", "2"], env={"REDIS_URL": REDIS_URL}
    )
    try:
        server.wait_ready(timeout=30)
        ids = [f"workers-log-{uuid.uuid4().hex[:8]}" for _ in range(6)]
        for request_id in ids:
            r = httpx.post(
                f"{server.url}/v1/chat/completions",
                json={"model": "local-chat", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {TEST_KEY}", "x-request-id": request_id},
                timeout=10,
            )
            assert r.status_code == 200
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            logged = [line for line in server.logs().splitlines() if "gateway.access" in line]
            if all(any(f"request_id={i}" in line for line in logged) for i in ids):
                break
            time.sleep(0.1)
        for request_id in ids:
            assert [line for line in logged if f"request_id={request_id} " in line], request_id
    finally:
        server.stop()


def test_a_cooldown_one_gateway_starts_is_kept_by_the_other(
    a: ServerProcess, b: ServerProcess, upstream: ServerProcess
) -> None:
    # cool-bad fails on every call: the first gateway's call that reaches it is retried
    # on cool-good and cools cool-bad down, for both gateways, through Redis.
    body = {
        "model": "up-shared-cool",
        "messages": HI,
        "mock": {"models": {"cool-bad": {"status": 500}}},
    }

    def bad_calls() -> int:
        stats = httpx.get(f"{upstream.url}/mock/stats").json()
        return int(stats["models"].get("cool-bad", {}).get("requests", 0))

    before = bad_calls()
    for _ in range(60):  # weighted 1:1, so it is reached within a few calls
        answer = httpx.post(f"{a.url}/v1/chat/completions", json=body, headers=auth(TEST_KEY))
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-gateway-served-by"] == "upstream/cool-good"
        if bad_calls() > before:
            break
    reached = bad_calls()
    assert reached == before + 1  # cooled down at once: never called twice

    time.sleep(2.5)  # the other gateway reads the shared cooldowns every second
    for _ in range(20):
        answer = httpx.post(f"{b.url}/v1/chat/completions", json=body, headers=auth(TEST_KEY))
        assert answer.status_code == 200
        assert answer.headers["x-gateway-served-by"] == "upstream/cool-good"
    assert bad_calls() == reached  # 20 calls, none to the cooled deployment
