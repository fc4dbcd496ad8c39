"""``AnthropicProvider``: the Messages API (``POST {base_url}/v1/messages``) on ``HTTPProvider``.

The key goes in ``x-api-key``; ``anthropic-version`` (``API_VERSION``) is set per
request, so that a client's own ``anthropic-version`` and ``anthropic-beta``
(``CallContext.client_headers``, filled by an ingress that has them) can be
forwarded instead. A header set under the provider's ``headers:`` in the config
wins over the client's and is never sent twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import httpx
from pydantic import BaseModel

from gateway.config import ProviderConfig
from gateway.errors import UpstreamError
from gateway.providers.anthropic.answer import completion
from gateway.providers.anthropic.errors import error_from_response
from gateway.providers.anthropic.request import messages_body
from gateway.providers.anthropic.stream import MessageChunks
from gateway.providers.base import CallContext
from gateway.providers.http import Endpoint, HeaderList, HTTPProvider, forward_header
from gateway.providers.sse import SSEStream
from gateway.schemas.openai import ChatCompletion, ChatCompletionRequest
from gateway.transport import Upstream

__all__ = ["API_VERSION", "DEFAULT_BASE_URL", "AnthropicProvider"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
_FORWARDED = ("anthropic-version", "anthropic-beta")


class AnthropicProvider(HTTPProvider):
    default_base_url = DEFAULT_BASE_URL

    def __init__(self, name: str, config: ProviderConfig, upstream: Upstream) -> None:
        super().__init__(name, config, upstream)
        self.messages = self.endpoint(f"{self.base_url}/v1/messages")
        configured = {key.lower() for key in config.headers}
        # The client's headers that may be forwarded: those the config does not set.
        self._forwarded = tuple(name for name in _FORWARDED if name not in configured)
        self._version: HeaderList = (
            ()
            if "anthropic-version" in configured
            else ((b"anthropic-version", API_VERSION.encode("ascii")),)
        )

    def auth_headers(self, secret: str) -> Mapping[str, str]:
        return {"x-api-key": secret}

    def chat_endpoint(self, ctx: CallContext, *, stream: bool) -> Endpoint:
        return self.messages

    def request_headers(self, request: BaseModel, ctx: CallContext) -> HeaderList | None:
        client = ctx.client_headers
        if not client:
            return self._version
        headers: list[tuple[bytes, bytes]] = []
        for name in self._forwarded:
            value = client.get(name)
            if value:
                headers.append(forward_header(name, value))
            elif name == "anthropic-version":
                headers.extend(self._version)
        return headers

    def chat_body(self, request: ChatCompletionRequest, ctx: CallContext, *, stream: bool) -> bytes:
        return messages_body(request, ctx.deployment.model, stream=stream)

    def chat_answer(self, content: bytes, ctx: CallContext) -> ChatCompletion:
        return completion(content)

    def chat_chunks(
        self, raw: AsyncIterator[bytes], ctx: CallContext, deadline: float
    ) -> SSEStream:
        return MessageChunks(raw, ctx, deadline, self.redactor)

    def parse_error(
        self, endpoint: Endpoint, response: httpx.Response, body: bytes
    ) -> UpstreamError:
        return error_from_response(
            response.status_code, body, response.headers, self.redactor, route=endpoint.route
        )
