"""POST /v1/messages in process: the official ``anthropic`` SDK against the app.

Three kinds of model behind the one ingress: the built-in mock, an
OpenAI-type upstream (replayed through an injected transport, tool-call
chunks included) and an Anthropic upstream, to which the client's own body
passes through: the upstream receives the client's bytes with only ``model``
replaced, and its answer and events come back as they were sent. Refusals
made before the route runs (401, 413, a bad body) are in Anthropic's envelope.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "anthropic"
KEY = "sk-test-messages-ingress-0001"
MASTER = "sk-master-messages-ingress-0123456789"
CLAUDE = "claude-sonnet-4-5-20250929"

CONFIG = f"""
providers:
  local: {{type: mock}}
  up: {{type: openai, base_url: "https://openai.test/v1", api_key: sk-upstream-openai}}
  claude: {{type: anthropic, base_url: "https://anthropic.test", api_key: sk-ant-upstream-secret}}
models:
  local-chat: {{deployments: [{{provider: local, model: mock-chat}}]}}
  gpt: {{deployments: [{{provider: up, model: gpt-upstream}}]}}
  claude-sonnet: {{deployments: [{{provider: claude, model: {CLAUDE}}}]}}
keys:
  - {{name: app, key: {KEY}, limits: {{rpm: 100, tpm: 1000000}}}}
server:
  data_dir: data
  max_body_bytes: 100000
"""

TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


def _openai_tool_stream() -> bytes:
    base = {"id": "chatcmpl-tools", "object": "chat.completion.chunk", "created": 1, "model": "g"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    call = {"index": 0, "id": "call_w", "type": "function"}
    chunks = [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [{**call, "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
        chunk({}, "tool_calls"),
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62},
        },
    ]
    return (
        b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    )


class Upstreams:
    """Both HTTP upstreams: what they were sent, and what the Anthropic one answers next."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.anthropic: tuple[int, str] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        stream = json.loads(request.content).get("stream")
        if request.url.host == "openai.test":
            if stream:
                return httpx.Response(
                    200,
                    headers={"content-type": "text/event-stream"},
                    content=_openai_tool_stream(),
                )
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_w",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            }
            return httpx.Response(
                200,
                json={
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": "gpt-upstream",
                    "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62},
                },
            )
        status, name = self.anthropic or (
            (200, "stream_tool_use.sse") if stream else (200, "message_tool_use.json")
        )
        kind = "text/event-stream" if name.endswith(".sse") else "application/json"
        return httpx.Response(
            status, headers={"content-type": kind}, content=(FIXTURES / name).read_bytes()
        )


@pytest.fixture
def upstreams() -> Upstreams:
    return Upstreams()


@pytest.fixture
def http(tmp_path: Path, upstreams: Upstreams) -> Iterator[TestClient]:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    settings = load_settings(path, env={"GATEWAY_MASTER_KEY": MASTER})
    with TestClient(create_app(settings, transport=httpx.MockTransport(upstreams))) as http:
        yield http


@pytest.fixture
def client(http: TestClient) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key=KEY, base_url="http://testserver", http_client=http, max_retries=0
    )


def _usage(http: TestClient) -> dict[str, Any]:
    response = http.get("/admin/usage", headers={"authorization": f"Bearer {MASTER}"})
    assert response.status_code == 200, response.text
    (doc,) = response.json()["data"]
    return doc


# ---------------------------------------------------------------- the mock


