"""/metrics over two workers: the counts add up to the traffic sent (docs/operations.md, "Metrics").

One ``gateway serve --workers 2`` on Redis, against the mock upstream over HTTP,
gets a scripted mix of answers, each over a fresh connection so that both
workers serve it (their access lines, in JSON, name their pid). Every scrape,
whichever worker answers it, must count all of it: prometheus-client's
multiprocess mode, in the directory ``serve`` makes for its workers. Then both
workers are killed with requests in flight: the supervisor replaces them, their
counts stay in the totals and their in-flight gauges leave them.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis

from tests.observability.samples import (
    Samples,
    assert_histograms_sane,
    parse,
    select,
    value,
)
from tests.servers import ServerProcess, write_config

T = TypeVar("T")

SLACK = 5.0  # seconds a stalled machine may add to a wait
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TAG = uuid.uuid4().hex[:12]
TEAM = f"sk-metrics-team-{TAG}"
LIMITED = f"sk-metrics-limited-{TAG}"
MASTER = f"sk-metrics-master-{uuid.uuid4().hex}"
PROVIDER_SECRET = f"sk-metrics-provider-{TAG}"
STRANGER = f"sk-metrics-stranger-{TAG}"  # a key no one made
EVIL_MODEL = f"evil-{TAG}"  # a model no one configured
RPM = 3
HI = [{"role": "user", "content": "hi"}]
PRICE = {"input": 1, "output": 2}
TIMEOUT = 10 + SLACK

Sent = Counter[tuple[str, str, str, str, str]]  # route, model, provider, key, status


# ---------------------------------------------------------------- the gateway


@pytest.fixture(scope="module")
def config_path(upstream: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = {
        "providers": {
            "upstream": {
                "type": "openai",
                "base_url": f"{upstream.url}/v1",
                "api_key": PROVIDER_SECRET,
            }
        },
        "models": {
            "alpha": {
                "deployments": [{"provider": "upstream", "model": f"alpha-{TAG}", "price": PRICE}]
            },
            "beta": {
                "deployments": [{"provider": "upstream", "model": f"beta-{TAG}", "price": PRICE}]
            },
        },
        "keys": [
            {"name": "team", "key": TEAM},
            {"name": "limited", "key": LIMITED, "models": ["alpha"], "limits": {"rpm": RPM}},
        ],
        "server": {"redis_prefix": f"gwtest-{TAG}:", "log_format": "json"},
    }
    return write_config(tmp_path_factory.mktemp("metrics"), config)


@pytest.fixture(scope="module")
def gateway(config_path: Path) -> Iterator[ServerProcess]:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:  # a missing Redis fails these tests, never skips them
        pytest.fail(f"these tests need a Redis at {REDIS_URL}: {exc}")
    server = ServerProcess(
        ["serve", "--config", str(config_path), "--workers", "2"],
        env={"REDIS_URL": REDIS_URL, "GATEWAY_MASTER_KEY": MASTER},
    )
    try:
        server.wait_ready(timeout=30 + SLACK)
        # /health answers once one worker is up: the other must be too, or it serves nothing.
        until(lambda: len(started_workers(server)) == 2 or None, "the second worker's start")
        yield server
    finally:
        server.stop()
        try:
            for name in client.scan_iter(match=f"gwtest-{TAG}:*", count=1000):
                client.delete(name)
        finally:
            client.close()


def until(probe: Callable[[], T | None], what: str, seconds: float = 10 + SLACK) -> T:
    """``probe()``'s first answer that is not None, asked again until ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {seconds} s")
        time.sleep(0.1)


def log_lines(server: ServerProcess, logger: str) -> list[dict[str, Any]]:
    lines = []
    for line in server.logs().splitlines():
        if line.startswith("{") and f'"logger":"{logger}"' in line:
            lines.append(json.loads(line))
    return lines


def started_workers(server: ServerProcess) -> list[int]:
    """The pids of the workers that started serving, in order, dead ones included."""
    return [
        line["process.pid"]
        for line in log_lines(server, "uvicorn.error")
        if line["body"] == "Application startup complete."
    ]


def answered_by(server: ServerProcess, request_ids: list[str]) -> dict[str, int]:
    """request id -> the pid of the worker that answered it, once every one is logged
    (the access log is written in batches)."""

    def logged() -> dict[str, int] | None:
        pids = {
            line["request_id"]: line["process.pid"]
            for line in log_lines(server, "gateway.access")
            if line["request_id"] in request_ids
        }
        return pids if len(pids) == len(request_ids) else None

    return until(logged, "the access lines")


