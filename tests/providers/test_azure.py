"""gateway/providers/azure.py: URLs, headers, Azure-shaped answers, streams and errors.

Replays the Azure OpenAI samples in tests/fixtures/azure through a respx router
injected as the transport (as tests/providers/test_openai.py does), and checks
that the official ``openai`` SDK parses every translated answer and chunk.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
import openai.types as sdk
import openai.types.chat as sdk_chat
import pytest
import respx

from gateway.config import ConfigError, Deployment, ProviderConfig, load_settings
from gateway.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from gateway.providers.azure import AzureProvider
from gateway.providers.base import CallContext
from gateway.providers.registry import check_types, provider_class
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingRequest,
)
from gateway.transport import Upstream, build_upstream

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "azure"
RESOURCE = "https://myres.openai.azure.com"
VERSION = "2024-10-21"
DEPLOYMENT = "gpt4o-prod"
CHAT = f"{RESOURCE}/openai/deployments/{DEPLOYMENT}/chat/completions?api-version={VERSION}"
SECRET = "azure-key-0123456789abcdef0123456789ab"


# ---------------------------------------------------------------- helpers


class Body(httpx.AsyncByteStream):
    """A body that arrives in pieces, the way a socket delivers it."""

    def __init__(self, parts: Iterable[bytes]) -> None:
        self.parts = list(parts)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part


def pieces(data: bytes, size: int = 41) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def sse(data: bytes, size: int = 41) -> httpx.Response:
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=Body(pieces(data, size))
    )


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_mocked=True)


@pytest.fixture
async def upstream(router: respx.Router) -> AsyncIterator[Upstream]:
    config = ProviderConfig(type="azure", base_url=RESOURCE, api_version=VERSION)
    upstream = build_upstream(config, transport=httpx.MockTransport(router.async_handler))
    yield upstream
    await upstream.aclose()


def azure(upstream: Upstream, **fields: Any) -> AzureProvider:
    config = {"type": "azure", "base_url": RESOURCE, "api_version": VERSION, "api_key": SECRET}
    return AzureProvider("az", ProviderConfig.model_validate({**config, **fields}), upstream)


@pytest.fixture
def provider(upstream: Upstream) -> AzureProvider:
    return azure(upstream)


def context(model: str = DEPLOYMENT) -> CallContext:
    deployment = Deployment.model_validate({"provider": "az", "model": model, "timeout": 5})
    return CallContext(request_id="req-azure-1", deployment=deployment)


def chat_request(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], **fields}
    return ChatCompletionRequest.model_validate_json(json.dumps(body))


async def collect(
    provider: AzureProvider, request: ChatCompletionRequest, ctx: CallContext | None = None
) -> list[ChatCompletionChunk]:
    async with provider.stream(request, ctx or context()) as chunks:
        return [c async for c in chunks]


def sdk_answer(answer: ChatCompletion) -> sdk_chat.ChatCompletion:
    """What a client's openai SDK makes of the translated answer."""
    return sdk_chat.ChatCompletion.model_validate(
        json.loads(answer.model_dump_json(exclude_unset=True))
    )


def sdk_chunks(chunks: list[ChatCompletionChunk]) -> list[sdk_chat.ChatCompletionChunk]:
    return [
        sdk_chat.ChatCompletionChunk.model_validate(
            json.loads(c.model_dump_json(exclude_unset=True))
        )
        for c in chunks
    ]


def sent(route: respx.Route) -> httpx.Request:
    return route.calls.last.request


# ---------------------------------------------------------------- URLs and headers


