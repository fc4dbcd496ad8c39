"""gateway/providers/redact.py: no secret, whole or in part, survives ``clean``."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from gateway.providers.redact import MASK, Redactor

KEY = "sk-proj-A1b2C3d4E5f6G7h8I9j0K1l2M3n4"
HEADER = "org-Zy98Xw76Vu54Ts32"


def fragments(secret: str, size: int = 8) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def assert_clean(text: str, *secrets: str) -> None:
    lowered = text.lower()
    for secret in secrets:
        for piece in fragments(secret):
            assert piece.lower() not in lowered, f"{piece!r} of a secret left in {text!r}"


def test_whole_secrets_are_masked() -> None:
    redactor = Redactor([KEY, HEADER])
    text = f"Invalid key {KEY} for organization {HEADER}."
    assert redactor.clean(text, 500) == f"Invalid key {MASK} for organization {MASK}."


def test_masked_whatever_the_case_and_escaping() -> None:
    secret = 'pa"ss/w\\ord=42 secret'
    redactor = Redactor([secret])
    for form in (secret, secret.upper(), json.dumps(secret)[1:-1], quote(secret, safe="")):
        assert redactor.clean(f"echo: {form}!", 500) == f"echo: {MASK}!"


def test_the_words_of_a_credential_value_are_masked_alone() -> None:
    redactor = Redactor(["Bearer tok-0123456789abcdef"])
    assert redactor.clean("token tok-0123456789abcdef expired", 500) == f"token {MASK} expired"


@pytest.mark.parametrize("limit", range(20, 80))
def test_redacted_before_the_cut_whatever_the_cut(limit: int) -> None:
    # The key straddles every one of these cuts: cutting first would leave its start.
    text = "x" * 30 + KEY + " and then more text"
    cleaned = Redactor([KEY]).clean(text, limit)
    assert_clean(cleaned, KEY)
    assert not cleaned[:-3].endswith(KEY[:4])  # no start of it at the edge either


def test_fragments_of_a_secret_are_masked_anywhere() -> None:
    # An upstream that truncates its own echo leaves a part of the key behind.
    text = f"key {KEY[:12]}... and {KEY[-10:]} rejected"
    cleaned = Redactor([KEY]).clean(text, 500)
    assert_clean(cleaned, KEY)
    assert cleaned == f"key {MASK}... and {MASK} rejected"


def test_the_start_of_a_secret_at_the_cut_is_masked() -> None:
    text = "invalid: " + KEY
    cleaned = Redactor([KEY]).clean(text[: len("invalid: ") + 6] + "zzzz", len("invalid: ") + 6)
    assert cleaned == f"invalid: {MASK}..."


def test_short_values_are_not_secrets() -> None:
    redactor = Redactor(["p1", "", None])
    assert not Redactor(["p1", "", None])
    assert redactor.clean("project p1 not found", 500) == "project p1 not found"


def test_no_secrets_just_cuts() -> None:
    redactor = Redactor([None])
    assert redactor.clean("short", 10) == "short"
    assert redactor.clean("a" * 20, 10) == "a" * 10 + "..."


def test_long_text_stays_bounded() -> None:
    text = (f"{KEY} " * 2000) + "tail"
    cleaned = Redactor([KEY, HEADER]).clean(text, 500)
    assert len(cleaned) <= 500 + len(MASK) + 3
    assert_clean(cleaned, KEY)
