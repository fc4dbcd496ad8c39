"""An Anthropic Messages request -> the canonical chat request, and the client's own body.

``translate`` makes the ``ChatCompletionRequest`` that admission, routing and
every non-Anthropic provider work with (docs/wire-formats.md, "Anthropic
Messages"):

- ``system`` -> a first ``system`` message; text blocks -> text parts;
  ``image`` (base64 or URL) -> ``image_url`` parts (a data URL for base64);
  a base64 PDF ``document`` -> a ``file`` part, a text ``document`` -> text;
- ``tool_use`` blocks -> the assistant's ``tool_calls`` (``input`` as JSON
  text); ``tool_result`` blocks -> ``tool`` messages, in order, before the rest
  of their user turn (images in a result follow it in a user message);
- ``thinking`` and ``redacted_thinking`` blocks are dropped (the OpenAI shape
  cannot carry them back); ``cache_control`` is dropped too;
- ``tools`` -> function tools; ``tool_choice`` auto/any/tool/none ->
  ``auto``/``required``/the function/``none``, ``disable_parallel_tool_use`` ->
  ``parallel_tool_calls: false``; ``max_tokens``, ``stop_sequences`` (-> ``stop``),
  ``temperature``, ``top_p``, ``stream`` (with ``stream_options.include_usage``
  always on); ``metadata.user_id`` -> ``user``;
- Anthropic's own fields (``ANTHROPIC_ONLY``: ``top_k``, ``thinking``, ...) are
  not carried; any other field the gateway does not know is, as on the OpenAI
  ingress.

What cannot be translated (a server tool, a block of a type the gateway does not
know, a PDF by URL, more than 4 stop sequences) does not fail the request at
once: a provider that speaks the Messages API gets the client's own body
(``Native``) and needs no translation. The refusal is kept and raised only if
the call is answered by translation; meanwhile the canonical request holds the
item as JSON text, so the reservation still counts it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_json

from gateway.errors import InvalidRequest
from gateway.schemas.anthropic import (
    Base64Source,
    CustomTool,
    DocumentBlock,
    ImageBlock,
    MessagesRequest,
    OtherBlock,
    RedactedThinkingBlock,
    TextBlock,
    TextSource,
    ThinkingBlock,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    URLSource,
)
from gateway.schemas.openai import ChatCompletionRequest

__all__ = ["ANTHROPIC_ONLY", "FORWARDED_HEADERS", "Native", "translate", "with_model"]

# Fields of the Messages API with no OpenAI twin: not carried into the canonical request.
ANTHROPIC_ONLY = frozenset(
    {
        "top_k",
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
        "context_management",
        "output_config",
        "output_format",
        "cache_control",
    }
)
# The client's headers a provider that speaks the Messages API may forward.
FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")
_MAX_STOP = 4  # the canonical request's bound (OpenAI's)

Part = dict[str, Any]


class _Translation:
    """One translation's state: the canonical messages, and the first refusal met."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.refusal: InvalidRequest | None = None

    def refuse(self, message: str, param: str) -> None:
        if self.refusal is None:
            self.refusal = InvalidRequest(message, param=param)

    def kept(self, block: Any, path: str, what: str) -> Part:
        """An untranslatable block: refused if translated, counted as its JSON meanwhile."""
        self.refuse(f"{what} cannot be sent to this model", path)
        return {"type": "text", "text": to_json(block).decode()}