async def test_chat_url_key_header_and_body(router: respx.Router, provider: AzureProvider) -> None:
    route = router.post(CHAT).respond(200, content=fixture("chat.json"))
    request = chat_request(temperature=0.2, data_sources=[{"type": "azure_search"}])
    await provider.chat(request, context())
    request_sent = sent(route)
    assert str(request_sent.url) == CHAT  # the query string kept as it is
    assert request_sent.url.params["api-version"] == VERSION
    headers = request_sent.headers
    assert headers["api-key"] == SECRET
    assert "authorization" not in headers
    assert headers["host"] == "myres.openai.azure.com"
    assert headers["x-request-id"] == "req-azure-1"
    assert headers["content-type"] == "application/json"
    assert json.loads(request_sent.content) == {
        "model": DEPLOYMENT,
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0.2,
        "data_sources": [{"type": "azure_search"}],  # Azure's own extensions pass through
        "stream": False,
    }


async def test_each_deployment_has_its_url_and_host_follows_the_url(
    router: respx.Router, upstream: Upstream
) -> None:
    base = "https://other.openai.azure.com:8443"
    provider = azure(upstream, base_url=base + "/", headers={"x-ms-client": "gw"})
    first = router.post(
        f"{base}/openai/deployments/a-one/chat/completions?api-version={VERSION}"
    ).respond(200, content=fixture("chat.json"))
    second = router.post(
        f"{base}/openai/deployments/b.two_3/chat/completions?api-version={VERSION}"
    ).respond(200, content=fixture("chat.json"))
    await provider.chat(chat_request(), context("a-one"))
    await provider.chat(chat_request(), context("b.two_3"))
    await provider.chat(chat_request(), context("a-one"))
    assert (first.call_count, second.call_count) == (2, 1)
    for route in (first, second):
        assert sent(route).headers["host"] == "other.openai.azure.com:8443"
        assert sent(route).headers["x-ms-client"] == "gw"
    # One endpoint per deployment, built once.
    assert provider.chat_endpoint(context("a-one"), stream=False) is provider.chat_endpoint(
        context("a-one"), stream=True
    )


async def test_a_deployment_name_is_quoted_in_the_path(
    router: respx.Router, provider: AzureProvider
) -> None:
    route = router.post(
        f"{RESOURCE}/openai/deployments/odd%2Fname%20x/chat/completions?api-version={VERSION}"
    ).respond(200, content=fixture("chat.json"))
    await provider.chat(chat_request(), context("odd/name x"))
    assert route.call_count == 1


async def test_entra_token_in_headers_instead_of_a_key(
    router: respx.Router, upstream: Upstream
) -> None:
    config = ProviderConfig(
        type="azure",
        base_url=RESOURCE,
        api_version=VERSION,
        headers={"Authorization": "Bearer entra-token-0123456789"},
    )
    route = router.post(CHAT).respond(200, content=fixture("chat.json"))
    await AzureProvider("az", config, upstream).chat(chat_request(), context())
    assert sent(route).headers["authorization"] == "Bearer entra-token-0123456789"
    assert "api-key" not in sent(route).headers


@pytest.mark.parametrize(
    "base_url",
    [RESOURCE, RESOURCE + "/openai/v1/", RESOURCE + "/openai"],
    ids=["root", "v1", "openai"],
)
async def test_the_v1_api(router: respx.Router, upstream: Upstream, base_url: str) -> None:
    provider = azure(upstream, base_url=base_url, api_version="v1")
    chat = router.post(f"{RESOURCE}/openai/v1/chat/completions").respond(
        200, content=fixture("chat.json")
    )
    embed = router.post(f"{RESOURCE}/openai/v1/embeddings").respond(
        200, content=fixture("embeddings.json")
    )
    await provider.chat(chat_request(), context())
    await provider.embed(EmbeddingRequest.model_validate({"model": "e", "input": "x"}), context())
    for route in (chat, embed):
        assert sent(route).url.query == b""  # no api-version on v1
        assert sent(route).headers["api-key"] == SECRET
        assert json.loads(sent(route).content)["model"] == DEPLOYMENT  # the deployment, in the body
    chunks_route = router.post(f"{RESOURCE}/openai/v1/chat/completions").mock(
        side_effect=lambda request: sse(fixture("chat_stream.sse"))
    )
    await collect(provider, chat_request(stream=True))
    assert json.loads(sent(chunks_route).content)["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("version", "asks_usage"),
    [
        ("2024-10-21", True),
        ("2025-04-01-preview", True),
        ("2024-09-01-preview", True),
        ("2024-08-01-preview", False),
        ("2024-06-01", False),
        ("2023-05-15", False),
    ],
)
async def test_a_stream_asks_for_usage_where_the_version_knows_it(
    router: respx.Router, upstream: Upstream, version: str, asks_usage: bool
) -> None:
    provider = azure(upstream, api_version=version)
    route = router.post(
        f"{RESOURCE}/openai/deployments/{DEPLOYMENT}/chat/completions?api-version={version}"
    ).mock(side_effect=lambda request: sse(fixture("chat_stream.sse")))
    await collect(provider, chat_request(stream=True, user="u-1"))
    body = json.loads(sent(route).content)
    assert body["stream"] is True
    assert body["user"] == "u-1"
    if asks_usage:
        assert body["stream_options"] == {"include_usage": True}
    else:
        assert "stream_options" not in body
    # A client's own stream_options reach the upstream whatever the version: Azure judges them.
    await collect(provider, chat_request(stream=True, stream_options={"include_usage": True}))
    assert json.loads(sent(route).content)["stream_options"] == {"include_usage": True}


