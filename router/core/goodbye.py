"""The router's own words on a stream: why it ends, and what a resume could not give back.

Each is an ``sse.error`` event, the same on every transport (a WebSocket carries it as an event
frame before its close). Pure: the caller draws the random share of a shutdown's retry.
"""

from __future__ import annotations

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
}

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
        retryable=reason is not CloseReason.TOKEN_EXPIRED,
        retry=shutdown_retry_ms if reason is CloseReason.SERVER_SHUTDOWN else None,
    )