def test_a_text_answer_and_its_headers(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(
        model="local-chat", max_tokens=64, messages=[{"role": "user", "content": "Hello"}]
    )
    assert raw.headers["x-gateway-served-by"] == "local/mock-chat"
    assert raw.headers["anthropic-ratelimit-requests-limit"] == "100"
    assert raw.headers["anthropic-ratelimit-tokens-limit"] == "1000000"
    assert raw.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert "x-ratelimit-limit-requests" not in raw.headers
    message = raw.parse()
    assert message.model == "local-chat"
    assert message.content[0].type == "text"
    assert message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0


def test_a_stream_and_its_final_message(client: anthropic.Anthropic, http: TestClient) -> None:
    with client.messages.stream(
        model="local-chat",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text
    assert final.content[0].text == text
    assert final.model == "local-chat"
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0
    assert final.usage.output_tokens > 0
    doc = _usage(http)
    assert (doc["requests"], doc["output_tokens"]) == (1, final.usage.output_tokens)


# ---------------------------------------------------------------- an OpenAI upstream


def test_tool_use_streams_as_input_json_deltas(
    client: anthropic.Anthropic, upstreams: Upstreams
) -> None:
    with client.messages.stream(
        model="gpt",
        max_tokens=64,
        tools=TOOLS,
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        kinds = [
            (event.type, getattr(getattr(event, "delta", None), "type", None)) for event in stream
        ]
        final = stream.get_final_message()
    assert ("content_block_delta", "input_json_delta") in kinds
    (block,) = final.content
    assert block.type == "tool_use"
    assert (block.id, block.name, block.input) == ("call_w", "get_weather", {"city": "Paris"})
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (50, 12)
    sent = json.loads(upstreams.requests[-1].content)
    assert sent["model"] == "gpt-upstream"
    assert sent["tool_choice"] == "required"
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["stream_options"] == {"include_usage": True}


def test_a_tool_use_answer_and_its_result(
    client: anthropic.Anthropic, upstreams: Upstreams
) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.messages.create(model="gpt", max_tokens=64, tools=TOOLS, messages=messages)
    (block,) = first.content
    assert block.type == "tool_use"
    assert block.input == {"city": "Paris"}
    assert first.stop_reason == "tool_use"
    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "Sunny"}],
        },
    ]
    client.messages.create(model="gpt", max_tokens=64, tools=TOOLS, messages=messages)
    sent = json.loads(upstreams.requests[-1].content)["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
    }
    assert sent[2] == {"role": "tool", "tool_call_id": "call_w", "content": "Sunny"}


def test_what_only_anthropic_can_carry_is_refused_for_another_provider(
    client: anthropic.Anthropic,
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="gpt",
            max_tokens=64,
            tools=[{"type": "web_search_20250305", "name": "web_search"}],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "Search."}],
        )
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "web_search_20250305" in caught.value.body["error"]["message"]  # type: ignore[index]


# ---------------------------------------------------------------- an Anthropic upstream

RAW = (
    b'{"model":"claude-sonnet","max_tokens":256,"system":[{"type":"text","text":"Cache me.",'
    b'"cache_control":{"type":"ephemeral","ttl":"1h"}}],"messages":[{"role":"user","content":'
    b'[{"type":"text","text":"Weather?","cache_control":{"type":"ephemeral"}}]},{"role":'
    b'"assistant","content":[{"type":"thinking","thinking":"Let me think.","signature":"EqQBCg"},'
    b'{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{"query":"x"}}]},'
    b'{"role":"user","content":"Go on \\u00e9 \xc3\xa9"}],"metadata":{"user_id":"u-42"},'
    b'"context_management":{"edits":[]},"a_future_field":{"n":1.50},"tools":[{"type":'
    b'"web_search_20250305","name":"web_search","max_uses":1}]'
)


def _post(http: TestClient, body: bytes, **headers: str) -> httpx.Response:
    return http.post(
        "/v1/messages",
        content=body,
        headers={"x-api-key": KEY, "content-type": "application/json", **headers},
    )


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
def test_the_client_s_body_passes_through_byte_for_byte(
    http: TestClient, upstreams: Upstreams, stream: bool
) -> None:
    body = RAW + (b',"stream":true}' if stream else b"}")
    response = _post(
        http, body, **{"anthropic-version": "2023-06-01", "anthropic-beta": "context-1m-2025-08-07"}
    )
    assert response.status_code == 200, response.text
    (sent,) = upstreams.requests
    assert sent.url == "https://anthropic.test/v1/messages"
    assert sent.content == body.replace(b'"claude-sonnet"', f'"{CLAUDE}"'.encode())
    assert sent.headers["anthropic-beta"] == "context-1m-2025-08-07"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["x-api-key"] == "sk-ant-upstream-secret"
    assert response.headers["x-gateway-served-by"] == f"claude/{CLAUDE}"
    if not stream:
        answer = response.json()
        upstream = json.loads((FIXTURES / "message_tool_use.json").read_bytes())
        assert answer == {**upstream, "model": "claude-sonnet"}
        counts = upstream["usage"]
        doc = _usage(http)  # settled with the answer's own counts
        prompt = counts["input_tokens"] + counts.get("cache_read_input_tokens", 0)
        prompt += counts.get("cache_creation_input_tokens", 0)
        assert (doc["input_tokens"], doc["output_tokens"]) == (prompt, counts["output_tokens"])
        return
    fixture = (FIXTURES / "stream_tool_use.sse").read_text()
    relayed = [block for block in response.text.split("\n\n") if block]
    expected = [block for block in fixture.split("\n\n") if block.strip()]
    assert len(relayed) == len(expected)
    assert json.loads(relayed[0].split("data: ", 1)[1])["message"]["model"] == "claude-sonnet"
    assert relayed[1:] == [block.strip("\n") for block in expected[1:]]


