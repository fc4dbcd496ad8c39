"""OpenAI wire models: the gateway's canonical request, response and chunk shapes.

Every model keeps fields it does not declare (``extra="allow"``) and passes
them on untouched: clients send provider features the gateway has never heard
of, and providers answer with fields (``system_fingerprint``, reasoning text)
that clients rely on. Answers are serialised with ``exclude_unset`` so what an
upstream sent is what the client gets; ``_Always`` marks the fields a client
must see even when the gateway built the object itself.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Always(_Open):
    """An answer object whose ``_always`` fields are serialised even when defaulted."""

    _always: ClassVar[tuple[str, ...]] = ()

    def model_post_init(self, context: Any, /) -> None:
        self.__pydantic_fields_set__.update(self._always)


# ---------------------------------------------------------------- requests


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatCompletionRequest(_Open):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=128)


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)


# ---------------------------------------------------------------- answers


class Usage(_Open):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletionMessage(_Open):
    role: str = "assistant"
    content: str | None = None


class Choice(_Always):
    _always: ClassVar[tuple[str, ...]] = ("finish_reason",)
    index: int
    message: ChatCompletionMessage
    finish_reason: str | None = None


class ChatCompletion(_Always):
    _always: ClassVar[tuple[str, ...]] = ("object", "usage")
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class ChoiceDelta(_Open):
    role: str | None = None
    content: str | None = None


class ChunkChoice(_Always):
    _always: ClassVar[tuple[str, ...]] = ("finish_reason",)
    index: int
    delta: ChoiceDelta
    finish_reason: str | None = None


class ChatCompletionChunk(_Always):
    _always: ClassVar[tuple[str, ...]] = ("object",)
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class Embedding(_Always):
    _always: ClassVar[tuple[str, ...]] = ("object",)
    object: Literal["embedding"] = "embedding"
    index: int
    # A list of floats, or base64 of little-endian float32 when asked for.
    embedding: list[float] | str


class EmbeddingUsage(_Open):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingResponse(_Always):
    _always: ClassVar[tuple[str, ...]] = ("object", "usage")
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage = EmbeddingUsage()


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
