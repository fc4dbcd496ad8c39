"""Anthropic Messages wire models: the request, the answer, the stream events, the error.

The request is what ``POST /v1/messages`` takes (docs/wire-formats.md,
"Anthropic Messages"): typed down to its content blocks, tools and tool choice,
with Anthropic's bounds (``temperature`` 0-1, ``max_tokens`` required), so a
bad one is a 400 naming the client's own path. Like every wire model here they
keep fields they do not declare (``extra="allow"``): a block or tool of a type
the gateway does not know (``server_tool_use``, ``web_search_20250305``) is kept
as sent, which is what a pass-through to Anthropic needs. The answer, stream
event and error models say what the gateway sends back; the codec
(gateway/ingress/anthropic/) builds those bytes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import Field
from pydantic_core import ValidationError

from gateway.schemas.error_paths import for_client
from gateway.schemas.messages import FAIL_FAST, IN_ORDER, STRICT, OpenModel, Unknown
from gateway.schemas.openai import MAX_MESSAGES, MAX_TOKENS

# ---------------------------------------------------------------- content blocks


class CacheControl(OpenModel):
    type: str  # "ephemeral"


class TextBlock(OpenModel):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None


class Base64Source(OpenModel):
    type: Literal["base64"]
    media_type: str  # image/jpeg, image/png, image/gif, image/webp; application/pdf
    data: str


class URLSource(OpenModel):
    type: Literal["url"]
    url: str


class TextSource(OpenModel):
    type: Literal["text"]
    media_type: str  # text/plain
    data: str


class OtherSource(Unknown):
    """A source of a type the gateway does not know (``file``, ``content``): kept as sent."""

    known = frozenset({"base64", "url", "text"})


ImageSource = Annotated[
    Annotated[Base64Source | URLSource, Field(discriminator="type")] | OtherSource, IN_ORDER
]
DocumentSource = Annotated[
    Annotated[Base64Source | URLSource | TextSource, Field(discriminator="type")] | OtherSource,
    IN_ORDER,
]


class ImageBlock(OpenModel):
    type: Literal["image"]
    source: ImageSource
    cache_control: CacheControl | None = None


class DocumentBlock(OpenModel):
    type: Literal["document"]
    source: DocumentSource
    title: str | None = None
    cache_control: CacheControl | None = None


class ToolUseBlock(OpenModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class OtherBlock(Unknown):
    """A block of a type the gateway does not know: kept as sent (a pass-through
    forwards it); a translation that cannot carry it refuses it, naming it."""

    known = frozenset(
        {"text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"}
    )


ResultBlock = Annotated[
    Annotated[TextBlock | ImageBlock | DocumentBlock, Field(discriminator="type")] | OtherBlock,
    IN_ORDER,
]


class ToolResultBlock(OpenModel):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | Annotated[list[ResultBlock], FAIL_FAST] | None = None
    is_error: Annotated[bool, STRICT] | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(OpenModel):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(OpenModel):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    Annotated[
        TextBlock
        | ImageBlock
        | DocumentBlock
        | ToolUseBlock
        | ToolResultBlock
        | ThinkingBlock
        | RedactedThinkingBlock,
        Field(discriminator="type"),
    ]
    | OtherBlock,
    IN_ORDER,
]


class MessageParam(OpenModel):
    role: Literal["user", "assistant"]
    content: str | Annotated[list[ContentBlock], FAIL_FAST]


# ---------------------------------------------------------------- tools


class CustomTool(OpenModel):
    """A client tool: ``type`` absent or ``custom``."""

    type: Literal["custom"] | None = None
    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl | None = None


class ServerTool(OpenModel):
    """Anthropic's own tools (``bash_20250124``, ``web_search_20250305``, ...): kept as sent."""

    type: str
    name: str


Tool = Annotated[CustomTool | ServerTool, IN_ORDER]


class ToolChoiceAuto(OpenModel):
    type: Literal["auto"]
    disable_parallel_tool_use: Annotated[bool, STRICT] | None = None


class ToolChoiceAny(OpenModel):
    type: Literal["any"]
    disable_parallel_tool_use: Annotated[bool, STRICT] | None = None


class ToolChoiceTool(OpenModel):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: Annotated[bool, STRICT] | None = None


class ToolChoiceNone(OpenModel):
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


class Metadata(OpenModel):
    user_id: str | None = None


# ---------------------------------------------------------------- the request

UnitInterval = (
    Annotated[float, STRICT, Field(ge=0, le=1)] | Annotated[int, STRICT, Field(ge=0, le=1)]
)


class MessagesRequest(OpenModel):
    """``POST /v1/messages``: Anthropic's request, its known fields typed and bounded."""

    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(max_length=MAX_MESSAGES, fail_fast=True)
    max_tokens: Annotated[int, STRICT, Field(ge=1, le=MAX_TOKENS)]
    system: str | Annotated[list[TextBlock], FAIL_FAST] | None = None
    stop_sequences: list[str] | None = None
    temperature: UnitInterval | None = None
    top_p: UnitInterval | None = None
    top_k: Annotated[int, STRICT, Field(ge=0)] | None = None
    stream: Annotated[bool, STRICT] | None = None
    metadata: Metadata | None = None
    tools: Annotated[list[Tool], FAIL_FAST] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        """As pydantic's, with the first error located in the client's JSON
        (gateway/schemas/error_paths.py)."""
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as exc:
            raise for_client(cls, exc) from None


# ---------------------------------------------------------------- the answer


class Usage(OpenModel):
    """Anthropic's counts: ``input_tokens`` leaves out the cache's reads and writes."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class Message(OpenModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: Usage


# ---------------------------------------------------------------- stream events


class MessageStart(OpenModel):
    type: Literal["message_start"] = "message_start"
    message: Message


class ContentBlockStart(OpenModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: dict[str, Any]


class ContentBlockDelta(OpenModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: dict[str, Any]  # text_delta {text}, input_json_delta {partial_json}


class ContentBlockStop(OpenModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class MessageDeltaBody(OpenModel):
    stop_reason: str | None = None
    stop_sequence: str | None = None


class MessageDelta(OpenModel):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDeltaBody
    usage: Usage


class MessageStop(OpenModel):
    type: Literal["message_stop"] = "message_stop"


# ---------------------------------------------------------------- errors


class ErrorDetail(OpenModel):
    type: str
    message: str


class ErrorResponse(OpenModel):
    """``{"type": "error", "error": {"type", "message"}}``, also a stream's ``error`` event."""

    type: Literal["error"] = "error"
    error: ErrorDetail
