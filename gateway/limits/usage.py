"""Usage counters: per key, model and UTC day, and the documents built from them."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.limits.base import UsageEvent
from gateway.schemas.admin import DayUsage, ModelUsage, UsageDoc

# requests, input_tokens, output_tokens, cost_usd, errors
Counters = list[float]
COUNTERS = ("requests", "input_tokens", "output_tokens", "cost_usd", "errors")


def price_cost(price_in: float, price_out: float, input_tokens: int, output_tokens: int) -> float:
    """USD for the tokens at prices per one million."""
    return (price_in * input_tokens + price_out * output_tokens) / 1_000_000


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
            row = self._rows[(key_id, event.day, event.model)] = [0, 0, 0, 0.0, 0]
        row[0] += 1
        row[1] += event.input_tokens
        row[2] += event.output_tokens
        row[3] += event.cost
        row[4] += 1 if event.error else 0

    def rows(self) -> list[tuple]:
        return [(*key, *counters) for key, counters in self._rows.items()]

    def merge_into(self, other: UsageTable) -> None:
        for key, counters in self._rows.items():
            row = other._rows.setdefault(key, [0, 0, 0, 0.0, 0])
            for i, value in enumerate(counters):
                row[i] += value


def usage_doc(key_id: str, rows: Iterable[tuple]) -> UsageDoc:
    """``rows``: (day, model, requests, input_tokens, output_tokens, cost_usd, errors)."""
    total: Counters = [0, 0, 0, 0.0, 0]
    by_model: dict[str, Counters] = {}
    by_day: dict[str, Counters] = {}
    for day, model, *counters in rows:
        for bucket in (
            total,
            by_model.setdefault(model, [0, 0, 0, 0.0, 0]),
            by_day.setdefault(day, [0, 0, 0, 0.0, 0]),
        ):
            for i, value in enumerate(counters):
                bucket[i] += value

    def fields(c: Counters) -> dict[str, float]:
        return {**dict(zip(COUNTERS, c, strict=True)), "cost_usd": round(c[3], 10)}

    return UsageDoc(
        key_id=key_id,
        **fields(total),
        by_model=[ModelUsage(model=m, **fields(c)) for m, c in sorted(by_model.items())],
        by_day=[DayUsage(day=d, **fields(c)) for d, c in sorted(by_day.items())],
    )