# ---------------------------------------------------------------- requests, scrapes


def chat(
    server: ServerProcess,
    model: str,
    key: str | None = TEAM,
    request_id: str | None = None,
    **fields: Any,
) -> httpx.Response:
    """One request on a connection of its own (httpx.post opens one each time)."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if request_id:
        headers["x-request-id"] = request_id
    body = {"model": model, "messages": HI, **fields}
    return httpx.post(
        f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=TIMEOUT
    )


def scrape(server: ServerProcess, request_id: str | None = None) -> tuple[str, Samples]:
    headers = {"x-request-id": request_id} if request_id else {}
    response = httpx.get(f"{server.url}/metrics", headers=headers, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text, parse(response.text)


def chat_counts(samples: Samples) -> Sent:
    """gateway_requests_total of the chat route, by its labels (zeros left out)."""
    counts: Sent = Counter()
    for labels, v in select(samples, "gateway_requests_total", route="chat").items():
        d = dict(labels)
        if v:
            counts[d["route"], d["model"], d["provider"], d["key"], d["status"]] = int(v)
    return counts


def scrape_until_counted(server: ServerProcess, sent: Sent) -> tuple[str, Samples]:
    """A scrape that counts every request sent: a request is counted once its answer
    is out, a moment after its client has it."""
    last: list[Sent] = []

    def counted() -> tuple[str, Samples] | None:
        text, samples = scrape(server)
        last[:] = [chat_counts(samples)]
        return (text, samples) if last[0] == sent else None

    try:
        return until(counted, "the counts")
    except AssertionError:
        assert last[0] == sent  # says what differs
        raise


def new_id(what: str) -> str:
    return f"metrics-{what}-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------- the tests


def test_counts_add_up_over_two_workers(gateway: ServerProcess) -> None:
    sent: Sent = Counter()
    tokens: Counter[str] = Counter()  # alpha's, by type, as its answers reported them
    alpha_answers = 0

    def answered(r: httpx.Response, key: str) -> None:
        nonlocal alpha_answers
        assert r.status_code == 200, r.text
        sent["chat", "alpha", "upstream", key, "200"] += 1
        tokens["input"] += r.json()["usage"]["prompt_tokens"]
        tokens["output"] += r.json()["usage"]["completion_tokens"]
        alpha_answers += 1

    # alpha, eight at a time, each on its own connection, until both workers answered.
    ids: list[str] = []
    pids: set[int] = set()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):
            batch = [new_id("alpha") for _ in range(8)]
            for r in pool.map(lambda i: chat(gateway, "alpha", request_id=i), batch):
                answered(r, "team")
            ids += batch
            pids = set(answered_by(gateway, ids).values())
            if len(pids) == 2:
                break
    assert pids == set(started_workers(gateway)), "both workers answered"

    for _ in range(2):
        assert chat(gateway, "beta").status_code == 200
        sent["chat", "beta", "upstream", "team", "200"] += 1
    body = {"model": "beta", "messages": HI, "stream": True}
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {TEAM}"},
        timeout=TIMEOUT,
    ) as stream:
        assert stream.status_code == 200
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert len(events) > 2
    assert events[-1] == "data: [DONE]"
    sent["chat", "beta", "upstream", "team", "200"] += 1

    # Refused before a model is known: no model label, and never what the client wrote.
    for _ in range(2):
        assert chat(gateway, EVIL_MODEL).status_code == 404
        sent["chat", "", "", "team", "404"] += 1
    for key in (STRANGER, STRANGER, None):
        assert chat(gateway, "alpha", key=key).status_code == 401
        sent["chat", "", "", "", "401"] += 1

    # rpm is exact across the workers (Redis): RPM answers, then 429s.
    statuses = []
    for _ in range(RPM + 3):
        r = chat(gateway, "alpha", key=LIMITED)
        statuses.append(r.status_code)
        if r.status_code == 200:
            answered(r, "limited")
        else:
            sent["chat", "alpha", "", "limited", str(r.status_code)] += 1
    assert statuses == [200] * RPM + [429] * 3
    refused = statuses.count(429)

    # The master key goes to an admin route: it must not show up either.
    admin = httpx.get(
        f"{gateway.url}/admin/keys", headers={"authorization": f"Bearer {MASTER}"}, timeout=TIMEOUT
    )
    assert admin.status_code == 200

    text, samples = scrape_until_counted(gateway, sent)

    # Every scrape answers for the whole server, whichever worker reads the files.
    scrapes: dict[str, Sent] = {}
    scrapers: set[int] = set()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):
            batch = [new_id("scrape") for _ in range(8)]
            for i, (_, each) in zip(
                batch, pool.map(lambda i: scrape(gateway, i), batch), strict=True
            ):
                scrapes[i] = chat_counts(each)
            scrapers = set(answered_by(gateway, list(scrapes)).values())
            if len(scrapers) == 2:
                break
    assert scrapers == pids, "both workers answered scrapes"
    assert all(counts == sent for counts in scrapes.values())

    assert select(samples, "gateway_rate_limited_total") == {
        frozenset({("limit", "rpm"), ("key", "limited")}): refused
    }

    # Tokens and cost per upstream call, by the model that made them.
    for kind in ("input", "output"):
        assert value(samples, "gateway_tokens_total", model="alpha", type=kind) == tokens[kind]
        assert value(samples, "gateway_tokens_total", model="beta", type=kind) > 0
    assert value(samples, "gateway_cost_usd_total", model="alpha", provider="upstream") > 0
    assert value(samples, "gateway_cost_usd_total", model="beta", provider="upstream") > 0

    assert_histograms_sane(
        samples, "gateway_request_duration_seconds", "gateway_time_to_first_token_seconds"
    )
    chat_total = sum(sent.values())
    assert value(samples, "gateway_request_duration_seconds_count", route="chat") == chat_total
    assert value(samples, "gateway_time_to_first_token_seconds_count", model="alpha") == (
        alpha_answers
    )

    assert value(samples, "gateway_requests_in_flight") == 0  # the scrape is not counted
    assert value(samples, "gateway_streams_in_flight") == 0
    assert value(samples, "gateway_store_up") == 1

    # Labels are names the operators chose; no secret, nothing a client made up.
    assert 'key="team"' in text
    assert 'model="alpha"' in text
    for secret in (TEAM, LIMITED, MASTER, PROVIDER_SECRET, STRANGER, EVIL_MODEL):
        assert secret not in text


def test_killed_workers_are_replaced_and_leave_the_gauges(gateway: ServerProcess) -> None:
    _, samples = scrape(gateway)
    before = chat_counts(samples)
    started = started_workers(gateway)
    workers = started[-2:]
    held = 4
    # The upstream holds these answers far longer than the test takes to kill their workers.
    slow = {"mock": {"delay_ms": (TIMEOUT + SLACK) * 1000}}
    with ThreadPoolExecutor(held) as pool:
        calls = [pool.submit(chat, gateway, "alpha", **slow) for _ in range(held)]
        until(
            lambda: value(scrape(gateway)[1], "gateway_requests_in_flight") == held or None,
            "the requests in flight",
        )
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        for call in calls:
            with pytest.raises(httpx.TransportError):
                call.result()

    until(lambda: len(started_workers(gateway)) == len(started) + 2 or None, "new workers")
    assert not set(started_workers(gateway)[-2:]) & set(workers)

    # Without the supervisor's word, a killed worker's gauges would count forever.
    def settled() -> Samples | None:
        samples = scrape(gateway)[1]
        return samples if value(samples, "gateway_requests_in_flight") == 0 else None

    samples = until(settled, "the in-flight gauge back to 0")
    assert value(samples, "gateway_streams_in_flight") == 0
    assert value(samples, "gateway_store_up") == 1
    # The dead workers' counts stay; the requests they never answered are not counted.
    assert chat_counts(samples) == before

    assert chat(gateway, "alpha").status_code == 200
    before["chat", "alpha", "upstream", "team", "200"] += 1
    scrape_until_counted(gateway, before)


def test_a_metrics_directory_that_is_not_there_is_refused(config_path: Path) -> None:
    missing = config_path.parent / "no-such-directory"
    server = ServerProcess(
        ["serve", "--config", str(config_path), "--workers", "2"],
        env={"REDIS_URL": REDIS_URL, "PROMETHEUS_MULTIPROC_DIR": str(missing)},
    )
    try:
        assert server.proc.wait(timeout=20 + SLACK) == 1
    finally:
        server.stop()
    assert f"PROMETHEUS_MULTIPROC_DIR={missing} is not a directory" in server.logs()
    assert not missing.exists()