async def test_embeddings(router: respx.Router, provider: AzureProvider) -> None:
    route = router.post(
        f"{RESOURCE}/openai/deployments/emb-small/embeddings?api-version={VERSION}"
    ).respond(200, content=fixture("embeddings.json"))
    request = EmbeddingRequest.model_validate(
        {"model": "embedding", "input": ["hello", "world"], "dimensions": 3}
    )
    answer = await provider.embed(request, context("emb-small"))
    assert [e.index for e in answer.data] == [0, 1]
    assert answer.data[1].embedding == [-0.0051224763, 0.017021533, 0.0034106583]
    assert answer.usage.prompt_tokens == 6
    assert sent(route).headers["api-key"] == SECRET
    assert json.loads(sent(route).content) == {
        "model": "emb-small",
        "input": ["hello", "world"],
        "dimensions": 3,
    }
    sdk.CreateEmbeddingResponse.model_validate(
        json.loads(answer.model_dump_json(exclude_unset=True))
    )


# ---------------------------------------------------------------- answers


async def test_answer_with_filter_results_and_cached_tokens(
    router: respx.Router, provider: AzureProvider
) -> None:
    router.post(CHAT).respond(200, content=fixture("chat.json"))
    answer = await provider.chat(chat_request(), context())
    parsed = sdk_answer(answer)
    assert parsed.choices[0].message.content == "The capital of France is Paris."
    assert parsed.choices[0].finish_reason == "stop"
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == (1290, 8)
    assert parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == 1152  # part of prompt_tokens
    dumped = json.loads(answer.model_dump_json(exclude_unset=True))
    assert dumped == json.loads(fixture("chat.json"))  # Azure's extra fields kept, as sent
    assert dumped["prompt_filter_results"][0]["prompt_index"] == 0


