"""Which of a model's usable deployments a call goes to (``models.routing.strategy``).

Each strategy picks one of ``candidates`` (never empty: the deployments that are
not cooling down, not at their ``max_parallel`` and, on a retry, not tried yet)
from what ``RoutingState`` knows now. ``hedge`` picks its first deployment as
``weighted`` does; gateway/routing/hedge.py starts the others.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from gateway.routing.call import Target
from gateway.routing.state import RoutingState

Strategy = Callable[[Sequence[Target], RoutingState], Target]

# ``latency`` sends this share of calls to a deployment chosen by weight instead of
# the fastest, so a deployment that was slow once is measured again when it recovers.
EXPLORE = 0.05


def weighted(candidates: Sequence[Target], state: RoutingState) -> Target:
    if len(candidates) == 1:
        return candidates[0]
    return random.choices(candidates, weights=[t.deployment.weight for t in candidates])[0]


def least_busy(candidates: Sequence[Target], state: RoutingState) -> Target:
    """Fewest calls in flight in this process; ties by weight."""
    counts = [state[t.name].in_flight for t in candidates]
    fewest = min(counts)
    return weighted([t for t, n in zip(candidates, counts, strict=True) if n == fewest], state)


def latency(candidates: Sequence[Target], state: RoutingState) -> Target:
    """The lowest recent time to first output; a deployment not measured yet first."""
    unmeasured = [t for t in candidates if state[t.name].latency is None]
    if unmeasured:
        return weighted(unmeasured, state)
    if random.random() < EXPLORE:
        return weighted(candidates, state)
    return min(candidates, key=lambda t: state[t.name].latency or 0.0)


STRATEGIES: dict[str, Strategy] = {
    "weighted": weighted,
    "least-busy": least_busy,
    "latency": latency,
    "hedge": weighted,
}
