"""What the request path reports, and the one interface logs, metrics and traces hang on.

The request path never writes a log line, a metric or a span itself: it tells
the app's ``Observer`` what happened, at a handful of points, and each
observer (the access log, the Prometheus metrics, the OpenTelemetry traces)
makes of it what it needs. The points, in a request's order:

- ``request_started`` / ``request_finished``: by the request-context middleware,
  around every HTTP request; the ``AccessRecord`` holds what the request did
  (its key, model, status, outcome, tokens, cost, timings) once it is finished.
- ``refused``: an admission refused by a limit (``limit`` names which).
- ``stream_opened`` / ``stream_closed``: an event stream's body begins and ends.
- ``attempt``: each upstream call routing made, once the call is settled.
- ``cooled``: a deployment starts a cooldown (routing state).
- ``store_changed``: the shared store went down or came back.

An observer must not raise and must not block: each method runs inline on the
event loop, most on every request. Those that do nothing are left out of the
dispatch (``Observers``), so an observer pays only for the points it uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the access record's module is an observer's: it imports this one
    from gateway.observability.access import AccessRecord


@dataclass(slots=True)
class AttemptReport:
    """One upstream call, as it was settled (plain values only: no secrets, no prompts)."""

    model: str  # the gateway model it served (a fallback's name after a fallback)
    provider: str  # the provider's name in the config
    upstream_model: str
    outcome: str  # ok | error | cancelled (the client left) | superseded (a losing hedge)
    reason: str | None  # why it failed (errors.Reason), when it did
    via: str  # how routing started it: "" (the first), retry, hedge or fallback
    input_tokens: int
    output_tokens: int
    cost_usd: float
    started: float  # time.time() when it was started
    ended: float  # time.time() when it ended (or was settled)

    @property
    def deployment(self) -> str:
        return f"{self.provider}/{self.upstream_model}"


class Observer:
    """Every point the request path reports, each doing nothing: override what you use."""

    def request_started(self, record: AccessRecord) -> None:
        """An HTTP request arrived (its id, method and path are on ``record``)."""

    def request_finished(self, record: AccessRecord, seconds: float) -> None:
        """The request is over, its answer sent or abandoned, ``seconds`` after it began."""

    def refused(self, record: AccessRecord, limit: str) -> None:
        """Admission refused the request: ``limit`` is rpm, tpm, max_parallel or budget."""

    def stream_opened(self, record: AccessRecord) -> None:
        """An event stream's response began (counted until ``stream_closed``)."""

    def stream_closed(self, record: AccessRecord) -> None:
        """The event stream ended, however it ended (``record.outcome`` says how)."""

    def attempt(self, record: AccessRecord, attempt: AttemptReport) -> None:
        """One upstream call routing made for the request, once it is settled."""

    def cooled(self, deployment: str, seconds: float) -> None:
        """``deployment`` (provider/upstream-model) is skipped for ``seconds``."""

    def store_changed(self, up: bool, at: float) -> None:
        """The store went down (``up`` false) or came back, at ``at`` (time.time())."""


_POINTS = tuple(
    name for name, value in vars(Observer).items() if callable(value) and not name.startswith("_")
)


class Observers(Observer):
    """Several observers as one: each point calls, in order, the observers that
    override it, and none of those that do not."""

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self.observers: tuple[Observer, ...] = tuple(observers)
        for point in _POINTS:
            calls = tuple(
                getattr(observer, point)
                for observer in self.observers
                if getattr(type(observer), point) is not getattr(Observer, point)
            )
            setattr(self, point, _fan_out(calls) if len(calls) != 1 else calls[0])

    def __iter__(self) -> Any:
        return iter(self.observers)


def _fan_out(calls: Sequence[Callable[..., None]]) -> Callable[..., None]:
    if not calls:
        return _nothing

    def each(*args: Any) -> None:
        for call in calls:
            call(*args)

    return each


def _nothing(*args: Any) -> None:
    return None
