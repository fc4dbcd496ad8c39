"""One routed call as routing sees it, and what came back.

The pipeline (gateway/pipeline.py) makes a ``RoutedCall`` of an admitted
request and hands it to ``Router.answer`` or ``Router.stream``; routing fills
in its ``attempts`` (every upstream call it made, for settling) and the model
and deployment that answered. Nothing here knows of limits or of HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.config import Cooldown, Deployment, Price
from gateway.errors import GatewayError
from gateway.providers.base import Provider
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    Usage,
)


class NativeRequest(Protocol):
    """The client's own request, for a deployment whose provider speaks the client's API
    natively (the Anthropic Messages ingress): sent as it came, only ``model`` replaced."""

    headers: Mapping[str, str]
    refusal: GatewayError | None  # raised if the call is translated instead

    def body_for(self, model: str) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Target:
    """One deployment of a gateway model, ready to call."""

    model: str  # the gateway model it serves
    provider: Provider
    deployment: Deployment
    price: Price | None
    name: str  # "provider/upstream-model": its state's key and the x-gateway-served-by header
    cooldown: Cooldown  # the model's policy for it


def target(
    model: str, provider: Provider, deployment: Deployment, price: Price | None, cooldown: Cooldown
) -> Target:
    return Target(
        model, provider, deployment, price, f"{provider.name}/{deployment.model}", cooldown
    )


@dataclass(slots=True, eq=False)
class Attempt:
    """One upstream call routing made: settled as a call of its own."""

    target: Target
    usage: Usage | None = None  # what the upstream reported
    outputs: int = 0  # output items seen before it ended (a stream's chunks)
    error: GatewayError | None = None
    cancelled: bool = False  # given up by the gateway: a losing hedge, the client left
    superseded: bool = False  # a losing hedge: billed its prompt, which the upstream read
    ended: bool = False
    # How routing came to start it: "" (the call's first), retry, hedge or fallback;
    # marked by the layer that started it, for the metrics and the traces.
    via: str = ""
    started: float = 0.0  # time.time() at its start
    ended_at: float = 0.0  # time.time() at its end (an answer, a failure, a stream's close)


def mark(call: RoutedCall, since: int, via: str) -> None:
    """Say how the call's attempts from ``since`` on were started (``Attempt.via``),
    where the layer inside, which started them, has not already."""
    for attempt in call.attempts[since:]:
        if not attempt.via:
            attempt.via = via


@dataclass(slots=True, eq=False)
class RoutedCall:
    """An admitted request on its way through routing.

    ``model`` is the gateway model asked for, ``served_model`` the one answering
    (a fallback's, after a fallback); the deployment that answered is on the
    answer's ``attempt``. ``deadline`` (the event loop's clock) bounds every retry.
    """

    model: str
    request: ChatCompletionRequest | EmbeddingRequest
    request_id: str
    deadline: float
    native: NativeRequest | None = None
    embeds: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    served_model: str = ""

    @property
    def stream(self) -> bool:
        # Embeddings never stream: a "stream" in their body is an unknown field passed
        # on, whatever its value (a fuzzed object there once sent them down the stream path).
        return not self.embeds and bool(getattr(self.request, "stream", False))


@dataclass(slots=True, eq=False)
class Answered:
    """A non-streamed answer: canonical, or the upstream's own (``native``) for a
    request passed through; ``usage`` as the gateway counts it."""

    body: ChatCompletion | EmbeddingResponse | dict[str, Any]
    usage: Usage | None
    native: bool
    attempt: Attempt


@dataclass(slots=True, eq=False)
class Opened:
    """A stream that has produced its first output, and whose retry window is closed.

    ``head`` holds what it sent up to that output (a role announcement, a
    ``message_start``), ``rest`` the upstream's own iterator for what follows,
    read straight by the relay: nothing of routing runs per chunk. ``native``:
    the items are the upstream's own events (a request passed through), else
    canonical chunks.
    """

    head: list[Any]
    rest: AsyncIterator[Any]
    native: bool
    attempt: Attempt
