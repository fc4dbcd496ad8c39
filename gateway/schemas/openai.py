"""OpenAI wire models: the gateway's canonical request, response and chunk shapes.

Every model keeps fields it does not declare (``extra="allow"``) and passes
them on untouched: clients send provider features the gateway has never heard
of, and providers answer with fields (``system_fingerprint``, reasoning text)
that clients rely on. Answers are serialised with ``exclude_unset`` so what an
upstream sent is what the client gets; ``_Always`` marks the fields a client
must see even when the gateway built the object itself.

The chat request is typed down to its content parts, tools and tool calls
(``gateway/schemas/messages.py``) and the options the gateway knows are
bounded, so every provider adapter reads a request already checked; a bad one
is refused with its path in the client's JSON (``gateway/schemas/error_paths.py``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    Field,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)
from pydantic_core import PydanticCustomError, ValidationError

from gateway.schemas.error_paths import for_client
from gateway.schemas.messages import (
    FAIL_FAST,
    STRICT,
    ChatMessage,
    FunctionChoice,
    FunctionDefinition,
    OpenModel,
    Refuse,
    ResponseFormat,
    Tool,
    ToolChoice,
)

_Open = OpenModel  # keeps the fields it does not declare and passes them on


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
MAX_FANOUT_MODELS = 8
# A 32-bit count, as upstream APIs type it: what the reservation multiplies by a
# price stays a float (a 400-digit max_tokens overflowed it: a 500).
MAX_TOKENS = 2**31 - 1


class StreamOptions(_Open):
    include_usage: Annotated[bool, STRICT] | None = None


# Numbers as OpenAI bounds them. A float field also takes an integer and keeps it one
# (the upstream gets ``1``, not ``1.0``); ``true`` and ``"0.5"`` are refused, as
# OpenAI refuses them, rather than read as numbers.
Temperature = (
    Annotated[float, STRICT, Field(ge=0, le=2)] | Annotated[int, STRICT, Field(ge=0, le=2)]
)
Probability = (
    Annotated[float, STRICT, Field(ge=0, le=1)] | Annotated[int, STRICT, Field(ge=0, le=1)]
)
Penalty = Annotated[float, STRICT, Field(ge=-2, le=2)] | Annotated[int, STRICT, Field(ge=-2, le=2)]
Bias = (
    Annotated[float, STRICT, Field(ge=-100, le=100)]
    | Annotated[int, STRICT, Field(ge=-100, le=100)]
)
TokenCount = Annotated[int, STRICT, Field(ge=1, le=MAX_TOKENS)]
TokenId = Annotated[
    str, Field(pattern=r"^[0-9]+$"), Refuse("token_id", "expected a token id (a string of digits)")
]
# At most 4 stop sequences (OpenAI's limit; Anthropic and Gemini allow more).
Stop = str | Annotated[list[str], Field(max_length=4, fail_fast=True)]


class _Request(_Open):
    """A request body: an invalid one is refused naming the client's own JSON path."""

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        """As pydantic's, but its error's first line is the one to show the client,
        located in the client's JSON (``messages[2].content[0].image_url.url``),
        without pydantic's union branch labels and tags (gateway/schemas/error_paths.py)."""
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as exc:
            raise cls.client_error(exc) from None

    @classmethod
    def client_error(cls, exc: ValidationError) -> ValidationError:
        """``exc`` as ``model_validate_json`` raises it. A reader that validates
        without that wrapper (gateway/fastpath.py ``ModelJSON.load``) raises this,
        so a refusal reads the same whichever way the body was read."""
        return for_client(cls, exc)


