"""Keeping a provider's secrets out of what its upstream says.

An upstream's error text can echo what the gateway sent it: the provider's
API key, or a configured ``headers:`` value. Before any of that text reaches a
client, ``Redactor.clean`` masks every secret, whole or in part, and only then
cuts the text to length, so a cut can never leave the start of a secret
unmasked. Built once per provider; used on error paths only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import quote

MASK = "[redacted]"
# A configured value shorter than this is not treated as a secret: masking every
# "p1" or "1" in a message would garble it and hide nothing worth hiding.
MIN_SECRET = 4
# No run of this many characters of a secret survives anywhere in cleaned text.
FRAGMENT = 8
# The shortest start of a secret masked where the text was cut.
EDGE = 4


def _forms(secret: str) -> set[str]:
    """The ways ``secret`` may come back: as sent, JSON- or URL-escaped, and the
    words of a value such as ``Bearer <token>``."""
    forms = {secret, json.dumps(secret)[1:-1], quote(secret, safe="")}
    forms.update(word for word in secret.split() if len(word) >= FRAGMENT)
    return {form for form in forms if len(form) >= MIN_SECRET}


class Redactor:
    """Masks the given secrets in text, case-insensitively."""

    __slots__ = ("_edges", "_grams", "_pattern")

    def __init__(self, secrets: Iterable[str | None]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms |= _forms(secret)
        # Longest first, so a secret is masked whole rather than one of its words.
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = (
            re.compile("|".join(map(re.escape, ordered)), re.IGNORECASE) if ordered else None
        )
        lowered = [form.lower() for form in ordered]
        self._grams = frozenset(
            form[i : i + FRAGMENT] for form in lowered for i in range(len(form) - FRAGMENT + 1)
        )
        self._edges = tuple(lowered)

    def __bool__(self) -> bool:
        return self._pattern is not None

    def clean(self, text: str, limit: int) -> str:
        """``text`` with every secret masked, then cut to about ``limit`` characters."""
        if self._pattern is None:
            return text if len(text) <= limit else text[:limit] + "..."
        text = self._pattern.sub(MASK, text)
        cut = len(text) > limit
        if cut:
            text = text[:limit]
        text = self._mask_fragments(text)
        if cut:
            text = self._mask_edge(text) + "..."
        return text

    def _mask_fragments(self, text: str) -> str:
        """Mask every run of text made of FRAGMENT-long pieces of a secret."""
        grams = self._grams
        if not grams or len(text) < FRAGMENT:
            return text
        lowered = text.lower()
        spans: list[list[int]] = []
        for i in range(len(text) - FRAGMENT + 1):
            if lowered[i : i + FRAGMENT] in grams:
                end = i + FRAGMENT
                if spans and spans[-1][1] >= i:
                    spans[-1][1] = end
                else:
                    spans.append([i, end])
        for start, end in reversed(spans):
            text = text[:start] + MASK + text[end:]
        return text

    def _mask_edge(self, text: str) -> str:
        """Mask the end of ``text`` when it is the start of a secret the cut split."""
        lowered = text.lower()
        longest = 0
        for form in self._edges:
            for size in range(min(len(form) - 1, len(text)), max(EDGE, longest + 1) - 1, -1):
                if form.startswith(lowered[-size:]):
                    longest = size
                    break
        return text[: len(text) - longest] + MASK if longest else text