async def test_answer_with_parallel_tool_calls(
    router: respx.Router, provider: AzureProvider
) -> None:
    router.post(CHAT).respond(200, content=fixture("chat_tools.json"))
    parsed = sdk_answer(await provider.chat(chat_request(), context()))
    choice = parsed.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name) for c in calls] == [  # type: ignore[union-attr]
        ("call_5nVbGnQpZ2bQ0oVvYp7o1cRt", "get_weather"),
        ("call_Jk3bN4Dq8Wm0LrY6u2sF9xAe", "get_weather"),
    ]
    assert [json.loads(c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        {"city": "Paris"},
        {"city": "Tokyo"},
    ]


async def test_a_filtered_answer_keeps_its_finish_reason(
    router: respx.Router, provider: AzureProvider
) -> None:
    router.post(CHAT).respond(200, content=fixture("chat_filtered.json"))
    parsed = sdk_answer(await provider.chat(chat_request(), context()))
    assert parsed.choices[0].finish_reason == "content_filter"
    assert parsed.choices[0].message.content is None
    extra = parsed.choices[0].model_extra or {}
    assert extra["content_filter_results"]["violence"] == {"filtered": True, "severity": "high"}


# ---------------------------------------------------------------- streams


async def test_stream_drops_the_prompt_event_and_carries_its_results(
    router: respx.Router, provider: AzureProvider
) -> None:
    router.post(CHAT).mock(side_effect=lambda request: sse(fixture("chat_stream.sse")))
    chunks = await collect(provider, chat_request(stream=True))
    parsed = sdk_chunks(chunks)
    # Azure's first event (no id, no choices, "object": "") is not a chunk of its own.
    assert all(c.id == "chatcmpl-AzUqsbM3h8ZkQ0V2xW9nTc4PyR1dE" for c in parsed)
    assert len(parsed) == 12
    first = parsed[0]
    assert first.choices[0].delta.role == "assistant"
    results = (first.model_extra or {})["prompt_filter_results"]
    assert results[0]["content_filter_results"]["jailbreak"] == {
        "filtered": False,
        "detected": False,
    }
    assert all("prompt_filter_results" not in (c.model_extra or {}) for c in parsed[1:])
    text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
    assert text == "Hello! How can I assist you today?"
    assert [c.choices[0].finish_reason for c in parsed[:-1]] == [None] * 10 + ["stop"]
    last = parsed[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        1043,
        10,
        1053,
    )
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 1024


async def test_stream_in_one_byte_reads_with_crlf(
    router: respx.Router, provider: AzureProvider
) -> None:
    wire = fixture("chat_stream.sse").replace(b"\n", b"\r\n")
    router.post(CHAT).mock(side_effect=lambda request: sse(wire, 1))
    chunks = await collect(provider, chat_request(stream=True))
    assert len(chunks) == 12
    assert chunks[-1].usage is not None


async def test_stream_of_parallel_tool_calls_reassembles_into_json(
    router: respx.Router, provider: AzureProvider
) -> None:
    router.post(CHAT).mock(side_effect=lambda request: sse(fixture("chat_tools_stream.sse"), 7))
    parsed = sdk_chunks(await collect(provider, chat_request(stream=True)))
    calls: dict[int, dict[str, str]] = {}
    for chunk in parsed:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += call.id or ""
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
    assert [calls[i]["id"] for i in sorted(calls)] == [
        "call_5nVbGnQpZ2bQ0oVvYp7o1cRt",
        "call_Jk3bN4Dq8Wm0LrY6u2sF9xAe",
    ]
    assert [json.loads(calls[i]["arguments"]) for i in sorted(calls)] == [
        {"city": "Paris"},
        {"city": "Tokyo"},
    ]
    assert {calls[i]["name"] for i in calls} == {"get_weather"}
    finishes = [c.choices[0].finish_reason for c in parsed if c.choices]
    assert finishes[-1] == "tool_calls"
    assert parsed[-1].choices == []
    assert parsed[-1].usage is not None
    assert parsed[-1].usage.total_tokens == 129


async def test_the_asynchronous_filter_ends_the_choice_visibly(
    router: respx.Router, provider: AzureProvider
) -> None:
    router.post(CHAT).mock(side_effect=lambda request: sse(fixture("stream_async_filtered.sse")))
    chunks = await collect(provider, chat_request(stream=True))
    parsed = sdk_chunks(chunks)
    # role, "Hey", " Jude", ",", " don't", and the filter's finish: the annotations
    # between them are not chunks.
    assert [c.choices[0].delta.content for c in parsed] == [
        None,
        "Hey",
        " Jude",
        ",",
        " don't",
        None,
    ]
    last = parsed[-1]
    assert last.choices[0].finish_reason == "content_filter"
    assert last.id == "chatcmpl-8JCbt5d4luUIhYCI7YH4dQK7hnHx2"  # the stream's, not Azure's ""
    assert (last.created, last.model) == (1699587397, "gpt-35-turbo")
    assert last.object == "chat.completion.chunk"
    extra = last.choices[0].model_extra or {}
    assert extra["content_filter_results"] == {
        "protected_material_text": {"detected": True, "filtered": True}
    }
    assert "content_filter_offsets" in extra
    assert json.loads(chunks[-1].model_dump_json(exclude_unset=True))["choices"][0]["delta"] == {}


async def test_a_filter_finish_without_done_is_a_complete_stream(
    router: respx.Router, provider: AzureProvider
) -> None:
    wire = fixture("stream_async_filtered.sse").replace(b"data: [DONE]\n\n", b"")
    router.post(CHAT).mock(side_effect=lambda request: sse(wire))
    chunks = await collect(provider, chat_request(stream=True))
    assert chunks[-1].choices[0].finish_reason == "content_filter"


async def test_annotations_after_the_finish_are_dropped(
    router: respx.Router, provider: AzureProvider
) -> None:
    router.post(CHAT).mock(side_effect=lambda request: sse(fixture("stream_async_passed.sse")))
    parsed = sdk_chunks(await collect(provider, chat_request(stream=True)))
    assert "".join(c.choices[0].delta.content or "" for c in parsed) == "Color is light"
    assert [c.choices[0].finish_reason for c in parsed] == [None] * 4 + ["stop"]
    # The older name of the prompt's results rides on the first chunk too.
    assert "prompt_annotations" in (parsed[0].model_extra or {})


async def test_a_prompt_event_alone_is_a_cut_stream(
    router: respx.Router, provider: AzureProvider
) -> None:
    wire = fixture("chat_stream.sse").split(b"\n\n")[0] + b"\n\n"
    router.post(CHAT).mock(side_effect=lambda request: sse(wire))
    with pytest.raises(UpstreamUnavailable) as info:
        await collect(provider, chat_request(stream=True))
    assert info.value.reason == "stream_cut"


@pytest.mark.parametrize(
    "bad",
    [
        b'data: {"error": {"code": "500", "message": "The server had an error"}}\n\n',
        b'data: {"object": "", "choices": "nope"}\n\n',
        b'data: {"object": "something", "choices": [{"index": 0}]}\n\n',
        b"data: not json\n\n",
    ],
    ids=["error-event", "bad-choices", "other-object", "not-json"],
)
async def test_what_is_not_an_annotation_still_fails(
    router: respx.Router, provider: AzureProvider, bad: bytes
) -> None:
    head = fixture("chat_stream.sse").split(b"\n\n")
    wire = b"\n\n".join(head[:3]) + b"\n\n" + bad
    router.post(CHAT).mock(side_effect=lambda request: sse(wire))
    got: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamUnavailable) as info:
        async with provider.stream(chat_request(stream=True), context()) as chunks:
            async for chunk in chunks:
                got.append(chunk)
    assert len(got) == 2
    assert info.value.reason in ("error_event", "malformed")


