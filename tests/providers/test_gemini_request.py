"""gateway/providers/gemini/request.py and schema.py: the canonical request -> a
``generateContent`` body, pure (no HTTP)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.providers.gemini.request import SKIP_SIGNATURE, generate_body
from gateway.providers.gemini.schema import function_parameters, response_schema
from gateway.schemas.openai import ChatCompletionRequest

PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"


def body(**fields: Any) -> dict[str, Any]:
    request = {"model": "gemini", "messages": [{"role": "user", "content": "Hi"}], **fields}
    parsed = ChatCompletionRequest.model_validate_json(json.dumps(request))
    return json.loads(generate_body(parsed))


def refused(**fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        body(**fields)
    assert info.value.status == 400
    return info.value


def call(call_id: str, name: str, arguments: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
        **extra,
    }


def signed(signature: str) -> dict[str, Any]:
    return {"extra_content": {"google": {"thought_signature": signature}}}


# ---------------------------------------------------------------- roles and parts


def test_roles_system_and_multi_turn() -> None:
    sent = body(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "How are you?"},
        ]
    )
    assert sent == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello!"}]},
            {"role": "user", "parts": [{"text": "How are you?"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]},
    }


def test_consecutive_turns_of_one_role_are_merged() -> None:
    sent = body(
        messages=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "ok"},
            {"role": "assistant", "content": None},  # nothing to send: left out
            {"role": "user", "content": "three"},
        ]
    )
    assert sent["contents"] == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
        {"role": "model", "parts": [{"text": "ok"}]},
        {"role": "user", "parts": [{"text": "three"}]},
    ]


def test_images_audio_and_files() -> None:
    sent = body(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": PNG, "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a/cat.JPEG?s=1"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/photo"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/v1.2/img.webp"}},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                    {
                        "type": "file",
                        "file": {
                            "file_data": "data:application/pdf;base64,JVBERi0=",
                            "filename": "a.pdf",
                        },
                    },
                ],
            }
        ]
    )
    assert sent["contents"][0]["parts"] == [
        {"text": "Compare"},
        {"inlineData": {"mimeType": "image/png", "data": PNG.partition(",")[2]}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://x.test/a/cat.JPEG?s=1"}},
        {"fileData": {"mimeType": "image/*", "fileUri": "https://x.test/photo"}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "https://x.test/v1.2/img.webp"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
    ]


def test_data_url_with_parameters() -> None:
    url = "data:image/jpeg;name=x.jpg;base64,/9j/4AAQ"
    sent = body(
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    )
    assert sent["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}}
    ]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        (
            {"type": "video_url", "video_url": {"url": "https://x.test/v.mp4"}},
            "messages[0].content[1].type",
        ),
        ({"type": "file", "file": {"file_id": "file-abc"}}, "messages[0].content[1].file"),
        (
            {"type": "file", "file": {"file_data": "JVBERi0="}},
            "messages[0].content[1].file.file_data",
        ),
    ],
    ids=["unknown-type", "file-id", "file-not-a-data-url"],
)
def test_parts_gemini_cannot_carry_are_refused(part: dict[str, Any], param: str) -> None:
    error = refused(messages=[{"role": "user", "content": [{"type": "text", "text": "x"}, part]}])
    assert error.param == param


def test_unknown_part_in_a_system_message_is_refused() -> None:
    error = refused(
        messages=[
            {"role": "system", "content": [{"type": "video_url", "video_url": {}}]},
            {"role": "user", "content": "x"},
        ]
    )
    assert error.param == "messages[0].content[0].type"


def test_assistant_refusal_and_parts() -> None:
    sent = body(
        messages=[
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "no"}],
            },
            {"role": "user", "content": "y"},
            {"role": "assistant", "content": None, "refusal": "I can't."},
        ]
    )
    assert sent["contents"][1] == {"role": "model", "parts": [{"text": "a"}, {"text": "no"}]}
    assert sent["contents"][3] == {"role": "model", "parts": [{"text": "I can't."}]}


# ---------------------------------------------------------------- tool calls and results


def test_tool_calls_and_results_round_trip_with_signatures() -> None:
    sent = body(
        messages=[
            {"role": "user", "content": "Weather in Paris and London?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    call("call_a", "get_weather", '{"city": "Paris"}', **signed("SIG_A")),
                    call("call_b", "get_weather", '{"city": "London"}'),
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21, "sky": "clear"}'},
            {
                "role": "tool",
                "tool_call_id": "call_b",
                "content": [{"type": "text", "text": "14C, rain"}],
            },
            {"role": "user", "content": "Thanks"},
        ]
    )
    assert sent["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris and London?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Checking."},
                {
                    "functionCall": {
                        "id": "call_a",
                        "name": "get_weather",
                        "args": {"city": "Paris"},
                    },
                    "thoughtSignature": "SIG_A",
                },
                {
                    "functionCall": {
                        "id": "call_b",
                        "name": "get_weather",
                        "args": {"city": "London"},
                    }
                },
            ],
        },
        {
            "role": "user",
            "parts": [
                {
                    "functionResponse": {
                        "id": "call_a",
                        "name": "get_weather",
                        "response": {"temp": 21, "sky": "clear"},
                    }
                },
                {
                    "functionResponse": {
                        "id": "call_b",
                        "name": "get_weather",
                        "response": {"content": "14C, rain"},
                    }
                },
                {"text": "Thanks"},
            ],
        },
    ]


def test_calls_that_lost_their_signature_get_googles_stand_in_on_the_first() -> None:
    sent = body(
        messages=[
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "tool_calls": [call("c1", "f", "{}"), call("c2", "g", "")],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "1"},
            {"role": "tool", "tool_call_id": "c2", "content": "[1, 2]"},
        ]
    )
    parts = sent["contents"][1]["parts"]
    assert parts[0]["thoughtSignature"] == SKIP_SIGNATURE
    assert "thoughtSignature" not in parts[1]
    assert parts[1]["functionCall"]["args"] == {}
    # Only a JSON object is a response object; anything else is wrapped.
    assert sent["contents"][2]["parts"][1]["functionResponse"]["response"] == {"content": "[1, 2]"}


def test_a_text_answers_signature_goes_back_on_its_last_text_part() -> None:
    sent = body(
        messages=[
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "Paris.", **signed("TEXT_SIG")},
            {"role": "user", "content": "y"},
        ]
    )
    assert sent["contents"][1]["parts"] == [{"text": "Paris.", "thoughtSignature": "TEXT_SIG"}]


def test_a_tool_result_for_an_unknown_call_uses_its_name_or_is_refused() -> None:
    sent = body(
        messages=[
            {"role": "user", "content": "x"},
            {"role": "tool", "tool_call_id": "elsewhere", "name": "lookup", "content": "ok"},
        ]
    )
    assert sent["contents"][0]["parts"][1] == {
        "functionResponse": {"id": "elsewhere", "name": "lookup", "response": {"content": "ok"}}
    }
    error = refused(
        messages=[
            {"role": "user", "content": "x"},
            {"role": "tool", "tool_call_id": "nowhere", "content": "ok"},
        ]
    )
    assert error.param == "messages[1].tool_call_id"


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"'])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    error = refused(
        messages=[
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [call("c1", "f", arguments)]},
        ]
    )
    assert error.param == "messages[1].tool_calls[0].function.arguments"


def test_custom_tool_calls_are_refused() -> None:
    error = refused(
        messages=[
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c", "type": "custom", "custom": {"name": "grep", "input": "x"}}
                ],
            },
        ]
    )
    assert error.param == "messages[1].tool_calls[0].type"


def test_legacy_functions() -> None:
    sent = body(
        messages=[
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "f", "arguments": '{"a": 1}'},
            },
            {"role": "function", "name": "f", "content": '{"ok": true}'},
        ],
        functions=[
            {
                "name": "f",
                "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
            }
        ],
        function_call={"name": "f"},
    )
    assert sent["contents"][1]["parts"] == [
        {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": SKIP_SIGNATURE}
    ]
    assert sent["contents"][2]["parts"] == [
        {"functionResponse": {"name": "f", "response": {"ok": True}}}
    ]
    assert sent["tools"][0]["functionDeclarations"][0]["name"] == "f"
    assert sent["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}
    }


# ---------------------------------------------------------------- tools and tool_choice

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city"],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
        "strict": True,
    },
}
NOW = {
    "type": "function",
    "function": {"name": "now", "parameters": {"type": "object", "properties": {}}},
}


def test_tools_become_function_declarations() -> None:
    sent = body(tools=[WEATHER, NOW])
    assert sent["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "The weather in a city",
                    "parameters": {
                        "type": "OBJECT",
                        "properties": {
                            "city": {"type": "STRING"},
                            "unit": {"type": "STRING", "enum": ["c", "f"]},
                        },
                        "required": ["city"],
                    },
                },
                {"name": "now"},  # no arguments: no parameters (an empty OBJECT is refused)
            ]
        }
    ]
    assert "toolConfig" not in sent


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "now"}},
            {"mode": "ANY", "allowedFunctionNames": ["now"]},
        ),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "now"}}],
                },
            },
            {"mode": "ANY", "allowedFunctionNames": ["now"]},
        ),
    ],
)
def test_tool_choice(choice: Any, config: dict[str, Any]) -> None:
    sent = body(tools=[WEATHER, NOW], tool_choice=choice)
    assert sent["toolConfig"] == {"functionCallingConfig": config}
    assert len(sent["tools"][0]["functionDeclarations"]) == 2


def test_allowed_tools_auto_declares_only_the_allowed() -> None:
    choice = {
        "type": "allowed_tools",
        "allowed_tools": {
            "mode": "auto",
            "tools": [{"type": "function", "function": {"name": "now"}}],
        },
    }
    sent = body(tools=[WEATHER, NOW], tool_choice=choice)
    assert [d["name"] for d in sent["tools"][0]["functionDeclarations"]] == ["now"]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "custom", "custom": {"name": "grep"}}]}, "tools[0].type"),
        ({"tools": [WEATHER, {"type": "web_search"}]}, "tools[1].type"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "custom", "custom": {"name": "grep"}}},
            "tool_choice.type",
        ),
        (
            {
                "tools": [WEATHER],
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {
                        "mode": "auto",
                        "tools": [{"type": "custom", "name": "grep"}],
                    },
                },
            },
            "tool_choice.allowed_tools.tools[0]",
        ),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ],
    ids=["custom-tool", "unknown-tool", "custom-choice", "allowed-custom", "logit-bias", "effort"],
)
def test_what_gemini_cannot_carry_is_refused(fields: dict[str, Any], param: str) -> None:
    assert refused(**fields).param == param


# ---------------------------------------------------------------- generationConfig


def test_generation_config() -> None:
    sent = body(
        temperature=0.3,
        top_p=0.9,
        max_tokens=50,
        max_completion_tokens=100,
        stop="END",
        n=2,
        seed=42,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        response_format={"type": "json_object"},
        reasoning_effort="medium",
        # Nothing Gemini has: not sent (the API refuses unknown fields).
        user="u-1",
        metadata={"a": "b"},
        store=False,
        parallel_tool_calls=False,
        stream_options={"include_usage": True},
        mock={"status": 500},
    )
    assert sent["generationConfig"] == {
        "temperature": 0.3,
        "topP": 0.9,
        "maxOutputTokens": 100,
        "stopSequences": ["END"],
        "candidateCount": 2,
        "seed": 42,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "responseMimeType": "application/json",
        "thinkingConfig": {"thinkingBudget": 8192},
    }
    assert set(sent) == {"contents", "generationConfig"}


def test_stop_list_and_max_tokens() -> None:
    sent = body(stop=["a", "b"], max_tokens=7, reasoning_effort="none")
    assert sent["generationConfig"] == {
        "maxOutputTokens": 7,
        "stopSequences": ["a", "b"],
        "thinkingConfig": {"thinkingBudget": 0},
    }


def test_json_schema_response_format() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": ["integer", "null"]},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    sent = body(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        }
    )
    assert sent["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": {
            "type": "OBJECT",
            "properties": {
                "name": {"type": "STRING"},
                "age": {"type": "INTEGER", "nullable": True},
                "tags": {"type": "ARRAY", "items": {"type": "STRING"}},
            },
            "required": ["name", "age", "tags"],
            "propertyOrdering": ["name", "age", "tags"],
        },
    }


def test_text_response_format_sends_nothing() -> None:
    assert "generationConfig" not in body(response_format={"type": "text"})


# ---------------------------------------------------------------- schemas


def test_refs_are_inlined_and_recursion_cut() -> None:
    schema = {
        "type": "object",
        "$defs": {
            "Address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "zip": {"type": "string", "format": "postal"},
                },
            },
            "Node": {
                "type": "object",
                "properties": {"value": {"type": "integer"}, "next": {"$ref": "#/$defs/Node"}},
            },
        },
        "properties": {
            "home": {"$ref": "#/$defs/Address", "description": "Where they live"},
            "list": {"$ref": "#/$defs/Node"},
            "missing": {"$ref": "#/$defs/Nowhere"},
        },
    }
    assert function_parameters(schema) == {
        "type": "OBJECT",
        "properties": {
            "home": {
                "type": "OBJECT",
                "description": "Where they live",
                "properties": {"city": {"type": "STRING"}, "zip": {"type": "STRING"}},
            },
            "list": {
                "type": "OBJECT",
                "properties": {"value": {"type": "INTEGER"}, "next": {"type": "OBJECT"}},
            },
            "missing": {"type": "OBJECT"},
        },
    }


def test_unions_nulls_consts_and_enums() -> None:
    schema = {
        "type": "object",
        "properties": {
            "maybe": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]},
            "either": {"oneOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]},
            "many": {"type": ["string", "number"]},
            "fixed": {"const": "yes"},
            "level": {"type": "integer", "enum": [1, 2, None]},
            "nothing": {"type": "null"},
            "uri": {"type": "string", "format": "uri", "pattern": "^https://", "maxLength": 200},
            "ratio": {"type": "number", "format": "double", "exclusiveMinimum": 0},
        },
    }
    assert function_parameters(schema) == {
        "type": "OBJECT",
        "properties": {
            "maybe": {"type": "STRING", "format": "date-time", "nullable": True},
            "either": {"anyOf": [{"type": "STRING"}, {"type": "INTEGER", "minimum": 0}]},
            "many": {"anyOf": [{"type": "STRING"}, {"type": "NUMBER"}]},
            "fixed": {"type": "STRING", "enum": ["yes"]},
            "level": {"type": "INTEGER", "enum": ["1", "2"], "format": "enum", "nullable": True},
            "nothing": {"nullable": True},
            "uri": {"type": "STRING", "maxLength": 200, "pattern": "^https://"},
            "ratio": {"type": "NUMBER", "format": "double"},
        },
    }


def test_all_of_is_merged_and_required_kept_to_what_exists() -> None:
    schema = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"properties": {"b": {"type": "boolean"}}, "required": ["b", "ghost"]},
        ]
    }
    assert function_parameters(schema) == {
        "type": "OBJECT",
        "properties": {"a": {"type": "STRING"}, "b": {"type": "BOOLEAN"}},
        "required": ["a", "b"],
    }


def test_arrays() -> None:
    schema = {
        "type": "object",
        "properties": {
            "pair": {"type": "array", "items": [{"type": "number"}, {"type": "number"}]},
            "rows": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {"k": {"type": "string"}},
                    "additionalProperties": {"type": "string"},
                },
            },
        },
    }
    assert function_parameters(schema) == {
        "type": "OBJECT",
        "properties": {
            "pair": {"type": "ARRAY", "items": {"type": "NUMBER"}},
            "rows": {
                "type": "ARRAY",
                "minItems": 1,
                "items": {"type": "OBJECT", "properties": {"k": {"type": "STRING"}}},
            },
        },
    }


def test_schemas_without_arguments_have_no_parameters() -> None:
    assert function_parameters({"type": "object", "properties": {}}) is None
    assert function_parameters({"type": "object", "additionalProperties": False}) is None
    assert response_schema({"type": "object", "properties": {}}) == {"type": "OBJECT"}


def test_conversion_is_cached_and_never_changes_the_input() -> None:
    schema = {"type": "object", "properties": {"x": {"type": ["string", "null"]}}, "$defs": {}}
    before = json.dumps(schema)
    first = function_parameters(schema)
    assert json.dumps(schema) == before
    assert function_parameters(json.loads(before)) is first


def test_a_deep_schema_is_cut_not_recursed_forever() -> None:
    # As deep as a request body may nest (the JSON parser's own limit is near 200).
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(95):
        schema = {"type": "object", "properties": {"x": schema}}
    tool = {"type": "function", "function": {"name": "deep", "parameters": schema}}
    parameters = body(tools=[tool])["tools"][0]["functionDeclarations"][0]["parameters"]
    assert json.dumps(parameters).count('"OBJECT"') <= 42
