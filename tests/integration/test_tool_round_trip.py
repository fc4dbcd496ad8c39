"""A conversation with two tool calls, run to completion through every provider adapter
and both ingresses, as the official SDKs see it over real HTTP.

One gateway process serves a model per provider type: ``openai``, ``azure``,
``anthropic`` and ``gemini`` point at one fixture upstream (tests/fixture_upstream.py,
replaying the recorded samples in tests/fixtures/), and ``mock-chat`` is the
in-process mock. Each model is driven through the OpenAI ingress with the ``openai``
SDK and through the Anthropic ingress with the ``anthropic`` SDK: the first turn
streams two tool calls, the second sends both results back and streams the text
answer; the same conversation runs once more without streaming. For the
upstream-backed models the second request is checked in the upstream's own format:
both calls and both results, matched by id.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.providers.gemini.request import SKIP_SIGNATURE
from tests.fixture_upstream import REDACTED, FixtureUpstream, Recorded
from tests.servers import TEST_KEY, ServerProcess, start_gateway, write_config

AZURE_API_VERSION = "2024-10-21"
# The first call's in the gemini samples with parallel calls (JSON and stream alike).
SIGNATURE = (
    "CiQBVKhc7hhSkYSp2a6Qyx8d7Ab4r0YrxzqJDtsG0OXb8JqWkQYSfgFUqFzuMXLFuCvh2m2Ccpo3yrUuVaJkwQ0"
    "XlMMFRSpI4iH+HDvq9pTLB6ZDykmc5OFTwh7bhrqa"
)
Call = tuple[str, dict[str, Any]]  # a tool call's name and arguments


@dataclass(frozen=True)
class Sample:
    """What a pair of recorded answers says: the two calls of the first, the text of
    the second."""

    calls: tuple[Call, Call]
    text: str


@dataclass(frozen=True)
class Backend:
    """What serves a gateway model, and how the fixture upstream sees it called."""

    provider: str  # the config's provider name, as x-gateway-served-by names it
    upstream_model: str
    key_header: str = ""
    paths: tuple[str, str] = ("", "")  # (not streamed, streamed), as the upstream receives them
    samples: tuple[Sample, Sample] | None = None  # (JSON, SSE); None: the mock, no samples

    def sample(self, *, stream: bool) -> Sample | None:
        return None if self.samples is None else self.samples[stream]


OPENAI_SAMPLE = Sample(
    (("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})),
    "The capital of France is Paris.",
)
OPENAI_STREAM_SAMPLE = Sample(OPENAI_SAMPLE.calls, "Hello! How can I assist you today?")
AZURE_PATH = f"/openai/deployments/gpt-4o-prod/chat/completions?api-version={AZURE_API_VERSION}"
GEMINI_PATH = "/v1beta/models/gemini-3-pro-preview"
BACKENDS = {
    "openai-chat": Backend(
        "oai",
        "gpt-4o-mini",
        "authorization",
        ("/v1/chat/completions",) * 2,
        (OPENAI_SAMPLE, OPENAI_STREAM_SAMPLE),
    ),
    "azure-chat": Backend(
        "az", "gpt-4o-prod", "api-key", (AZURE_PATH,) * 2, (OPENAI_SAMPLE, OPENAI_STREAM_SAMPLE)
    ),
    "anthropic-chat": Backend(
        "ant",
        "claude-sonnet-4-5",
        "x-api-key",
        ("/v1/messages",) * 2,
        (
            Sample(
                (
                    ("get_weather", {"location": "San Francisco, CA"}),
                    ("get_time", {"timezone": "America/Los_Angeles"}),
                ),
                "Hi! My name is Claude.",
            ),
            Sample(
                (
                    ("get_weather", {"location": "San Francisco, CA"}),
                    ("get_time", {}),  # the sample's second call streams no input
                ),
                "Hello!",
            ),
        ),
    ),
    "gemini-chat": Backend(
        "gem",
        "gemini-3-pro-preview",
        "x-goog-api-key",
        (f"{GEMINI_PATH}:generateContent", f"{GEMINI_PATH}:streamGenerateContent?alt=sse"),
        (
            Sample(
                (
                    ("get_current_temperature", {"location": "Paris"}),
                    ("get_current_temperature", {"location": "London"}),
                ),
                "The capital of France is Paris.",
            ),
            Sample(
                (
                    ("get_current_temperature", {"location": "Paris"}),
                    (
                        "get_current_temperature",
                        {"location": "London", "unit": "celsius", "note": 'naïve "quoted"'},
                    ),
                ),
                "The capital of France is Paris.",
            ),
        ),
    ),
    "mock-chat": Backend("local", "mock-chat"),
}
MODELS = list(BACKENDS)
RESULTS = ('{"temperature": 21, "unit": "celsius"}', '{"time": "09:00"}')
FUNCTIONS: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("get_weather", "The weather in a city", {"city": {"type": "string"}}, ["city"]),
    ("get_time", "The time in a timezone", {"timezone": {"type": "string"}}, ["timezone"]),
    (
        "get_current_temperature",
        "The current temperature at a location",
        {
            "location": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        ["location"],
    ),
]
OPENAI_TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }
    for name, description, properties, required in FUNCTIONS
]
ANTHROPIC_TOOLS: list[Any] = [
    {
        "name": name,
        "description": description,
        "input_schema": {"type": "object", "properties": properties, "required": required},
    }
    for name, description, properties, required in FUNCTIONS
]
# The Anthropic ingress's extras: cache_control on the prompt and a field the gateway
# does not know, both relayed untouched to an anthropic provider.
CACHE_CONTROL = {"type": "ephemeral", "ttl": "5m"}
UNKNOWN = {"probe_field": {"kept": [1, 2.5, "naïve"]}}


@pytest.fixture(scope="module")
def replay() -> Iterator[FixtureUpstream]:
    with FixtureUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(
    replay: FixtureUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    config = {
        "providers": {
            "oai": {"type": "openai", "base_url": f"{replay.url}/v1", "api_key": "sk-oai-secret"},
            "az": {
                "type": "azure",
                "base_url": replay.url,
                "api_version": AZURE_API_VERSION,
                "api_key": "az-secret-0123456789",
            },
            "ant": {"type": "anthropic", "base_url": replay.url, "api_key": "sk-ant-secret"},
            "gem": {"type": "gemini", "base_url": replay.url, "api_key": "AIza-gem-secret"},
            "local": {"type": "mock"},
        },
        "models": {
            model: {"deployments": [{"provider": b.provider, "model": b.upstream_model}]}
            for model, b in BACKENDS.items()
        },
        "keys": [{"name": "tests", "key": TEST_KEY, "models": ["*"]}],
    }
    server = start_gateway(write_config(tmp_path_factory.mktemp("round-trip"), config))
    yield server
    server.stop()


def prompt() -> str:
    """The user's question, unique to the test so its upstream requests can be found."""
    return f"Weather and time, please. [{uuid.uuid4().hex}]"


