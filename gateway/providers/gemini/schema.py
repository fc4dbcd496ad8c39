"""A JSON Schema (OpenAI's tool ``parameters``, a ``json_schema`` response format)
-> the Gemini API's ``Schema``: the subset of OpenAPI 3.0 it takes.

The API refuses what it does not know (``additionalProperties``, ``$schema``,
``$ref``, ``const``, a ``type`` list, a ``format`` other than the few it reads),
so a schema is rewritten, not forwarded. What google-genai's ``process_schema``
does for its own callers, and a little more:

- ``$ref`` into ``$defs``/``definitions`` is inlined; a recursive reference
  (Gemini schemas cannot recurse) becomes a bare ``OBJECT``;
- ``anyOf``/``oneOf`` with ``{"type": "null"}``, a ``type`` list with ``"null"``
  and ``enum`` with ``null`` become ``nullable``; ``oneOf`` becomes ``anyOf``;
  ``allOf`` is merged into one schema; ``const`` becomes a one-value ``enum``;
- ``type`` names are upper-cased (``STRING``, ``OBJECT``, ...); enum values
  become strings, as the API wants them (a number enum keeps its type, with
  ``format: enum``); ``required`` keeps only properties that exist;
- every other keyword is dropped.

Pure and cached: agents send the same tools on every request, so a schema is
converted once per distinct JSON text (``convert``).
"""

from __future__ import annotations

from typing import Any

from pydantic_core import to_json

__all__ = ["function_parameters", "response_schema"]

Schema = dict[str, Any]

_TYPES = {
    "string": "STRING",
    "number": "NUMBER",
    "integer": "INTEGER",
    "boolean": "BOOLEAN",
    "array": "ARRAY",
    "object": "OBJECT",
}
# Kept as they are: the rest of the Schema object's fields.
_KEPT = (
    "title",
    "description",
    "default",
    "example",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "minimum",
    "maximum",
    "pattern",
)
# The formats the Gemini API reads, by type; any other is refused upstream.
_FORMATS = {
    "STRING": frozenset({"enum", "date-time"}),
    "NUMBER": frozenset({"float", "double"}),
    "INTEGER": frozenset({"int32", "int64"}),
}
# Deeper than any real schema; a deeper one is cut there rather than recursed into.
MAX_DEPTH = 40
_CACHE_SIZE = 512
_cache: dict[tuple[bytes, bool], Schema | None] = {}


def function_parameters(schema: Schema) -> Schema | None:
    """A tool's ``parameters``; None when it takes no arguments (the API refuses an
    ``OBJECT`` with empty ``properties`` there)."""
    return _cached(schema, ordered=False)


def response_schema(schema: Schema) -> Schema | None:
    """A ``json_schema`` response format's schema, with ``propertyOrdering`` on each
    object so the answer's keys come in the schema's order (as google-genai sends it)."""
    return _cached(schema, ordered=True)


def _cached(schema: Schema, *, ordered: bool) -> Schema | None:
    key = (to_json(schema), ordered)
    try:
        return _cache[key]
    except KeyError:
        pass
    converted: Schema | None = _Converter(schema, ordered).convert(schema, 0, ())
    if not ordered and converted.get("type") == "OBJECT" and not converted.get("properties"):
        converted = None
    if len(_cache) >= _CACHE_SIZE:
        _cache.clear()
    _cache[key] = converted
    return converted


