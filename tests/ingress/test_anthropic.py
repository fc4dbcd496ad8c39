"""gateway/ingress/anthropic/ and gateway/schemas/anthropic.py: the Messages ingress, pure.

The request model and its refusals, the translation to the canonical chat
request, the client's own body with only ``model`` replaced, the error
envelope and rate-limit headers, the answer, and the stream encoder, whose
events are fed to the official SDK's own accumulator.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from pydantic import ValidationError

from gateway.errors import (
    GatewayError,
    InvalidAPIKey,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    QuotaExceeded,
    RateLimited,
    RequestTooLarge,
    StoreUnavailable,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.ingress import ANTHROPIC, OPENAI, codec_for
from gateway.ingress.anthropic.codec import rfc3339
from gateway.ingress.anthropic.request import translate, with_model
from gateway.limits.base import LimitsState
from gateway.schemas.anthropic import MessagesRequest
from gateway.schemas.openai import ChatCompletion, ChatCompletionChunk

# ---------------------------------------------------------------- the request model


def _request(**fields: Any) -> MessagesRequest:
    body = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    return MessagesRequest.model_validate_json(json.dumps({**body, **fields}))


def _refusal(**fields: Any) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        _request(**fields)
    return caught.value.errors(include_url=False)[0]


def test_the_request_reads_every_kind_of_block() -> None:
    request = _request(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look:"},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                    },
                    {
                        "type": "document",
                        "source": {
                            "type": "base64",
                            "media_type": "application/pdf",
                            "data": "JVBE",
                        },
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}],
            },
        ],
        tools=[{"name": "f", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "f"},
        metadata={"user_id": "u1"},
        top_k=5,
        something_new={"kept": True},
    )
    assert request.model_extra == {"something_new": {"kept": True}}
    assert request.top_k == 5


@pytest.mark.parametrize(
    ("fields", "loc", "kind"),
    [
        ({"temperature": 1.5}, ("temperature",), "less_than_equal"),
        ({"max_tokens": 0}, ("max_tokens",), "greater_than_equal"),
        ({"max_tokens": "10"}, ("max_tokens",), "int_type"),
        ({"tool_choice": {"type": "sometimes"}}, ("tool_choice", "type"), "literal_error"),
        (
            {"messages": [{"role": "system", "content": "x"}]},
            ("messages", 0, "role"),
            "literal_error",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            ("messages", 0, "content", 0, "text"),
            "missing",
        ),
    ],
)
def test_a_bad_request_is_refused_at_its_path(
    fields: dict[str, Any], loc: tuple[Any, ...], kind: str
) -> None:
    error = _refusal(**fields)
    assert (tuple(error["loc"]), error["type"]) == (loc, kind)


def test_max_tokens_is_required() -> None:
    with pytest.raises(ValidationError) as caught:
        MessagesRequest.model_validate_json(b'{"model": "m", "messages": []}')
    assert caught.value.errors()[0]["loc"] == ("max_tokens",)


# ---------------------------------------------------------------- translation


def test_the_translation_to_the_canonical_request() -> None:
    request = _request(
        system="Be brief.",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look:", "cache_control": {"type": "ephemeral"}},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Calling."},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
                    {"type": "tool_use", "id": "toolu_2", "name": "g", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": "ok"}],
                        "is_error": True,
                    },
                    {"type": "text", "text": "Go on."},
                ],
            },
        ],
        tools=[{"name": "f", "description": "F", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        temperature=0.5,
        top_p=0.9,
        top_k=5,
        thinking={"type": "enabled", "budget_tokens": 1024},
        metadata={"user_id": "u1"},
        stream=True,
        mock={"ttft_ms": 1},
    )
    chat, refusal = translate(request)
    assert refusal is None
    assert chat.model_dump(exclude_unset=True, mode="json") == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look:"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "Calling."}],
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a":1}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "g", "arguments": "{}"},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "42"},
            {
                "role": "tool",
                "tool_call_id": "toolu_2",
                "content": [{"type": "text", "text": "ok"}],
            },
            {"role": "user", "content": [{"type": "text", "text": "Go on."}]},
        ],
        "max_tokens": 100,
        "mock": {"ttft_ms": 1},  # a field the gateway does not know is carried, as on chat
        "stream": True,
        "stream_options": {"include_usage": True},
        "stop": ["END"],
        "temperature": 0.5,
        "top_p": 0.9,
        "user": "u1",
        "tools": [
            {
                "type": "function",
                "function": {"name": "f", "parameters": {"type": "object"}, "description": "F"},
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_tool_choices(choice: dict[str, Any], expected: Any) -> None:
    tools = [{"name": "f", "input_schema": {"type": "object"}}]
    chat, _ = translate(_request(tools=tools, tool_choice=choice))
    assert chat.model_dump(mode="json", exclude_unset=True)["tool_choice"] == expected


def test_a_tool_choice_without_tools_is_not_sent() -> None:
    chat, _ = translate(_request(tool_choice={"type": "auto"}))
    assert "tool_choice" not in chat.model_dump(exclude_unset=True)


def test_a_pdf_and_a_text_document() -> None:
    content = [
        {
            "type": "document",
            "title": "a.pdf",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
        },
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "T"}},
    ]
    chat, refusal = translate(_request(messages=[{"role": "user", "content": content}]))
    assert refusal is None
    assert chat.model_dump(mode="json", exclude_unset=True)["messages"][0]["content"] == [
        {
            "type": "file",
            "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"},
        },
        {"type": "text", "text": "T"},
    ]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        (
            {"messages": [{"role": "user", "content": [{"type": "search_result", "x": 1}]}]},
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {"type": "url", "url": "https://x/a.pdf"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].source",
        ),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
        ({"messages": []}, "messages"),  # the canonical request needs one; Anthropic judges
    ],
)
def test_what_cannot_be_translated_is_refused_only_when_translated(
    fields: dict[str, Any], param: str
) -> None:
    chat, refusal = translate(_request(**fields))
    assert isinstance(refusal, InvalidRequest)
    assert refusal.param == param
    assert chat.model == "m"  # the canonical request still serves admission and routing


# ---------------------------------------------------------------- the client's own body


def test_only_the_model_is_replaced_byte_for_byte() -> None:
    body = (
        b'{ "messages" : [{"role":"user","content":[{"type":"text","text":"h\\u00e9 \xc3\xa9",'
        b'"cache_control":{"type":"ephemeral"}}],"model":"inner"}],\n  "model" :  "gw-model" ,'
        b'"max_tokens":1e2,"metadata":{"user_id":"u"},"x-unknown":[1.50,{"model":"nested"}]}'
    )
    out = with_model(body, "claude-sonnet-4-5")
    expected = body.replace(b'"gw-model"', b'"claude-sonnet-4-5"')
    assert out == expected
    assert json.loads(out)["model"] == "claude-sonnet-4-5"


def test_a_duplicate_model_key_is_replaced_too() -> None:
    body = b'{"model":"allowed","max_tokens":1,"messages":[],"model":"another"}'
    assert with_model(body, "up") == b'{"model":"up","max_tokens":1,"messages":[],"model":"up"}'


# ---------------------------------------------------------------- errors and headers


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidRequest("bad"), 400, "invalid_request_error"),
        (InvalidAPIKey("who?"), 401, "authentication_error"),
        (ModelNotAllowed("no"), 403, "permission_error"),
        (ModelNotFound("none"), 404, "not_found_error"),
        (RequestTooLarge("big"), 413, "request_too_large"),
        (RateLimited("slow", retry_after=2), 429, "rate_limit_error"),
        (QuotaExceeded("gone"), 429, "rate_limit_error"),
        (GatewayError("bug"), 500, "api_error"),
        (UpstreamUnavailable("down"), 502, "api_error"),
        (StoreUnavailable("store"), 503, "overloaded_error"),
        (UpstreamTimeout("slow"), 504, "timeout_error"),
    ],
)
def test_the_error_envelope_keeps_the_status_and_names_anthropic_s_type(
    error: GatewayError, status: int, kind: str
) -> None:
    response = ANTHROPIC.error_response(error)
    assert response.status_code == status
    assert json.loads(response.body) == {
        "type": "error",
        "error": {"type": kind, "message": error.message},
    }
    assert json.loads(ANTHROPIC.error_body(error)) == json.loads(response.body)
    if error.retry_after:
        assert response.headers["retry-after"] == "2"
    if isinstance(error, QuotaExceeded):
        assert response.headers["x-should-retry"] == "false"


def test_the_error_event() -> None:
    frame = ANTHROPIC.error_frame(UpstreamUnavailable("cut"))
    assert frame == (
        b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"cut"}}\n\n'
    )


def test_the_path_chooses_the_codec() -> None:
    assert codec_for("/v1/messages") is ANTHROPIC
    assert codec_for("/v1/messages/count_tokens") is ANTHROPIC
    assert codec_for("/v1/chat/completions") is OPENAI


def test_rate_limit_headers_with_rfc_3339_resets() -> None:
    state = LimitsState(
        rpm_limit=10, rpm_used=3, rpm_reset_ms=1500, tpm_limit=1000, tpm_used=1200, tpm_reset_ms=0
    )
    headers = dict(ANTHROPIC.rate_headers(state))
    assert headers[b"anthropic-ratelimit-requests-limit"] == b"10"
    assert headers[b"anthropic-ratelimit-requests-remaining"] == b"7"
    assert headers[b"anthropic-ratelimit-tokens-limit"] == b"1000"
    assert headers[b"anthropic-ratelimit-tokens-remaining"] == b"0"
    reset = datetime.strptime(
        headers[b"anthropic-ratelimit-requests-reset"].decode(), "%Y-%m-%dT%H:%M:%SZ"
    ).replace(tzinfo=UTC)
    assert 0 < reset.timestamp() - datetime.now(UTC).timestamp() <= 3
    assert rfc3339(1500, now=0) == "1970-01-01T00:00:02Z"
    none = LimitsState(None, 0, 0, None, 0, 0)
    assert ANTHROPIC.rate_headers(none) == []


# ---------------------------------------------------------------- answers


def _answer(message: dict[str, Any], finish: str, usage: dict[str, Any]) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "created": 1,
            "model": "gw",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }
    )


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        ("something_new", "end_turn"),
    ],
)
def test_the_answer_s_stop_reason(finish: str, reason: str) -> None:
    answer = _answer({"role": "assistant", "content": "x"}, finish, {})
    assert json.loads(ANTHROPIC.completion(answer))["stop_reason"] == reason


def test_the_answer_with_tool_calls_and_cached_usage() -> None:
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
        {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "not json"}},
    ]
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 7,
        "total_tokens": 107,
        "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 10},
    }
    answer = _answer(
        {"role": "assistant", "content": "Sure.", "tool_calls": calls}, "tool_calls", usage
    )
    body = json.loads(ANTHROPIC.completion(answer))
    assert body == {
        "id": "msg_chatcmpl-1",
        "type": "message",
        "role": "assistant",
        "model": "gw",
        "content": [
            {"type": "text", "text": "Sure."},
            {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
            {"type": "tool_use", "id": "call_2", "name": "g", "input": {}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 30,
            "output_tokens": 7,
            "cache_creation_input_tokens": 10,
            "cache_read_input_tokens": 60,
        },
    }


# ---------------------------------------------------------------- streams


def _chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> ChatCompletionChunk:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return ChatCompletionChunk.model_validate(
        {"id": "chatcmpl-9", "created": 1, "model": "gw", "choices": choices, **extra}
    )


def _events(frames: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in frames.decode().split("\n\n"):
        if not block:
            continue
        name, data = block.split("\n")
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def _final(events: list[tuple[str, dict[str, Any]]]) -> Any:
    """What the SDK's own accumulator makes of the events (``get_final_message``)."""
    snapshot = None
    buffers: dict[int, bytes] = {}
    for name, data in events:
        assert data["type"] == name
        snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=buffers)  # type: ignore[arg-type]
    return snapshot


