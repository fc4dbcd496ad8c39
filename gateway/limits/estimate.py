"""Offline token estimates for reservations: no tokenizer, no download, and high.

A reservation that is too low lets a key overshoot its tpm or budget by the
difference, so these count about one token per three bytes of UTF-8 (real
BPE tokenizers average nearer four for English) plus per-message overhead.
Everything a provider turns into prompt tokens is counted: text and its parts,
names, tool definitions, tool calls (name and arguments) and their results, the
response format's schema, and media by the rules below. A part, tool or tool
call of a type the gateway does not know (a provider's own, such as vLLM's
``video_url``) counts as its JSON text, which errs high for text and for base64
media alike. The reservation is settled against the provider's own count
afterwards (docs/limits.md).
"""

from __future__ import annotations

from pydantic_core import to_json

from gateway.schemas.messages import (
    AssistantMessage,
    AudioPart,
    ContentPart,
    CustomTool,
    CustomToolCall,
    FilePart,
    FunctionCall,
    FunctionTool,
    FunctionToolCall,
    ImagePart,
    JSONSchemaFormat,
    Message,
    RefusalPart,
    TextPart,
    ToolCall,
    ToolMessage,
)
from gateway.schemas.openai import ChatCompletionRequest, EmbeddingRequest

# An image, whatever its size or detail: above Anthropic's largest (about 1,600 for
# 1.15 megapixels), OpenAI's high-detail tiles (765 for 1024x1024) and Gemini's 258.
IMAGE_TOKENS = 1_600
# Audio: one token per 128 characters of base64, above 25 tokens a second for an
# mp3 of 32 kbit/s or more (OpenAI counts about 10 a second).
AUDIO_CHARS_PER_TOKEN = 128
# A file (a PDF: text plus an image of each page): one token per 16 characters of
# its base64, and never less than an image; a file sent by id counts as one image.
FILE_CHARS_PER_TOKEN = 16
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3
# The JSON around a tool call's name and arguments ({"id": ..., "type": "function",
# "function": {...}} in a message's "tool_calls"), or around a tool's name,
# description and parameters, counted as text and rounded up.
TOOL_CALL_OVERHEAD = 32
TOOL_OVERHEAD = 32


def text_tokens(text: str) -> int:
    # ASCII text is as many bytes as characters (a flag check, no copy made).
    size = len(text) if text.isascii() else len(text.encode())
    return (size + 2) // 3


def _part_tokens(part: ContentPart) -> int:
    if isinstance(part, TextPart):
        return text_tokens(part.text)
    if isinstance(part, ImagePart):
        return IMAGE_TOKENS
    if isinstance(part, AudioPart):
        return len(part.input_audio.data) // AUDIO_CHARS_PER_TOKEN + 1
    if isinstance(part, FilePart):
        data = part.file.file_data
        return max(IMAGE_TOKENS, len(data) // FILE_CHARS_PER_TOKEN if data else 0)
    if isinstance(part, RefusalPart):
        return text_tokens(part.refusal)
    return json_tokens(part)  # OtherPart: a type the gateway does not know


def json_tokens(value: object) -> int:
    # A model is serialised with the fields it kept: everything the client sent.
    return (len(to_json(value)) + 2) // 3


def _call_tokens(call: ToolCall | FunctionCall) -> int:
    if isinstance(call, FunctionToolCall):
        name, text, call_id = call.function.name, call.function.arguments, call.id
    elif isinstance(call, CustomToolCall):
        name, text, call_id = call.custom.name, call.custom.input, call.id
    elif isinstance(call, FunctionCall):  # the legacy function_call
        name, text, call_id = call.name, call.arguments, ""
    else:  # OtherToolCall: a type the gateway does not know
        return TOOL_CALL_OVERHEAD + json_tokens(call)
    return TOOL_CALL_OVERHEAD + text_tokens(name) + text_tokens(text) + text_tokens(call_id)


def _tool_tokens(name: str, description: str | None, schema: object) -> int:
    total = TOOL_OVERHEAD + text_tokens(name)
    if description:
        total += text_tokens(description)
    if schema:
        total += json_tokens(schema)
    return total


def prompt_tokens(request: ChatCompletionRequest) -> int:
    messages = request.messages
    total = REPLY_PRIMING + MESSAGE_OVERHEAD * len(messages)
    for message in messages:
        content = message.content
        if isinstance(content, str):
            total += text_tokens(content)
        elif content:
            total += sum(_part_tokens(part) for part in content)
        # The rest is rare: kept off the common path (a plain system or user message).
        if message.name or message.__pydantic_extra__ or type(message) in _WITH_MORE:
            total += _more_tokens(message)
    if request.tools or request.functions or request.response_format:
        total += _tools_tokens(request)
    return total


_WITH_MORE = (AssistantMessage, ToolMessage)


def _more_tokens(message: Message) -> int:
    total = text_tokens(message.name) if message.name else 0
    if message.__pydantic_extra__:  # fields the gateway does not know still reach the model
        total += json_tokens(message.__pydantic_extra__)
    if isinstance(message, AssistantMessage):
        if message.refusal:
            total += text_tokens(message.refusal)
        for call in message.tool_calls or ():
            total += _call_tokens(call)
        if message.function_call:
            total += _call_tokens(message.function_call)
    elif isinstance(message, ToolMessage):
        total += text_tokens(message.tool_call_id)
    return total


def _tools_tokens(request: ChatCompletionRequest) -> int:
    total = 0
    for tool in request.tools or ():
        if isinstance(tool, FunctionTool):
            function = tool.function
            total += _tool_tokens(function.name, function.description, function.parameters)
        elif isinstance(tool, CustomTool):  # its grammar is its schema
            custom = tool.custom
            total += _tool_tokens(custom.name, custom.description, custom.format)
        else:  # OtherTool: a type the gateway does not know
            total += TOOL_OVERHEAD + json_tokens(tool)
    for function in request.functions or ():
        total += _tool_tokens(function.name, function.description, function.parameters)
    response_format = request.response_format
    if isinstance(response_format, JSONSchemaFormat):
        schema = response_format.json_schema
        total += _tool_tokens(schema.name, schema.description, schema.schema_)
    return total


def embedding_tokens(request: EmbeddingRequest) -> int:
    inputs = request.input if isinstance(request.input, list) else [request.input]
    total = 0
    for item in inputs:
        if isinstance(item, str):
            total += text_tokens(item)
        elif isinstance(item, int):
            total += 1
        else:
            total += len(item)
    return max(1, total)
