"""The Gemini API (``generateContent``), config ``type: gemini``.

An adapter on ``HTTPProvider`` (providers/http.py). The one place Gemini lives:

- ``request.py``: the canonical chat request -> the ``generateContent`` body, with
  ``options.py`` (tools, tool choice, ``generationConfig``);
- ``schema.py``: JSON Schema -> the Gemini ``Schema`` subset (tools, response format);
- ``answer.py``: answers and SSE streams -> ``ChatCompletion`` / ``ChatCompletionChunk``;
- ``errors.py``: Google's error bodies -> typed errors.

Calls go to ``{base_url}/v1beta/models/{model}:generateContent`` and
``...:streamGenerateContent?alt=sse``, ``model`` being the deployment's
upstream model name, with the key in the ``x-goog-api-key`` header (never in
the URL, which ends up in logs). ``base_url`` is the bare origin, as
google-genai takes it; one that already ends in an API version is used as it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from urllib.parse import quote

import httpx

from gateway.config import ProviderConfig
from gateway.errors import UpstreamError
from gateway.providers.base import CallContext
from gateway.providers.gemini.answer import GeminiChunks, completion
from gateway.providers.gemini.errors import error_from_response
from gateway.providers.gemini.request import generate_body
from gateway.providers.http import Endpoint, HTTPProvider
from gateway.providers.sse import SSEStream
from gateway.schemas.openai import ChatCompletion, ChatCompletionRequest
from gateway.transport import Upstream

__all__ = ["DEFAULT_BASE_URL", "GeminiProvider"]

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
API_VERSION = "v1beta"
_VERSIONS = ("/v1beta", "/v1", "/v1alpha")


class GeminiProvider(HTTPProvider):
    default_base_url = DEFAULT_BASE_URL

    def __init__(self, name: str, config: ProviderConfig, upstream: Upstream) -> None:
        super().__init__(name, config, upstream)
        base = self.base_url
        self._root = base if base.endswith(_VERSIONS) else f"{base}/{API_VERSION}"
        self._chat: dict[tuple[str, bool], Endpoint] = {}

    def auth_headers(self, secret: str) -> Mapping[str, str]:
        return {"x-goog-api-key": secret}

    def chat_endpoint(self, ctx: CallContext, *, stream: bool) -> Endpoint:
        model = ctx.deployment.model
        found = self._chat.get((model, stream))
        if found is None:
            # "gemini-2.5-flash", or a full resource name: "models/...", "tunedModels/..."
            name = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
            method = "streamGenerateContent?alt=sse" if stream else "generateContent"
            found = self.endpoint(f"{self._root}/{quote(name, safe='/')}:{method}")
            self._chat[(model, stream)] = found
        return found

    def chat_body(self, request: ChatCompletionRequest, ctx: CallContext, *, stream: bool) -> bytes:
        return generate_body(request)

    def chat_answer(self, content: bytes, ctx: CallContext) -> ChatCompletion:
        return completion(content, ctx.deployment.model)

    def chat_chunks(
        self, raw: AsyncIterator[bytes], ctx: CallContext, deadline: float
    ) -> SSEStream:
        return GeminiChunks(raw, ctx, deadline)

    def parse_error(
        self, endpoint: Endpoint, response: httpx.Response, body: bytes
    ) -> UpstreamError:
        return error_from_response(
            response.status_code, body, response.headers, self.redactor, route=endpoint.route
        )