def mock_script(model: str) -> dict[str, Any] | None:
    return {"mock": {"tool_calls": 2}} if model == "mock-chat" else None


def check_calls(sample: Sample | None, calls: list[Call]) -> None:
    if sample is not None:
        assert calls == list(sample.calls)
    else:  # the mock calls the tools in order, each with its required arguments
        assert [name for name, _ in calls] == ["get_weather", "get_time"]
        assert set(calls[0][1]) >= {"city"}
        assert set(calls[1][1]) >= {"timezone"}


def check_text(sample: Sample | None, text: str | None) -> None:
    assert text
    if sample is not None:
        assert text == sample.text


def upstream_turns(
    replay: FixtureUpstream, backend: Backend, marker: str, *, stream: bool
) -> list[Recorded]:
    """The two requests of the conversation as the upstream received them."""
    sent = replay.received(marker)
    assert len(sent) == 2
    for request in sent:
        assert request.path == backend.paths[stream]
        assert request.headers[backend.key_header] == REDACTED
    return sent


# ---------------------------------------------------------------- the OpenAI ingress


def openai_turn(
    client: openai.OpenAI, model: str, messages: list[Any]
) -> tuple[ChatCompletion, list[ChatCompletionChunk], str | None]:
    """One streamed turn: the completion the SDK assembles, its chunks, who served it."""
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        tools=OPENAI_TOOLS,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=mock_script(model),
    )
    state = ChatCompletionStreamState(input_tools=OPENAI_TOOLS)
    with stream:
        chunks = []
        for chunk in stream:
            state.handle_chunk(chunk)
            chunks.append(chunk)
    return state.get_final_completion(), chunks, stream.response.headers.get("x-gateway-served-by")


