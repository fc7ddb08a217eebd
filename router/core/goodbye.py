"""The router's own words on a stream: why it ends, and what a resume could not give back.

Each is an ``sse.error`` event, the same on every transport (a WebSocket carries it as an event
frame before its close). Pure: the caller draws the random share of a shutdown's retry.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from router.core.events import ErrorCode, SSEErrorEvent
from router.core.observer import CloseReason

_CLOSING_ERRORS: dict[CloseReason, tuple[ErrorCode, str]] = {
    CloseReason.LAGGED: (
        ErrorCode.LAGGED,
        "the stream fell too far behind; reconnect to resume from your last event",
    ),
    CloseReason.TOKEN_EXPIRED: (ErrorCode.TOKEN_EXPIRED, "the access token has expired"),
    CloseReason.SERVER_SHUTDOWN: (
        ErrorCode.SERVER_SHUTDOWN,
        "the server is restarting; reconnect to resume from your last event",
    ),
    CloseReason.ACCESS_CHANGED: (
        ErrorCode.ACCESS_CHANGED,
        "your access changed; reconnect (with a fresh token) to resume what you may still see",
    ),
    CloseReason.DISCONNECTED: (
        ErrorCode.DISCONNECTED,
        "you were signed out; do not reconnect with this token",
    ),
}
_NOT_RETRYABLE = frozenset({CloseReason.TOKEN_EXPIRED, CloseReason.DISCONNECTED})
"""Goodbyes after which the same token will not do: the client must get a new one first."""

HISTORY_TRUNCATED = SSEErrorEvent(
    code=ErrorCode.HISTORY_TRUNCATED,
    message="some events you missed are no longer kept; refetch your state",
    retryable=True,
)
"""A resume whose replay could not give back everything the client missed."""
HISTORY_REPLACED = SSEErrorEvent(
    code=ErrorCode.HISTORY_TRUNCATED,
    message="the event history was lost or replaced; events may be missing: refetch your state",
    retryable=True,
)
"""A live stream moved into another history of the bus (see Inbox.history_replaced)."""


def says_goodbye(reason: CloseReason | None) -> bool:
    """Whether a stream ended for ``reason`` tells its client why before it closes."""
    return reason in _CLOSING_ERRORS


def goodbye(reason: CloseReason, shutdown_retry_ms: int) -> SSEErrorEvent:
    """The last event of a stream ended for ``reason`` (one :func:`says_goodbye` accepts);
    ``shutdown_retry_ms`` is the wait a client told of a shutdown is to keep."""
    code, text = _CLOSING_ERRORS[reason]
    return SSEErrorEvent(
        code=code,
        message=text,
        retryable=reason not in _NOT_RETRYABLE,
        retry=shutdown_retry_ms if reason is CloseReason.SERVER_SHUTDOWN else None,
    )


def last_words(
    reason: CloseReason | None,
    shutdown_retry_ms: int,
    shutdown_retry_spread_ms: int = 0,
    draw: Callable[[int, int], int] = random.randint,
) -> SSEErrorEvent | None:
    """What a stream ended for ``reason`` says last, or ``None`` when it says nothing. Told of a
    shutdown, each client waits ``shutdown_retry_ms`` plus a share of the spread drawn from
    ``draw`` (inclusive bounds), so thousands of clients do not all reconnect in one instant."""
    if reason is None or not says_goodbye(reason):
        return None
    retry = shutdown_retry_ms
    if reason is CloseReason.SERVER_SHUTDOWN and shutdown_retry_spread_ms:
        retry += draw(0, shutdown_retry_spread_ms)
    return goodbye(reason, retry)
