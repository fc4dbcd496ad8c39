"""The canonical (OpenAI-shaped) chat request -> an Anthropic Messages request body.

Pure: a request in, body bytes out, or an ``InvalidRequest`` (400) naming the
client's own parameter when the request asks for something the Messages API
cannot carry. What is translated, approximated and refused is listed in
docs/configuration.md ("type: anthropic"); in short:

- ``system`` and ``developer`` messages become the top-level ``system`` blocks,
  in order, wherever they stood in the conversation; consecutive turns of one
  role are merged (the API alternates user and assistant); ``tool`` messages
  become ``tool_result`` blocks of a user turn;
- parts: text; ``image_url`` as an http(s) URL or a base64 data URL (JPEG,
  PNG, GIF, WebP); a ``file`` part holding a base64 PDF as a ``document``. A
  ``cache_control`` on a part, a tool or a message is kept (on the message's
  last block);
- ``temperature`` above Anthropic's 1 is clamped to 1; ``max_tokens`` is
  required there: ``max_completion_tokens``, else ``max_tokens``, else
  ``DEFAULT_MAX_TOKENS``;
- ``response_format`` ``json_schema`` -> ``output_config.format``;
  ``json_object`` -> an instruction appended to the system prompt (the API has
  no schema-less JSON mode); ``reasoning_effort`` -> ``output_config.effort``;
- refused: ``n`` > 1, ``logprobs``, ``logit_bias``, non-zero penalties, the
  legacy ``functions``/``function_call``, audio parts, files by id, tool and
  part types other than function tools and the parts above.

Fields the gateway does not model are not sent (the API refuses unknown
fields), except Anthropic's own ``NATIVE_FIELDS``, which pass through as sent.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import from_json, to_json

from gateway.errors import InvalidRequest
from gateway.schemas.messages import (
    AllowedToolsChoice,
    AssistantMessage,
    DeveloperMessage,
    FilePart,
    FunctionTool,
    FunctionToolCall,
    FunctionToolChoice,
    ImagePart,
    JSONObjectFormat,
    JSONSchemaFormat,
    RefusalPart,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
)
from gateway.schemas.openai import ChatCompletionRequest

__all__ = ["DEFAULT_MAX_TOKENS", "JSON_INSTRUCTION", "NATIVE_FIELDS", "messages_body"]

# The Messages API requires max_tokens; the gateway's own reservation default
# (``server.default_max_output_tokens``) is the same number.
DEFAULT_MAX_TOKENS = 4096
# Anthropic's own request fields, passed through when a client sends them.
NATIVE_FIELDS = ("top_k", "thinking", "cache_control")
JSON_INSTRUCTION = (
    "Answer with one JSON object and nothing else: no text before or after it, "
    "no Markdown code fence."
)
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_EFFORTS = {"minimal": "low", "none": None}  # OpenAI's values with no Anthropic twin
_SERVICE_TIERS = frozenset({"auto", "standard_only"})
_EMPTY_SCHEMA = {"type": "object", "properties": {}}

Block = dict[str, Any]


def messages_body(request: ChatCompletionRequest, model: str, *, stream: bool) -> bytes:
    """The Messages API body for ``request``, sent to ``model``."""
    _refuse_unsupported(request)
    system: list[Block] = []
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS,
    }
    messages = _messages(request, system)
    output: dict[str, Any] = {}
    response_format = request.response_format
    if isinstance(response_format, JSONSchemaFormat) and response_format.json_schema.schema_:
        output["format"] = {"type": "json_schema", "schema": response_format.json_schema.schema_}
    elif isinstance(response_format, JSONObjectFormat | JSONSchemaFormat):
        system.append({"type": "text", "text": JSON_INSTRUCTION})
    if system:
        body["system"] = system
    body["messages"] = messages
    if request.tools:
        _tools(request, body)
    if request.stop:
        body["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, 1)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if request.service_tier in _SERVICE_TIERS:
        body["service_tier"] = request.service_tier
    effort = request.reasoning_effort
    if effort:
        effort = _EFFORTS.get(effort, effort)
        if effort:
            output["effort"] = effort
    if output:
        body["output_config"] = output
    extra = request.__pydantic_extra__
    if extra:
        for name in NATIVE_FIELDS:
            if name in extra:
                body[name] = extra[name]
    if stream:
        body["stream"] = True
    return to_json(body)


def _refuse_unsupported(request: ChatCompletionRequest) -> None:
    if request.n is not None and request.n > 1:
        raise InvalidRequest(
            "this model can make one choice per request ('n' must be 1)", param="n"
        )
    if request.logprobs:
        raise InvalidRequest("this model does not return log probabilities", param="logprobs")
    if request.logit_bias:
        raise InvalidRequest("this model does not take 'logit_bias'", param="logit_bias")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(request, name):
            raise InvalidRequest(f"this model does not take '{name}' (only 0)", param=name)
    for name in ("functions", "function_call"):
        if getattr(request, name) is not None:
            raise InvalidRequest(f"'{name}' is not supported here: use 'tools'", param=name)


def _cache_control(block: Block, extra: dict[str, Any] | None) -> Block:
    if extra:
        control = extra.get("cache_control")
        if control is not None:
            block["cache_control"] = control
    return block


# ---------------------------------------------------------------- messages


def _messages(request: ChatCompletionRequest, system: list[Block]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(request.messages):
        if isinstance(message, UserMessage):
            role, blocks = "user", _user_blocks(message.content, i)
        elif isinstance(message, AssistantMessage):
            role, blocks = "assistant", _assistant_blocks(message, i)
        elif isinstance(message, ToolMessage):
            role, blocks = "user", [_tool_result(message, i)]
        elif isinstance(message, SystemMessage | DeveloperMessage):
            blocks = _text_blocks(message.content, f"messages[{i}].content")
            if blocks:
                _cache_control(blocks[-1], message.__pydantic_extra__)
            system.extend(blocks)
            continue
        else:  # the legacy function role
            raise InvalidRequest(
                "messages with role 'function' are not supported here: use 'tool' messages",
                param=f"messages[{i}].role",
            )
        if not blocks:
            continue  # an assistant turn with nothing in it (content "" and no tool calls)
        _cache_control(blocks[-1], message.__pydantic_extra__)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return turns


def _text_blocks(content: str | list[Any], path: str) -> list[Block]:
    """Text content as text blocks; empty texts left out (the API refuses empty blocks)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, part in enumerate(content):
        if not isinstance(part, TextPart):
            raise _part_refused(part, f"{path}[{j}]")
        if part.text:
            blocks.append(
                _cache_control({"type": "text", "text": part.text}, part.__pydantic_extra__)
            )
    return blocks


