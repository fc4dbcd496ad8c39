"""The Anthropic Messages ingress (``POST /v1/messages``), one concept per module:

- ``codec.py``: ``ANTHROPIC``, the codec (answers, streams, rate-limit headers);
- ``errors.py``: the error envelope and Anthropic's error types;
- ``request.py``: the request -> the canonical chat request, and the client's
  own body for a provider that speaks the Messages API;
- ``stream.py``: canonical chunks -> Anthropic's stream events.
"""

from gateway.ingress.anthropic.codec import ANTHROPIC, AnthropicCodec

__all__ = ["ANTHROPIC", "AnthropicCodec"]
