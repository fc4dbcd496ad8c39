"""The prompt estimate a reservation is made with, on the typed request.

Everything a provider bills as prompt tokens adds to the estimate, at least as
much as a BPE tokenizer would count it (about four bytes a token): text parts,
names, tool definitions, tool calls' arguments, tool results, the response
format's schema; an image adds ``IMAGE_TOKENS`` whatever its URL; a part, tool or
tool call of a type the gateway does not know adds at least its JSON text.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.limits.estimate import (
    AUDIO_CHARS_PER_TOKEN,
    FILE_CHARS_PER_TOKEN,
    IMAGE_TOKENS,
    prompt_tokens,
)
from gateway.schemas.openai import ChatCompletionRequest

QUESTION = {"role": "user", "content": "What is the weather in Paris today?"}
LONG = "The quick brown fox jumps over the lazy dog. " * 40  # 1,800 ASCII characters
PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city, e.g. Paris or San Francisco"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["city"],
}


def estimate(*messages: dict[str, Any], **fields: Any) -> int:
    body = {"model": "m", "messages": list(messages), **fields}
    return prompt_tokens(ChatCompletionRequest.model_validate_json(json.dumps(body)))


def tokenizer_floor(value: Any) -> float:
    """What a BPE tokenizer counts at most, about: four bytes of JSON a token."""
    text = value if isinstance(value, str) else json.dumps(value)
    return len(text.encode()) / 4


def test_text_parts_count_like_text() -> None:
    plain = estimate({"role": "user", "content": LONG})
    parts = [{"type": "text", "text": LONG[:900]}, {"type": "text", "text": LONG[900:]}]
    assert estimate({"role": "user", "content": parts}) >= plain
    assert plain - estimate({"role": "user", "content": ""}) > tokenizer_floor(LONG)


@pytest.mark.parametrize(
    "url",
    ["https://example.com/a-very-long/path/to/a/cat.png?size=large", "data:image/png;base64,AAAA"],
)
def test_each_image_counts_a_fixed_cost(url: str) -> None:
    def with_images(count: int) -> int:
        image = {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
        return estimate(
            {"role": "user", "content": [{"type": "text", "text": "?"}] + [image] * count}
        )

    assert with_images(1) - with_images(0) == IMAGE_TOKENS
    assert with_images(3) - with_images(0) == 3 * IMAGE_TOKENS


def test_audio_counts_by_its_length() -> None:
    data = "UklGR" * 10_000  # 50,000 characters of base64
    audio = {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    added = estimate({"role": "user", "content": [audio]}) - estimate(
        {"role": "user", "content": []}
    )
    assert added >= len(data) // AUDIO_CHARS_PER_TOKEN


def test_a_file_counts_by_its_data_and_never_less_than_an_image() -> None:
    empty = estimate({"role": "user", "content": []})
    data = "data:application/pdf;base64," + "JVBER" * 20_000
    big = {"type": "file", "file": {"file_data": data, "filename": "a.pdf"}}
    by_id = {"type": "file", "file": {"file_id": "file-abc"}}
    assert estimate({"role": "user", "content": [big]}) - empty >= len(data) // FILE_CHARS_PER_TOKEN
    assert estimate({"role": "user", "content": [by_id]}) - empty == IMAGE_TOKENS


def test_tool_definitions_count() -> None:
    function = {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": PARAMETERS,
    }
    tools = [{"type": "function", "function": function}]
    added = estimate(QUESTION, tools=tools) - estimate(QUESTION)
    assert added > tokenizer_floor(tools)
    # The legacy ``functions`` count the same as the tools they became.
    assert estimate(QUESTION, functions=[function]) - estimate(QUESTION) == added
    custom = [
        {
            "type": "custom",
            "custom": {
                "name": "sql",
                "format": {"type": "grammar", "grammar": {"definition": LONG}},
            },
        }
    ]
    assert estimate(QUESTION, tools=custom) - estimate(QUESTION) > tokenizer_floor(custom)


def test_tool_calls_count_their_arguments() -> None:
    def calling(arguments: str) -> dict[str, Any]:
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "f", "arguments": arguments},
        }
        return {"role": "assistant", "content": None, "tool_calls": [call]}

    short, long = (
        estimate(QUESTION, calling("{}")),
        estimate(QUESTION, calling(json.dumps({"q": LONG}))),
    )
    assert long - short > tokenizer_floor(LONG)
    assert short - estimate(QUESTION) > tokenizer_floor(calling("{}"))
    custom = {
        "role": "assistant",
        "tool_calls": [{"id": "c", "type": "custom", "custom": {"name": "sql", "input": LONG}}],
    }
    assert estimate(QUESTION, custom) - estimate(QUESTION) > tokenizer_floor(LONG)
    legacy = {"role": "assistant", "function_call": {"name": "f", "arguments": LONG}}
    assert estimate(QUESTION, legacy) - estimate(QUESTION) > tokenizer_floor(LONG)


def test_tool_results_count() -> None:
    result = {"role": "tool", "tool_call_id": "call_1", "content": LONG}
    assert estimate(QUESTION, result) - estimate(QUESTION) > tokenizer_floor(LONG)
    parts = {**result, "content": [{"type": "text", "text": LONG}]}
    assert estimate(QUESTION, parts) == estimate(QUESTION, result)


def test_the_response_schema_counts() -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": PARAMETERS, "strict": True},
    }
    added = estimate(QUESTION, response_format=response_format) - estimate(QUESTION)
    assert added > tokenizer_floor(PARAMETERS)


def test_names_refusals_and_unknown_message_fields_count() -> None:
    base = estimate(QUESTION)
    assert estimate({**QUESTION, "name": LONG}) - base > tokenizer_floor(LONG)
    assert estimate({**QUESTION, "x_context": LONG}) - base > tokenizer_floor(LONG)
    refusal = {"role": "assistant", "content": None, "refusal": LONG}
    assert estimate(QUESTION, refusal) - base > tokenizer_floor(LONG)
    parts = {"role": "assistant", "content": [{"type": "refusal", "refusal": LONG}]}
    assert estimate(QUESTION, parts) - base > tokenizer_floor(LONG)


def json_text_tokens(value: Any) -> float:
    """The JSON text at the estimate's own rate (three bytes a token): erring high."""
    return len(json.dumps(value, separators=(",", ":")).encode()) / 3


