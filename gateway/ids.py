"""Ids that must be unique, made cheaply: a random process prefix and a counter.

uuid4 costs a system call for 16 random bytes on every request; uniqueness
across processes only needs randomness once per process.
"""

from __future__ import annotations

import itertools
import os

_prefix: str | None = None
_counter = itertools.count(1)


def new_id() -> str:
    """32 hex characters, unique across processes and restarts."""
    global _prefix
    if _prefix is None:
        _prefix = os.urandom(8).hex()
    return f"{_prefix}{next(_counter):016x}"