class ChatCompletionRequest(_Request):
    """The canonical chat request: OpenAI's, with every field the gateway knows typed
    and bounded (docs/wire-formats.md), so a bad value is a 400 naming it whichever
    provider serves the model. What it does not know passes through to the upstream.
    """

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES, fail_fast=True)
    stream: Annotated[bool, STRICT] | None = None
    stream_options: StreamOptions | None = None
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    n: Annotated[int, STRICT, Field(ge=1, le=128)] | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    stop: Stop | None = None
    seed: Annotated[int, STRICT, Field(ge=-(2**63), lt=2**63)] | None = None
    logit_bias: dict[TokenId, Bias] | None = None
    logprobs: Annotated[bool, STRICT] | None = None
    top_logprobs: Annotated[int, STRICT, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], FAIL_FAST] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: Annotated[bool, STRICT] | None = None
    functions: Annotated[list[FunctionDefinition], FAIL_FAST] | None = None
    function_call: FunctionChoice | None = None
    # Strings, not enums: OpenAI adds values ("minimal", "flex", ...) and other
    # upstreams have their own; the upstream judges them.
    reasoning_effort: str | None = None
    service_tier: str | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: Annotated[bool, STRICT] | None = None


class FanoutRequest(ChatCompletionRequest):
    """``POST /v1/fanout/chat/completions``: a chat request for several models at once,
    named in ``models`` (docs/wire-formats.md, "Fan-out"); each model gets the request
    as ``for_model`` makes it. One choice per model: ``n`` cannot be more than 1."""

    model: str = ""  # never sent: ``models`` names them
    models: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, max_length=MAX_FANOUT_MODELS
    )
    n: Annotated[int, STRICT, Field(ge=1, le=1)] | None = None

    @field_validator("model")
    @classmethod
    def _no_model(cls, value: str) -> str:
        if value:
            raise ValueError("a fan-out names its models in `models`, not `model`")
        return value

    def for_model(self, model: str) -> ChatCompletionRequest:
        """This request as a plain chat request for ``model``, what the client would have
        sent for it alone: the fields it set, and those the gateway does not know."""
        fields = {name: getattr(self, name) for name in self.model_fields_set}
        fields.pop("models", None)
        fields["model"] = model
        # The set fields include the unknown ones, which model_construct keeps as extras.
        return ChatCompletionRequest.model_construct(set(fields), **fields)


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
    | Annotated[list[str], FAIL_FAST]
    | Annotated[list[int], FAIL_FAST]
    | Annotated[list[Annotated[list[int], FAIL_FAST]], FAIL_FAST],
    WrapValidator(_one_input_error),
]


class EmbeddingRequest(_Request):
    model: str = Field(min_length=1)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1, le=MAX_EMBEDDING_DIMENSIONS)


# ---------------------------------------------------------------- answers


class PromptTokensDetails(_Open):
    """Where the prompt's tokens came from; each a part of ``prompt_tokens``.

    ``cached_tokens`` counts tokens read from the provider's prompt cache and
    ``cache_write_tokens`` tokens written to it (OpenAI's and OpenRouter's
    names; Anthropic's ``cache_read_input_tokens`` and
    ``cache_creation_input_tokens``). An SDK too old to know the second keeps or
    ignores it, as it does any field it does not know.
    """

    cached_tokens: int | None = None
    cache_write_tokens: int | None = None


class CompletionTokensDetails(_Open):
    """Parts of ``completion_tokens``: ``reasoning_tokens`` were thought, not answered."""

    reasoning_tokens: int | None = None


class Usage(_Open):
    """Token counts in OpenAI's convention, whichever provider answered.

    ``prompt_tokens`` includes every prompt token, those read from and written
    to the prompt cache too (``prompt_tokens_details``); ``completion_tokens``
    includes reasoning tokens. A provider that counts them apart (Anthropic's
    ``input_tokens`` leaves cache reads and writes out) adds them in.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


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


class DeploymentPrice(BaseModel):
    """USD per one million tokens; cache reads and writes at ``input`` when null."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # The gateway's own field: each priced deployment's price, by the name that
    # x-gateway-served-by gives it, so a client can price what it was served
    # (docs/wire-formats.md, "Models"). SDKs keep unknown fields.
    pricing: dict[str, DeploymentPrice] = {}


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
