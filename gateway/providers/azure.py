"""Azure OpenAI: the OpenAI adapter with Azure's URLs, key header and quirks.

Requests and answers are OpenAI's (``OpenAIProvider`` forwards them as the
client sent them, unknown fields such as ``data_sources`` included); what is
Azure's own lives here:

- URLs. ``base_url`` is the resource endpoint (``https://<resource>.openai.azure.com``)
  and the deployment's ``model`` is its Azure deployment name:
  ``{base}/openai/deployments/{deployment}/chat/completions?api-version={api_version}``
  (and ``/embeddings``). ``api_version: v1`` selects Azure's v1 API instead:
  ``{base}/openai/v1/chat/completions``, the deployment named by the body's ``model``.
  Both are required (config.py refuses a config without them).
- The key goes in ``api-key``, not ``Authorization`` (a Microsoft Entra token
  can be sent through the provider's ``headers`` instead).
- A stream asks for usage (``stream_options``) only from API versions that
  know it (2024-09-01 on, and v1); older ones refuse the field.
- Stream annotations. Azure's content filter sends events that are not chunks:
  the prompt's filter results first (``"object": ""``, no choices), and, with the
  asynchronous filter, annotations without a ``delta``. None becomes a chunk of
  its own: the prompt's results ride on the next chunk (as ``prompt_filter_results``),
  an annotation that ends a choice (``finish_reason: "content_filter"``) becomes
  that choice's finishing chunk, and the others are dropped.
- Errors (``parse_error``): a content-filter refusal stays a 400 with code
  ``content_filter`` and says which categories tripped it; a 404 names the
  deployment (``DeploymentNotFound``) or the base_url and api_version, as a 502
  (the fault is the config's, not the client's); a 429 keeps Retry-After, read
  from the message when a proxy dropped the headers.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx
from pydantic_core import to_json

from gateway.config import ConfigError, ProviderConfig
from gateway.errors import (
    Reason,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
    clamp_retry_after,
)
from gateway.providers.base import CallContext
from gateway.providers.failures import json_body, status_error
from gateway.providers.http import Endpoint
from gateway.providers.openai import OpenAIProvider, _Chunks, error_from_response
from gateway.providers.sse import SSEEvent, SSEStream
from gateway.schemas.openai import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChoiceDelta,
    ChunkChoice,
)
from gateway.transport import Upstream

V1 = "v1"
# The first API version whose streams take ``stream_options`` (usage in the last chunk).
STREAM_USAGE_SINCE = "2024-09-01"
_DATED = re.compile(r"\d{4}-\d{2}-\d{2}")


class _Deployed(Endpoint):
    """An endpoint of one deployment, so that its errors can name the deployment."""

    __slots__ = ("deployment",)

    def __init__(self, endpoint: Endpoint, deployment: str) -> None:
        super().__init__(endpoint.url, endpoint.headers)
        self.deployment = deployment


class AzureProvider(OpenAIProvider):
    def __init__(self, name: str, config: ProviderConfig, upstream: Upstream) -> None:
        if not config.base_url or not config.api_version:  # config.py refuses it first
            raise ConfigError(f"providers.{name}: type azure needs base_url and api_version")
        super().__init__(name, config, upstream)
        self.api_version = config.api_version
        # The resource endpoint, also when written as the v1 SDK's base_url (…/openai/v1).
        self.root = re.sub(r"/openai(/v1)?$", "", self.base_url)
        self.v1 = self.api_version == V1
        self.stream_usage = self.v1 or not (
            _DATED.match(self.api_version) and self.api_version < STREAM_USAGE_SINCE
        )
        self._chats: dict[str, _Deployed] = {}
        self._embeds: dict[str, _Deployed] = {}

    def auth_headers(self, secret: str) -> Mapping[str, str]:
        return {"api-key": secret}

    # ------------------------------------------------------------ URLs

    def url(self, deployment: str, operation: str) -> str:
        if self.v1:
            return f"{self.root}/openai/v1/{operation}"
        return (
            f"{self.root}/openai/deployments/{quote(deployment, safe='')}/{operation}"
            f"?api-version={quote(self.api_version, safe='')}"
        )

    def _deployed(self, table: dict[str, _Deployed], deployment: str, operation: str) -> _Deployed:
        found = table.get(deployment)
        if found is None:
            endpoint = self.endpoint(self.url(deployment, operation))
            found = table[deployment] = _Deployed(endpoint, deployment)
        return found

    def chat_endpoint(self, ctx: CallContext, *, stream: bool) -> Endpoint:
        return self._deployed(self._chats, ctx.deployment.model, "chat/completions")

    def embed_endpoint(self, ctx: CallContext) -> Endpoint:
        return self._deployed(self._embeds, ctx.deployment.model, "embeddings")

    # ------------------------------------------------------------ translation

    def chat_body(self, request: ChatCompletionRequest, ctx: CallContext, *, stream: bool) -> bytes:
        if not stream or self.stream_usage:
            return super().chat_body(request, ctx, stream=stream)
        # An API version without stream_options: the client's own fields only.
        payload = request.model_dump(mode="json", exclude_unset=True)
        payload["model"] = ctx.deployment.model
        payload["stream"] = True
        return to_json(payload)

    def chat_chunks(
        self, raw: AsyncIterator[bytes], ctx: CallContext, deadline: float
    ) -> SSEStream:
        return _AzureChunks(raw, ctx, deadline)

    # ------------------------------------------------------------ errors

    def parse_error(
        self, endpoint: Endpoint, response: httpx.Response, body: bytes
    ) -> UpstreamError:
        status, headers = response.status_code, response.headers
        parsed = json_body(body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        error = error if isinstance(error, dict) else {}
        code = error.get("code")
        if status == 404 and code != "model_not_found":
            return self._not_found(endpoint, code)
        if code == "content_filter" or (status == 400 and _filtered_answer(parsed)):
            return status_error(
                status,
                headers,
                self.redactor,
                message=_filter_message(error, parsed),
                error_type=error.get("type"),
                code="content_filter",
                param=error.get("param"),
            )
        # No route: the openai adapter's 404 hint ("base_url missing '/v1'") is not Azure's.
        result = error_from_response(status, body, headers, self.redactor)
        if isinstance(result, UpstreamRateLimited) and result.retry_after is None:
            match = _RETRY_IN_MESSAGE.search(str(error.get("message") or ""))
            if match:
                result.retry_after = clamp_retry_after(float(match.group(1)))
        return result

    def _not_found(self, endpoint: Endpoint, code: object) -> UpstreamError:
        deployment = getattr(endpoint, "deployment", None)
        if code == "DeploymentNotFound" and deployment is not None:
            message = (
                f"Azure has no deployment {deployment!r} on the provider's resource "
                "(404 DeploymentNotFound): a deployment's model must be its Azure deployment name"
            )
        else:
            message = (
                f"the upstream answered 404 for {endpoint.route}: are the provider's base_url "
                f"(the resource endpoint) and api_version ({self.api_version}) right?"
            )
        error = UpstreamUnavailable(message)
        error.reason, error.upstream_status = Reason.UPSTREAM_STATUS, 404
        return error


# Azure's 429 message: "... Please retry after 6 seconds. ..."
_RETRY_IN_MESSAGE = re.compile(r"retry after (\d{1,7}) seconds?", re.IGNORECASE)


def _filtered_answer(parsed: object) -> bool:
    """A 400 whose body is a chat completion cut by the filter (Azure AI Foundry's models)."""
    if not isinstance(parsed, dict) or not isinstance(parsed.get("choices"), list):
        return False
    return any(
        isinstance(choice, dict) and choice.get("finish_reason") == "content_filter"
        for choice in parsed["choices"]
    )


def _filter_message(error: dict[str, Any], parsed: object) -> str:
    """What a content-filter refusal tells the client: which categories, then Azure's words."""
    results: object = None
    inner = error.get("innererror")
    if isinstance(inner, dict):
        results = inner.get("content_filter_result")
    elif isinstance(parsed, dict) and isinstance(parsed.get("choices"), list):
        for choice in parsed["choices"]:
            if isinstance(choice, dict) and isinstance(choice.get("content_filter_results"), dict):
                results = choice["content_filter_results"]
                break
    tripped = []
    if isinstance(results, dict):
        for category, result in results.items():
            if isinstance(result, dict) and result.get("filtered") is True:
                severity = result.get("severity")
                tripped.append(
                    f"{category} ({severity})"
                    if isinstance(severity, str) and severity != "safe"
                    else category
                )
    said = error.get("message")
    if not said and isinstance(results, dict) and isinstance(results.get("error"), dict):
        said = results["error"].get("message")  # the filter's own word on a cut answer
    said = said if isinstance(said, str) and said else "the content was filtered"
    if tripped:
        return f"Azure's content filter refused the request ({', '.join(tripped)}): {said}"
    return f"Azure's content filter refused the request: {said}"


# ---------------------------------------------------------------- streams

# Where Azure puts the prompt's filter results (the latter in versions before 2023-10).
_PROMPT_KEYS = ("prompt_filter_results", "prompt_annotations")
_CHOICE_KEYS = frozenset({"index", "finish_reason", "delta"})


class _AzureChunks(_Chunks):
    """The OpenAI stream, with Azure's content-filter annotations folded in (module docstring)."""

    __slots__ = ("_last", "_prompt")

    def __init__(self, raw: AsyncIterator[bytes], ctx: CallContext, deadline: float) -> None:
        super().__init__(raw, ctx, deadline)
        self._last: ChatCompletionChunk | None = None  # ids for a chunk made of an annotation
        self._prompt: dict[str, Any] | None = None  # prompt filter results for the next chunk

    def translate(self, event: SSEEvent) -> ChatCompletionChunk | None:
        try:
            chunk = super().translate(event)
        except UpstreamUnavailable:  # not a chunk: an annotation, else the error it is
            annotation = _annotation(event.data)
            if annotation is None:
                raise
            return self._annotated(annotation)
        if not chunk.choices and chunk.usage is None:  # nothing for a client but extras
            self._hold(chunk.model_extra)
            return None
        return self._carry(chunk)

    def _carry(self, chunk: ChatCompletionChunk) -> ChatCompletionChunk:
        """``chunk``, with the prompt filter results held for it; the stream's latest."""
        if self._prompt is not None:
            for key, value in self._prompt.items():
                setattr(chunk, key, value)
            self._prompt = None
        self._last = chunk
        return chunk

    def _hold(self, fields: Mapping[str, Any] | None) -> None:
        if fields:
            kept = {key: fields[key] for key in _PROMPT_KEYS if fields.get(key) is not None}
            if kept:
                self._prompt = {**(self._prompt or {}), **kept}

    def _annotated(self, annotation: dict[str, Any]) -> ChatCompletionChunk | None:
        """An annotation event: None, or the chunk that ends the choices it filtered."""
        self._hold(annotation)
        ended = []
        for choice in annotation["choices"]:
            if not isinstance(choice, dict):
                continue
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                index = choice.get("index")
                ended.append(
                    ChunkChoice(
                        index=index if isinstance(index, int) else 0,
                        delta=ChoiceDelta(),
                        finish_reason=reason,
                        **{k: v for k, v in choice.items() if k not in _CHOICE_KEYS},
                    )
                )
        if not ended:
            return None
        self._finished = True
        # Its own ids when it has them; Azure's asynchronous filter sends "" and 0.
        last = self._last
        chunk = ChatCompletionChunk(
            id=_given(annotation, "id", str) or (last.id if last else ""),
            created=_given(annotation, "created", int) or (last.created if last else 0),
            model=_given(annotation, "model", str) or (last.model if last else ""),
            choices=ended,
        )
        return self._carry(chunk)


def _annotation(data: bytes) -> dict[str, Any] | None:
    """The event as a dict if it is one of Azure's annotations (``"object": ""``, or a
    chunk's choices without a ``delta``), else None."""
    parsed = json_body(data)
    if not isinstance(parsed, dict) or "error" in parsed:
        return None
    choices, kind = parsed.get("choices"), parsed.get("object")
    if not isinstance(choices, list) or kind not in ("", "chat.completion.chunk"):
        return None
    if kind == "" or any(isinstance(choice, dict) and "delta" not in choice for choice in choices):
        return parsed
    return None


def _given(event: dict[str, Any], key: str, kind: type) -> Any:
    """``event[key]`` if it is a ``kind`` and not empty or zero, else None."""
    value = event.get(key)
    return value if isinstance(value, kind) and not isinstance(value, bool) and value else None
