"""gateway/ingress/: the OpenAI codec's bytes, and every answer written by the path's codec.

The codec alone first (envelope, frames, chunks, rate-limit headers), then the
request-context middleware and the error handlers around a small app, with a
second codec of the test's own on a path of its own: what each answer looks
like follows the path, for the refusals made before any route runs (413, 500,
FastAPI's 400 and 404) as for the errors a route raises.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.responses import Response

from gateway.api.handlers import install_error_handlers
from gateway.api.middleware import RequestContextMiddleware
from gateway.errors import GatewayError, QuotaExceeded, RateLimited, UpstreamTimeout
from gateway.ingress import OPENAI, SCOPE_KEY, Codec, codec_for
from gateway.ingress.base import ChunkEncoder, RawHeaders
from gateway.ingress.openai import _reset, duration
from gateway.limits.base import LimitsState
from gateway.observability.access import AccessLog
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingResponse,
)
from tests.stubs import stub_live

# ---------------------------------------------------------------- the OpenAI codec


def test_the_error_envelope_and_its_response() -> None:
    error = RateLimited("Slow down.", retry_after=1.5)
    body = json.loads(OPENAI.error_body(error))
    assert body == {
        "error": {
            "message": "Slow down.",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    response = OPENAI.error_response(error, {"connection": "close"})
    assert response.status_code == 429
    assert response.media_type == "application/json"
    assert json.loads(response.body) == body
    assert response.headers["retry-after"] == "2"
    assert response.headers["connection"] == "close"
    assert OPENAI.error_response(QuotaExceeded("Gone.")).headers["x-should-retry"] == "false"


def test_the_stream_frames() -> None:
    error = UpstreamTimeout("the upstream timed out")
    frame = OPENAI.error_frame(error)
    assert frame.startswith(b"data: ")
    assert frame.endswith(b"\n\n")
    assert json.loads(frame[len(b"data: ") :]) == json.loads(OPENAI.error_body(error))
    assert OPENAI.done_frame == b"data: [DONE]\n\n"


def _chunk(**fields: Any) -> ChatCompletionChunk:
    # As an upstream's chunk arrives: parsed, so only what it sent is set.
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return ChatCompletionChunk.model_validate_json(json.dumps({**base, **fields}))


def _request(**fields: Any) -> ChatCompletionRequest:
    messages = [{"role": "user", "content": "hi"}]
    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages, **fields})


TEXT = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}
USAGE = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}


def _data(frame: bytes | None) -> Any:
    assert frame is not None
    assert frame.startswith(b"data: ")
    assert frame.endswith(b"\n\n")
    return json.loads(frame[len(b"data: ") :])


def test_chunks_for_a_client_that_asked_for_usage() -> None:
    encode = OPENAI.chunk_encoder(_request(stream=True, stream_options={"include_usage": True}))
    assert _data(encode(_chunk(**TEXT)))["choices"][0]["delta"] == {"content": "Hi"}
    usage_only = _data(encode(_chunk(choices=[], usage=USAGE)))
    assert usage_only["choices"] == []
    assert usage_only["usage"] == USAGE


def test_chunks_for_a_client_that_did_not_ask_for_usage() -> None:
    # The gateway asks every upstream for usage to count tokens; the client never sees it.
    encode = OPENAI.chunk_encoder(_request(stream=True))
    assert encode(_chunk(choices=[], usage=USAGE)) is None
    last = _data(encode(_chunk(**TEXT, usage=USAGE)))
    assert "usage" not in last
    assert last["choices"][0]["delta"] == {"content": "Hi"}


def test_answers_are_serialised_as_the_upstream_sent_them() -> None:
    answer = ChatCompletion.model_validate_json(
        json.dumps(
            {
                "id": "a1",
                "created": 1,
                "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}],
                "system_fingerprint": "fp",
            }
        )
    )
    body = json.loads(OPENAI.completion(answer))
    assert body["object"] == "chat.completion"
    assert body["system_fingerprint"] == "fp"
    embedded = EmbeddingResponse.model_validate_json(
        json.dumps({"data": [{"index": 0, "embedding": [0.5]}], "model": "e"})
    )
    assert json.loads(OPENAI.embeddings(embedded))["data"][0]["embedding"] == [0.5]


def _headers(state: LimitsState) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in OPENAI.rate_headers(state)}


def test_rate_limit_headers_from_the_limits_state() -> None:
    assert _headers(LimitsState(60, 1, 59_000.0, 1000, 400, 250.0)) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "59s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "600",
        "x-ratelimit-reset-tokens": "250ms",
    }


def test_rate_limit_headers_only_for_the_limits_a_key_has() -> None:
    assert set(_headers(LimitsState(None, 0, 0.0, 1000, 10, 5.0))) == {
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    }
    assert _headers(LimitsState(None, 0, 0.0, None, 0, 0.0)) == {}


def test_remaining_never_goes_below_zero() -> None:
    # A settle may report more tokens than were reserved: the window holds more than the limit.
    headers = _headers(LimitsState(2, 3, 1.0, 100, 130, 1.0))
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-remaining-tokens"] == "0"


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0s"), (-5, "0s"), (0.2, "1ms"), (20, "20ms"), (999.1, "1000ms"), (1000, "1s"),
     (59_001, "1m0s"), (360_000, "6m0s"), (61_500, "1m2s")],
)  # fmt: skip
def test_reset_durations_in_openais_form(ms: float, text: str) -> None:
    assert duration(ms) == text


def test_the_headers_reset_is_the_duration_whichever_one_came_first() -> None:
    # Kept per whole ms below a second and per whole second above: each value lands
    # on the key of the one ``duration`` text it has, edges and float rounding included.
    rnd = random.Random(3)
    values = [0, -1, 0.4, 1, 999, 999.0001, 999.9999999999999, 1000, 1000.0000000000001,
              1000.5, 1999.999, 2000, 2000.0000001, 59_999.9, 60_000, 60_000.1, 3_600_000]  # fmt: skip
    values += [rnd.uniform(-5, 2_000) for _ in range(3_000)]
    values += [rnd.uniform(0, 120_000) for _ in range(3_000)]
    for ms in values + values[::-1]:
        assert _reset(ms) == duration(ms).encode(), ms
    state = LimitsState(60, 1, 999.5, 1000, 400, 1000.0)
    assert _headers(state)["x-ratelimit-reset-requests"] == "1000ms"
    assert _headers(state)["x-ratelimit-reset-tokens"] == "1s"


def test_paths_no_other_ingress_claims_speak_openai() -> None:
    for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/models", "/admin/keys", "/x"):
        assert codec_for(path) is OPENAI


# ---------------------------------------------------------------- the codec follows the path


class PlainCodec:
    """Another ingress's format, as Anthropic's will be: its envelope, its headers."""

    name = "plain"
    done_frame = None

    def error_body(self, error: GatewayError) -> bytes:
        return f"{error.status} {error.type}: {error.message}".encode()

    def error_response(
        self, error: GatewayError, headers: dict[str, str] | None = None
    ) -> Response:
        return Response(
            self.error_body(error),
            status_code=error.status,
            headers={**(headers or {}), **error.response_headers()},
            media_type="text/plain",
        )

    def error_frame(self, error: GatewayError) -> bytes:
        return b"event: error\ndata: " + self.error_body(error) + b"\n\n"

    def completion(self, answer: ChatCompletion) -> bytes:
        return b""

    def chunk_encoder(self, request: ChatCompletionRequest, prompt_tokens: int = 0) -> ChunkEncoder:
        return lambda chunk: None

    def rate_headers(self, state: LimitsState) -> RawHeaders:
        left = (state.rpm_limit or 0) - state.rpm_used
        return [(b"plain-ratelimit-requests-remaining", b"%d" % left)]


PLAIN: Codec = PlainCodec()


def _ingress(path: str) -> Codec:
    return PLAIN if path.startswith("/plain/") else OPENAI


def _app() -> Any:
    app = FastAPI()
    install_error_handlers(app)

    async def refused(request: Request) -> Response:
        assert request.scope[SCOPE_KEY] is _ingress(request.url.path)
        # As admission does: where the key stands goes on the record, then the refusal.
        request.scope["gateway.access"].limits = LimitsState(10, 10, 1500.0, None, 0, 0.0)
        raise RateLimited("Slow down.", retry_after=2)

    async def typed(n: int) -> dict[str, int]:
        return {"n": n}

    async def bug() -> None:
        raise RuntimeError("a bug")

    for prefix in ("/plain", "/v1"):
        app.add_api_route(f"{prefix}/refused", refused, methods=["POST"])
        app.add_api_route(f"{prefix}/typed", typed, methods=["POST"])
        app.add_api_route(f"{prefix}/bug", bug, methods=["POST"])
    # Where create_app puts it: inside the outermost error layer, around everything else.
    app.add_middleware(
        RequestContextMiddleware,
        live=stub_live(100),
        observer=AccessLog(io.StringIO()),
        ingress=_ingress,
    )
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield client


async def test_a_routes_error_and_its_rate_limit_headers_follow_the_path(
    client: httpx.AsyncClient,
) -> None:
    plain = await client.post("/plain/refused")
    assert plain.status_code == 429
    assert plain.text == "429 rate_limit_error: Slow down."
    assert plain.headers["plain-ratelimit-requests-remaining"] == "0"
    assert plain.headers["retry-after"] == "2"
    assert "x-ratelimit-limit-requests" not in plain.headers

    openai = await client.post("/v1/refused")
    assert openai.status_code == 429
    assert openai.json()["error"]["code"] == "rate_limit_exceeded"
    assert openai.headers["x-ratelimit-remaining-requests"] == "0"
    assert openai.headers["x-ratelimit-reset-requests"] == "2s"
    assert "plain-ratelimit-requests-remaining" not in openai.headers


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "text"),
    [
        ("POST", "/plain/typed?n=seven", b"", 400, "400 invalid_request_error: Invalid value"),
        ("GET", "/plain/nowhere", b"", 404, "404 invalid_request_error: Unknown request URL"),
        ("POST", "/plain/refused", b"x" * 101, 413, "413 invalid_request_error: The request body"),
        ("POST", "/plain/bug", b"", 500, "500 api_error: The gateway had an internal error."),
    ],
    ids=["fastapi-400", "unknown-route-404", "middleware-413", "middleware-500"],
)
async def test_refusals_before_any_route_runs_follow_the_path(
    client: httpx.AsyncClient, method: str, path: str, content: bytes, status: int, text: str
) -> None:
    plain = await client.request(method, path, content=content)
    assert plain.status_code == status
    assert plain.headers["content-type"].startswith("text/plain")
    assert plain.text.startswith(text)
    assert plain.headers["x-request-id"]

    openai = await client.request(method, path.replace("/plain/", "/v1/"), content=content)
    assert openai.status_code == status
    assert set(openai.json()["error"]) == {"message", "type", "param", "code"}
