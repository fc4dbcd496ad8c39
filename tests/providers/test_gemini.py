"""gateway/providers/gemini/, driven through a respx router injected as the transport.

Recorded wire samples (tests/fixtures/gemini/, shaped as the Gemini API documents
its answers, streams and errors) are replayed; streamed bodies arrive cut at
arbitrary places, the way a socket delivers them. Every translated answer and
chunk is parsed by the official ``openai`` SDK's models.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
import openai.types.chat as sdk
import pytest
import respx

from gateway.config import Deployment, ProviderConfig
from gateway.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.providers.base import CallContext
from gateway.providers.gemini import GeminiProvider
from gateway.providers.registry import provider_class
from gateway.schemas.openai import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from gateway.transport import Upstream, build_upstream

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "gemini"
BASE_URL = "https://gemini.test"
SECRET = "AIzaSyD-provider-secret-0123456789abc"
MODEL = "gemini-2.5-flash"
GENERATE = f"/v1beta/models/{MODEL}:generateContent"
STREAM = f"/v1beta/models/{MODEL}:streamGenerateContent"
SIGNATURE = (
    "CiQBVKhc7hhSkYSp2a6Qyx8d7Ab4r0YrxzqJDtsG0OXb8JqWkQYSfgFUqFzuMXLFuCvh2m2Ccpo3yrUuVaJkwQ0"
    "XlMMFRSpI4iH+HDvq9pTLB6ZDykmc5OFTwh7bhrqa"
)


class Body(httpx.AsyncByteStream):
    """A response body that arrives in pieces, each after its delay."""

    def __init__(self, parts: Iterable[bytes], *, delay: float = 0.0) -> None:
        self.parts = list(parts)
        self.delay = delay

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, part in enumerate(self.parts):
            if i and self.delay:
                await asyncio.sleep(self.delay)
            yield part


def pieces(data: bytes, size: int = 29) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def sse_response(data: bytes, size: int = 29, **kwargs: Any) -> httpx.Response:
    return httpx.Response(
        200,
        headers={"content-type": "text/event-stream"},
        stream=Body(pieces(data, size), **kwargs),
    )


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def events(*objects: Any) -> bytes:
    return b"".join(b"data: " + json.dumps(o).encode() + b"\r\n\r\n" for o in objects)


def candidate_event(parts: list[Any] | None = None, finish: str | None = None, index: int = 0):
    candidate: dict[str, Any] = {"index": index}
    if parts is not None:
        candidate["content"] = {"role": "model", "parts": parts}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "responseId": "r-1"}


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(base_url=BASE_URL, assert_all_mocked=True)


@pytest.fixture
async def upstream(router: respx.Router) -> AsyncIterator[Upstream]:
    config = ProviderConfig(type="gemini", base_url=BASE_URL, api_key=SECRET)
    upstream = build_upstream(config, transport=httpx.MockTransport(router.async_handler))
    yield upstream
    await upstream.aclose()


@pytest.fixture
def provider(upstream: Upstream) -> GeminiProvider:
    config = ProviderConfig(type="gemini", base_url=BASE_URL + "/", api_key=SECRET)
    return GeminiProvider("gem", config, upstream)


def context(timeout: float = 5.0, model: str = MODEL) -> CallContext:
    deployment = Deployment.model_validate({"provider": "gem", "model": model, "timeout": timeout})
    return CallContext(request_id="req-gem-1", deployment=deployment)


def chat_request(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "gemini", "messages": [{"role": "user", "content": "Hi"}], **fields}
    return ChatCompletionRequest.model_validate_json(json.dumps(body))


async def collect(
    provider: GeminiProvider, request: ChatCompletionRequest, ctx: CallContext | None = None
) -> list[ChatCompletionChunk]:
    async with provider.stream(request, ctx or context()) as chunks:
        return [c async for c in chunks]


async def collect_until_error(
    provider: GeminiProvider, request: ChatCompletionRequest
) -> tuple[list[ChatCompletionChunk], UpstreamError]:
    got: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamError) as info:
        async with provider.stream(request, context()) as chunks:
            async for c in chunks:
                got.append(c)
    return got, info.value


def sdk_completion(answer: ChatCompletion) -> sdk.ChatCompletion:
    """The answer as a client gets it, parsed by the openai SDK."""
    return sdk.ChatCompletion.model_validate(json.loads(answer.model_dump_json(exclude_unset=True)))


def sdk_chunks(chunks: list[ChatCompletionChunk]) -> list[sdk.ChatCompletionChunk]:
    return [
        sdk.ChatCompletionChunk.model_validate(json.loads(c.model_dump_json(exclude_unset=True)))
        for c in chunks
    ]


def reassemble(chunks: list[sdk.ChatCompletionChunk]) -> dict[int, dict[str, Any]]:
    """Tool calls put back together from their deltas, as a client does, by index."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                if delta.id:
                    call["id"] = delta.id
                if delta.function and delta.function.name:
                    call["name"] += delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
                extra = (delta.model_extra or {}).get("extra_content")
                if extra:
                    call["extra_content"] = extra
    return calls


