"""An azure-backed model through the whole gateway, in process, read by the openai SDK.

The app runs with its lifespan (``create_app`` with an injected transport that
plays Azure OpenAI from tests/fixtures/azure); the official ``openai`` client
talks to it through starlette's TestClient, so what is checked is what an SDK
user sees: the gateway's model name, tool calls reassembled, usage, errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "azure"
KEY = "sk-test-azure-app-0001"
SECRET = "azure-key-app-0123456789abcdef"
CHAT = "/openai/deployments/gpt4o-prod/chat/completions"

CONFIG = f"""
providers:
  az: {{type: azure, base_url: "https://myres.openai.azure.com", api_version: "2024-10-21",
        api_key: {SECRET}}}
models:
  gpt-4o:
    deployments: [{{provider: az, model: gpt4o-prod, price: {{input: 2.5, output: 10}}}}]
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
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


class _Weather(BaseModel):
    city: str


MESSAGES: list[Any] = [{"role": "user", "content": "Weather in Paris and Tokyo?"}]


class Azure:
    """The upstream: what it was sent, and what it answers next."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.error: tuple[int, str] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.error is not None:
            status, name = self.error
            return httpx.Response(status, content=(FIXTURES / name).read_bytes())
        if json.loads(request.content).get("stream"):
            return httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                content=(FIXTURES / "chat_tools_stream.sse").read_bytes(),
            )
        return httpx.Response(200, content=(FIXTURES / "chat_tools.json").read_bytes())


@pytest.fixture
def azure() -> Azure:
    return Azure()


@pytest.fixture
def client(tmp_path: Path, azure: Azure) -> Iterator[openai.OpenAI]:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    app = create_app(load_settings(path, env={}), transport=httpx.MockTransport(azure))
    with TestClient(app) as http:
        yield openai.OpenAI(
            base_url="http://testserver/v1", api_key=KEY, http_client=http, max_retries=0
        )


def test_a_request_with_tools(client: openai.OpenAI, azure: Azure) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="auto",
    )
    assert raw.headers["x-gateway-served-by"] == "az/gpt4o-prod"
    answer = raw.parse()
    assert answer.model == "gpt-4o"  # the gateway's name, not Azure's
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [json.loads(c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        {"city": "Paris"},
        {"city": "Tokyo"},
    ]
    assert answer.usage is not None
    assert answer.usage.total_tokens == 129

    (sent,) = azure.requests
    assert str(sent.url) == f"https://myres.openai.azure.com{CHAT}?api-version=2024-10-21"
    assert sent.headers["api-key"] == SECRET
    assert "authorization" not in sent.headers
    body = json.loads(sent.content)
    assert body["model"] == "gpt4o-prod"
    assert body["tools"] == TOOLS
    assert body["tool_choice"] == "auto"


def test_a_stream_with_tools(client: openai.OpenAI, azure: Azure) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    # Azure's prompt-filter event is not a chunk: every chunk has an id and a model.
    assert {c.id for c in chunks} == {"chatcmpl-AzUrYgT5k0Lm2Nq9Pb7xCv3Wd8Rf1"}
    assert {c.model for c in chunks} == {"gpt-4o"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "prompt_filter_results" in (chunks[0].model_extra or {})
    arguments: dict[int, str] = {}
    names: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.function is not None:
                    arguments[call.index] = arguments.get(call.index, "") + (
                        call.function.arguments or ""
                    )
                    names[call.index] = names.get(call.index, "") + (call.function.name or "")
    assert [json.loads(arguments[i]) for i in sorted(arguments)] == [
        {"city": "Paris"},
        {"city": "Tokyo"},
    ]
    assert names == {0: "get_weather", 1: "get_weather"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.total_tokens == 129

    (sent,) = azure.requests
    body = json.loads(sent.content)
    assert (body["stream"], body["stream_options"]) == (True, {"include_usage": True})


def test_the_sdk_reassembles_the_stream(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model="gpt-4o",
        messages=MESSAGES,
        tools=[openai.pydantic_function_tool(_Weather, name="get_weather")],
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [c.function.parsed_arguments for c in calls] == [  # type: ignore[union-attr]
        _Weather(city="Paris"),
        _Weather(city="Tokyo"),
    ]
    assert final.choices[0].finish_reason == "tool_calls"


def test_a_content_filter_refusal_reaches_the_client_as_a_400(
    client: openai.OpenAI, azure: Azure
) -> None:
    azure.error = (400, "error_content_filter.json")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert info.value.code == "content_filter"
    assert info.value.param == "prompt"
    assert "jailbreak, violence (medium)" in info.value.message


def test_a_missing_deployment_is_a_502_naming_it(client: openai.OpenAI, azure: Azure) -> None:
    azure.error = (404, "error_deployment_not_found.json")
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert info.value.status_code == 502
    assert "'gpt4o-prod'" in info.value.message
