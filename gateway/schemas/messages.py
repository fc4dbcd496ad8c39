"""The canonical chat conversation: messages, content parts, tools and tool calls.

These are OpenAI's chat shapes, typed, because every provider adapter translates
from them: a part, a tool call or a tool definition that reaches an adapter is
known to have the fields its ``type`` promises. Like every wire model here they
keep what they do not declare (``extra="allow"``) and pass it on untouched, and
a parsed request dumped with ``exclude_unset`` is what the client sent.

Variants are chosen by their ``type`` (or a message's ``role``) with a tagged
union, which reads the tag and validates one model, never trying each in turn.
A content part, tool, tool call or tool choice whose ``type`` is a string the
gateway does not know is kept as sent (``OtherPart``, ``OtherTool``, ...) and
passed on: OpenAI adds types, and servers such as vLLM, Ollama and LM Studio
have their own (``video_url``). Only a known type is held to its shape.
Fields a real client may leave out or send as ``null`` are optional even where
OpenAI's documentation marks them required (an assistant message with
``tool_calls`` and ``"content": null``, a ``name`` on any message).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, model_validator
from pydantic_core import (
    CoreSchema,
    InitErrorDetails,
    PydanticCustomError,
    ValidationError,
    core_schema,
)

from gateway.schemas.error_paths import KNOWN_TYPE


class OpenModel(BaseModel):
    """A wire object that keeps the fields it does not declare and passes them on."""

    model_config = ConfigDict(extra="allow")


class Refuse:
    """``Annotated`` metadata: the schema's errors become one, with a message for a person.

    Applied inside pydantic-core (a ``custom-error`` schema), so it costs nothing
    on a valid value; used where pydantic's own message would show a regex.
    """

    def __init__(self, kind: str, message: str) -> None:
        self.kind, self.message = kind, message

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.custom_error_schema(
            handler(source), custom_error_type=self.kind, custom_error_message=self.message
        )


# Every list stops at its first bad item: pydantic otherwise reports every one,
# and 8 MiB of bad items made millions of errors (seconds of CPU and gigabytes
# of memory). A ``Field``, as ``FailFast()`` cannot sit inside a union (unhashable).
FAIL_FAST = Field(fail_fast=True)
# JSON's own types: true is not 1 and "1" is not 1 (OpenAI refuses both).
STRICT = Field(strict=True)


# A union tried in order, inside pydantic-core. ``typed | Other...`` with it is
# a tagged union of the known types, or else an object of an unknown type: a
# known type is validated once, by its model, with no Python call; only an object
# the tagged union refused reaches the open model, which refuses the known types
# (so a malformed known object is still refused, at its own path). Cheaper than
# a callable discriminator: that is a Python call per object, given a copy of it
# as a dict (megabytes of image data included).
IN_ORDER = Field(union_mode="left_to_right")


class Unknown(OpenModel):
    """An object whose ``type`` is a string the gateway does not know, kept as sent.

    ``type`` is not a declared field, so the object is dumped with its keys in
    the client's order (a declared field would come first); it is checked once
    the object is built, a Python call made only for an object of an unknown type.
    """

    known: ClassVar[frozenset[str]] = frozenset()

    @property
    def type(self) -> str:
        return self.__pydantic_extra__["type"]  # type: ignore[index]

    @model_validator(mode="after")
    def _of_unknown_type(self) -> Self:
        kind = (self.__pydantic_extra__ or {}).get("type", _MISSING)
        if type(kind) is str and kind not in self.known:
            return self
        if kind is _MISSING:
            error: InitErrorDetails = {"type": "missing", "loc": ("type",), "input": None}
        elif isinstance(kind, str):  # its own model refused it: that error is shown
            refusal = PydanticCustomError(KNOWN_TYPE, "a known type, refused by its own model")
            error = {"type": refusal, "loc": ("type",), "input": kind}
        else:
            error = {"type": "string_type", "loc": ("type",), "input": kind}
        # Raised as a ValidationError, its location is kept: the client's ``....type``.
        raise ValidationError.from_exception_data(type(self).__name__, [error])


_MISSING = object()


# ---------------------------------------------------------------- content parts


class TextPart(OpenModel):
    type: Literal["text"]
    text: str


# An http(s) URL with a host, or an image as a base64 data URL. Only its start is
# checked (a valid data URL matches in its first bytes: its payload of megabytes is
# not scanned); whether the base64 decodes is the upstream's to say.
IMAGE_URL_PATTERN = (
    r"(?i)^(?:https?://[^\s/?#]|data:image/[a-z0-9.+-]+(?:;[a-z0-9.+-]+=[^,;]*)*;base64,)"
)
ImageUrl = Annotated[
    str,
    Field(pattern=IMAGE_URL_PATTERN),
    Refuse(
        "image_url",
        "expected an http(s) URL or a base64 data URL of an image (data:image/png;base64,...)",
    ),
]


class ImageURL(OpenModel):
    url: ImageUrl
    detail: str | None = None  # "auto", "low", "high", ...: OpenAI adds values


class ImagePart(OpenModel):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(OpenModel):
    data: str  # base64
    format: str  # "wav", "mp3", ...


class AudioPart(OpenModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileData(OpenModel):
    file_data: str | None = None  # base64 data URL
    file_id: str | None = None
    filename: str | None = None


class FilePart(OpenModel):
    type: Literal["file"]
    file: FileData


class RefusalPart(OpenModel):
    type: Literal["refusal"]
    refusal: str


class OtherPart(Unknown):
    """A part of a type the gateway does not know (vLLM's ``video_url``, a new
    OpenAI type): forwarded as sent. An adapter that cannot translate it refuses
    it (a 400 naming it) rather than drop it."""

    known = frozenset({"text", "image_url", "input_audio", "file", "refusal"})


# A known type in a role that does not take it (an image in a system message) is
# refused, as OpenAI refuses it; an unknown type is the upstream's to judge.
UserPart = Annotated[
    Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")] | OtherPart,
    IN_ORDER,
]
AssistantPart = Annotated[
    Annotated[TextPart | RefusalPart, Field(discriminator="type")] | OtherPart, IN_ORDER
]
ContentPart = TextPart | ImagePart | AudioPart | FilePart | RefusalPart | OtherPart

TextContent = str | Annotated[list[Annotated[TextPart | OtherPart, IN_ORDER]], FAIL_FAST]


# ---------------------------------------------------------------- tool calls


class FunctionCall(OpenModel):
    name: str
    arguments: str  # JSON text as the model wrote it: not necessarily valid JSON


class FunctionToolCall(OpenModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class CustomCall(OpenModel):
    name: str
    input: str


class CustomToolCall(OpenModel):
    id: str
    type: Literal["custom"]
    custom: CustomCall


class OtherToolCall(Unknown):
    """A call of a tool type the gateway does not know: forwarded as sent."""

    known = frozenset({"function", "custom"})


ToolCall = Annotated[
    Annotated[FunctionToolCall | CustomToolCall, Field(discriminator="type")] | OtherToolCall,
    IN_ORDER,
]


# ---------------------------------------------------------------- messages


class _Message(OpenModel):
    # Optional on every role: Gemini's function responses need the name, and clients
    # put it on tool messages too.
    name: str | None = None


class SystemMessage(_Message):
    role: Literal["system"]
    content: TextContent


class DeveloperMessage(_Message):
    role: Literal["developer"]
    content: TextContent


class UserMessage(_Message):
    role: Literal["user"]
    content: str | Annotated[list[UserPart], FAIL_FAST]


class AssistantMessage(_Message):
    role: Literal["assistant"]
    content: str | Annotated[list[AssistantPart], FAIL_FAST] | None = None
    refusal: str | None = None
    tool_calls: Annotated[list[ToolCall], FAIL_FAST] | None = None
    function_call: FunctionCall | None = None  # legacy, before tool_calls


class ToolMessage(_Message):
    role: Literal["tool"]
    tool_call_id: str
    content: TextContent


class FunctionMessage(_Message):
    """A legacy function result: ``name`` says which function answered."""

    role: Literal["function"]
    name: str
    content: str | None


# The type of ``messages[i]`` (chosen by ``role``); ``Message`` is the same union
# for annotations and ``isinstance``.
ChatMessage = Annotated[
    SystemMessage
    | DeveloperMessage
    | UserMessage
    | AssistantMessage
    | ToolMessage
    | FunctionMessage,
    Field(discriminator="role"),
]
Message = (
    SystemMessage
    | DeveloperMessage
    | UserMessage
    | AssistantMessage
    | ToolMessage
    | FunctionMessage
)


# ---------------------------------------------------------------- tools


class FunctionDefinition(OpenModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema object
    strict: Annotated[bool, STRICT] | None = None


class FunctionTool(OpenModel):
    type: Literal["function"]
    function: FunctionDefinition


class CustomToolDefinition(OpenModel):
    name: str
    description: str | None = None
    format: dict[str, Any] | None = None  # {"type": "text"} or a grammar


class CustomTool(OpenModel):
    type: Literal["custom"]
    custom: CustomToolDefinition


class OtherTool(Unknown):
    """A tool of a type the gateway does not know: forwarded as sent."""

    known = frozenset({"function", "custom"})


Tool = Annotated[
    Annotated[FunctionTool | CustomTool, Field(discriminator="type")] | OtherTool, IN_ORDER
]


class ToolName(OpenModel):
    name: str


class FunctionToolChoice(OpenModel):
    type: Literal["function"]
    function: ToolName


class CustomToolChoice(OpenModel):
    type: Literal["custom"]
    custom: ToolName


class AllowedTools(OpenModel):
    mode: Literal["auto", "required"]
    tools: Annotated[list[dict[str, Any]], FAIL_FAST]


class AllowedToolsChoice(OpenModel):
    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


class OtherToolChoice(Unknown):
    """A choice of a tool of a type the gateway does not know: forwarded as sent."""

    known = frozenset({"function", "custom", "allowed_tools"})


ToolChoice = Annotated[
    Literal["none", "auto", "required"]
    | Annotated[
        FunctionToolChoice | CustomToolChoice | AllowedToolsChoice,
        Field(discriminator="type"),
    ]
    | OtherToolChoice,
    IN_ORDER,
]
# The legacy ``functions`` / ``function_call`` pair.
FunctionChoice = Literal["none", "auto"] | ToolName


# ---------------------------------------------------------------- response format


class TextFormat(OpenModel):
    type: Literal["text"]


class JSONObjectFormat(OpenModel):
    type: Literal["json_object"]


class JSONSchema(OpenModel):
    # ``schema`` would shadow a BaseModel attribute: declared under another name,
    # read and written as ``schema``.
    model_config = ConfigDict(serialize_by_alias=True)

    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: Annotated[bool, STRICT] | None = None


class JSONSchemaFormat(OpenModel):
    type: Literal["json_schema"]
    json_schema: JSONSchema


ResponseFormat = Annotated[
    TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")
]