def sent_json(route: respx.Route) -> dict[str, Any]:
    return json.loads(route.calls.last.request.content)


# ---------------------------------------------------------------- the call itself


def test_registered_as_gemini() -> None:
    assert provider_class("gemini") is GeminiProvider


async def test_chat_url_and_headers(router: respx.Router, provider: GeminiProvider) -> None:
    route = router.post(GENERATE).respond(200, content=fixture("generate_text.json"))
    await provider.chat(chat_request(), context())
    sent = route.calls.last.request
    assert str(sent.url) == f"{BASE_URL}{GENERATE}"
    assert sent.headers["x-goog-api-key"] == SECRET
    assert "authorization" not in sent.headers
    assert SECRET not in str(sent.url)  # never the key in the URL: URLs end up in logs
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["x-request-id"] == "req-gem-1"
    assert sent_json(route) == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


async def test_stream_url_asks_for_sse(router: respx.Router, provider: GeminiProvider) -> None:
    route = router.post(STREAM).mock(
        side_effect=lambda request: sse_response(fixture("stream_text.sse"))
    )
    await collect(provider, chat_request(stream=True))
    sent = route.calls.last.request
    assert sent.url.params["alt"] == "sse"
    assert list(sent.url.params) == ["alt"]
    assert sent.headers["x-goog-api-key"] == SECRET
    assert sent_json(route) == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


@pytest.mark.parametrize(
    ("base_url", "model", "url"),
    [
        (
            "https://generativelanguage.googleapis.com",
            "gemini-2.5-pro",
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:generateContent",
        ),
        (
            "https://proxy.test/google/v1beta/",
            "models/gemini-2.0-flash",
            "https://proxy.test/google/v1beta/models/gemini-2.0-flash:generateContent",
        ),
        (
            "https://gemini.test",
            "tunedModels/my-model-123",
            "https://gemini.test/v1beta/tunedModels/my-model-123:generateContent",
        ),
    ],
)
async def test_endpoint_urls(base_url: str, model: str, url: str) -> None:
    answers: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        answers.append(request)
        return httpx.Response(200, content=fixture("generate_text.json"))

    config = ProviderConfig(type="gemini", base_url=base_url, api_key=SECRET)
    upstream = build_upstream(config, transport=httpx.MockTransport(handler))
    try:
        await GeminiProvider("g", config, upstream).chat(chat_request(), context(model=model))
    finally:
        await upstream.aclose()
    assert str(answers[0].url) == url


