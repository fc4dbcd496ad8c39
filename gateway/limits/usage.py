"""Usage: what a call used and cost, and the counters per key, model and UTC day.

The convention is OpenAI's, whichever provider answered (docs/limits.md,
"Usage"): the input tokens include those read from the provider's prompt cache
and those written to it, which are also counted apart because they are priced
apart; the output tokens include reasoning tokens.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.config import Price
from gateway.limits.base import TokenCounts, UsageEvent, today
from gateway.schemas.admin import DayUsage, ModelUsage, UsageDoc
from gateway.schemas.openai import Usage

__all__ = [
    "COUNTERS",
    "NO_TOKENS",
    "TokenCounts",
    "UsageTable",
    "cost_of",
    "counts_of",
    "reservation_cost",
    "usage_doc",
    "usage_event",
]

Counters = list[float]  # in COUNTERS order
COUNTERS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "errors",
    "cache_read_tokens",
    "cache_write_tokens",
)
_COST = COUNTERS.index("cost_usd")

NO_TOKENS = TokenCounts(0, 0)


def _zeros() -> Counters:
    return [0, 0, 0, 0.0, 0, 0, 0]


def counts_of(usage: Usage | None) -> TokenCounts:
    """The token counts of an answer's (or a stream's last) ``usage``; none: zero."""
    if usage is None:
        return NO_TOKENS
    details = usage.prompt_tokens_details
    if details is None:
        return TokenCounts(usage.prompt_tokens, usage.completion_tokens)
    return TokenCounts(
        usage.prompt_tokens,
        usage.completion_tokens,
        details.cached_tokens or 0,
        details.cache_write_tokens or 0,
    )


def cost_of(price: Price | None, counts: TokenCounts) -> float:
    """USD for ``counts`` at ``price`` (per one million tokens); no price: 0.

    Cache reads cost ``price.cache_read`` and cache writes ``price.cache_write``,
    each ``price.input`` when unset; the rest of the input costs ``price.input``
    and the output ``price.output``. Counts that claim more cached tokens than
    input tokens are priced as if the cached ones were all there was.
    """
    if price is None:
        return 0.0
    tokens_in, tokens_out, read, write = counts
    if not read and not write:
        return (price.input * tokens_in + price.output * tokens_out) / 1_000_000
    fresh = max(0, tokens_in - read - write)
    read_price = price.input if price.cache_read is None else price.cache_read
    write_price = price.input if price.cache_write is None else price.cache_write
    return (
        price.input * fresh + read_price * read + write_price * write + price.output * tokens_out
    ) / 1_000_000


def reservation_cost(price: Price | None, prompt_tokens: int, output_tokens: int) -> float:
    """An upper bound of what a call of this prompt and output cap can cost at ``price``.

    Every prompt token might be a cache write, which can cost more than input
    (Anthropic's cost 1.25 times as much): the prompt is priced at the dearer.
    """
    if price is None:
        return 0.0
    per_prompt_token = price.input
    if price.cache_write is not None and price.cache_write > per_prompt_token:
        per_prompt_token = price.cache_write
    return (per_prompt_token * prompt_tokens + price.output * output_tokens) / 1_000_000


def usage_event(model: str, counts: TokenCounts, cost: float, error: bool) -> UsageEvent:
    """The usage event a settle records now, for the gateway model ``model``."""
    return UsageEvent(
        model,
        counts.input,
        counts.output,
        cost,
        error,
        today(),
        counts.cache_read,
        counts.cache_write,
    )


class UsageTable:
    """Counters being aggregated in memory before they are written."""

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str], Counters] = {}

    def __bool__(self) -> bool:
        return bool(self._rows)

    def add(self, key_id: str, event: UsageEvent) -> None:
        row = self._rows.get((key_id, event.day, event.model))
        if row is None:
            row = self._rows[(key_id, event.day, event.model)] = _zeros()
        row[0] += 1
        row[1] += event.input_tokens
        row[2] += event.output_tokens
        row[3] += event.cost
        row[4] += 1 if event.error else 0
        if event.cache_read_tokens or event.cache_write_tokens:
            row[5] += event.cache_read_tokens
            row[6] += event.cache_write_tokens

    def rows(self) -> list[tuple]:
        """(key_id, day, model, *counters), counters in ``COUNTERS`` order."""
        return [(*key, *counters) for key, counters in self._rows.items()]

    def merge_into(self, other: UsageTable) -> None:
        for key, counters in self._rows.items():
            row = other._rows.setdefault(key, _zeros())
            for i, value in enumerate(counters):
                row[i] += value


def usage_doc(key_id: str, rows: Iterable[tuple]) -> UsageDoc:
    """``rows``: (day, model, *counters), counters in ``COUNTERS`` order."""
    total = _zeros()
    by_model: dict[str, Counters] = {}
    by_day: dict[str, Counters] = {}
    for day, model, *counters in rows:
        for bucket in (
            total,
            by_model.setdefault(model, _zeros()),
            by_day.setdefault(day, _zeros()),
        ):
            for i, value in enumerate(counters):
                bucket[i] += value

    def fields(c: Counters) -> dict[str, float]:
        return {**dict(zip(COUNTERS, c, strict=True)), "cost_usd": round(c[_COST], 10)}

    return UsageDoc(
        key_id=key_id,
        **fields(total),
        by_model=[ModelUsage(model=m, **fields(c)) for m, c in sorted(by_model.items())],
        by_day=[DayUsage(day=d, **fields(c)) for d, c in sorted(by_day.items())],
    )
