"""OpenAI wire models: the gateway's canonical request, response and chunk shapes.

Every model keeps fields it does not declare (``extra="allow"``) and passes
them on untouched: clients send provider features the gateway has never heard
of, and providers answer with fields (``system_fingerprint``, reasoning text)
that clients rely on. Answers are serialised with ``exclude_unset`` so what an
upstream sent is what the client gets; ``_Always`` marks the fields a client
must see even when the gateway built the object itself.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError, ValidationError


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Always(_Open):
    """An answer object whose ``_always`` fields are serialised even when defaulted."""

    _always: ClassVar[tuple[str, ...]] = ()

    def model_post_init(self, context: Any, /) -> None:
        self.__pydantic_fields_set__.update(self._always)


# ---------------------------------------------------------------- requests

# Bounds on what one request may carry. Parsing costs CPU and memory per JSON
# value, so these, with the body limit (``server.max_body_bytes``), bound what a
# request can cost before it is refused (docs/limits.md). 10,000 messages is far
# past a long agent session (Azure OpenAI stops at 2,048, Anthropic at 100,000);
# each upstream still applies its own limit. 2,048 inputs is OpenAI's own limit;
# 16,384 dimensions is four times the largest common model's (4,096), and bounds
# what the mock makes (it makes as many numbers as it is asked for).
MAX_MESSAGES = 10_000
MAX_EMBEDDING_INPUTS = 2_048
MAX_EMBEDDING_DIMENSIONS = 16_384
# A 32-bit count, as upstream APIs type it: what the reservation multiplies by a
# price stays a float (a 400-digit max_tokens overflowed it: a 500).
MAX_TOKENS = 2**31 - 1

# Every list stops at its first bad item: pydantic otherwise reports every one,
# and 8 MiB of bad items made millions of errors (seconds of CPU and gigabytes
# of memory). A ``Field``, as ``FailFast()`` cannot sit inside a union (unhashable).
_FAIL_FAST = Field(fail_fast=True)


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | Annotated[list[dict[str, Any]], _FAIL_FAST] | None = None


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatCompletionRequest(_Open):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES, fail_fast=True)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    n: int | None = Field(default=None, ge=1, le=128)


def _one_input_error(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """``input`` refused with one error naming it, not one per branch of the union
    (``input.str``, ``input.list[str]``, ...), and a long list before its items are
    looked at. A list of token ids is one input, bounded by the body limit only."""
    if (
        isinstance(value, list)
        and len(value) > MAX_EMBEDDING_INPUTS
        and not isinstance(value[0], int)
    ):
        raise PydanticCustomError(
            "too_long",
            "List should have at most {max_length} items, not {actual_length}",
            {"max_length": MAX_EMBEDDING_INPUTS, "actual_length": len(value)},
        )
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError(
            "embedding_input",
            "expected a string, an array of strings, an array of token ids "
            "or an array of arrays of token ids",
        ) from None


EmbeddingInput = Annotated[
    str
    | Annotated[list[str], _FAIL_FAST]
    | Annotated[list[int], _FAIL_FAST]
    | Annotated[list[Annotated[list[int], _FAIL_FAST]], _FAIL_FAST],
    WrapValidator(_one_input_error),
]


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1, le=MAX_EMBEDDING_DIMENSIONS)


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
