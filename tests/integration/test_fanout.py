"""Fan-out through a real gateway over three real mock upstreams (docs/wire-formats.md, "Fan-out").

Three ``gateway mock-upstream`` processes (``up-a``, ``up-b``, ``up-c``) serve
one model each, so a fan-out's calls travel over three connections of their
own and each upstream's ``/mock/stats`` (its ``models`` counters) says what it
saw of its model: the request, and the client (the gateway) leaving. The client
is the official openai SDK (``max_retries=0``), through its documented way to
call a path it has no method for (``client.post`` with a ``cast_to`` and, for a
stream, a ``stream_cls``), and raw sockets where a client has to leave at a
given moment.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.integration.stores import MASTER, create_key, usage
from tests.servers import SLACK, ServerProcess, wait_for, write_config

HI = [{"role": "user", "content": "hi"}]
MODELS = ["fan-a", "fan-b", "fan-c"]
UPSTREAMS = ["up-a", "up-b", "up-c"]
# A mock that would take 25 s: a call still open once its client left is one that
# was not cancelled.
LONG = {"chunks": 50, "tokens_per_s": 2}


# ---------------------------------------------------------------- processes


@pytest.fixture(scope="module")
def processes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, ServerProcess], ServerProcess]]:
    """The upstreams and the gateway, started together (the gateway does not call its
    upstreams until a request comes). fan-x is served by up-x as the model fan-x-up."""
    upstreams = {name: ServerProcess(["mock-upstream"]) for name in UPSTREAMS}
    config = {
        "providers": {
            name: {"type": "openai", "base_url": f"{server.url}/v1", "api_key": "sk-upstream"}
            for name, server in upstreams.items()
        },
        "models": {
            model: {"deployments": [{"provider": upstream, "model": f"{model}-up"}]}
            for model, upstream in zip(MODELS, UPSTREAMS, strict=True)
        },
    }
    path = write_config(tmp_path_factory.mktemp("fanout"), config)
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
def gateway(processes: tuple[dict[str, ServerProcess], ServerProcess]) -> ServerProcess:
    return processes[1]


@pytest.fixture(scope="module")
def upstreams(
    processes: tuple[dict[str, ServerProcess], ServerProcess],
) -> dict[str, ServerProcess]:
    return processes[0]


# ---------------------------------------------------------------- helpers


class Seen:
    """What each model's upstream saw of it: ``requests`` and ``disconnects``."""

    def __init__(self, upstreams: dict[str, ServerProcess]) -> None:
        self._servers = dict(zip(MODELS, upstreams.values(), strict=True))

    def __call__(self, model: str) -> dict[str, int]:
        stats = httpx.get(f"{self._servers[model].url}/mock/stats", timeout=10).json()
        return stats["models"].get(f"{model}-up", {"requests": 0, "disconnects": 0})

    def all(self) -> dict[str, dict[str, int]]:
        return {model: self(model) for model in MODELS}


@pytest.fixture
def seen(upstreams: dict[str, ServerProcess]) -> Seen:
    return Seen(upstreams)


def _access_line(gateway: ServerProcess, request_id: str) -> str:
    def find() -> str | None:
        for line in gateway.logs().splitlines():
            if "gateway.access" in line and f"request_id={request_id} " in line:
                return line
        return None

    return wait_for(f"an access line for {request_id}", find)


