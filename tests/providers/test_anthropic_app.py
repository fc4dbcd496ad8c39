"""An anthropic-backed model through the whole gateway, in process, read by the openai SDK.

The app runs with its lifespan (``create_app`` with an injected transport that
plays the Messages API from tests/fixtures/anthropic); the official ``openai``
client talks to it through starlette's TestClient, so what is checked is what an
SDK user sees: the gateway's model name, tool calls reassembled from the
stream, usage with its cache tokens, finish reasons and errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "anthropic"
KEY = "sk-test-anthropic-app-0001"
SECRET = "sk-ant-upstream-0123456789abcdef"
UPSTREAM_MODEL = "claude-sonnet-4-5-20250929"

CONFIG = f"""
providers:
  claude: {{type: anthropic, base_url: "https://anthropic.test", api_key: {SECRET}}}
models:
  claude-sonnet:
    deployments: [{{provider: claude, model: {UPSTREAM_MODEL}}}]
    # Each upstream error reaches the client as it came (retries: tests/routing/).
    routing: {{retries: {{attempts: 1}}}}
keys:
  - {{name: app, key: {KEY}}}
server:
  data_dir: data
"""

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}},
                "required": ["location"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time in a timezone",
            "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
        },
    },
]
MESSAGES: list[Any] = [
    {"role": "system", "content": "Use the tools."},
    {"role": "user", "content": "Weather and time in San Francisco?"},
]


class Anthropic:
    """The upstream: what it was sent, and what it answers next."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.answer: tuple[int, str, dict[str, str]] | None = None

    def body(self, i: int = -1) -> dict[str, Any]:
        return json.loads(self.requests[i].content)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        streaming = json.loads(request.content).get("stream")
        if self.answer is not None:
            status, name, headers = self.answer
        elif streaming:
            status, name, headers = 200, "stream_parallel_tools.sse", {}
        else:
            status, name, headers = 200, "message_parallel_tools.json", {}
        kind = "text/event-stream" if name.endswith(".sse") else "application/json"
        return httpx.Response(
            status,
            headers={"content-type": kind, **headers},
            content=(FIXTURES / name).read_bytes(),
        )


@pytest.fixture
def anthropic() -> Anthropic:
    return Anthropic()


@pytest.fixture
def client(tmp_path: Path, anthropic: Anthropic) -> Iterator[openai.OpenAI]:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    app = create_app(load_settings(path, env={}), transport=httpx.MockTransport(anthropic))
    with TestClient(app) as http:
        yield openai.OpenAI(
            base_url="http://testserver/v1", api_key=KEY, http_client=http, max_retries=0
        )


def test_a_request_with_tools(client: openai.OpenAI, anthropic: Anthropic) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="claude-sonnet", messages=MESSAGES, tools=TOOLS, tool_choice="required"
    )
    assert raw.headers["x-gateway-served-by"] == f"claude/{UPSTREAM_MODEL}"
    answer = raw.parse()
    assert answer.model == "claude-sonnet"
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I'll check the weather and time for you in San Francisco."
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("get_weather", {"location": "San Francisco, CA"}),
        ("get_time", {"timezone": "America/Los_Angeles"}),
    ]
    usage = answer.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (2009, 393, 2402)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 1800
    assert usage.prompt_tokens_details.cache_write_tokens == 188

    (sent,) = anthropic.requests
    assert str(sent.url) == "https://anthropic.test/v1/messages"
    assert sent.headers["x-api-key"] == SECRET
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert KEY not in json.dumps(dict(sent.headers))  # the client's key stays at the gateway
    body = anthropic.body()
    assert body["model"] == UPSTREAM_MODEL
    assert body["system"] == [{"type": "text", "text": "Use the tools."}]
    assert body["tool_choice"] == {"type": "any"}
    assert [tool["name"] for tool in body["tools"]] == ["get_weather", "get_time"]
    assert "stream" not in body


def test_a_stream_with_tools(client: openai.OpenAI, anthropic: Anthropic) -> None:
    stream = client.chat.completions.create(
        model="claude-sonnet",
        messages=MESSAGES,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert {c.model for c in chunks} == {"claude-sonnet"}
    assert {c.id for c in chunks} == {"msg_01PaRa11e1T0o1sXyZ"}
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    final = state.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I'll check both."
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("toolu_01WHJgMMwQZqYkMkzmDZ9vf6", "get_weather", {"location": "San Francisco, CA"}),
        ("toolu_01FrcDgZwzsVhGY5JqkRJRqv", "get_time", {}),
    ]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (2009, 74)
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 1800
    assert anthropic.body()["stream"] is True