# ---------------------------------------------------------------- errors


def respond(router: respx.Router, status: int, body: bytes, headers: dict[str, str] | None = None):
    router.post(CHAT).mock(
        side_effect=lambda request: httpx.Response(
            status, headers=headers or {}, stream=Body(pieces(body))
        )
    )


async def call(provider: AzureProvider, streaming: bool) -> None:
    if streaming:
        await collect(provider, chat_request(stream=True))
    else:
        await provider.chat(chat_request(), context())


both = pytest.mark.parametrize("streaming", [False, True], ids=["chat", "stream"])


@both
async def test_content_filter_refusal_is_a_400_naming_the_categories(
    router: respx.Router, provider: AzureProvider, streaming: bool
) -> None:
    respond(router, 400, fixture("error_content_filter.json"))
    with pytest.raises(UpstreamRejected) as info:
        await call(provider, streaming)
    error = info.value
    assert error.status == 400
    assert (error.code, error.param, error.type) == (
        "content_filter",
        "prompt",
        "invalid_request_error",
    )
    assert error.message.startswith(
        "Azure's content filter refused the request (jailbreak, violence (medium)): "
        "The response was filtered due to the prompt"
    )
    assert not error.retryable


@both
async def test_a_filtered_answer_sent_as_a_400_is_a_content_filter_refusal(
    router: respx.Router, provider: AzureProvider, streaming: bool
) -> None:
    respond(router, 400, fixture("error_foundry_filtered.json"))
    with pytest.raises(UpstreamRejected) as info:
        await call(provider, streaming)
    assert (info.value.status, info.value.code) == (400, "content_filter")
    assert info.value.message == (
        "Azure's content filter refused the request: Response content blocked by label 'Jailbreak'."
    )