def _part_refused(part: Any, path: str) -> InvalidRequest:
    return InvalidRequest(
        f"content parts of type '{part.type}' cannot be sent to this model", param=f"{path}.type"
    )


def _user_blocks(content: str | list[Any], i: int) -> list[Block]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            block = {"type": "text", "text": part.text}
        elif isinstance(part, ImagePart):
            block = _image(part.image_url.url, f"messages[{i}].content[{j}].image_url.url")
        elif isinstance(part, FilePart):
            block = _document(part, f"messages[{i}].content[{j}].file")
        else:
            raise _part_refused(part, f"messages[{i}].content[{j}]")
        blocks.append(_cache_control(block, part.__pydantic_extra__))
    return blocks


def _data_url(url: str) -> tuple[str, str]:
    """A base64 data URL's media type (lower case) and payload."""
    head, _, data = url.partition(",")
    return head[5:].partition(";")[0].lower(), data


def _image(url: str, path: str) -> Block:
    if url[:5].lower() != "data:":
        return {"type": "image", "source": {"type": "url", "url": url}}
    media_type, data = _data_url(url)
    if media_type not in _IMAGE_TYPES:
        raise InvalidRequest(
            f"images of type '{media_type}' cannot be sent to this model (JPEG, PNG, GIF or WebP)",
            param=path,
        )
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _document(part: FilePart, path: str) -> Block:
    data_url = part.file.file_data
    if not data_url:
        raise InvalidRequest(
            "files by id cannot be sent to this model: send 'file_data'", param=f"{path}.file_id"
        )
    media_type, data = _data_url(data_url) if data_url[:5].lower() == "data:" else ("", "")
    if media_type != "application/pdf":
        raise InvalidRequest(
            "files other than a base64 PDF data URL cannot be sent to this model",
            param=f"{path}.file_data",
        )
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": media_type, "data": data},
    }