def check_usage_last(chunks: list[ChatCompletionChunk]) -> None:
    *body, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0
    assert last.usage.completion_tokens > 0
    assert all(chunk.usage is None for chunk in body)


def with_results(messages: list[Any], message: Any) -> list[Any]:
    """The conversation, the assistant's calls and both results added."""
    calls = message.tool_calls
    return [
        *messages,
        {
            "role": "assistant",
            "content": message.content,
            # as the SDK parsed them, extra fields (Gemini's thought signature) included
            "tool_calls": [call.model_dump(exclude_none=True) for call in calls],
        },
        *(
            {"role": "tool", "tool_call_id": call.id, "content": result}
            for call, result in zip(calls, RESULTS, strict=True)
        ),
    ]


@pytest.mark.parametrize("model", MODELS)
def test_openai_sdk_streams_the_round_trip(
    gateway: ServerProcess, replay: FixtureUpstream, model: str
) -> None:
    backend = BACKENDS[model]
    sample = backend.sample(stream=True)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=TEST_KEY, max_retries=0)
    question = prompt()
    messages: list[Any] = [{"role": "user", "content": question}]

    first, chunks, served_by = openai_turn(client, model, messages)
    assert served_by == f"{backend.provider}/{backend.upstream_model}"
    ids: dict[int, list[str]] = {}
    arguments: dict[int, str] = {}
    finish = []
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.finish_reason:
                finish.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or ():
                if delta.id:
                    ids.setdefault(delta.index, []).append(delta.id)
                if delta.function and delta.function.arguments:
                    arguments[delta.index] = (
                        arguments.get(delta.index, "") + delta.function.arguments
                    )
    assert finish == ["tool_calls"]
    assert [len(ids[0]), len(ids[1]), len(ids)] == [1, 1, 2]  # each call named once
    assert ids[0] != ids[1]
    check_usage_last(chunks)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [call.id for call in calls] == [ids[0][0], ids[1][0]]
    parsed = [json.loads(arguments[k]) for k in range(2)]  # each call's, whole
    assert all(isinstance(args, dict) for args in parsed)
    assert [json.loads(call.function.arguments) for call in calls] == parsed  # type: ignore[union-attr]
    check_calls(
        sample, [(call.function.name, args) for call, args in zip(calls, parsed, strict=True)]
    )  # type: ignore[union-attr]

    second, chunks, served_by = openai_turn(client, model, with_results(messages, choice.message))
    assert served_by == f"{backend.provider}/{backend.upstream_model}"
    choice = second.choices[0]
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    check_text(sample, choice.message.content)
    check_usage_last(chunks)

    if sample is not None:
        _, last = upstream_turns(replay, backend, question, stream=True)
        check_second_turn(backend, sample, last.body, [c.id for c in calls], ingress="openai")


# ---------------------------------------------------------------- the Anthropic ingress


