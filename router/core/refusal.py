"""How a refused new stream is answered, so that a browser's ``EventSource`` comes back by itself.

An ``EventSource`` treats any status but 200 as fatal: a tab refused with ``429`` stops updating
until it is reloaded. So a refusal meant to be retried (:data:`RETRYABLE`), to a request that asks
for an event stream, is answered in-band: ``200`` with the stream headers and a stream of one
block, an ``sse.error`` with the refusal's code, ``retryable: true`` and ``retry:`` set to the wait,
after which the stream ends and the browser reconnects when the wait is over, with its
``Last-Event-ID``. A client that does not ask for an event stream (``curl``, a health probe, an
HTTP library) gets the status, with ``Retry-After``. Refusals not meant to be retried (``400``,
``401``, ``403``) never come here: they keep their status, and the browser stops, as it should.

Pure: the caller passes the ``Accept`` header and the wait; nothing here reads a clock.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

from router.core.events import ErrorCode, SSEErrorEvent

RETRYABLE: Mapping[ErrorCode, int] = {
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.TOO_MANY_STREAMS: 429,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.REPLAY_UNAVAILABLE: 503,
    ErrorCode.OVERLOADED: 503,
}
"""The refusals a client should retry by itself, with the HTTP status of their plain form."""

EVENT_STREAM = "text/event-stream"


class Limit(enum.StrEnum):
    """Which limit refused a new stream; fit for a metric label."""

    STREAMS_PER_USER = "streams-per-user"
    STREAMS_PER_INSTANCE = "streams-per-instance"
    STREAMS_PER_ADDRESS = "streams-per-address"
    CONNECTS_PER_USER = "connects-per-user"
    CONNECTS_PER_ADDRESS = "connects-per-address"
    BAD_TOKENS_PER_ADDRESS = "bad-tokens-per-address"
    OVERLOAD = "overload"
    """The overload ladder refuses new streams (router/core/overload.py)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A new stream refused for now; the client may come back after ``wait`` seconds."""

    code: ErrorCode
    message: str
    wait: float
    limit: Limit | None = None
    """The limit that refused, when a limit did."""

    def __post_init__(self) -> None:
        if self.code not in RETRYABLE:
            raise ValueError(f"{self.code.value!r} is not a refusal to retry")
        if not self.wait > 0 or math.isinf(self.wait):
            raise ValueError(f"a refusal's wait is a positive number of seconds, got {self.wait}")

    @property
    def status(self) -> int:
        return RETRYABLE[self.code]


@dataclass(frozen=True, slots=True)
class InBand:
    """Answer ``200`` with the stream headers and ``body``, then end the stream."""

    body: bytes


@dataclass(frozen=True, slots=True)
class WithStatus:
    """Answer ``status`` with the JSON error body of ``code`` and ``message``, and ``headers``."""

    status: int
    code: str
    message: str
    headers: Mapping[str, str]


def answer_refusal(refusal: Refusal, accept: str | None) -> InBand | WithStatus:
    """How to answer ``refusal`` to a request whose ``Accept`` header is ``accept``."""
    if asks_for_event_stream(accept):
        retry_ms = math.ceil(refusal.wait * 1000)
        error = SSEErrorEvent(
            code=refusal.code, message=refusal.message, retryable=True, retry=retry_ms
        )
        return InBand(error.to_sse_format())
    retry_after = str(max(1, math.ceil(refusal.wait)))  # whole seconds, never early
    return WithStatus(
        refusal.status, refusal.code.value, refusal.message, {"Retry-After": retry_after}
    )


def asks_for_event_stream(accept: str | None) -> bool:
    """Whether ``accept`` names ``text/event-stream`` itself with a quality above zero.

    A wildcard (``*/*``, ``text/*``) does not count: a client that accepts anything has not said
    it is an ``EventSource``, and gets the plain status it can read.
    """
    for media_range in (accept or "").split(","):
        kind, *parameters = (part.strip() for part in media_range.split(";"))
        if kind.lower() != EVENT_STREAM:
            continue
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        if quality > 0:
            return True
    return False
