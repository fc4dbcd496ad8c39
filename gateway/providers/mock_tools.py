"""The mock provider's tool calls: which functions it calls, and with what arguments.

The mock answers with tool calls, deterministically (docs/configuration.md, "The
mock provider"), when the request has function tools and

- its ``tool_choice`` is ``"required"`` (the first tool), names a function (that
  one), or is ``allowed_tools`` in ``required`` mode (the first allowed tool); or
- its script asks, ``"mock": {"tool_calls": N}``: N calls to the tools in order
  (wrapping around), or to the function ``tool_choice`` names or allows;

and never when the last message is a tool (or legacy function) result: then it
answers with text, so a conversation that calls tools runs to completion.

A call's arguments are a JSON object built from its function's ``parameters``
schema: each required property filled by its type (a string is a word, or a value
of its ``format``; a number 1, or the nearest its bounds allow; a boolean true;
an enum its first value; an object its own required properties; an array ``[]``,
or its ``minItems`` items). Local ``$ref``s are followed; the work is bounded
(depth and values made), so any schema a request can carry costs little.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest
from gateway.schemas.messages import (
    AllowedToolsChoice,
    FunctionDefinition,
    FunctionMessage,
    FunctionTool,
    FunctionToolChoice,
    ToolMessage,
)
from gateway.schemas.openai import ChatCompletionRequest

MAX_TOOL_CALLS = 16
# Bounds on the arguments of one call: nesting followed, values made, items of one
# array, characters of one string.
MAX_DEPTH = 16
MAX_VALUES = 1_000
MAX_ITEMS = 16
MAX_STRING = 256


@dataclass(frozen=True, slots=True)
class MockCall:
    """One tool call of the mock's answer."""

    id: str
    name: str
    arguments: str  # a JSON object's text

    def pieces(self) -> list[str]:
        """The arguments as a stream sends them: in three pieces, or two if too short."""
        text = self.arguments
        n = len(text)
        if n < 3:
            return [text[:1], text[1:]]
        return [text[: n // 3], text[n // 3 : 2 * n // 3], text[2 * n // 3 :]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def answers_with_text(request: ChatCompletionRequest) -> bool:
    """True when no tool call can be the answer: the last message is a tool's result."""
    return isinstance(request.messages[-1], ToolMessage | FunctionMessage)


def planned_calls(
    request: ChatCompletionRequest, wanted: int | None, seed: bytes, words: Sequence[str]
) -> list[MockCall]:
    """The calls that answer ``request`` (none: the answer is text); ``wanted`` is the
    script's ``tool_calls``. A request that asks for calls it cannot have is refused."""
    if answers_with_text(request):
        return []
    functions = [t.function for t in request.tools or () if isinstance(t, FunctionTool)]
    choice = request.tool_choice
    if wanted:
        pool = _chosen(functions, choice) or functions
        if not pool:
            raise InvalidRequest(
                "mock.tool_calls: the request has no function tools to call",
                param="mock.tool_calls",
            )
        chosen = [pool[i % len(pool)] for i in range(wanted)]
    elif (
        choice == "required"
        or isinstance(choice, FunctionToolChoice)
        or (isinstance(choice, AllowedToolsChoice) and choice.allowed_tools.mode == "required")
    ):
        pool = _chosen(functions, choice)
        if not pool:
            raise InvalidRequest(
                "tool_choice: the request has no function tools the mock may call",
                param="tool_choice",
            )
        chosen = pool[:1]
    else:
        return []
    rng = random.Random(seed)
    calls = []
    for i, function in enumerate(chosen):
        digest = hashlib.sha256(seed + f"{i}:{function.name}".encode()).hexdigest()
        calls.append(
            MockCall(f"call_{digest[:24]}", function.name, arguments(function, rng, words))
        )
    return calls


def _chosen(functions: list[FunctionDefinition], choice: Any) -> list[FunctionDefinition]:
    """The functions ``tool_choice`` lets the mock call, in the tools' order."""
    if isinstance(choice, FunctionToolChoice):
        name = choice.function.name
        found = [f for f in functions if f.name == name]
        if not found:
            raise InvalidRequest(
                f"tool_choice names the function `{name}`, which is not among the tools",
                param="tool_choice.function.name",
            )
        return found
    if isinstance(choice, AllowedToolsChoice):
        names = set()
        for tool in choice.allowed_tools.tools:
            inner = tool.get("function")
            name = inner.get("name") if isinstance(inner, dict) else tool.get("name")
            if isinstance(name, str):
                names.add(name)
        return [f for f in functions if f.name in names]
    return functions


def arguments(function: FunctionDefinition, rng: random.Random, words: Sequence[str]) -> str:
    """The JSON text of a call's arguments: an object, whatever the schema says."""
    schema = function.parameters or {}
    value = _Filler(schema, rng, words).value(schema, 0)
    return json.dumps(value if isinstance(value, dict) else {}, separators=(",", ":"))


class _Filler:
    """Makes a value a JSON schema accepts: required fields only, the simplest values."""

    def __init__(self, root: dict[str, Any], rng: random.Random, words: Sequence[str]) -> None:
        self.root, self.rng, self.words = root, rng, words
        self.left = MAX_VALUES

    def value(self, schema: Any, depth: int) -> Any:
        self.left -= 1
        if not isinstance(schema, dict):  # `true` (anything) or a malformed schema
            return self.word({})
        deeper = depth < MAX_DEPTH and self.left > 0
        ref = schema.get("$ref")
        if isinstance(ref, str) and deeper:
            target = self.resolve(ref)
            if target is not None:
                return self.value(target, depth + 1)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[0]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options and deeper:
                useful = [
                    o for o in options if not (isinstance(o, dict) and o.get("type") == "null")
                ]
                return self.value((useful or options)[0], depth + 1)
        parts = schema.get("allOf")
        if isinstance(parts, list) and parts and deeper:
            return self.value(_merged(schema, parts), depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else None
        if kind in ("number", "integer"):
            return _number(schema, kind == "integer")
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        if kind == "object":
            if not deeper:
                return {}
            properties = schema.get("properties")
            if not isinstance(properties, dict):
                properties = {}
            required = schema.get("required")
            names = (
                [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
            )
            return {n: self.value(properties.get(n, {}), depth + 1) for n in names}
        if kind == "array":
            count = schema.get("minItems")
            if not (deeper and type(count) is int and count > 0):
                return []
            items = schema.get("items", {})
            return [self.value(items, depth + 1) for _ in range(min(count, MAX_ITEMS))]
        return self.word(schema)

    def word(self, schema: dict[str, Any]) -> str:
        text = _FORMATS.get(schema.get("format"))  # type: ignore[arg-type]
        if text is not None:
            return text
        text = self.rng.choice(self.words)
        least = schema.get("minLength")
        if type(least) is int and least > len(text):
            text = (text * (least // len(text) + 1))[: min(least, MAX_STRING)]
        return text

    def resolve(self, ref: str) -> Any:
        """A local reference (``#/$defs/Name``) in the root schema; others: None."""
        if not ref.startswith("#"):
            return None
        node: Any = self.root
        for part in ref[1:].split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node


# A string of a well-known format is one that parses as it.
_FORMATS = {
    "date-time": "2025-01-01T00:00:00Z",
    "date": "2025-01-01",
    "time": "00:00:00Z",
    "duration": "P1D",
    "email": "mock@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
}


def _merged(schema: dict[str, Any], parts: list[Any]) -> dict[str, Any]:
    """``allOf``'s parts as one schema: their properties and required fields together."""
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    properties: dict[str, Any] = dict(merged.get("properties") or {})
    required: list[Any] = list(merged.get("required") or [])
    for part in parts:
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                properties.update(value)
            elif key == "required" and isinstance(value, list):
                required.extend(value)
            else:
                merged.setdefault(key, value)
    if properties:
        merged["properties"] = properties
    if required:
        merged["required"] = list(dict.fromkeys(r for r in required if isinstance(r, str)))
    return merged


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    """1, or the nearest value the schema's bounds allow."""
    value: float = 1

    def bound(key: str) -> float | None:
        v = schema.get(key)
        finite = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        return v if finite else None

    low, high = bound("minimum"), bound("maximum")
    low_x, high_x = bound("exclusiveMinimum"), bound("exclusiveMaximum")
    if low is not None and value < low:
        value = math.ceil(low) if integer else low
    if low_x is not None and value <= low_x:
        value = math.floor(low_x) + 1 if integer else low_x + 1
    if high is not None and value > high:
        value = math.floor(high) if integer else high
    if high_x is not None and value >= high_x:
        value = math.ceil(high_x) - 1 if integer else high_x - 1
    if integer or value == int(value):
        return int(value)
    return value