def test_a_stream_without_include_usage_has_no_usage_chunk(
    client: openai.OpenAI, anthropic: Anthropic
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="claude-sonnet", messages=MESSAGES, tools=TOOLS, stream=True
        )
    )
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_conversation_with_two_tool_calls_runs_to_completion(
    client: openai.OpenAI, anthropic: Anthropic
) -> None:
    first = client.chat.completions.create(model="claude-sonnet", messages=MESSAGES, tools=TOOLS)
    message = first.choices[0].message
    calls = message.tool_calls or []
    assert len(calls) == 2
    results = {"get_weather": "18C, sunny", "get_time": "09:00"}
    conversation: list[Any] = [
        *MESSAGES,
        message.model_dump(exclude_none=True),
        *(
            {"role": "tool", "tool_call_id": c.id, "content": results[c.function.name]}  # type: ignore[union-attr]
            for c in calls
        ),
    ]
    anthropic.answer = (200, "message.json", {})
    second = client.chat.completions.create(
        model="claude-sonnet", messages=conversation, tools=TOOLS
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Hi! My name is Claude."
    assert anthropic.body()["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "text",
                    "text": "I'll check the weather and time for you in San Francisco.",
                },
                {
                    "type": "tool_use",
                    "id": "toolu_01WHJgMMwQZqYkMkzmDZ9vf6",
                    "name": "get_weather",
                    "input": {"location": "San Francisco, CA"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_01FrcDgZwzsVhGY5JqkRJRqv",
                    "name": "get_time",
                    "input": {"timezone": "America/Los_Angeles"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01WHJgMMwQZqYkMkzmDZ9vf6",
                    "content": "18C, sunny",
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01FrcDgZwzsVhGY5JqkRJRqv",
                    "content": "09:00",
                },
            ],
        },
    ]


@pytest.mark.parametrize(
    ("status", "name", "headers", "error", "gateway_status"),
    [
        (429, "error_429.json", {"retry-after": "3"}, openai.RateLimitError, 429),
        (529, "error_529.json", {}, openai.InternalServerError, 502),
        (401, "error_401.json", {}, openai.InternalServerError, 502),
        (400, "error_400_prompt_too_long.json", {}, openai.BadRequestError, 400),
    ],
)
@pytest.mark.parametrize("streaming", [False, True], ids=["chat", "stream"])
def test_upstream_errors_reach_the_sdk_as_its_exceptions(
    client: openai.OpenAI,
    anthropic: Anthropic,
    streaming: bool,
    status: int,
    name: str,
    headers: dict[str, str],
    error: type[openai.APIStatusError],
    gateway_status: int,
) -> None:
    anthropic.answer = (status, name, headers)
    with pytest.raises(error) as info:
        if streaming:
            list(
                client.chat.completions.create(
                    model="claude-sonnet", messages=MESSAGES, stream=True
                )
            )
        else:
            client.chat.completions.create(model="claude-sonnet", messages=MESSAGES)
    assert info.value.status_code == gateway_status
    assert SECRET not in info.value.response.text
    if status == 429:
        assert info.value.response.headers["retry-after"] == "3"
    if status == 400:
        assert info.value.code == "context_length_exceeded"


def test_an_error_event_mid_stream_ends_the_stream_with_an_error(
    client: openai.OpenAI, anthropic: Anthropic
) -> None:
    anthropic.answer = (200, "stream_error.sse", {})
    got: list[Any] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(
            model="claude-sonnet", messages=MESSAGES, stream=True
        ):
            got.append(chunk)
    assert "".join(c.choices[0].delta.content or "" for c in got) == "Hello"
    assert "mid-answer" in info.value.message


def test_a_request_anthropic_cannot_carry_is_a_400(
    client: openai.OpenAI, anthropic: Anthropic
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude-sonnet", messages=MESSAGES, n=2)
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict)
    assert body["param"] == "n"
    assert anthropic.requests == []