async def test_default_base_url(upstream: Upstream) -> None:
    provider = GeminiProvider("g", ProviderConfig(type="gemini", api_key=SECRET), upstream)
    endpoint = provider.chat_endpoint(context(), stream=True)
    assert str(endpoint.url) == (
        "https://generativelanguage.googleapis.com/v1beta/models/"
        "gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    assert endpoint is provider.chat_endpoint(context(), stream=True)  # built once


# ---------------------------------------------------------------- answers


async def test_text_answer(router: respx.Router, provider: GeminiProvider) -> None:
    router.post(GENERATE).respond(200, content=fixture("generate_text.json"))
    answer = await provider.chat(chat_request(), context())
    parsed = sdk_completion(answer)
    assert parsed.id == "chatcmpl-mHNnaPqYJNCz1dkP6JLqkA4"
    assert parsed.object == "chat.completion"
    assert parsed.choices[0].message.role == "assistant"
    assert parsed.choices[0].message.content == "The capital of France is Paris."
    assert parsed.choices[0].message.tool_calls is None
    assert parsed.choices[0].finish_reason == "stop"
    usage = parsed.usage
    assert usage is not None
    # completion_tokens include the thoughts: 7 answered + 21 thought.
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (8, 28, 36)
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 21
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0


async def test_parallel_calls_with_a_thought_signature(
    router: respx.Router, provider: GeminiProvider
) -> None:
    router.post(GENERATE).respond(200, content=fixture("generate_parallel_calls.json"))
    parsed = sdk_completion(await provider.chat(chat_request(), context()))
    choice = parsed.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None
    assert len(calls) == 2
    assert [c.function.name for c in calls] == ["get_current_temperature"] * 2
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"location": "Paris"},
        {"location": "London"},
    ]
    assert calls[0].id != calls[1].id
    assert all(c.id.startswith("call_") for c in calls)
    # Google's OpenAI-compatible endpoint's place for the signature.
    assert calls[0].model_extra == {"extra_content": {"google": {"thought_signature": SIGNATURE}}}
    assert not calls[1].model_extra
    usage = parsed.usage
    assert usage is not None
    assert usage.prompt_tokens == 2140  # cached tokens included
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 2048
    assert usage.completion_tokens == 36 + 89
    assert usage.total_tokens == 2140 + 36 + 89


async def test_function_call_ids_from_gemini_are_kept(
    router: respx.Router, provider: GeminiProvider
) -> None:
    answer = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"functionCall": {"id": "fc-7", "name": "f", "args": {}}}],
                },
                "finishReason": "STOP",
            }
        ]
    }
    router.post(GENERATE).respond(200, json=answer)
    parsed = sdk_completion(await provider.chat(chat_request(), context()))
    call = parsed.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert (call.id, call.function.arguments) == ("fc-7", "{}")
    assert parsed.usage is None  # none reported


async def test_candidates_become_choices(router: respx.Router, provider: GeminiProvider) -> None:
    router.post(GENERATE).respond(200, content=fixture("generate_two_candidates.json"))
    parsed = sdk_completion(await provider.chat(chat_request(n=2), context()))
    assert [c.index for c in parsed.choices] == [0, 1]
    assert [c.message.content for c in parsed.choices] == [
        "Blue.",
        "Azure, like the sky on a clear",
    ]
    assert [c.finish_reason for c in parsed.choices] == ["stop", "length"]


async def test_safety_stop_is_content_filter(
    router: respx.Router, provider: GeminiProvider
) -> None:
    router.post(GENERATE).respond(200, content=fixture("generate_safety.json"))
    parsed = sdk_completion(await provider.chat(chat_request(), context()))
    assert parsed.choices[0].finish_reason == "content_filter"
    assert parsed.choices[0].message.content is None


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("LANGUAGE", "content_filter"),
        ("OTHER", "stop"),  # with text: what it said stands
    ],
)
async def test_finish_reasons(
    router: respx.Router, provider: GeminiProvider, reason: str, expected: str
) -> None:
    answer = {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]}
    router.post(GENERATE).respond(200, json=answer)
    parsed = sdk_completion(await provider.chat(chat_request(), context()))
    assert parsed.choices[0].finish_reason == expected


async def test_malformed_function_call_is_a_visible_error(
    router: respx.Router, provider: GeminiProvider
) -> None:
    router.post(GENERATE).respond(200, content=fixture("generate_malformed_call.json"))
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.chat(chat_request(), context())
    assert info.value.message == (
        "the model produced a malformed function call (finishReason MALFORMED_FUNCTION_CALL)"
    )
    assert info.value.status == 502
    assert info.value.retryable
    assert info.value.reason == "malformed"