def test_a_part_of_an_unknown_type_counts_its_json() -> None:
    empty = estimate({"role": "user", "content": []})
    video = {
        "type": "video_url",
        "video_url": {"url": "data:video/mp4;base64," + "AAAA" * 5_000},
        "x_note": LONG,
    }
    added = estimate({"role": "user", "content": [video]}) - empty
    assert added >= json_text_tokens(video) > tokenizer_floor(video)
    # In any role that takes parts, and as much as a known part of the same text.
    note = {"type": "x_note", "text": LONG}
    system = {"role": "system", "content": [note]}
    assert estimate(system) - estimate({**system, "content": []}) >= json_text_tokens(note)
    assert estimate(system) >= estimate({**system, "content": [{"type": "text", "text": LONG}]})


def test_a_tool_and_a_call_of_an_unknown_type_count_their_json() -> None:
    tool = {"type": "web_search", "web_search": {"description": LONG, "max_results": 3}}
    added = estimate(QUESTION, tools=[tool]) - estimate(QUESTION)
    assert added >= json_text_tokens(tool)
    call = {"id": "call_1", "type": "web_search", "web_search": {"query": LONG}}
    calling = {"role": "assistant", "content": None, "tool_calls": [call]}
    assert estimate(QUESTION, calling) - estimate(QUESTION) >= json_text_tokens(call)


def test_sampling_options_add_nothing() -> None:
    assert estimate(QUESTION) == estimate(QUESTION, temperature=0.5, stop=["x"], seed=1, n=2)
