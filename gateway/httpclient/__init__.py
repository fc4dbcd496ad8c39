"""A lean HTTP/1.1 client transport: asyncio Protocols and httptools' response parser.

An ``httpx.AsyncBaseTransport`` (providers see only httpx) without
what the gateway never uses: redirects, cookies, proxies, HTTP/2, request
bodies larger than memory, write timeouts.

- One keep-alive pool per (scheme, host, port) of at most ``max_connections``;
  callers beyond it queue (bounded by the ``pool`` timeout). A connection the
  server closed while idle is marked dead by ``connection_lost``.
- A request goes out in one ``transport.write``: head, ``Content-Length`` from
  the body, and the body.
- A body of known length up to 1 MiB comes back in memory (an ``httpx.ByteStream``),
  its connection pooled at once. Others stream as they arrive; ``aclose()`` pools the connection if the
  body was read to its end and aborts it otherwise, so an upstream sees an
  abandoned stream go at once.
- ``timeout`` extension: ``connect`` bounds connecting, ``read`` the wait for
  the head and every gap between body bytes, watched by one timer per
  connection re-armed only when it fires, not a timeout context per read.
- Failures surface as httpx exceptions only.

Retry: a request on a *reused* connection that the server closed before any
byte of the answer arrived (it closed it as we wrote: the keep-alive race) is
sent once more on a fresh connection. Not provably safe for non-idempotent
requests: a server that read the request and then died without a byte of
answer sees it twice. Nothing is retried after a byte of response, on a new
connection, after a read timeout (the server may still be working on it) or
when the transport is closing.

Modules: ``connection`` (one HTTP/1.1 connection as an asyncio Protocol, and a
body streamed from it), ``pool`` (keep-alive connections to one origin),
``transport`` (the ``httpx`` transport over them). Beside them, ``aiohttp``
holds ``AiohttpTransport``, the alternative a provider's ``transport: aiohttp``
picks; it is imported only then.
"""

from gateway.httpclient.transport import EAGER_BODY_MAX, LeanTransport

__all__ = ["EAGER_BODY_MAX", "LeanTransport"]
