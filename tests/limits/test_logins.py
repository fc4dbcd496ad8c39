"""gateway/limits/logins.py: the failed-login bucket, on a clock the test moves."""

from __future__ import annotations

import pytest

from gateway.limits.logins import FailedLogins, TooManyFailedLogins


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ten_failures_a_minute_then_one_every_six_seconds() -> None:
    clock = Clock()
    logins = FailedLogins(burst=10, per_seconds=60, clock=clock)
    for _ in range(10):
        logins.check("a")
        logins.failed("a")
    with pytest.raises(TooManyFailedLogins) as info:
        logins.check("a")
    assert info.value.status == 429
    assert info.value.response_headers()["retry-after"] == "6"
    logins.check("b")  # per address

    clock.now += 5.9
    with pytest.raises(TooManyFailedLogins):
        logins.check("a")
    clock.now += 0.2  # one failure's worth has come back, and only one
    logins.check("a")
    logins.failed("a")
    with pytest.raises(TooManyFailedLogins):
        logins.check("a")

    clock.now += 60  # a quiet minute: the whole burst again
    for _ in range(10):
        logins.check("a")
        logins.failed("a")


def test_memory_stays_bounded_under_a_spray_of_addresses() -> None:
    clock = Clock()
    logins = FailedLogins(clock=clock)
    for i in range(25_000):
        logins.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(logins) <= 10_000
