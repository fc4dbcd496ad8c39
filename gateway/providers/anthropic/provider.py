"""``AnthropicProvider``: the Messages API (``POST {base_url}/v1/messages``) on ``HTTPProvider``.

The key goes in ``x-api-key``; ``anthropic-version`` (``API_VERSION``) is set per
request, so that a client's own ``anthropic-version`` and ``anthropic-beta``
(``CallContext.client_headers``, filled by an ingress that has them) can be
forwarded instead. A header set under the provider's ``headers:`` in the config
wins over the client's and is never sent twice.

It also speaks the Messages API natively (``MessagesProvider``): a client of the
Anthropic ingress is passed through, its body as sent (``messages``,
``messages_stream``; relay.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from pydantic import BaseModel

from gateway.config import ProviderConfig
from gateway.errors import UpstreamError
from gateway.providers.anthropic.answer import completion
from gateway.providers.anthropic.errors import error_from_response
from gateway.providers.anthropic.relay import RelayedMessages, answer
from gateway.providers.anthropic.request import messages_body
from gateway.providers.anthropic.stream import MessageChunks
from gateway.providers.base import CallContext
from gateway.providers.http import Endpoint, HeaderList, HTTPProvider, forward_header, raw_body
from gateway.providers.sse import SSEStream
from gateway.schemas.openai import ChatCompletion, ChatCompletionRequest, Usage
from gateway.transport import Upstream

__all__ = ["API_VERSION", "DEFAULT_BASE_URL", "AnthropicProvider"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
_FORWARDED = ("anthropic-version", "anthropic-beta")


class AnthropicProvider(HTTPProvider):
    default_base_url = DEFAULT_BASE_URL

    def __init__(self, name: str, config: ProviderConfig, upstream: Upstream) -> None:
        super().__init__(name, config, upstream)
        self.messages_endpoint = self.endpoint(f"{self.base_url}/v1/messages")
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
        return self.messages_endpoint

    def request_headers(self, request: BaseModel | None, ctx: CallContext) -> HeaderList | None:
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

    # ------------------------------------------------------------ pass-through

    async def messages(self, body: bytes, ctx: CallContext) -> tuple[dict[str, Any], Usage]:
        """A client's own Messages body (``model`` already the upstream's), sent as it is."""
        endpoint = self.messages_endpoint
        content = await self.post(endpoint, body, ctx, self.request_headers(None, ctx))
        return answer(content)

    @asynccontextmanager
    async def messages_stream(
        self, body: bytes, ctx: CallContext
    ) -> AsyncIterator[RelayedMessages]:
        """The stream of a client's own Messages body: its events, relayed (relay.py)."""
        deadline = ctx.deadline()
        response = await self.open_stream(
            self.messages_endpoint, body, ctx, self.request_headers(None, ctx)
        )
        try:
            events = RelayedMessages(raw_body(response), ctx, deadline, self.redactor)
            try:
                yield events
            finally:
                events.close()
        finally:
            await response.aclose()

    def parse_error(
        self, endpoint: Endpoint, response: httpx.Response, body: bytes
    ) -> UpstreamError:
        return error_from_response(
            response.status_code, body, response.headers, self.redactor, route=endpoint.route
        )