@pytest.mark.parametrize("reason", ["OTHER", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"])
async def test_an_empty_odd_stop_is_an_error_not_an_empty_stop(
    router: respx.Router, provider: GeminiProvider, reason: str
) -> None:
    router.post(GENERATE).respond(200, json={"candidates": [{"finishReason": reason}]})
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.chat(chat_request(), context())
    assert f"(finishReason {reason})" in info.value.message


async def test_blocked_prompt_is_a_content_filter_refusal(
    router: respx.Router, provider: GeminiProvider
) -> None:
    router.post(GENERATE).respond(200, content=fixture("generate_prompt_blocked.json"))
    with pytest.raises(UpstreamRejected) as info:
        await provider.chat(chat_request(), context())
    assert info.value.status == 400
    assert info.value.to_dict() == {
        "message": "the upstream refused the prompt (blockReason PROHIBITED_CONTENT)",
        "type": "invalid_request_error",
        "param": None,
        "code": "content_filter",
    }


async def test_thought_parts_become_reasoning_content(
    router: respx.Router, provider: GeminiProvider
) -> None:
    answer = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "**Weighing it** first...", "thought": True},
                        {"text": "42", "thoughtSignature": "c2ln"},
                    ],
                },
                "finishReason": "STOP",
            }
        ]
    }
    router.post(GENERATE).respond(200, json=answer)
    parsed = sdk_completion(await provider.chat(chat_request(), context()))
    message = parsed.choices[0].message
    assert message.content == "42"
    assert message.model_extra == {
        "reasoning_content": "**Weighing it** first...",
        "extra_content": {"google": {"thought_signature": "c2ln"}},
    }


async def test_logprobs(router: respx.Router, provider: GeminiProvider) -> None:
    route = router.post(GENERATE).respond(
        200,
        json={
            "candidates": [
                {
                    "content": {"parts": [{"text": "Hi!"}]},
                    "finishReason": "STOP",
                    "logprobsResult": {
                        "topCandidates": [
                            {
                                "candidates": [
                                    {"token": "Hi", "logProbability": -0.1},
                                    {"token": "Hello", "logProbability": -2.5},
                                ]
                            },
                            {"candidates": [{"token": "!", "logProbability": -0.01}]},
                        ],
                        "chosenCandidates": [
                            {"token": "Hi", "logProbability": -0.1},
                            {"token": "!", "logProbability": -0.01},
                        ],
                    },
                }
            ]
        },
    )
    parsed = sdk_completion(
        await provider.chat(chat_request(logprobs=True, top_logprobs=2), context())
    )
    assert sent_json(route)["generationConfig"] == {"responseLogprobs": True, "logprobs": 2}
    logprobs = parsed.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    assert [(t.token, t.logprob, t.bytes) for t in logprobs.content] == [
        ("Hi", -0.1, [72, 105]),
        ("!", -0.01, [33]),
    ]
    assert [t.token for t in logprobs.content[0].top_logprobs] == ["Hi", "Hello"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"candidates": [',
        b"<html>oops</html>",
        b"[]",
        b'{"candidates": "nope"}',
        b'{"candidates": [{"content": {"parts": [{"text": 5}]}, "finishReason": "STOP"}]}',
        b'{"candidates": [{"content": {"parts": [{"text": "x"}]}}], "usageMetadata": '
        b'{"promptTokenCount": "many"}}',
        b"{}",
    ],
)
async def test_malformed_answer_is_unavailable(
    router: respx.Router, provider: GeminiProvider, body: bytes
) -> None:
    router.post(GENERATE).respond(200, content=body)
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.chat(chat_request(), context())
    assert info.value.status == 502
    assert info.value.reason == "malformed"


# ---------------------------------------------------------------- streams


async def test_text_stream(router: respx.Router, provider: GeminiProvider) -> None:
    router.post(STREAM).mock(side_effect=lambda request: sse_response(fixture("stream_text.sse")))
    chunks = sdk_chunks(await collect(provider, chat_request(stream=True)))
    assert {c.id for c in chunks} == {"chatcmpl-kXJnaNOiL6ej1dkP2r2d0Ag"}
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.role for c in chunks[1:-1]] == [None] * (len(chunks) - 2)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The capital of France is Paris."
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes == [None, None, None, "stop"]
    # The text answer's signature rides on the delta that carried it.
    assert chunks[3].choices[0].delta.model_extra == {
        "extra_content": {"google": {"thought_signature": "EpYCCpMCAb4+9vs1ZbbNjiutlQgYcyQqX0yA"}}
    }
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        9,
        8 + 25,
        42,
    )
    assert last.usage.completion_tokens_details is not None
    assert last.usage.completion_tokens_details.reasoning_tokens == 25


@pytest.mark.parametrize("size", [1, 7, 4096])
async def test_stream_cut_anywhere_reads_the_same(
    router: respx.Router, provider: GeminiProvider, size: int
) -> None:
    router.post(STREAM).mock(
        side_effect=lambda request: sse_response(fixture("stream_parallel_calls.sse"), size)
    )
    chunks = sdk_chunks(await collect(provider, chat_request(stream=True)))
    calls = reassemble(chunks)
    assert json.loads(calls[1]["arguments"]) == {
        "location": "London",
        "unit": "celsius",
        "note": 'naïve "quoted"',
    }