def anthropic_turn(
    client: anthropic.Anthropic, model: str, messages: list[Any]
) -> tuple[anthropic.types.Message, list[Any], str | None, bytes]:
    """One streamed turn: the message the SDK assembles, its events, who served it, and
    the bytes the SDK sent."""
    extra = {**UNKNOWN, **(mock_script(model) or {})}
    with client.messages.stream(
        model=model, max_tokens=256, tools=ANTHROPIC_TOOLS, messages=messages, extra_body=extra
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
        response = stream.response
    return final, events, response.headers.get("x-gateway-served-by"), response.request.content


def check_anthropic_usage(message: anthropic.types.Message) -> None:
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0


def with_tool_results(messages: list[Any], message: anthropic.types.Message) -> list[Any]:
    """The conversation, the assistant's turn as it came and both results added."""
    uses = [block for block in message.content if block.type == "tool_use"]
    return [
        *messages,
        {"role": "assistant", "content": [block.model_dump() for block in message.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": result}
                for use, result in zip(uses, RESULTS, strict=True)
            ],
        },
    ]


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_sdk_streams_the_round_trip(
    gateway: ServerProcess, replay: FixtureUpstream, model: str
) -> None:
    backend = BACKENDS[model]
    sample = backend.sample(stream=True)
    client = anthropic.Anthropic(base_url=gateway.url, api_key=TEST_KEY, max_retries=0)
    question = prompt()
    messages: list[Any] = [
        {
            "role": "user",
            "content": [{"type": "text", "text": question, "cache_control": CACHE_CONTROL}],
        }
    ]

    first, events, served_by, sent_first = anthropic_turn(client, model, messages)
    assert served_by == f"{backend.provider}/{backend.upstream_model}"
    assert events[0].type == "message_start"
    assert events[-1].type == "message_stop"
    tool_blocks = [
        e.index
        for e in events
        if e.type == "content_block_start" and e.content_block.type == "tool_use"
    ]
    assert len(tool_blocks) == 2
    for index in tool_blocks:  # each call's input arrives as input_json_delta
        deltas = [
            e.delta.type for e in events if e.type == "content_block_delta" and e.index == index
        ]
        assert deltas
        assert set(deltas) == {"input_json_delta"}
    assert first.stop_reason == "tool_use"
    check_anthropic_usage(first)
    uses = [block for block in first.content if block.type == "tool_use"]
    assert len(uses) == 2
    assert uses[0].id != uses[1].id
    assert all(isinstance(use.input, dict) for use in uses)
    check_calls(sample, [(use.name, use.input) for use in uses])  # type: ignore[misc]

    second, events, served_by, sent_second = anthropic_turn(
        client, model, with_tool_results(messages, first)
    )
    assert served_by == f"{backend.provider}/{backend.upstream_model}"
    assert events[0].type == "message_start"
    assert events[-1].type == "message_stop"
    assert second.stop_reason == "end_turn"
    assert [block.type for block in second.content] == ["text"]
    check_text(sample, second.content[0].text)  # type: ignore[union-attr]
    check_anthropic_usage(second)

    if sample is None:
        return
    turns = upstream_turns(replay, backend, question, stream=True)
    check_second_turn(backend, sample, turns[1].body, [u.id for u in uses], ingress="anthropic")
    if backend.provider == "ant":
        # Passed through untranslated: the SDK's bytes, only `model` replaced.
        for sent, received in zip((sent_first, sent_second), turns, strict=True):
            assert received.raw == sent.replace(
                json.dumps(model).encode(), json.dumps(backend.upstream_model).encode(), 1
            )
            assert received.body["messages"][0]["content"][0]["cache_control"] == CACHE_CONTROL
            assert received.body["probe_field"] == UNKNOWN["probe_field"]


# ---------------------------------------------------------------- not streamed


@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
@pytest.mark.parametrize("model", MODELS)
def test_the_round_trip_without_streaming(
    gateway: ServerProcess, replay: FixtureUpstream, model: str, ingress: str
) -> None:
    backend = BACKENDS[model]
    sample = backend.sample(stream=False)
    question = prompt()
    messages: list[Any] = [{"role": "user", "content": question}]
    if ingress == "openai":
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=TEST_KEY, max_retries=0)

        def ask(messages: list[Any]) -> ChatCompletion:
            return client.chat.completions.create(
                model=model, messages=messages, tools=OPENAI_TOOLS, extra_body=mock_script(model)
            )

        first = ask(messages).choices[0]
        assert first.finish_reason == "tool_calls"
        calls = first.message.tool_calls or []
        ids = [call.id for call in calls]
        check_calls(sample, [(c.function.name, json.loads(c.function.arguments)) for c in calls])  # type: ignore[union-attr]
        second = ask(with_results(messages, first.message)).choices[0]
        assert second.finish_reason == "stop"
        assert not second.message.tool_calls
        check_text(sample, second.message.content)
    else:
        messenger = anthropic.Anthropic(base_url=gateway.url, api_key=TEST_KEY, max_retries=0)

        def send(messages: list[Any]) -> anthropic.types.Message:
            return messenger.messages.create(
                model=model,
                max_tokens=256,
                tools=ANTHROPIC_TOOLS,
                messages=messages,
                extra_body=mock_script(model),
            )

        message = send(messages)
        assert message.stop_reason == "tool_use"
        check_anthropic_usage(message)
        uses = [block for block in message.content if block.type == "tool_use"]
        ids = [use.id for use in uses]
        check_calls(sample, [(use.name, use.input) for use in uses])  # type: ignore[misc]
        answer = send(with_tool_results(messages, message))
        assert answer.stop_reason == "end_turn"
        assert [block.type for block in answer.content] == ["text"]
        check_text(sample, answer.content[0].text)  # type: ignore[union-attr]
        check_anthropic_usage(answer)
    assert len(set(ids)) == 2

    if sample is not None:
        _, last = upstream_turns(replay, backend, question, stream=False)
        check_second_turn(backend, sample, last.body, ids, ingress=ingress)