@both
async def test_deployment_not_found_names_the_deployment(
    router: respx.Router, provider: AzureProvider, streaming: bool
) -> None:
    respond(router, 404, fixture("error_deployment_not_found.json"))
    with pytest.raises(UpstreamUnavailable) as info:
        await call(provider, streaming)
    error = info.value
    assert error.status == 502
    assert error.message == (
        "Azure has no deployment 'gpt4o-prod' on the provider's resource "
        "(404 DeploymentNotFound): a deployment's model must be its Azure deployment name"
    )
    assert "/v1" not in error.message
    assert (error.reason, error.upstream_status) == ("upstream_status", 404)


async def test_deployment_not_found_on_v1_names_the_deployment_too(
    router: respx.Router, upstream: Upstream
) -> None:
    provider = azure(upstream, api_version="v1")
    router.post(f"{RESOURCE}/openai/v1/chat/completions").respond(
        404, content=fixture("error_deployment_not_found.json")
    )
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.chat(chat_request(), context("not-there"))
    assert "'not-there'" in info.value.message


@pytest.mark.parametrize(
    "body", [fixture("error_resource_not_found.json"), b"", b"<html>Not Found</html>"]
)
async def test_a_missing_resource_or_version_points_at_the_config(
    router: respx.Router, provider: AzureProvider, body: bytes
) -> None:
    respond(router, 404, body)
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.chat(chat_request(), context())
    assert info.value.status == 502
    assert info.value.message == (
        "the upstream answered 404 for POST /openai/deployments/gpt4o-prod/chat/completions: "
        "are the provider's base_url (the resource endpoint) and api_version (2024-10-21) right?"
    )


@both
async def test_rate_limit_keeps_the_wait(
    router: respx.Router, provider: AzureProvider, streaming: bool
) -> None:
    respond(
        router,
        429,
        fixture("error_rate_limit.json"),
        {"retry-after": "6", "retry-after-ms": "5500", "x-ratelimit-remaining-tokens": "0"},
    )
    with pytest.raises(UpstreamRateLimited) as info:
        await call(provider, streaming)
    assert info.value.status == 429
    assert info.value.retry_after == 5.5  # retry-after-ms wins
    assert info.value.response_headers() == {"retry-after": "6"}
    assert "S0 pricing tier" not in info.value.message
    assert info.value.retryable


async def test_rate_limit_without_headers_reads_the_wait_from_the_message(
    router: respx.Router, provider: AzureProvider
) -> None:
    respond(router, 429, fixture("error_rate_limit.json"))
    with pytest.raises(UpstreamRateLimited) as info:
        await provider.chat(chat_request(), context())
    assert info.value.retry_after == 6.0


@both
async def test_context_too_long(
    router: respx.Router, provider: AzureProvider, streaming: bool
) -> None:
    respond(router, 400, fixture("error_context_length.json"))
    with pytest.raises(UpstreamRejected) as info:
        await call(provider, streaming)
    assert (info.value.status, info.value.code, info.value.param) == (
        400,
        "context_length_exceeded",
        "messages",
    )
    assert info.value.message.startswith("This model's maximum context length is 128000 tokens.")


@both
@pytest.mark.parametrize("status", [401, 403])
async def test_a_bad_key_is_the_gateways_problem(
    router: respx.Router, provider: AzureProvider, streaming: bool, status: int
) -> None:
    respond(router, status, fixture("error_unauthorized.json"))
    with pytest.raises(UpstreamAuthFailed) as info:
        await call(provider, streaming)
    assert info.value.status == 502
    assert info.value.code == "upstream_auth_failed"
    assert "subscription key" not in info.value.message