async def test_parallel_calls_stream_as_whole_tool_call_deltas(
    router: respx.Router, provider: GeminiProvider
) -> None:
    router.post(STREAM).mock(
        side_effect=lambda request: sse_response(fixture("stream_parallel_calls.sse"))
    )
    chunks = sdk_chunks(await collect(provider, chat_request(stream=True)))
    calls = reassemble(chunks)
    assert sorted(calls) == [0, 1]
    assert [calls[i]["name"] for i in (0, 1)] == ["get_current_temperature"] * 2
    assert [json.loads(calls[i]["arguments"]) for i in (0, 1)] == [
        {"location": "Paris"},
        {"location": "London", "unit": "celsius", "note": 'naïve "quoted"'},
    ]
    assert calls[0]["id"] != calls[1]["id"]
    assert calls[0]["extra_content"] == {"google": {"thought_signature": SIGNATURE}}
    assert "extra_content" not in calls[1]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes == [None, "tool_calls"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None
    assert usage.prompt_tokens == 2140
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 2048
    assert usage.completion_tokens == 36 + 89


async def test_text_then_a_call_in_one_event(
    router: respx.Router, provider: GeminiProvider
) -> None:
    router.post(STREAM).mock(
        side_effect=lambda request: sse_response(fixture("stream_text_then_call.sse"))
    )
    chunks = sdk_chunks(await collect(provider, chat_request(stream=True)))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Let me check the weather for you."
    calls = reassemble(chunks)
    assert calls[0]["name"] == "get_current_temperature"
    assert calls[0]["extra_content"] == {"google": {"thought_signature": "Cs4BAdHtim9Y"}}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 22


async def test_two_candidates_stream_as_two_choices(
    router: respx.Router, provider: GeminiProvider
) -> None:
    wire = events(
        {
            "candidates": [
                {"content": {"parts": [{"text": "A"}]}, "index": 0},
                {"content": {"parts": [{"text": "B"}]}, "index": 1},
            ]
        },
        {
            "candidates": [
                {"content": {"parts": [{"text": "a"}]}, "finishReason": "STOP"},
                {"content": {"parts": [{"text": "b"}]}, "finishReason": "MAX_TOKENS", "index": 1},
            ],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4},
        },
    )
    router.post(STREAM).mock(side_effect=lambda request: sse_response(wire))
    chunks = sdk_chunks(await collect(provider, chat_request(stream=True, n=2)))
    by_index: dict[int, str] = {}
    finish: dict[int, str | None] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            by_index[choice.index] = by_index.get(choice.index, "") + (choice.delta.content or "")
            finish[choice.index] = choice.finish_reason
    assert by_index == {0: "Aa", 1: "Bb"}
    assert finish == {0: "stop", 1: "length"}
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 7


async def test_stream_safety_stop(router: respx.Router, provider: GeminiProvider) -> None:
    router.post(STREAM).mock(side_effect=lambda request: sse_response(fixture("stream_safety.sse")))
    chunks = sdk_chunks(await collect(provider, chat_request(stream=True)))
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, "content_filter"]


async def test_stream_malformed_function_call_fails_visibly(
    router: respx.Router, provider: GeminiProvider
) -> None:
    router.post(STREAM).mock(
        side_effect=lambda request: sse_response(fixture("stream_malformed_call.sse"))
    )
    got, error = await collect_until_error(provider, chat_request(stream=True))
    assert got == []  # the first event: the gateway can still answer with a status
    assert type(error) is UpstreamUnavailable
    assert "malformed function call" in error.message


async def test_stream_malformed_function_call_after_text(
    router: respx.Router, provider: GeminiProvider
) -> None:
    wire = events(
        candidate_event([{"text": "Calling"}]),
        candidate_event([], "MALFORMED_FUNCTION_CALL"),
    )
    router.post(STREAM).mock(side_effect=lambda request: sse_response(wire))
    got, error = await collect_until_error(provider, chat_request(stream=True))
    assert [c.choices[0].delta.content for c in got] == ["Calling"]
    assert type(error) is UpstreamUnavailable
    assert error.message.endswith("(finishReason MALFORMED_FUNCTION_CALL)")


