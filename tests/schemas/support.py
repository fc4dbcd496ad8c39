"""What the request-schema tests share: a request with every kind of part, tool
and option, and a way to send one through the gateway."""

from __future__ import annotations

import json
from typing import Any

import httpx
from starlette.testclient import TestClient

KEY = "sk-test-request-000001"
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"

CONFIG = f"""
providers:
  demo: {{type: mock}}
  up: {{type: openai, base_url: "https://upstream.test/v1", api_key: sk-upstream}}
models:
  mock-chat: {{deployments: [{{provider: demo, model: mock-chat}}]}}
  relayed: {{deployments: [{{provider: up, model: upstream-model}}]}}
keys:
  - {{name: request, key: {KEY}}}
server:
  data_dir: data
"""


def rich() -> dict[str, Any]:
    """Every kind of message, part, tool and option, with unknown fields at every level."""
    weather = {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
        "x_function": {"deep": [1, {"k": None}]},
    }
    return {
        "model": "relayed",
        "messages": [
            {"role": "system", "content": "Be brief.", "name": "rules", "x_msg": 1},
            {
                "role": "developer",
                "content": [{"type": "text", "text": "Metric units.", "cache_control": {"a": 1}}],
            },
            {
                "role": "user",
                "name": "ann",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/a.png", "detail": "high"},
                        "x_part": "kept",
                    },
                    {"type": "image_url", "image_url": {"url": PNG, "x_url": True}},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                    {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE"}},
                    {"type": "file", "file": {"file_id": "file-abc", "filename": "a.pdf"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        "x_call": [],
                    },
                    {"id": "call_2", "type": "custom", "custom": {"name": "sql", "input": "1"}},
                ],
                "audio": {"id": "audio_1"},
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C", "name": "get_weather"},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": [{"type": "text", "text": "1"}],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "It is 18 C."},
                    {"type": "refusal", "refusal": "No SQL."},
                ],
                "prefix": True,
            },
            {"role": "assistant", "function_call": {"name": "get_weather", "arguments": "{}"}},
            {"role": "function", "name": "get_weather", "content": None},
            {"role": "user", "content": "Thanks"},
        ],
        "temperature": 1,
        "top_p": 0.9,
        "n": 2,
        "max_tokens": 100,
        "max_completion_tokens": 200,
        "stop": ["\n\n", "END"],
        "seed": -42,
        "frequency_penalty": -0.5,
        "presence_penalty": None,
        "logit_bias": {"50256": -100, "1734": 2.5},
        "logprobs": True,
        "top_logprobs": 3,
        "user": "user-1",
        "stream": False,
        "stream_options": {"include_usage": True, "include_obfuscation": False},
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {"type": "object", "properties": {}},
                "strict": True,
                "x_schema": 1,
            },
        },
        "tools": [
            {"type": "function", "function": weather, "x_tool": "kept"},
            {
                "type": "custom",
                "custom": {
                    "name": "sql",
                    "description": None,
                    "format": {"type": "grammar", "grammar": {"syntax": "lark", "definition": "x"}},
                },
            },
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "functions": [{"name": "legacy", "parameters": {"type": "object"}}],
        "function_call": {"name": "legacy"},
        "reasoning_effort": "minimal",
        "service_tier": "flex",
        "metadata": {"team": "a"},
        "store": False,
        "prediction": {"type": "content", "content": "x"},
        "modalities": ["text"],
        "x_top": {"nested": [{"deeper": None}], "number": 1.0},
    }


def canonical(value: Any) -> str:
    # Sorted keys, and 1 and 1.0 told apart: the same JSON, value for value.
    return json.dumps(value, sort_keys=True)


def chat(client: TestClient, body: dict[str, Any]) -> httpx.Response:
    return client.post(
        "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}
    )