def test_the_sdk_reads_a_passed_through_stream_and_usage_is_settled(
    client: anthropic.Anthropic, http: TestClient
) -> None:
    with client.messages.stream(
        model="claude-sonnet", max_tokens=256, messages=[{"role": "user", "content": "Weather?"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.model == "claude-sonnet"
    assert final.stop_reason == "tool_use"
    tool = final.content[-1]
    assert tool.type == "tool_use"
    assert tool.input["location"] == "San Francisco, CA"
    fixture = (FIXTURES / "stream_tool_use.sse").read_text()
    starts = json.loads(fixture.split("data: ", 1)[1].split("\n", 1)[0])["message"]["usage"]
    doc = _usage(http)
    assert doc["input_tokens"] == starts["input_tokens"]
    assert doc["output_tokens"] == final.usage.output_tokens


def test_an_upstream_error_before_the_stream_is_an_sdk_exception(
    client: anthropic.Anthropic, upstreams: Upstreams
) -> None:
    upstreams.anthropic = (529, "error_529.json")
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(
            model="claude-sonnet", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 502
    upstreams.anthropic = (429, "error_429.json")
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(
            model="claude-sonnet", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )


def test_an_error_event_mid_stream_is_relayed_as_the_ingress_error_event(
    http: TestClient, upstreams: Upstreams
) -> None:
    upstreams.anthropic = (200, "stream_error.sse")
    response = _post(http, b'{"model":"claude-sonnet","max_tokens":8,"stream":true,"messages":[]}')
    assert response.status_code == 200
    frames = [block for block in response.text.split("\n\n") if block]
    assert [f.split("\n")[0] for f in frames] == [
        "event: message_start",
        "event: content_block_start",
        "event: content_block_delta",
        "event: error",
    ]
    error = json.loads(frames[-1].split("\n")[1].removeprefix("data: "))
    assert error["type"] == "error"
    assert error["error"]["type"] == "api_error"  # an overloaded upstream: a 502 to retry


# ---------------------------------------------------------------- refusals before the route


def test_refusals_before_the_route_are_in_anthropic_s_envelope(http: TestClient) -> None:
    bad_key = http.post("/v1/messages", json={}, headers={"x-api-key": "sk-nope"})
    assert bad_key.status_code == 401
    assert bad_key.json()["error"]["type"] == "authentication_error"
    no_key = http.post("/v1/messages", json={})
    assert (no_key.status_code, no_key.json()["type"]) == (401, "error")
    too_large = _post(http, b"{" + b" " * 200_000 + b"}")
    assert too_large.status_code == 413
    assert too_large.json() == {
        "type": "error",
        "error": {"type": "request_too_large", "message": too_large.json()["error"]["message"]},
    }
    not_json = _post(http, b"{not json")
    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"
    bad_field = _post(http, b'{"model":"local-chat","max_tokens":8,"temperature":2,"messages":[]}')
    assert bad_field.status_code == 400
    assert "temperature" in bad_field.json()["error"]["message"]
    unknown = http.get("/v1/messages/batches", headers={"x-api-key": KEY})
    assert unknown.json()["type"] == "error"
    # Other paths keep OpenAI's envelope.
    openai_401 = http.post("/v1/chat/completions", json={}, headers={"x-api-key": "sk-nope"})
    assert openai_401.json()["error"]["code"] == "invalid_api_key"


def test_the_sdk_s_exception_classes(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(
            model="nope", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    bad = anthropic.Anthropic(
        api_key="sk-wrong", base_url="http://testserver", http_client=client._client, max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(
            model="local-chat", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(
            model="local-chat",
            max_tokens=8,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"mock": {"status": 429}},
        )
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(
            model="local-chat",
            max_tokens=8,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"mock": {"status": 500}},
        )
