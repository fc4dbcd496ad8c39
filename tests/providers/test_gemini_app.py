"""A gemini-backed model through the whole gateway, in-process: the OpenAI ingress,
admission, the pipeline, the adapter and an injected transport replaying the
recorded Gemini samples. What the client reads is parsed with the openai SDK's
models, and a conversation with two tool calls runs to its end, the thought
signature going out and coming back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai.types.chat as sdk
import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "gemini"
KEY = "sk-test-gemini-app-0001"
PROVIDER_KEY = "AIzaSyD-app-test-key-0123456789abcdef"
SIGNATURE = (
    "CiQBVKhc7hhSkYSp2a6Qyx8d7Ab4r0YrxzqJDtsG0OXb8JqWkQYSfgFUqFzuMXLFuCvh2m2Ccpo3yrUuVaJkwQ0"
    "XlMMFRSpI4iH+HDvq9pTLB6ZDykmc5OFTwh7bhrqa"
)
CONFIG = f"""
providers:
  gem: {{type: gemini, base_url: "https://gemini.test", api_key: "{PROVIDER_KEY}"}}
models:
  gemini-flash: {{deployments: [{{provider: gem, model: gemini-2.5-flash}}]}}
keys:
  - {{name: app, key: {KEY}}}
server:
  data_dir: data
"""
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_current_temperature",
        "description": "The current temperature at a location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
            "additionalProperties": False,
        },
    },
}


class Upstream:
    """The Gemini API as the transport sees it: answers queued per call, requests kept."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, str]] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status, name = self.answers.pop(0)
        content = (FIXTURES / name).read_bytes()
        if name.endswith(".sse"):
            return httpx.Response(
                status, headers={"content-type": "text/event-stream"}, content=content
            )
        return httpx.Response(status, headers={"content-type": "application/json"}, content=content)

    def body(self, n: int = -1) -> dict[str, Any]:
        return json.loads(self.requests[n].content)


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
def client(tmp_path: Path, upstream: Upstream) -> Iterator[TestClient]:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    app = create_app(load_settings(path, env={}), transport=httpx.MockTransport(upstream))
    with TestClient(app) as client:
        yield client


def post(client: TestClient, **fields: Any) -> httpx.Response:
    body = {
        "model": "gemini-flash",
        "messages": [{"role": "user", "content": "Temperature in Paris and London?"}],
        **fields,
    }
    return client.post(
        "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}
    )


def sse_chunks(response: httpx.Response) -> tuple[list[sdk.ChatCompletionChunk], list[str]]:
    frames = [
        line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")
    ]
    chunks = [
        sdk.ChatCompletionChunk.model_validate(json.loads(f)) for f in frames if f != "[DONE]"
    ]
    return chunks, frames


