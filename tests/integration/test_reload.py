"""Hot reload under ``serve --workers 2`` (docs/operations.md, "Reloading the config").

One gateway of two workers on Redis, in front of two mock upstreams, one per
provider, so that each provider's connections can be counted on its own
(``/mock/stats``). The tests share them and each writes the config file it
needs: what they assert is what a client sees (answers, streams) and what an
operator sees (the admin API's answer, the log's lines, which are JSON here so
that each names the worker that wrote it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.servers import SLACK, TEST_KEY, ServerProcess, wait_for, write_config

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MASTER = "sk-master-" + uuid.uuid4().hex
ADMIN = {"authorization": f"Bearer {MASTER}"}
AUTH = {"authorization": f"Bearer {TEST_KEY}"}
# A stream slow enough to be in flight across a reload, with seconds to spare on a
# stalled machine: 16 chunks at 4 a second.
SLOW = {"chunks": 16, "tokens_per_s": 4}
# Rounds of 8 fresh connections for both workers to have answered one: the kernel
# spreads connections between them unevenly, but not that unevenly.
ROUNDS = 25


@dataclass
class Stack:
    gateway: ServerProcess
    a: ServerProcess  # the mock behind provider a (and the added provider, fresh)
    b: ServerProcess  # the mock behind provider b only
    directory: Path
    prefix: str
    workers: set[int]

    def write(self, **kinds: bool) -> None:
        """The config file ``_config`` makes of ``kinds``; read at the next reload."""
        write_config(self.directory, _config(self.a.url, self.b.url, self.prefix, **kinds))


def _config(a_url: str, b_url: str, prefix: str, **kinds: bool) -> dict[str, Any]:
    """Providers a and b (unless ``b=False``), each with a model; ``fresh=True`` adds a
    provider and its model; ``broken=True`` a model whose provider does not exist."""
    providers: dict[str, Any] = {"a": {"type": "openai", "base_url": f"{a_url}/v1"}}
    models: dict[str, Any] = {
        "a-chat": {"deployments": [{"provider": "a", "model": "mock-chat"}]},
    }
    if kinds.get("b", True):
        providers["b"] = {"type": "openai", "base_url": f"{b_url}/v1"}
        models["b-chat"] = {"deployments": [{"provider": "b", "model": "mock-chat"}]}
    if kinds.get("fresh"):
        providers["fresh"] = {"type": "openai", "base_url": f"{a_url}/v1"}
        models["fresh-chat"] = {"deployments": [{"provider": "fresh", "model": "mock-fresh"}]}
    if kinds.get("broken"):
        models["broken-chat"] = {"deployments": [{"provider": "nope", "model": "mock-chat"}]}
    return {
        "providers": providers,
        "models": models,
        "keys": [{"name": "tests", "key": TEST_KEY}],
        "server": {"redis_prefix": prefix, "log_format": "json"},
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"--workers needs a Redis at {REDIS_URL}: {exc}", pytrace=False)
    prefix = f"gwtest-reload-{uuid.uuid4().hex[:8]}:"
    directory = tmp_path_factory.mktemp("reload")
    # Started together, waited for together: the start-up is most of this file's time.
    a, b = ServerProcess(["mock-upstream"]), ServerProcess(["mock-upstream"])
    path = write_config(directory, _config(a.url, b.url, prefix))
    gateway = ServerProcess(
        ["serve", "--config", str(path), "--workers", "2"],
        env={"REDIS_URL": REDIS_URL, "GATEWAY_MASTER_KEY": MASTER},
    )
    try:
        a.wait_ready()
        b.wait_ready()
        gateway.wait_ready(timeout=30 + SLACK)
        workers = wait_for("two workers started", lambda: _worker_pids(gateway, 2))
        yield Stack(gateway, a, b, directory, prefix, workers)
    finally:
        for server in (gateway, a, b):
            server.stop()
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


def _log(server: ServerProcess, since: int = 0) -> list[dict[str, Any]]:
    """The JSON lines the gateway wrote after the first ``since`` characters of its log."""
    events = []
    for line in server.logs()[since:].splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _mark(stack: Stack) -> int:
    return len(stack.gateway.logs())


def _worker_pids(server: ServerProcess, count: int) -> set[int] | None:
    pids = {
        int(m.group(1))
        for event in _log(server)
        if (m := re.search(r"Started server process \[(\d+)\]", str(event.get("body"))))
    }
    return pids if len(pids) == count else None


def _reload_lines(stack: Stack, since: int, needle: str) -> dict[int, str]:
    """Wait until every worker has logged a reload line holding ``needle``; those lines,
    by worker."""

    def each_worker() -> dict[int, str] | None:
        lines = {
            event["process.pid"]: event["body"]
            for event in _log(stack.gateway, since)
            if event.get("logger") == "gateway.reload" and needle in event.get("body", "")
        }
        return lines if set(lines) == stack.workers else None

    return wait_for(f"a reload line with {needle!r} from each worker", each_worker)


def _served_by(stack: Stack, since: int, ids: list[str]) -> set[int]:
    """The workers that answered the requests ``ids``, once each has its access line."""

    def pids() -> set[int] | None:
        found = {
            e["request_id"]: e["process.pid"]
            for e in _log(stack.gateway, since)
            if e.get("logger") == "gateway.access" and e.get("request_id") in ids
        }
        return set(found.values()) if len(found) == len(ids) else None

    return wait_for("the access lines of the requests", pids)


def _chat(stack: Stack, model: str, request_id: str | None = None) -> httpx.Response:
    """One request on a connection of its own: whichever worker accepts it answers."""
    headers = {**AUTH, "x-request-id": request_id or uuid.uuid4().hex}
    return httpx.post(
        f"{stack.gateway.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
        timeout=10 + SLACK,
    )


def _stats(mock: ServerProcess) -> dict[str, Any]:
    return httpx.get(f"{mock.url}/mock/stats", timeout=10).json()


class SlowStream:
    """A slow stream read a piece at a time, the rest of the test running in between."""

    def __init__(self, stack: Stack, model: str) -> None:
        self._client = httpx.Client(timeout=10 + SLACK)
        self._response = self._client.send(
            self._client.build_request(
                "POST",
                f"{stack.gateway.url}/v1/chat/completions",
                json={
                    "model": model,
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": True,
                    "mock": SLOW,
                },
                headers=AUTH,
            ),
            stream=True,
        )
        assert self._response.status_code == 200, self._response.read()
        self._lines = self._response.iter_lines()
        self.events: list[str] = []

    def next_event(self) -> str:
        for line in self._lines:
            if line.startswith("data: "):
                self.events.append(line.removeprefix("data: "))
                return self.events[-1]
        raise AssertionError(f"the stream ended early after {self.events}")

    def finish(self) -> list[str]:
        """Read to the end; every event read."""
        for line in self._lines:
            if line.startswith("data: "):
                self.events.append(line.removeprefix("data: "))
        return self.events

    def close(self) -> None:
        self._response.close()
        self._client.close()


def _assert_whole(events: list[str]) -> None:
    assert events[-1] == "[DONE]", events
    chunks = [json.loads(e) for e in events[:-1]]
    content = [
        c["choices"][0]["delta"]["content"]
        for c in chunks
        if c["choices"] and c["choices"][0]["delta"].get("content")
    ]
    assert len(content) == SLOW["chunks"], events
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop", events


def test_a_broken_file_is_refused_and_the_running_config_stays(stack: Stack) -> None:
    since = _mark(stack)
    stack.write(broken=True)

    r = httpx.post(f"{stack.gateway.url}/admin/reload", headers=ADMIN, timeout=10 + SLACK)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "config_invalid", error
    problem = "models.broken-chat.deployments[0].provider: unknown provider 'nope'"
    assert problem in error["message"], error
    (line,) = wait_for(
        "the refusal in the log",
        lambda: [
            e["body"]
            for e in _log(stack.gateway, since)
            if "config reload (admin API, pid" in e.get("body", "")
        ],
    )
    assert "refused, still serving the config loaded before" in line, line
    assert problem in line, line

    # SIGHUP to the supervisor: each worker reads the file, and refuses it.
    since = _mark(stack)
    stack.gateway.proc.send_signal(signal.SIGHUP)
    lines = _reload_lines(stack, since, "config reload (signal, pid")
    for line in lines.values():
        assert "refused, still serving the config loaded before" in line, line
        assert problem in line, line

    # Still the old config, on whichever worker answers.
    for _ in range(6):
        r = _chat(stack, "a-chat")
        assert r.status_code == 200, r.text
        assert _chat(stack, "broken-chat").json()["error"]["code"] == "model_not_found"
    assert stack.gateway.proc.poll() is None


def test_a_new_model_is_served_by_both_workers_and_a_stream_in_flight_finishes(
    stack: Stack,
) -> None:
    r = _chat(stack, "fresh-chat")
    assert r.status_code == 404, r.text

    stream = SlowStream(stack, "a-chat")
    try:
        assert stream.next_event() != "[DONE]"
        since = _mark(stack)
        stack.write(fresh=True)
        r = httpx.post(f"{stack.gateway.url}/admin/reload", headers=ADMIN, timeout=10 + SLACK)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["object"] == "reload", answer
        assert "models added: fresh-chat" in answer["changed"], answer
        assert "providers added: fresh" in answer["changed"], answer
        assert answer["restart_needed"] == [], answer
        assert answer["workers_signalled"] is True, answer
        _reload_lines(stack, since, "models added: fresh-chat")
        # Both workers have swapped, and the stream is still going upstream.
        stats = _stats(stack.a)
        assert stats["in_flight"] == 1, stats

        # Fresh connections until each worker has answered the new model.
        served: set[int] = set()
        for _ in range(ROUNDS):
            ids = [uuid.uuid4().hex for _ in range(8)]
            for request_id in ids:
                r = _chat(stack, "fresh-chat", request_id)
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["message"]["content"], r.text
            served |= _served_by(stack, since, ids)
            if served == stack.workers:
                break
        assert served == stack.workers, f"only {served} of {stack.workers} served fresh-chat"
        assert _stats(stack.a)["models"]["mock-fresh"]["requests"] >= 2

        _assert_whole(stream.finish())
    finally:
        stream.close()


def test_a_removed_providers_connections_close_after_its_last_request(stack: Stack) -> None:
    for _ in range(4):  # idle connections in the workers' pools to b, likely both
        assert _chat(stack, "b-chat").status_code == 200

    stream = SlowStream(stack, "b-chat")
    try:
        assert stream.next_event() != "[DONE]"
        since = _mark(stack)
        stack.write(b=False)
        stack.gateway.proc.send_signal(signal.SIGHUP)
        _reload_lines(stack, since, "providers removed: b")

        # The stream started on the old config: its connection to b stays open.
        stats = _stats(stack.b)
        assert stats["in_flight"] == 1, stats
        assert stats["connections_open"] >= 2, stats  # the stream's and this request's
        for _ in range(4):
            assert _chat(stack, "b-chat").json()["error"]["code"] == "model_not_found"

        _assert_whole(stream.finish())
    finally:
        stream.close()
    # Its last request over, the old config closes b: only the stats request is left.
    wait_for("b's connections closed", lambda: _stats(stack.b)["connections_open"] == 1)