# ---------------------------------------------------------------- what the upstream got


def check_second_turn(
    backend: Backend, sample: Sample, body: dict[str, Any], ids: list[str], *, ingress: str
) -> None:
    """Both calls and both results, matched by id, in the upstream's own format."""
    calls = [(id_, name, args) for id_, (name, args) in zip(ids, sample.calls, strict=True)]
    results = list(zip(ids, RESULTS, strict=True))
    if backend.provider in ("oai", "az"):
        messages = body["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
        sent_calls = [
            (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in messages[1]["tool_calls"]
        ]
        assert sent_calls == calls
        assert [(m["tool_call_id"], m["content"]) for m in messages[2:]] == results
    elif backend.provider == "ant":
        messages = body["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "user"]
        uses = [b for b in messages[1]["content"] if b["type"] == "tool_use"]
        assert [(b["id"], b["name"], b["input"]) for b in uses] == calls
        tool_results = [b for b in messages[2]["content"] if b["type"] == "tool_result"]
        assert [(b["tool_use_id"], b["content"]) for b in tool_results] == results
    else:
        contents = body["contents"]
        assert [c["role"] for c in contents] == ["user", "model", "user"]
        parts = [p for p in contents[1]["parts"] if "functionCall" in p]
        sent_calls = [
            (p["functionCall"]["id"], p["functionCall"]["name"], p["functionCall"]["args"])
            for p in parts
        ]
        assert sent_calls == calls
        # The openai SDK keeps the call's extra_content, so the signature goes back;
        # an Anthropic tool_use block has no place for it: Google's stand-in instead.
        assert parts[0]["thoughtSignature"] == (
            SIGNATURE if ingress == "openai" else SKIP_SIGNATURE
        )
        assert "thoughtSignature" not in parts[1]
        responses = [p["functionResponse"] for p in contents[2]["parts"]]
        assert [(r["id"], r["name"], r["response"]) for r in responses] == [
            (id_, name, json.loads(result))
            for (id_, name, _), result in zip(calls, RESULTS, strict=True)
        ]
