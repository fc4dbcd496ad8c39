"""Tool calls from the mock, as the official openai SDK sees them: through a real gateway
with the in-process mock (``local-chat``) and with the mock upstream over HTTP
(``up-chat``), and from the mock upstream itself (gateway/mockserver.py)."""

from __future__ import annotations

import enum
import json
import time

import httpx
import openai
import pydantic
import pytest

from tests.servers import TEST_KEY, ServerProcess

MODELS = ["local-chat", "up-chat"]
QUESTION = [{"role": "user", "content": "What will the weather be in Lyon?"}]


class Unit(enum.StrEnum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class Place(pydantic.BaseModel):
    city: str
    country: str | None
    lat: float


class Forecast(pydantic.BaseModel):
    """The SDK's strict tool: every field required, a nested model under $defs."""

    place: Place
    unit: Unit
    days: int
    hourly: bool
    extras: list[str]


FORECAST = openai.pydantic_function_tool(Forecast)
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}, "format": {"enum": ["iso", "unix"]}},
            "required": ["zone"],
        },
    },
}


@pytest.fixture
def client(gateway: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=TEST_KEY, max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_sdk_stream_helper_parses_the_arguments(client: openai.OpenAI, model: str) -> None:
    done = []
    with client.chat.completions.stream(
        model=model, messages=QUESTION, tools=[FORECAST], tool_choice="required"
    ) as stream:
        for event in stream:
            if event.type == "tool_calls.function.arguments.done":
                done.append(event)
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_")
    assert call.function.name == "Forecast"
    parsed = call.function.parsed_arguments
    assert isinstance(parsed, Forecast)
    assert parsed.unit is Unit.celsius
    assert parsed.place.lat == 1
    assert [e.name for e in done] == ["Forecast"]
    assert json.loads(done[0].arguments) == json.loads(call.function.arguments)


@pytest.mark.parametrize("model", MODELS)
def test_stream_and_non_stream_call_the_same(client: openai.OpenAI, model: str) -> None:
    extra = {"mock": {"tool_calls": 3}}
    answer = client.chat.completions.create(
        model=model, messages=QUESTION, tools=[FORECAST, CLOCK], extra_body=extra
    )
    assert answer.choices[0].finish_reason == "tool_calls"
    calls = answer.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["Forecast", "get_time", "Forecast"]

    stream = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        tools=[FORECAST, CLOCK],
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
    chunks = list(stream)
    arguments: dict[int, str] = {}
    ids: dict[int, str] = {}
    finish = None
    for chunk in chunks:
        assert isinstance(chunk, openai.types.chat.ChatCompletionChunk)
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or ():
                if delta.id:
                    ids[delta.index] = delta.id
                    assert delta.function.arguments == ""
                arguments[delta.index] = arguments.get(delta.index, "") + (
                    delta.function.arguments or ""
                )
    assert finish == "tool_calls"
    assert [ids[i] for i in range(3)] == [c.id for c in calls]
    assert [arguments[i] for i in range(3)] == [c.function.arguments for c in calls]
    Forecast.model_validate_json(arguments[0])
    assert json.loads(arguments[1]) == {"zone": json.loads(arguments[1])["zone"]}
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("model", MODELS)
def test_a_conversation_with_tool_calls_runs_to_completion(
    client: openai.OpenAI, model: str, stream: bool
) -> None:
    """An agent loop: call the tools while the model asks, then read its text."""
    messages: list = list(QUESTION)
    turns = 0
    while True:
        turns += 1
        assert turns <= 3, "the conversation did not end"
        if stream:
            with client.chat.completions.stream(
                model=model,
                messages=messages,
                tools=[FORECAST, CLOCK],
                tool_choice="required",
                extra_body={"mock": {"tool_calls": 2}},
            ) as s:
                answer = s.get_final_completion()
        else:
            answer = client.chat.completions.create(
                model=model,
                messages=messages,
                tools=[FORECAST, CLOCK],
                tool_choice="required",
                extra_body={"mock": {"tool_calls": 2}},
            )
        message = answer.choices[0].message
        if answer.choices[0].finish_reason != "tool_calls":
            break
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.function.name, "arguments": c.function.arguments},
                    }
                    for c in message.tool_calls
                ],
            }
        )
        for call in message.tool_calls:
            json.loads(call.function.arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"ok": true}'})
    assert turns == 2
    assert answer.choices[0].finish_reason == "stop"
    assert message.content
    assert not message.tool_calls


def test_tool_call_stream_is_paced_over_http(client: openai.OpenAI) -> None:
    started = time.monotonic()
    arrivals = []
    stream = client.chat.completions.create(
        model="up-chat",
        messages=QUESTION,
        tools=[CLOCK],
        stream=True,
        extra_body={"mock": {"tool_calls": 2, "tokens_per_s": 10}},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.tool_calls:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 8  # two calls: a name and three pieces each
    assert arrivals[-1] - arrivals[0] > 0.6, arrivals


@pytest.mark.parametrize("model", MODELS)
def test_calls_asked_without_tools_are_400(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=model, messages=QUESTION, extra_body={"mock": {"tool_calls": 1}}
        )


def test_mock_upstream_serves_tool_calls(upstream: ServerProcess) -> None:
    """gateway/mockserver.py on its own, as any OpenAI client sees it."""
    direct = openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="unused", max_retries=0)
    with direct.chat.completions.stream(
        model="mock-chat", messages=QUESTION, tools=[FORECAST], tool_choice="required"
    ) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.tool_calls[0].function.parsed_arguments, Forecast)

    raw = httpx.post(
        f"{upstream.url}/v1/chat/completions",
        json={"model": "mock-chat", "messages": QUESTION, "mock": {"tool_calls": 1}},
    )
    assert raw.status_code == 400
    assert raw.json()["error"]["param"] == "mock.tool_calls"
