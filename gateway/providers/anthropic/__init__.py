"""Anthropic's Messages API as a provider (config ``type: anthropic``).

The canonical OpenAI-shaped chat request goes out as a Messages request and
the answer, or the stream, comes back as ``ChatCompletion`` and
``ChatCompletionChunk``s; errors become the gateway's typed errors. One concept
per module:

- ``provider.py``: ``AnthropicProvider``, its URL and headers;
- ``request.py``: the request translation, and what it refuses;
- ``answer.py``: the answer translation, stop reasons and usage;
- ``stream.py``: the stream translation;
- ``errors.py``: error answers and error events;
- ``relay.py``: a Messages call passed through from the Anthropic ingress, relayed.

What is translated, approximated and refused: docs/configuration.md ("type: anthropic").
"""

from gateway.providers.anthropic.provider import AnthropicProvider

__all__ = ["AnthropicProvider"]
