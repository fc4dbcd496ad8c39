"""OpenAI-shaped error bodies -> gateway errors: gateway/providers/openai.py ``error_from_response``."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from gateway.errors import UpstreamRateLimited, UpstreamRejected, UpstreamUnavailable
from gateway.providers.failures import MESSAGE_LIMIT
from gateway.providers.openai import error_from_response
from gateway.providers.redact import Redactor

KEY = "sk-upstream-0123456789abcdefghij"
NO_SECRETS = Redactor([])


def _error(message: str, **fields: object) -> bytes:
    return json.dumps({"error": {"message": message, **fields}}).encode()


def test_rejection_relays_the_cleaned_message_and_fields() -> None:
    body = _error(
        f"bad key {KEY}", type=f"t-{KEY}", code="context_length_exceeded", param="messages"
    )
    error = error_from_response(400, body, httpx.Headers(), Redactor([KEY]))
    assert isinstance(error, UpstreamRejected)
    assert error.message == "bad key [redacted]"
    assert error.type == "t-[redacted]"
    assert (error.code, error.param) == ("context_length_exceeded", "messages")


def test_a_long_rejection_is_cut_after_it_is_cleaned() -> None:
    body = _error("x" * (MESSAGE_LIMIT - 10) + KEY + "y" * 1000)
    error = error_from_response(400, body, httpx.Headers(), Redactor([KEY]))
    assert len(error.message) <= MESSAGE_LIMIT + len("[redacted]") + 3
    assert KEY[:8] not in error.message
    assert error.message.endswith("[redacted]...")


def test_a_rejection_without_json_relays_the_cleaned_text() -> None:
    body = b"<html>" + b"x" * 150 + KEY.encode() + b"</html>"
    error = error_from_response(413, body, httpx.Headers(), Redactor([KEY]))
    assert error.status == 413
    assert KEY[:8] not in error.message
    assert "[redacted]" in error.message


@pytest.mark.parametrize("status", [500, 502, 503, 529, 429, 409])
def test_a_failure_status_never_relays_the_upstream_text(status: int) -> None:
    body = _error(f"internal: key={KEY} headers={{'authorization': 'Bearer {KEY}'}}")
    error = error_from_response(status, body, httpx.Headers(), Redactor([KEY]))
    assert "internal" not in error.message
    assert (error.reason, error.upstream_status) == ("upstream_status", status)


@pytest.mark.parametrize(
    "body",
    [
        _error("Invalid URL (POST /chat/completions)", type="invalid_request_error"),
        _error("no route POST /chat/completions", type="invalid_request_error"),
        b'{"detail": "Not Found"}',
        b"<html><body>404 page not found</body></html>",
        b"404 page not found",
        b"",
        b'{"error": "Unexpected endpoint or method. (POST /chat/completions)"}',
    ],
    ids=["openai", "mock-upstream", "starlette", "html", "go", "empty", "lm-studio"],
)
def test_a_404_that_is_not_about_a_model_suggests_the_base_url(body: bytes) -> None:
    error = error_from_response(
        404, body, httpx.Headers(), NO_SECRETS, route="POST /chat/completions"
    )
    assert type(error) is UpstreamUnavailable
    assert error.status == 502
    assert error.code == "upstream_error"
    assert error.message == (
        "the upstream answered 404 for POST /chat/completions: "
        "is the provider's base_url missing '/v1'?"
    )
    assert (error.reason, error.upstream_status) == ("upstream_status", 404)


def test_a_404_on_a_v1_path_does_not_blame_v1() -> None:
    error = error_from_response(
        404, b"", httpx.Headers(), NO_SECRETS, route="POST /v1/chat/completions"
    )
    assert error.status == 502
    assert "missing '/v1'" not in error.message
    assert "base_url" in error.message


@pytest.mark.parametrize(
    "body",
    [
        _error("The model `gpt-9` does not exist", code="model_not_found"),
        _error("not found", code="model_not_found"),
        b'{"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError"}',
        b'{"error": "model \\"llama9\\" not found, try pulling it first"}',
        _error("mock failure 404", type="invalid_request_error"),
    ],
    ids=["openai", "code-only", "vllm", "ollama", "other-error-object"],
)
def test_a_404_about_the_request_is_relayed(body: bytes) -> None:
    error = error_from_response(
        404, body, httpx.Headers(), NO_SECRETS, route="POST /chat/completions"
    )
    assert isinstance(error, UpstreamRejected)
    assert error.status == 404


@pytest.mark.parametrize(
    "body", [b"[" * 60_000, b"\xff\xfe\x00garbage", b'{"error": {"message": ["a", 1]}}']
)
def test_any_body_maps_to_an_error(body: bytes) -> None:
    error = error_from_response(400, body, httpx.Headers(), NO_SECRETS)
    assert isinstance(error, UpstreamRejected)
    assert len(error.message) <= MESSAGE_LIMIT + 3


async def test_parse_is_cheap_enough_for_a_huge_body() -> None:
    # An error path, but a 64 KiB echo must not stall the loop.
    body = _error((KEY + " ") * 2000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    error = error_from_response(400, body, httpx.Headers(), Redactor([KEY]))
    assert loop.time() - started < 2.0
    assert KEY[:8] not in error.message


def test_a_rate_limit_keeps_the_upstream_wait() -> None:
    error = error_from_response(
        429,
        b'{"error": {"message": "slow down", "type": "requests"}}',
        httpx.Headers({"retry-after-ms": "1500"}),
        NO_SECRETS,
    )
    assert isinstance(error, UpstreamRateLimited)
    assert error.retry_after == 1.5
    assert "slow down" not in error.message