def _assistant_blocks(message: AssistantMessage, i: int) -> list[Block]:
    content = message.content
    if isinstance(content, str):
        blocks = [{"type": "text", "text": content}] if content else []
    elif content:
        blocks = []
        for j, part in enumerate(content):
            if isinstance(part, TextPart | RefusalPart):
                text = part.text if isinstance(part, TextPart) else part.refusal
                if text:
                    blocks.append(
                        _cache_control({"type": "text", "text": text}, part.__pydantic_extra__)
                    )
            else:
                raise _part_refused(part, f"messages[{i}].content[{j}]")
    else:
        blocks = []
    if not blocks and message.refusal:
        blocks.append({"type": "text", "text": message.refusal})
    if message.function_call is not None:
        raise InvalidRequest(
            "'function_call' is not supported here: use 'tool_calls'",
            param=f"messages[{i}].function_call",
        )
    for j, call in enumerate(message.tool_calls or ()):
        if not isinstance(call, FunctionToolCall):
            raise InvalidRequest(
                f"tool calls of type '{call.type}' cannot be sent to this model",
                param=f"messages[{i}].tool_calls[{j}].type",
            )
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.function.name,
                "input": _arguments(call.function.arguments, i, j),
            }
        )
    return blocks


def _arguments(arguments: str, i: int, j: int) -> dict[str, Any]:
    """A tool call's arguments (JSON text) as the object Anthropic's ``input`` is."""
    if not arguments.strip():
        return {}  # some clients send "" for a call without arguments
    try:
        value = from_json(arguments)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(
            "a tool call's arguments must be a JSON object",
            param=f"messages[{i}].tool_calls[{j}].function.arguments",
        )
    return value


def _tool_result(message: ToolMessage, i: int) -> Block:
    block: Block = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    content = message.content
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        blocks = _text_blocks(content, f"messages[{i}].content")
        if blocks:
            block["content"] = blocks
    return block


# ---------------------------------------------------------------- tools


def _tools(request: ChatCompletionRequest, body: dict[str, Any]) -> None:
    tools: list[Block] = []
    for j, tool in enumerate(request.tools or ()):
        if not isinstance(tool, FunctionTool):
            raise InvalidRequest(
                f"tools of type '{tool.type}' cannot be sent to this model",
                param=f"tools[{j}].type",
            )
        function = tool.function
        schema = function.parameters or _EMPTY_SCHEMA
        if "type" not in schema:
            schema = {"type": "object", **schema}
        out: Block = {"name": function.name}
        if function.description:
            out["description"] = function.description
        out["input_schema"] = schema
        if function.strict:
            out["strict"] = True
        tools.append(_cache_control(out, tool.__pydantic_extra__))
    choice = request.tool_choice
    anthropic_choice: Block | None = None
    if choice == "auto":
        anthropic_choice = {"type": "auto"}
    elif choice == "required":
        anthropic_choice = {"type": "any"}
    elif choice == "none":
        anthropic_choice = {"type": "none"}
    elif isinstance(choice, FunctionToolChoice):
        anthropic_choice = {"type": "tool", "name": choice.function.name}
    elif isinstance(choice, AllowedToolsChoice):
        allowed = _allowed_names(choice)
        tools = [tool for tool in tools if tool["name"] in allowed]
        anthropic_choice = {"type": "auto" if choice.allowed_tools.mode == "auto" else "any"}
    elif choice is not None:
        raise InvalidRequest(
            f"a tool_choice of type '{choice.type}' cannot be sent to this model",
            param="tool_choice.type",
        )
    if request.parallel_tool_calls is False:
        if anthropic_choice is None:
            anthropic_choice = {"type": "auto"}
        if anthropic_choice["type"] != "none":
            anthropic_choice["disable_parallel_tool_use"] = True
    body["tools"] = tools
    if anthropic_choice is not None:
        body["tool_choice"] = anthropic_choice


def _allowed_names(choice: AllowedToolsChoice) -> set[str]:
    names = set()
    for k, entry in enumerate(choice.allowed_tools.tools):
        function = entry.get("function")
        name = function.get("name") if isinstance(function, dict) else entry.get("name")
        if entry.get("type") != "function" or not isinstance(name, str):
            raise InvalidRequest(
                "only function tools can be allowed for this model",
                param=f"tool_choice.allowed_tools.tools[{k}]",
            )
        names.add(name)
    return names