def test_non_stream_with_tools(client: TestClient, upstream: Upstream) -> None:
    upstream.answers.append((200, "generate_parallel_calls.json"))
    response = post(client, tools=[WEATHER], tool_choice="auto")
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-served-by"] == "gem/gemini-2.5-flash"
    answer = sdk.ChatCompletion.model_validate(response.json())
    assert answer.model == "gemini-flash"
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [json.loads(c.function.arguments)["location"] for c in calls] == ["Paris", "London"]
    assert answer.usage is not None
    assert answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens == 2048

    sent = upstream.requests[0]
    assert sent.url.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == PROVIDER_KEY
    assert upstream.body()["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    declaration = upstream.body()["tools"][0]["functionDeclarations"][0]
    assert "additionalProperties" not in json.dumps(declaration)


def test_stream_with_tools(client: TestClient, upstream: Upstream) -> None:
    upstream.answers.append((200, "stream_parallel_calls.sse"))
    response = post(client, tools=[WEATHER], stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks, frames = sse_chunks(response)
    assert frames[-1] == "[DONE]"
    assert {c.model for c in chunks} == {"gemini-flash"}
    assert len({c.id for c in chunks}) == 1
    arguments: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                arguments[delta.index] = arguments.get(delta.index, "") + (
                    delta.function.arguments or "" if delta.function else ""
                )
    assert [json.loads(arguments[i])["location"] for i in sorted(arguments)] == ["Paris", "London"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (2140, 125)
    assert upstream.requests[0].url.params["alt"] == "sse"


def test_stream_without_include_usage_has_no_usage_chunk(
    client: TestClient, upstream: Upstream
) -> None:
    upstream.answers.append((200, "stream_text.sse"))
    chunks, frames = sse_chunks(post(client, stream=True))
    assert frames[-1] == "[DONE]"
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == (
        "The capital of France is Paris."
    )


def test_a_conversation_with_two_tool_calls_runs_to_its_end(
    client: TestClient, upstream: Upstream
) -> None:
    # Turn 1, streamed: Gemini calls the tool twice, the first call signed.
    upstream.answers.append((200, "stream_parallel_calls.sse"))
    chunks, _ = sse_chunks(post(client, tools=[WEATHER], stream=True))
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(
                    delta.index,
                    {"id": delta.id, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if delta.function:
                    call["function"]["name"] += delta.function.name or ""
                    call["function"]["arguments"] += delta.function.arguments or ""
                call.update(delta.model_extra or {})  # extra_content, kept as a client keeps it
    assert calls[0]["extra_content"] == {"google": {"thought_signature": SIGNATURE}}

    # Turn 2: the calls and their results go back; Gemini answers in text.
    upstream.answers.append((200, "generate_text.json"))
    messages = [
        {"role": "user", "content": "Temperature in Paris and London?"},
        {"role": "assistant", "content": None, "tool_calls": [calls[0], calls[1]]},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"temperature": 21}'},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "14"},
    ]
    response = post(client, tools=[WEATHER], messages=messages)
    assert response.status_code == 200, response.text
    answer = sdk.ChatCompletion.model_validate(response.json())
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == "The capital of France is Paris."

    sent = upstream.body()
    model_turn, results = sent["contents"][1], sent["contents"][2]
    assert model_turn["role"] == "model"
    assert model_turn["parts"][0]["thoughtSignature"] == SIGNATURE
    assert "thoughtSignature" not in model_turn["parts"][1]
    assert [p["functionCall"]["args"]["location"] for p in model_turn["parts"]] == [
        "Paris",
        "London",
    ]
    assert results == {
        "role": "user",
        "parts": [
            {
                "functionResponse": {
                    "id": calls[0]["id"],
                    "name": "get_current_temperature",
                    "response": {"temperature": 21},
                }
            },
            {
                "functionResponse": {
                    "id": calls[1]["id"],
                    "name": "get_current_temperature",
                    "response": {"content": "14"},
                }
            },
        ],
    }


@pytest.mark.parametrize(
    ("fixture", "status", "code", "retry_after"),
    [
        ("error_429_quota.json", 429, "upstream_rate_limited", "37"),
        ("error_400_token_limit.json", 400, "context_length_exceeded", None),
        ("error_400_api_key_invalid.json", 502, "upstream_auth_failed", None),
    ],
)
def test_upstream_errors_in_the_openai_envelope(
    client: TestClient,
    upstream: Upstream,
    fixture: str,
    status: int,
    code: str,
    retry_after: str | None,
) -> None:
    upstream_status = json.loads((FIXTURES / fixture).read_text())["error"]["code"]
    upstream.answers.extend([(upstream_status, fixture)] * 5)  # however often routing retries
    response = post(client)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert PROVIDER_KEY not in response.text
    assert response.headers.get("retry-after") == retry_after


def test_a_blocked_prompt_is_a_visible_400(client: TestClient, upstream: Upstream) -> None:
    upstream.answers.append((200, "stream_prompt_blocked.sse"))
    response = post(client, stream=True)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_filter"


def test_a_request_gemini_cannot_carry_is_a_400_naming_the_param(
    client: TestClient, upstream: Upstream
) -> None:
    response = post(client, tools=[{"type": "custom", "custom": {"name": "grep"}}])
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tools[0].type"
    assert upstream.requests == []