@both
@pytest.mark.parametrize("status", [500, 503])
async def test_overloaded_is_retryable(
    router: respx.Router, provider: AzureProvider, streaming: bool, status: int
) -> None:
    respond(router, status, fixture("error_server.json"))
    with pytest.raises(UpstreamUnavailable) as info:
        await call(provider, streaming)
    assert info.value.status == 502
    assert info.value.retryable
    assert info.value.message == f"the upstream failed with status {status}"


@pytest.mark.parametrize("code", ["content_filter", "invalid_value"])
async def test_a_relayed_message_never_carries_the_key(
    router: respx.Router, provider: AzureProvider, code: str
) -> None:
    body = {"error": {"code": code, "message": f"bad header api-key: {SECRET}", "param": None}}
    respond(router, 400, json.dumps(body).encode())
    with pytest.raises(UpstreamError) as info:
        await provider.chat(chat_request(), context())
    shown = json.dumps(info.value.to_dict()) + str(info.value)
    assert SECRET not in shown
    assert SECRET[:12] not in shown
    assert "[redacted]" in info.value.message


# ---------------------------------------------------------------- config


def write(tmp_path: Path, provider: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"providers:\n  az: {provider}\n"
        "models: {gpt-4o: {deployments: [{provider: az, model: gpt4o-prod}]}}\n"
    )
    return path


@pytest.mark.parametrize(
    ("provider", "missing"),
    [
        ("{type: azure, base_url: 'https://r.openai.azure.com', api_key: k}", ["api_version"]),
        (
            "{type: azure, base_url: 'https://r.openai.azure.com', api_version: ''}",
            ["api_version"],
        ),
        ("{type: azure, api_version: '2024-10-21'}", ["base_url"]),
        ("{type: azure}", ["base_url", "api_version"]),
    ],
)
def test_a_config_without_what_azure_needs_is_refused(
    tmp_path: Path, provider: str, missing: list[str]
) -> None:
    path = write(tmp_path, provider)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value).splitlines() == [
        f"{path}: providers.az.{field}: required for type azure" for field in missing
    ]


def test_a_complete_azure_config_loads_and_passes_the_registry(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "{type: azure, base_url: 'https://r.openai.azure.com', api_version: v1, api_key: k}",
    )
    check_types(load_settings(path, env={}))
    assert provider_class("azure") is AzureProvider
    assert provider_class("azure").needs_http


def test_the_adapter_refuses_to_be_built_without_them(upstream: Upstream) -> None:
    with pytest.raises(ConfigError):
        AzureProvider("az", ProviderConfig(type="azure", base_url=RESOURCE), upstream)


async def test_a_finishing_choice_without_a_delta_becomes_a_chunk(
    router: respx.Router, provider: AzureProvider
) -> None:
    head = fixture("chat_stream.sse").split(b"\n\n")
    filtered = {
        "choices": [
            {
                "content_filter_results": {"sexual": {"filtered": True, "severity": "medium"}},
                "finish_reason": "content_filter",
                "index": 0,
            }
        ],
        "created": 1741569960,
        "id": "chatcmpl-own-id",
        "model": "gpt-4o-2024-11-20",
        "object": "chat.completion.chunk",
    }
    wire = b"\n\n".join(head[:4]) + b"\n\ndata: " + json.dumps(filtered).encode() + b"\n\n"
    router.post(CHAT).mock(side_effect=lambda request: sse(wire))
    parsed = sdk_chunks(await collect(provider, chat_request(stream=True)))
    assert [c.choices[0].delta.content for c in parsed] == ["", "Hello", "!", None]
    last = parsed[-1]
    assert (last.id, last.created) == ("chatcmpl-own-id", 1741569960)
    assert last.choices[0].finish_reason == "content_filter"