async def test_stream_blocked_prompt_is_refused_before_the_first_chunk(
    router: respx.Router, provider: GeminiProvider
) -> None:
    router.post(STREAM).mock(
        side_effect=lambda request: sse_response(fixture("stream_prompt_blocked.sse"))
    )
    got, error = await collect_until_error(provider, chat_request(stream=True))
    assert got == []
    assert type(error) is UpstreamRejected
    assert (error.status, error.code) == (400, "content_filter")
    assert error.message == "the upstream refused the prompt (blockReason SAFETY)"


async def test_stream_ending_without_a_finish_reason_is_cut(
    router: respx.Router, provider: GeminiProvider
) -> None:
    wire = events(candidate_event([{"text": "Hel"}]), candidate_event([{"text": "lo"}]))
    router.post(STREAM).mock(side_effect=lambda request: sse_response(wire))
    got, error = await collect_until_error(provider, chat_request(stream=True))
    assert [c.choices[0].delta.content for c in got] == ["Hel", "lo"]
    assert type(error) is UpstreamUnavailable
    assert error.message == "the upstream stream ended before it was complete"
    assert error.reason == "stream_cut"


async def test_stream_with_one_of_two_candidates_unfinished_is_cut(
    router: respx.Router, provider: GeminiProvider
) -> None:
    wire = events(
        {
            "candidates": [
                {"content": {"parts": [{"text": "A"}]}, "finishReason": "STOP"},
                {"content": {"parts": [{"text": "B"}]}, "index": 1},
            ]
        }
    )
    router.post(STREAM).mock(side_effect=lambda request: sse_response(wire))
    _, error = await collect_until_error(provider, chat_request(stream=True, n=2))
    assert error.reason == "stream_cut"


async def test_empty_stream_is_cut(router: respx.Router, provider: GeminiProvider) -> None:
    router.post(STREAM).mock(side_effect=lambda request: sse_response(b""))
    got, error = await collect_until_error(provider, chat_request(stream=True))
    assert got == []
    assert error.reason == "stream_cut"


async def test_stream_without_usage_has_no_usage_chunk(
    router: respx.Router, provider: GeminiProvider
) -> None:
    wire = events(candidate_event([{"text": "Hi"}], "STOP"))
    router.post(STREAM).mock(side_effect=lambda request: sse_response(wire))
    chunks = await collect(provider, chat_request(stream=True))
    assert len(chunks) == 1
    assert chunks[0].usage is None


async def test_stream_replays_an_in_memory_body(
    router: respx.Router, provider: GeminiProvider
) -> None:
    router.post(STREAM).respond(
        200, content=fixture("stream_text.sse"), headers={"content-type": "text/event-stream"}
    )
    chunks = await collect(provider, chat_request(stream=True))
    assert chunks[-1].usage is not None
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "The capital of France is Paris."
    )


async def test_error_event_mid_stream(router: respx.Router, provider: GeminiProvider) -> None:
    wire = events(
        candidate_event([{"text": "Hel"}]),
        {"error": {"code": 500, "message": f"internal ({SECRET})", "status": "INTERNAL"}},
    )
    router.post(STREAM).mock(side_effect=lambda request: sse_response(wire))
    got, error = await collect_until_error(provider, chat_request(stream=True))
    assert len(got) == 1
    assert type(error) is UpstreamUnavailable
    assert error.message == "the upstream reported an error mid-answer"
    assert error.reason == "error_event"
    assert SECRET not in error.message


@pytest.mark.parametrize(
    "bad",
    [b'data: {"candidates": [\n\n', b"data: <html>oops</html>\n\n", b'data: ["x"]\n\n'],
    ids=["truncated-json", "not-json", "not-an-object"],
)
async def test_malformed_event_is_unavailable(
    router: respx.Router, provider: GeminiProvider, bad: bytes
) -> None:
    wire = events(candidate_event([{"text": "Hi"}])) + bad
    router.post(STREAM).mock(side_effect=lambda request: sse_response(wire))
    got, error = await collect_until_error(provider, chat_request(stream=True))
    assert len(got) == 1
    assert type(error) is UpstreamUnavailable
    assert error.reason == "malformed"