def _sdk(gateway: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def _raw_request(body: dict[str, Any], key: str, request_id: str) -> bytes:
    data = json.dumps(body).encode()
    head = (
        "POST /v1/fanout/chat/completions HTTP/1.1\r\nhost: t\r\n"
        f"content-type: application/json\r\nauthorization: Bearer {key}\r\n"
        f"x-request-id: {request_id}\r\ncontent-length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def _text(chunks: list[ChatCompletionChunk], index: int) -> str:
    return "".join(
        c.delta.content or "" for chunk in chunks for c in chunk.choices if c.index == index
    )


# ---------------------------------------------------------------- the SDK reads it


def test_the_sdk_reads_a_fanout_stream_with_one_model_cut_midway(
    gateway: ServerProcess, seen: Seen
) -> None:
    """fan-c starts at once, fan-a 150 ms later, both 12 chunks at 25 a second, so
    their chunks arrive interleaved; fan-b dies after 3 chunks."""
    key_id, key = create_key(gateway.url, {})
    before = seen.all()
    script = {
        "chunks": 12,
        "tokens_per_s": 25,
        "models": {"fan-a-up": {"ttft_ms": 150}, "fan-b-up": {"ttft_ms": 50, "cut_after": 3}},
    }
    body = {
        "models": MODELS,
        "messages": HI,
        "stream": True,
        "stream_options": {"include_usage": True},
        "mock": script,
    }
    stream = _sdk(gateway, key).post(
        "/fanout/chat/completions",
        body=body,
        cast_to=ChatCompletionChunk,
        stream=True,
        stream_cls=openai.Stream[ChatCompletionChunk],
    )
    assert stream.response.headers["x-gateway-served-by"] == (
        "up-a/fan-a-up,up-b/fan-b-up,up-c/fan-c-up"
    )
    chunks = list(stream)  # the SDK raises on an error at a chunk's top level
    assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1

    *outputs, last = chunks
    indexes = []
    for chunk in outputs:
        (choice,) = chunk.choices
        assert chunk.model == MODELS[choice.index]
        indexes.append(choice.index)
    # Multiplexed as they arrive, not one model after the other.
    assert indexes != sorted(indexes), indexes
    finishes = {
        c.index: (c.finish_reason, c.model_extra)
        for chunk in outputs
        for c in chunk.choices
        if c.finish_reason is not None
    }
    # A complete model's finish chunk carries its own usage, on its choice.
    assert finishes[0][0] == finishes[2][0] == "stop"
    own = {i: finishes[i][1]["usage"] for i in (0, 2)}
    reason, extra = finishes[1]
    assert reason == "error"
    assert extra["error"]["type"] == "api_error"
    assert extra["error"]["code"] == "upstream_error"
    assert extra["error"]["message"]
    # Each choice has some text and ends once, with its last chunk.
    for index in (0, 1, 2):
        mine = [chunk.choices[0] for chunk in outputs if chunk.choices[0].index == index]
        assert [c.finish_reason is not None for c in mine] == [False] * (len(mine) - 1) + [True]
        assert _text(outputs, index), index

    # The usage chunk: what the two complete models reported, as their calls were charged.
    assert last.choices == []
    assert last.usage is not None
    recorded = usage(gateway.url, key_id)
    models = {m["model"]: m for m in recorded["by_model"]}
    assert (recorded["requests"], recorded["errors"]) == (3, 1)
    assert {m: (models[m]["requests"], models[m]["errors"]) for m in MODELS} == {
        "fan-a": (1, 0),
        "fan-b": (1, 1),
        "fan-c": (1, 0),
    }
    complete = ("fan-a", "fan-c")
    assert last.usage.prompt_tokens == sum(models[m]["input_tokens"] for m in complete)
    assert last.usage.completion_tokens == sum(models[m]["output_tokens"] for m in complete)
    for index, model in ((0, "fan-a"), (2, "fan-c")):
        assert own[index]["prompt_tokens"] == models[model]["input_tokens"]
        assert own[index]["completion_tokens"] == models[model]["output_tokens"]
        assert own[index]["total_tokens"] == (
            models[model]["input_tokens"] + models[model]["output_tokens"]
        )
    # The cut call is billed its prompt and what it sent.
    assert models["fan-b"]["input_tokens"] > 0
    assert models["fan-b"]["output_tokens"] > 0
    # One call per upstream, none retried: fan-b's output had reached the client.
    after = seen.all()
    assert {m: after[m]["requests"] - before[m]["requests"] for m in MODELS} == dict.fromkeys(
        MODELS, 1
    )


def test_the_sdk_reads_a_fanout_answer_with_one_model_failed(gateway: ServerProcess) -> None:
    _, key = create_key(gateway.url, {})
    body = {
        "models": MODELS,
        "messages": HI,
        "mock": {"models": {"fan-b-up": {"status": 400, "message": "no such thing"}}},
    }
    answer = _sdk(gateway, key).post("/fanout/chat/completions", body=body, cast_to=ChatCompletion)
    assert isinstance(answer, ChatCompletion)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert [c.model_extra["model"] for c in answer.choices] == MODELS
    a, b, c = answer.choices
    assert (a.finish_reason, c.finish_reason) == ("stop", "stop")
    assert a.message.content
    assert c.message.content
    assert b.finish_reason == "error"
    # The upstream's own refusal, as a single call would have had it.
    assert b.model_extra["error"] == {
        "message": "no such thing",
        "type": "invalid_request_error",
        "code": None,
    }
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0


# ---------------------------------------------------------------- the client leaves


@pytest.mark.parametrize(
    ("stream", "script"),
    [
        (False, {"ttft_ms": 20_000}),
        (True, {"ttft_ms": 20_000}),
        (True, LONG),
    ],
    ids=["answer", "stream-before-output", "stream-midway"],
)
def test_a_client_leaving_a_fanout_closes_every_upstream_call(
    gateway: ServerProcess, seen: Seen, stream: bool, script: dict[str, Any]
) -> None:
    # max_parallel 3: a lease not given back whole refuses the fan-out after.
    key_id, key = create_key(gateway.url, {"max_parallel": 3})
    before = seen.all()
    request_id = f"fanout-drop-{uuid.uuid4().hex[:10]}"
    body = {"models": MODELS, "messages": HI, "stream": stream, "mock": script}
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(_raw_request(body, key, request_id))
        wait_for(
            "every upstream called",
            lambda: all(seen(m)["requests"] > before[m]["requests"] for m in MODELS),
        )
        if script is LONG:  # leave once the answer has begun
            received = b""
            while b"data: " not in received.partition(b"\r\n\r\n")[2]:
                data = sock.recv(65536)
                assert data, received
                received += data
            assert received.startswith(b"HTTP/1.1 200 ")
    # Each upstream's connection closed, long before its 20 s or 25 s were up.
    wait_for(
        "every upstream call closed",
        lambda: all(seen(m)["disconnects"] > before[m]["disconnects"] for m in MODELS),
    )
    line = _access_line(gateway, request_id)
    assert "outcome=client_disconnect" in line, line
    assert (" status=200 " if script is LONG else " status=499 ") in line, line
    # Every call that reached an upstream is recorded, and the lease is back whole.
    recorded = wait_for(
        "the fan-out settled", lambda: (u := usage(gateway.url, key_id))["requests"] == 3 and u
    )
    assert {m["model"] for m in recorded["by_model"]} == set(MODELS)
    again = httpx.post(
        f"{gateway.url}/v1/fanout/chat/completions",
        json={"models": MODELS, "messages": HI, "max_tokens": 2},
        headers={"authorization": f"Bearer {key}"},
        timeout=10 + SLACK,
    )
    assert again.status_code == 200, again.text
