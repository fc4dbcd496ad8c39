"""A codec per ingress (gateway/ingress/base.py), and which one a request's path speaks.

The request-context middleware asks ``codec_for`` once per request, before
any route runs, and leaves the answer in the scope under ``SCOPE_KEY``, so
that every answer of the request, refusals before its route included, is in
the format its client reads. A path no ingress claims speaks OpenAI's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.ingress.anthropic import ANTHROPIC
from gateway.ingress.base import Codec
from gateway.ingress.openai import OPENAI

__all__ = ["ANTHROPIC", "OPENAI", "SCOPE_KEY", "Codec", "codec_for", "codec_of"]

SCOPE_KEY = "gateway.ingress"

# Path prefixes whose clients speak another API than OpenAI's: one line per ingress.
_CLAIMED: tuple[tuple[str, Codec], ...] = (("/v1/messages", ANTHROPIC),)


def codec_for(path: str) -> Codec:
    """The codec of the ingress that serves ``path``."""
    for prefix, codec in _CLAIMED:
        if path.startswith(prefix):
            return codec
    return OPENAI


def codec_of(scope: Mapping[str, Any]) -> Codec:
    """The codec the middleware chose for this request (OpenAI's outside it)."""
    return scope.get(SCOPE_KEY, OPENAI)
