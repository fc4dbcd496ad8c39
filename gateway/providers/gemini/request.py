"""The canonical (OpenAI-shaped) chat request -> a Gemini ``generateContent`` body.

Pure: a request in, the body's JSON bytes out, or an ``InvalidRequest`` (400)
naming the client's own parameter when the request asks for something the
Gemini API cannot carry. What is translated, approximated and refused is
listed in docs/configuration.md ("type: gemini"); in short:

- ``system`` and ``developer`` messages -> ``systemInstruction``, in order,
  wherever they stood; ``user`` -> ``user``, ``assistant`` -> ``model``;
- parts: text; an image as a base64 data URL -> ``inlineData``, as an http(s)
  URL -> ``fileData`` (MIME type from the extension, else ``image/*``); audio
  and base64 files -> ``inlineData``;
- tool calls -> ``functionCall`` parts (arguments parsed; the call's
  ``extra_content.google.thought_signature`` back on the part as its
  ``thoughtSignature``); tool results -> ``functionResponse`` parts, named
  after the call they answer; consecutive turns of one role are merged (tool
  results and the user text after them make one user turn);
- tools, tool choice and the sampling and output options: options.py;
- refused: ``logit_bias``, files by id, part and tool-call types other than
  the ones above.

Fields the gateway does not model are not sent: the API refuses unknown fields.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic_core import from_json, to_json

from gateway.errors import InvalidRequest
from gateway.providers.gemini.options import add_tools, generation_config
from gateway.schemas.messages import (
    AssistantMessage,
    AudioPart,
    FilePart,
    FunctionMessage,
    FunctionToolCall,
    ImagePart,
    RefusalPart,
    TextPart,
    ToolMessage,
    UserMessage,
)
from gateway.schemas.openai import ChatCompletionRequest

__all__ = ["SKIP_SIGNATURE", "generate_body", "signature_of"]

Part = dict[str, Any]
Content = dict[str, Any]

# Google's documented stand-in for a thought signature the history lost (a client
# that drops ``extra_content``, a call another model made): Gemini 3 refuses a
# model turn whose function calls carry no signature at all; this passes, at the
# cost of the model's reasoning context.
SKIP_SIGNATURE = "skip_thought_signature_validator"
_MIME_BY_EXTENSION = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "heic": "image/heic",
    "heif": "image/heif",
    "bmp": "image/bmp",
}


def generate_body(request: ChatCompletionRequest) -> bytes:
    """The ``generateContent`` (and ``streamGenerateContent``) body for ``request``."""
    if request.logit_bias:
        raise InvalidRequest("logit_bias is not supported by this model", param="logit_bias")
    system: list[Part] = []
    contents: list[Content] = []
    names: dict[str, str] = {}  # tool_call_id -> the function it called
    for i, message in enumerate(request.messages):
        if isinstance(message, UserMessage):
            _add(contents, "user", _user_parts(message, i))
        elif isinstance(message, AssistantMessage):
            _add(contents, "model", _model_parts(message, i, names))
        elif isinstance(message, ToolMessage | FunctionMessage):
            _add(contents, "user", [_function_response(message, i, names)])
        else:  # system, developer: wherever they stand
            system.extend(_text_parts(message.content, f"messages[{i}].content"))

    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    add_tools(request, body)
    config = generation_config(request)
    if config:
        body["generationConfig"] = config
    return to_json(body)


# ---------------------------------------------------------------- messages


def _add(contents: list[Content], role: str, parts: list[Part]) -> None:
    """A turn's parts, merged into the turn before when it has the same role, so user
    and model turns alternate: tool results and the user text after them make one
    user turn (as google-genai groups parts that follow each other)."""
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _text_parts(content: str | list[Any] | None, param: str) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}]
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, TextPart):
            raise _part_refused(part, f"{param}[{j}]")
        parts.append({"text": part.text})
    return parts


def _user_parts(message: UserMessage, i: int) -> list[Part]:
    content = message.content
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[Part] = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            parts.append({"text": part.text})
        elif isinstance(part, ImagePart):
            parts.append(_image(part.image_url.url))
        elif isinstance(part, AudioPart):
            audio = part.input_audio
            parts.append({"inlineData": {"mimeType": f"audio/{audio.format}", "data": audio.data}})
        elif isinstance(part, FilePart) and part.file.file_data:
            inline = _data_url(part.file.file_data)
            if inline is None:
                raise InvalidRequest(
                    "a file must be a base64 data URL (data:application/pdf;base64,...)",
                    param=f"messages[{i}].content[{j}].file.file_data",
                )
            parts.append(inline)
        elif isinstance(part, FilePart):
            raise InvalidRequest(
                "files by id cannot be sent to this model: send file_data",
                param=f"messages[{i}].content[{j}].file",
            )
        else:
            raise _part_refused(part, f"messages[{i}].content[{j}]")
    return parts


def _image(url: str) -> Part:
    inline = _data_url(url) if url[:5].lower() == "data:" else None
    if inline is not None:
        return inline
    path = urlsplit(url).path
    extension = path.rpartition(".")[2].lower() if "." in path.rpartition("/")[2] else ""
    return {"fileData": {"mimeType": _MIME_BY_EXTENSION.get(extension, "image/*"), "fileUri": url}}


def _data_url(url: str) -> Part | None:
    """``data:<mime>[;param=value...];base64,<data>`` -> an ``inlineData`` part."""
    head, comma, data = url.partition(",")
    if not comma or head[:5].lower() != "data:" or not head.lower().endswith(";base64"):
        return None
    mime = head[5:].partition(";")[0] or "application/octet-stream"
    return {"inlineData": {"mimeType": mime, "data": data}}


def _model_parts(message: AssistantMessage, i: int, names: dict[str, str]) -> list[Part]:
    parts: list[Part] = []
    content = message.content
    if isinstance(content, str):
        if content:
            parts.append({"text": content})
    elif content is not None:
        for j, part in enumerate(content):
            if isinstance(part, TextPart | RefusalPart):
                text = part.text if isinstance(part, TextPart) else part.refusal
                if text:
                    parts.append({"text": text})
            else:
                raise _part_refused(part, f"messages[{i}].content[{j}]")
    if not parts and message.refusal:
        parts.append({"text": message.refusal})
    signature = signature_of(message.__pydantic_extra__)
    if signature and parts:  # a text answer's signature, on its last text part
        parts[-1]["thoughtSignature"] = signature

    calls: list[Part] = []
    signed = False
    for j, call in enumerate(message.tool_calls or ()):
        if not isinstance(call, FunctionToolCall):
            raise InvalidRequest(
                f"tool calls of type '{call.type}' cannot be sent to this model",
                param=f"messages[{i}].tool_calls[{j}].type",
            )
        names[call.id] = call.function.name
        part: Part = {
            "functionCall": {
                "id": call.id,
                "name": call.function.name,
                "args": _arguments(call.function.arguments, f"messages[{i}].tool_calls[{j}]"),
            }
        }
        signature = signature_of(call.__pydantic_extra__)
        if signature:
            part["thoughtSignature"] = signature
            signed = True
        calls.append(part)
    legacy = message.function_call
    if legacy is not None:
        calls.append(
            {
                "functionCall": {
                    "name": legacy.name,
                    "args": _arguments(legacy.arguments, f"messages[{i}].function_call"),
                }
            }
        )
    if calls and not signed:
        calls[0]["thoughtSignature"] = SKIP_SIGNATURE
    parts.extend(calls)
    return parts


def signature_of(extra: dict[str, Any] | None) -> str | None:
    """``extra_content.google.thought_signature`` (Google's OpenAI-compatible
    endpoint's place for it) of a message or tool call, if it has one."""
    if not extra:
        return None
    holder = extra.get("extra_content")
    google = holder.get("google") if isinstance(holder, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def _arguments(arguments: str, param: str) -> dict[str, Any]:
    """A tool call's arguments (JSON text) as the object ``functionCall.args`` is."""
    if not arguments.strip():
        return {}  # some clients send "" for a call without arguments
    try:
        value = from_json(arguments)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(
            "a tool call's arguments must be a JSON object", param=f"{param}.function.arguments"
        )
    return value


def _function_response(
    message: ToolMessage | FunctionMessage, i: int, names: dict[str, str]
) -> Part:
    if isinstance(message, FunctionMessage):  # legacy: named, no id
        text = message.content or ""
        return {"functionResponse": {"name": message.name, "response": _response(text)}}
    call_id = message.tool_call_id
    name = names.get(call_id) or message.name
    if not name:
        raise InvalidRequest(
            f"tool_call_id '{call_id[:64]}' answers no tool call of an earlier assistant message",
            param=f"messages[{i}].tool_call_id",
        )
    content = message.content
    if isinstance(content, str):
        text = content
    else:
        text = "".join(part["text"] for part in _text_parts(content, f"messages[{i}].content"))
    return {"functionResponse": {"id": call_id, "name": name, "response": _response(text)}}


def _response(text: str) -> dict[str, Any]:
    """A tool's result as ``functionResponse.response``: the result itself when it is a
    JSON object, else ``{"content": <the text>}``."""
    if text[:1] == "{":
        try:
            value = from_json(text)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
    return {"content": text}


def _part_refused(part: Any, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"content parts of type '{part.type}' cannot be sent to this model", param=f"{param}.type"
    )