def translate(request: MessagesRequest) -> tuple[ChatCompletionRequest, InvalidRequest | None]:
    """The canonical chat request for ``request``, and what refuses its translation."""
    state = _Translation()
    system = request.system
    if isinstance(system, str):
        if system:
            state.messages.append({"role": "system", "content": system})
    elif system:
        state.messages.append(
            {"role": "system", "content": [{"type": "text", "text": b.text} for b in system]}
        )
    for i, message in enumerate(request.messages):
        if message.role == "user":
            _user(state, message.content, i)
        else:
            _assistant(state, message.content, i)
    body: dict[str, Any] = {
        "model": request.model,
        "messages": state.messages,
        "max_tokens": request.max_tokens,
    }
    extra = request.__pydantic_extra__
    if extra:
        body.update((k, v) for k, v in extra.items() if k not in ANTHROPIC_ONLY)
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    stop = request.stop_sequences
    if stop:
        if len(stop) > _MAX_STOP:
            state.refuse(f"this model takes at most {_MAX_STOP} stop sequences", "stop_sequences")
            stop = stop[:_MAX_STOP]
        body["stop"] = stop
    for name in ("temperature", "top_p"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.metadata is not None and request.metadata.user_id:
        body["user"] = request.metadata.user_id
    _tools(state, request, body)
    try:
        chat = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:  # a value the Messages API takes and OpenAI's refuses
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        state.refuse(
            f"the request cannot be translated for this model: {where}: {first['msg']}", where
        )
        # For admission and routing only: the conversation as JSON text, counted high.
        text = to_json([m.model_dump(exclude_unset=True) for m in request.messages]).decode()
        body["messages"] = [{"role": "user", "content": text}]
        for name in ("tools", "tool_choice", "parallel_tool_calls", "stop"):
            body.pop(name, None)
        chat = ChatCompletionRequest.model_validate(
            {k: v for k, v in body.items() if k not in extra} if extra else body
        )
    return chat, state.refusal


def _user(state: _Translation, content: Any, i: int) -> None:
    if isinstance(content, str):
        state.messages.append({"role": "user", "content": content})
        return
    parts: list[Part] = []
    for j, block in enumerate(content):
        path = f"messages[{i}].content[{j}]"
        if isinstance(block, ToolResultBlock):
            _tool_result(state, block, path)
        elif isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            continue
        else:
            parts.append(_part(state, block, path))
    if parts:
        state.messages.append({"role": "user", "content": parts})


def _part(state: _Translation, block: Any, path: str) -> Part:
    """A user block (text, image, document) as a content part."""
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    if isinstance(block, ImageBlock):
        source = block.source
        if isinstance(source, Base64Source):
            url = f"data:{source.media_type};base64,{source.data}"
            return {"type": "image_url", "image_url": {"url": url}}
        if isinstance(source, URLSource):
            return {"type": "image_url", "image_url": {"url": source.url}}
        return state.kept(block, f"{path}.source.type", f"images of source '{source.type}'")
    if isinstance(block, DocumentBlock):
        source = block.source
        if isinstance(source, Base64Source) and source.media_type == "application/pdf":
            data = f"data:application/pdf;base64,{source.data}"
            file: Part = {"file_data": data}
            if block.title:
                file["filename"] = block.title
            return {"type": "file", "file": file}
        if isinstance(source, TextSource):
            return {"type": "text", "text": source.data}
        return state.kept(block, f"{path}.source", "documents other than base64 PDFs or text")
    kind = block.type if isinstance(block, OtherBlock) else getattr(block, "type", "?")
    return state.kept(block, f"{path}.type", f"content blocks of type '{kind}'")


def _tool_result(state: _Translation, block: ToolResultBlock, path: str) -> None:
    content = block.content
    images: list[Part] = []
    if content is None or isinstance(content, str):
        text: str | list[Part] = content or ""
    else:
        texts: list[Part] = []
        for k, item in enumerate(content):
            part = _part(state, item, f"{path}.content[{k}]")
            (texts if part["type"] == "text" else images).append(part)
        text = texts or ""
    state.messages.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
    if images:
        state.messages.append({"role": "user", "content": images})


def _assistant(state: _Translation, content: Any, i: int) -> None:
    if isinstance(content, str):
        state.messages.append({"role": "assistant", "content": content})
        return
    texts: list[Part] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        path = f"messages[{i}].content[{j}]"
        if isinstance(block, TextBlock):
            texts.append({"type": "text", "text": block.text})
        elif isinstance(block, ToolUseBlock):
            arguments = to_json(block.input).decode()
            function = {"name": block.name, "arguments": arguments}
            calls.append({"id": block.id, "type": "function", "function": function})
        elif isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            continue
        else:
            kind = getattr(block, "type", "?")
            texts.append(state.kept(block, f"{path}.type", f"content blocks of type '{kind}'"))
    message: dict[str, Any] = {"role": "assistant", "content": texts or None}
    if calls:
        message["tool_calls"] = calls
    if texts or calls:
        state.messages.append(message)


def _tools(state: _Translation, request: MessagesRequest, body: dict[str, Any]) -> None:
    tools: list[dict[str, Any]] = []
    for k, tool in enumerate(request.tools or ()):
        if isinstance(tool, CustomTool):
            function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
            if tool.description is not None:
                function["description"] = tool.description
            tools.append({"type": "function", "function": function})
        else:
            state.refuse(
                f"tools of type '{tool.type}' cannot be sent to this model", f"tools[{k}].type"
            )
    if tools:
        body["tools"] = tools
    choice = request.tool_choice
    if choice is None or not tools:  # OpenAI refuses a tool_choice without tools
        return
    if isinstance(choice, ToolChoiceNone):
        body["tool_choice"] = "none"
        return
    if isinstance(choice, ToolChoiceAuto):
        body["tool_choice"] = "auto"
    elif isinstance(choice, ToolChoiceAny):
        body["tool_choice"] = "required"
    elif isinstance(choice, ToolChoiceTool):
        body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    if choice.disable_parallel_tool_use:
        body["parallel_tool_calls"] = False


# ---------------------------------------------------------------- the client's own body


class Native:
    """The client's request as it came, for a provider that speaks the Messages API.

    ``body_for(model)`` is the client's bytes with only the top-level ``model``
    value replaced: nothing else is parsed and written again, so ``cache_control``,
    thinking blocks, key order and unknown fields reach the upstream byte for byte.
    """

    __slots__ = ("body", "headers", "refusal")

    def __init__(
        self, body: bytes, headers: Mapping[str, str], refusal: InvalidRequest | None
    ) -> None:
        self.body = body
        self.headers = headers  # the client's anthropic-version / anthropic-beta
        self.refusal = refusal  # raised if the call is translated instead

    def body_for(self, model: str) -> bytes:
        return with_model(self.body, model)


_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"


def with_model(body: bytes, model: str) -> bytes:
    """``body`` (a JSON object already validated) with every top-level ``model`` value
    replaced by ``model``; the rest of the bytes as they were.

    The object's top level is walked with the standard library's C scanner, one
    value at a time; a duplicate ``model`` key is replaced too, so no later one can
    name another model than the one admitted.
    """
    text = body.decode("utf-8")
    spans: list[tuple[int, int]] = []
    scan = _DECODER.scan_once
    try:
        i = text.index("{") + 1
        while True:
            while text[i] in _SPACE:
                i += 1
            if text[i] == "}":
                break
            if text[i] == ",":
                i += 1
                continue
            key, i = scan(text, i)  # a string key
            while text[i] in _SPACE:
                i += 1
            i += 1  # the colon
            while text[i] in _SPACE:
                i += 1
            start = i
            _, i = scan(text, i)
            if key == "model":
                spans.append((start, i))
    except (StopIteration, ValueError, IndexError):  # never for a body pydantic read
        raise InvalidRequest("The request body is not a JSON object.") from None
    if not spans:
        return body
    value = json.dumps(model)
    out: list[str] = []
    last = 0
    for start, stop in spans:
        out += (text[last:start], value)
        last = stop
    out.append(text[last:])
    # Decoding and encoding UTF-8 again gives back the same bytes.
    return "".join(out).encode("utf-8")