@pytest.mark.parametrize(
    "usage", [{"promptTokenCount": "many"}, ["not", "an", "object"]], ids=["bad-count", "list"]
)
async def test_malformed_usage_at_the_end_of_a_stream_is_unavailable(
    router: respx.Router, provider: GeminiProvider, usage: Any
) -> None:
    wire = events({**candidate_event([{"text": "Hi"}], "STOP"), "usageMetadata": usage})
    router.post(STREAM).mock(side_effect=lambda request: sse_response(wire))
    got, error = await collect_until_error(provider, chat_request(stream=True))
    assert len(got) == 1
    assert type(error) is UpstreamUnavailable
    assert error.reason == "malformed"


async def test_an_empty_text_is_no_answer(router: respx.Router, provider: GeminiProvider) -> None:
    answer = {"candidates": [{"content": {"parts": [{"text": ""}]}, "finishReason": "OTHER"}]}
    router.post(GENERATE).respond(200, json=answer)
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.chat(chat_request(), context())
    assert info.value.message == "the upstream stopped without an answer (finishReason OTHER)"


async def test_stream_thoughts_become_reasoning_deltas(
    router: respx.Router, provider: GeminiProvider
) -> None:
    wire = events(
        candidate_event([{"text": "Thinking about it", "thought": True}]),
        candidate_event([{"text": "Done."}], "STOP"),
    )
    router.post(STREAM).mock(side_effect=lambda request: sse_response(wire))
    chunks = sdk_chunks(await collect(provider, chat_request(stream=True)))
    assert chunks[0].choices[0].delta.content is None
    assert chunks[0].choices[0].delta.model_extra == {"reasoning_content": "Thinking about it"}
    assert chunks[1].choices[0].delta.content == "Done."