def _chat_request() -> Any:
    chat, _ = translate(_request(stream=True))
    return chat


def test_a_text_stream() -> None:
    encode = ANTHROPIC.chunk_encoder(_chat_request(), 42)
    frames = b"".join(
        f or b""
        for f in (
            encode(_chunk({"role": "assistant", "content": ""})),
            encode(_chunk({"content": "Hel"})),
            encode(_chunk({"content": "lo"})),
            encode(_chunk({}, "length")),
            encode(
                _chunk(
                    usage={
                        "prompt_tokens": 12,
                        "completion_tokens": 2,
                        "total_tokens": 14,
                        "prompt_tokens_details": {"cached_tokens": 4},
                    }
                )
            ),
        )
    )
    frames += encode.done_frame() or b""
    events = _events(frames)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["model"] == "m"  # the request's (gateway) model name
    assert start["usage"] == {"input_tokens": 42, "output_tokens": 0}  # the estimate
    final = _final(events)
    assert final.content[0].text == "Hello"
    assert final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (8, 2)
    assert final.usage.cache_read_input_tokens == 4


def test_a_stream_of_tool_calls_streams_input_json_deltas() -> None:
    encode = ANTHROPIC.chunk_encoder(_chat_request(), 10)
    call = {
        "index": 0,
        "id": "call_a",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    second = {
        "index": 1,
        "id": "call_b",
        "type": "function",
        "function": {"name": "g", "arguments": ""},
    }
    chunks = [
        _chunk({"role": "assistant", "content": "Let me check."}),
        _chunk({"tool_calls": [call]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        _chunk({"tool_calls": [second]}),
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        _chunk({}, "tool_calls"),
        _chunk(usage={"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}),
    ]
    frames = b"".join(encode(c) or b"" for c in chunks) + (encode.done_frame() or b"")
    events = _events(frames)
    deltas = [d["delta"] for name, d in events if name == "content_block_delta"]
    assert [d["type"] for d in deltas] == [
        "text_delta",
        "input_json_delta",
        "input_json_delta",
        "input_json_delta",
    ]
    final = _final(events)
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert (final.content[1].id, final.content[1].name, final.content[1].input) == (
        "call_a",
        "f",
        {"city": "Paris"},
    )
    assert (final.content[2].name, final.content[2].input) == ("g", {})
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (20, 9)


def test_a_stream_that_fails_ends_with_an_error_event() -> None:
    encode = ANTHROPIC.chunk_encoder(_chat_request(), 10)
    assert encode(_chunk({"content": "Hi"}))
    frame = encode.error_frame(UpstreamUnavailable("the upstream went away"))
    assert _events(frame) == [
        (
            "error",
            {"type": "error", "error": {"type": "api_error", "message": "the upstream went away"}},
        )
    ]


def test_a_stream_without_usage_reports_the_estimate() -> None:
    encode = ANTHROPIC.chunk_encoder(_chat_request(), 33)
    frames = (encode(_chunk({"content": "x"})) or b"") + (encode.done_frame() or b"")
    final = _final(_events(frames))
    assert (final.usage.input_tokens, final.usage.output_tokens) == (33, 0)
    assert final.stop_reason == "end_turn"