class _Converter:
    __slots__ = ("defs", "ordered")

    def __init__(self, root: Schema, ordered: bool) -> None:
        defs: dict[str, Any] = {}
        for key in ("definitions", "$defs"):
            found = root.get(key)
            if isinstance(found, dict):
                defs.update({f"#/{key}/{name}": value for name, value in found.items()})
        self.defs = defs
        self.ordered = ordered

    def convert(self, node: Any, depth: int, seen: tuple[str, ...]) -> Schema:
        if not isinstance(node, dict) or depth > MAX_DEPTH:
            return {}  # ``true``, or past any real depth: no constraint
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = self.defs.get(ref)
            if ref in seen or not isinstance(target, dict):
                return {"type": "OBJECT"}
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return self.convert({**target, **rest}, depth + 1, (*seen, ref))
        all_of = node.get("allOf")
        if isinstance(all_of, list) and all_of:
            return self.convert(_merge(node, all_of, self.defs), depth + 1, seen)

        out: Schema = {}
        nullable = node.get("nullable") is True
        variants = node.get("anyOf")
        if not isinstance(variants, list):
            variants = node.get("oneOf")
        if isinstance(variants, list) and variants:
            kept = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
            nullable = nullable or len(kept) < len(variants)
            if len(kept) == 1:  # Optional[X]: X, nullable
                rest = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
                merged = self.convert(
                    {**rest, **kept[0]} if isinstance(kept[0], dict) else rest, depth + 1, seen
                )
                if nullable:
                    merged["nullable"] = True
                return merged
            if kept:
                out["anyOf"] = [self.convert(v, depth + 1, seen) for v in kept]

        kind = node.get("type")
        if isinstance(kind, list):
            named = [t for t in kind if t != "null"]
            nullable = nullable or len(named) < len(kind)
            if len(named) == 1:
                kind = named[0]
            else:
                if named and "anyOf" not in out:
                    out["anyOf"] = [
                        self.convert({**node, "type": t}, depth + 1, seen) for t in named
                    ]
                kind = None
        elif kind == "null":
            nullable, kind = True, None
        gemini_type = _TYPES.get(kind) if isinstance(kind, str) else None
        if gemini_type is None and kind is None and "anyOf" not in out:
            if isinstance(node.get("properties"), dict):
                gemini_type = "OBJECT"
            elif "items" in node:
                gemini_type = "ARRAY"
        if gemini_type is not None:
            out["type"] = gemini_type

        for key in _KEPT:
            if key in node:
                out[key] = node[key]
        fmt = node.get("format")
        if gemini_type in _FORMATS and fmt in _FORMATS[gemini_type]:
            out["format"] = fmt

        values = node.get("enum")
        if "const" in node:
            values = [node["const"]]
        if isinstance(values, list):
            if None in values:
                nullable = True
            named_values = [
                v if isinstance(v, str) else to_json(v).decode() for v in values if v is not None
            ]
            if named_values:
                out["enum"] = named_values
                if gemini_type is None:
                    out["type"] = "STRING"
                elif gemini_type != "STRING":
                    out["format"] = "enum"

        if gemini_type == "OBJECT":
            properties = node.get("properties")
            if isinstance(properties, dict) and properties:
                converted = {
                    name: self.convert(sub, depth + 1, seen) for name, sub in properties.items()
                }
                out["properties"] = converted
                required = node.get("required")
                if isinstance(required, list):
                    kept_required = [name for name in required if name in converted]
                    if kept_required:
                        out["required"] = kept_required
                if self.ordered and len(converted) > 1:
                    out["propertyOrdering"] = list(converted)
        elif gemini_type == "ARRAY":
            items = node.get("items")
            if isinstance(items, list):  # the old tuple form: its first item's schema
                items = items[0] if items else None
            if isinstance(items, dict):
                out["items"] = self.convert(items, depth + 1, seen)
        if nullable:
            out["nullable"] = True
        return out


def _merge(node: Schema, parts: list[Any], defs: dict[str, Any]) -> Schema:
    """``allOf``: its schemas folded into one (properties and ``required`` joined)."""
    merged: Schema = {k: v for k, v in node.items() if k != "allOf"}
    properties: dict[str, Any] = dict(merged.get("properties") or {})
    required: list[Any] = list(merged.get("required") or [])
    for part in parts:
        if isinstance(part, dict) and isinstance(part.get("$ref"), str):
            part = defs.get(part["$ref"], {})
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                properties.update(value)
            elif key == "required" and isinstance(value, list):
                required.extend(name for name in value if name not in required)
            elif key not in merged:
                merged[key] = value
    if properties:
        merged["properties"] = properties
        merged.setdefault("type", "object")
    if required:
        merged["required"] = required
    return merged