async def test_slow_first_event_is_a_timeout(
    router: respx.Router, provider: GeminiProvider
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(2)
        return sse_response(fixture("stream_text.sse"))

    router.post(STREAM).mock(side_effect=slow)
    with pytest.raises(UpstreamTimeout):
        await collect(provider, chat_request(stream=True), context(timeout=0.2))


# ---------------------------------------------------------------- upstream errors


def _error_case(
    name: str, status: int, kind: type[UpstreamError], gateway_status: int, error: dict[str, Any]
) -> Any:
    return pytest.param(name, status, kind, gateway_status, error, id=name.removesuffix(".json"))


@pytest.mark.parametrize("streaming", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize(
    ("name", "status", "kind", "gateway_status", "error"),
    [
        _error_case(
            "error_400_token_limit.json",
            400,
            UpstreamRejected,
            400,
            {
                "message": "The input token count (1310720) exceeds the maximum number of "
                "tokens allowed (1048576).",
                "type": "invalid_request_error",
                "param": None,
                "code": "context_length_exceeded",
            },
        ),
        _error_case(
            "error_400_invalid_argument.json",
            400,
            UpstreamRejected,
            400,
            {
                "message": "* GenerateContentRequest.generation_config.temperature: must be "
                "less than or equal to 2.0",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_argument",
            },
        ),
        _error_case(
            "error_400_api_key_invalid.json",
            400,
            UpstreamAuthFailed,
            502,
            {
                "message": "the upstream refused the gateway's credentials (400)",
                "type": "api_error",
                "param": None,
                "code": "upstream_auth_failed",
            },
        ),
        _error_case(
            "error_403_permission_denied.json",
            403,
            UpstreamAuthFailed,
            502,
            {
                "message": "the upstream refused the gateway's credentials (403)",
                "type": "api_error",
                "param": None,
                "code": "upstream_auth_failed",
            },
        ),
        _error_case(
            "error_404_model.json",
            404,
            UpstreamRejected,
            404,
            {
                "message": "models/gemini-9-ultra is not found for API version v1beta, or is "
                "not supported for generateContent. Call ListModels to see the list of "
                "available models and their supported methods.",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            },
        ),
        _error_case(
            "error_429_quota.json",
            429,
            UpstreamRateLimited,
            429,
            {
                "message": "the upstream is rate limiting the gateway (429)",
                "type": "rate_limit_error",
                "param": None,
                "code": "upstream_rate_limited",
            },
        ),
        _error_case(
            "error_500_internal.json",
            500,
            UpstreamUnavailable,
            502,
            {
                "message": "the upstream failed with status 500",
                "type": "api_error",
                "param": None,
                "code": "upstream_error",
            },
        ),
        _error_case(
            "error_503_overloaded.json",
            503,
            UpstreamUnavailable,
            502,
            {
                "message": "the upstream failed with status 503",
                "type": "api_error",
                "param": None,
                "code": "upstream_error",
            },
        ),
    ],
)
async def test_upstream_errors(
    router: respx.Router,
    provider: GeminiProvider,
    streaming: bool,
    name: str,
    status: int,
    kind: type[UpstreamError],
    gateway_status: int,
    error: dict[str, Any],
) -> None:
    data = fixture(name)
    router.post(GENERATE).mock(
        side_effect=lambda request: httpx.Response(status, stream=Body(pieces(data)))
    )
    router.post(STREAM).mock(
        side_effect=lambda request: httpx.Response(status, stream=Body(pieces(data)))
    )
    with pytest.raises(UpstreamError) as info:
        if streaming:
            await collect(provider, chat_request(stream=True))
        else:
            await provider.chat(chat_request(), context())
    assert type(info.value) is kind
    assert info.value.status == gateway_status
    assert info.value.to_dict() == error
    assert info.value.upstream_status == status
    assert info.value.retryable is (status in (429, 500, 503))
    if status == 429:  # RetryInfo.retryDelay, no Retry-After header
        assert info.value.retry_after == 37.0
        assert info.value.response_headers() == {"retry-after": "37"}


async def test_retry_after_header_wins_over_retry_info(
    router: respx.Router, provider: GeminiProvider
) -> None:
    router.post(GENERATE).respond(
        429, content=fixture("error_429_quota.json"), headers={"retry-after": "3"}
    )
    with pytest.raises(UpstreamRateLimited) as info:
        await provider.chat(chat_request(), context())
    assert info.value.retry_after == 3.0


async def test_error_as_a_one_item_list(router: respx.Router, provider: GeminiProvider) -> None:
    body = b"[" + fixture("error_400_token_limit.json") + b"]"
    router.post(GENERATE).respond(400, content=body)
    with pytest.raises(UpstreamRejected) as info:
        await provider.chat(chat_request(), context())
    assert info.value.code == "context_length_exceeded"


async def test_a_404_that_is_not_googles_error_names_the_base_url(
    router: respx.Router, provider: GeminiProvider
) -> None:
    router.post(GENERATE).respond(
        404, content=b"<!DOCTYPE html><title>Error 404 (Not Found)!!1</title>"
    )
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.chat(chat_request(), context())
    assert info.value.status == 502
    assert info.value.message == (
        f"the upstream answered 404 for POST {GENERATE}: is the provider's base_url the bare "
        "origin (https://generativelanguage.googleapis.com)?"
    )


async def test_relayed_message_never_carries_the_key(
    router: respx.Router, provider: GeminiProvider
) -> None:
    router.post(GENERATE).respond(
        400,
        json={
            "error": {
                "code": 400,
                "message": f"Invalid value at 'key' ({SECRET})",
                "status": "INVALID_ARGUMENT",
            }
        },
    )
    with pytest.raises(UpstreamRejected) as info:
        await provider.chat(chat_request(), context())
    assert SECRET not in json.dumps(info.value.to_dict())
    assert info.value.message == "Invalid value at 'key' ([redacted])"


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failure_never_relays_the_upstream_text(
    router: respx.Router, provider: GeminiProvider, status: int
) -> None:
    router.post(GENERATE).respond(
        status,
        json={
            "error": {
                "code": status,
                "message": f"API key {SECRET} is not allowed",
                "status": "PERMISSION_DENIED",
            }
        },
    )
    with pytest.raises(UpstreamAuthFailed) as info:
        await provider.chat(chat_request(), context())
    rendered = json.dumps(info.value.to_dict()) + str(info.value)
    assert SECRET not in rendered
    assert "not allowed" not in rendered


async def test_a_refused_request_never_reaches_the_upstream(
    router: respx.Router, provider: GeminiProvider
) -> None:
    route = router.post(GENERATE).respond(200, content=fixture("generate_text.json"))
    request = chat_request(tools=[{"type": "custom", "custom": {"name": "grep"}}])
    with pytest.raises(Exception, match="tools of type 'custom'") as info:
        await provider.chat(request, context())
    assert getattr(info.value, "param", None) == "tools[0].type"
    assert route.call_count == 0
