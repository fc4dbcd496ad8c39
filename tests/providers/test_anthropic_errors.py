"""Anthropic's error answers -> the gateway's typed errors (gateway/providers/anthropic/errors.py).

The recorded bodies of tests/fixtures/anthropic/error_*.json, answered with
their documented statuses, to a plain and a streamed call alike.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx

from gateway.errors import (
    Reason,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.anthropic.errors import error_from_response
from gateway.providers.redact import Redactor
from tests.providers.test_anthropic import (
    SECRET,
    Body,
    chat_request,
    collect,
    context,
    fixture,
    pieces,
    provider,  # noqa: F401  (fixtures)
    router,  # noqa: F401
    upstream,  # noqa: F401
)

ROUTE = "POST /v1/messages"


def relayed(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"message": message, "type": type_, "param": None, "code": code}


def gateway_error(message: str, code: str, type_: str = "api_error") -> dict[str, Any]:
    return {"message": message, "type": type_, "param": None, "code": code}


@pytest.mark.parametrize("streaming", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize(
    ("status", "name", "headers", "kind", "gateway_status", "error_object"),
    [
        pytest.param(
            400,
            "error_400.json",
            {},
            UpstreamRejected,
            400,
            relayed(
                "messages.1.content.0.tool_result: unexpected `tool_use_id` found in "
                "`tool_result` blocks: toolu_01. Each `tool_result` block must have a "
                "corresponding `tool_use` block in the previous message.",
                "invalid_request_error",
            ),
            id="400",
        ),
        pytest.param(
            400,
            "error_400_prompt_too_long.json",
            {},
            UpstreamRejected,
            400,
            relayed(
                "prompt is too long: 208310 tokens > 200000 maximum",
                "invalid_request_error",
                "context_length_exceeded",
            ),
            id="400-prompt-too-long",
        ),
        pytest.param(
            400,
            "error_400_context_limit.json",
            {},
            UpstreamRejected,
            400,
            relayed(
                "input length and `max_tokens` exceed context limit: 188240 + 21333 > 200000, "
                "decrease input length or `max_tokens` and try again",
                "invalid_request_error",
                "context_length_exceeded",
            ),
            id="400-context-limit",
        ),
        pytest.param(
            400,
            "error_400_content_filter.json",
            {},
            UpstreamRejected,
            400,
            relayed(
                "Output blocked by content filtering policy",
                "invalid_request_error",
                "content_filter",
            ),
            id="400-content-filter",
        ),
        pytest.param(
            401,
            "error_401.json",
            {},
            UpstreamAuthFailed,
            502,
            gateway_error(
                "the upstream refused the gateway's credentials (401)", "upstream_auth_failed"
            ),
            id="401",
        ),
        pytest.param(
            402,
            "error_402.json",
            {},
            UpstreamUnavailable,
            502,
            gateway_error("the upstream failed with status 402", "upstream_error"),
            id="402",
        ),
        pytest.param(
            403,
            "error_403.json",
            {},
            UpstreamAuthFailed,
            502,
            gateway_error(
                "the upstream refused the gateway's credentials (403)", "upstream_auth_failed"
            ),
            id="403",
        ),
        pytest.param(
            404,
            "error_404.json",
            {},
            UpstreamRejected,
            404,
            relayed("model: claude-sonnet-9", "not_found_error"),
            id="404-model",
        ),
        pytest.param(
            413,
            "error_413.json",
            {},
            UpstreamRejected,
            413,
            relayed("Request exceeds the maximum allowed number of bytes.", "request_too_large"),
            id="413",
        ),
        pytest.param(
            429,
            "error_429.json",
            {"retry-after": "7"},
            UpstreamRateLimited,
            429,
            gateway_error(
                "the upstream is rate limiting the gateway (429)",
                "upstream_rate_limited",
                "rate_limit_error",
            ),
            id="429",
        ),
        pytest.param(
            500,
            "error_500.json",
            {},
            UpstreamUnavailable,
            502,
            gateway_error("the upstream failed with status 500", "upstream_error"),
            id="500",
        ),
        pytest.param(
            529,
            "error_529.json",
            {},
            UpstreamUnavailable,
            502,
            gateway_error("the upstream failed with status 529", "upstream_error"),
            id="529-overloaded",
        ),
    ],
)
async def test_recorded_error_answers(
    router: respx.Router,  # noqa: F811
    provider: AnthropicProvider,  # noqa: F811
    streaming: bool,
    status: int,
    name: str,
    headers: dict[str, str],
    kind: type[UpstreamError],
    gateway_status: int,
    error_object: dict[str, Any],
) -> None:
    data = fixture(name)
    router.post("/v1/messages").mock(
        side_effect=lambda request: httpx.Response(
            status,
            headers={"content-type": "application/json", **headers},
            stream=Body(pieces(data)),
        )
    )
    with pytest.raises(UpstreamError) as info:
        if streaming:
            await collect(provider, chat_request(stream=True))
        else:
            await provider.chat(chat_request(), context())
    error = info.value
    assert type(error) is kind
    assert error.status == gateway_status
    assert error.to_dict() == error_object
    assert error.upstream_status == status
    assert error.reason == Reason.UPSTREAM_STATUS
    assert error.retryable == (kind in (UpstreamRateLimited, UpstreamUnavailable))
    if status == 429:
        assert error.retry_after == 7.0
        assert error.response_headers() == {"retry-after": "7"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"type": "error", "error": {"type": "not_found_error", "message": "Not Found"}}',
        b"<html><body>404 page not found</body></html>",
        b"",
    ],
    ids=["anthropic-not-found", "html", "empty"],
)
def test_a_404_not_about_a_model_names_the_base_url(body: bytes) -> None:
    error = error_from_response(404, body, httpx.Headers(), Redactor([]), route=ROUTE)
    assert type(error) is UpstreamUnavailable
    assert error.status == 502
    assert error.message == (
        "the upstream answered 404 for POST /v1/messages: is the provider's base_url the "
        "bare origin (https://api.anthropic.com, without /v1)?"
    )
    assert error.upstream_status == 404


@pytest.mark.parametrize("status", [401, 403, 500, 529])
async def test_no_secret_reaches_the_client(
    router: respx.Router,  # noqa: F811
    provider: AnthropicProvider,  # noqa: F811
    status: int,
) -> None:
    body = {"type": "error", "error": {"type": "authentication_error", "message": f"bad {SECRET}"}}
    router.post("/v1/messages").respond(status, json=body)
    with pytest.raises(UpstreamError) as info:
        await provider.chat(chat_request(), context())
    rendered = json.dumps(info.value.to_dict()) + str(info.value)
    assert SECRET not in rendered
    assert "bad" not in rendered


async def test_a_relayed_message_is_cleaned_of_the_provider_key(
    router: respx.Router,  # noqa: F811
    provider: AnthropicProvider,  # noqa: F811
) -> None:
    body = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": f"x-api-key {SECRET} is malformed"},
    }
    router.post("/v1/messages").respond(400, json=body)
    with pytest.raises(UpstreamRejected) as info:
        await provider.chat(chat_request(), context())
    assert info.value.message == "x-api-key [redacted] is malformed"


def test_a_400_without_a_body_shows_its_status() -> None:
    error = error_from_response(400, b"", httpx.Headers(), Redactor([]), route=ROUTE)
    assert isinstance(error, UpstreamRejected)
    assert error.message == "HTTP 400"
    assert error.code is None
