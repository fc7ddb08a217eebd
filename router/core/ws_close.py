"""The WebSocket close codes: a bounded set, mapped from why a connection was refused or ended.

A browser cannot read the HTTP status of a refused handshake, so the router always accepts and
refuses afterwards with one of these; the close reason is the error code's text. What a client
should do on each is in ``docs/websocket.md``.
"""

from __future__ import annotations

import enum

from router.core.admission import UNAUTHORIZED, Reason
from router.core.observer import CloseReason


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    """The server is shutting down (``server-shutdown``): resume after the retry it said."""
    INTERNAL = 1011
    BAD_REQUEST = 4000
    UNAUTHORIZED = 4001
    TOKEN_EXPIRED = 4002
    FORBIDDEN = 4003
    LAGGED = 4004
    ACCESS_CHANGED = 4005
    """A grant the stream used was revoked: reconnect with a fresh token, resuming."""
    DISCONNECTED = 4006
    """The user or session was signed out: do not reconnect with this token."""
    NO_PONG = 4008
    """A ping stayed unanswered for ``--ws-pong-timeout-seconds`` (router.core.pong): the peer
    is gone or hung; a client that sees it reconnects, resuming."""
    RATE_LIMITED = 4029
    UNAVAILABLE = 4503


_REFUSALS: dict[Reason, CloseCode] = {
    **dict.fromkeys(UNAUTHORIZED, CloseCode.UNAUTHORIZED),
    Reason.BAD_REQUEST: CloseCode.BAD_REQUEST,
    Reason.FORBIDDEN: CloseCode.FORBIDDEN,
    Reason.ADDRESS_BLOCKED: CloseCode.FORBIDDEN,
    Reason.ORIGIN_NOT_ALLOWED: CloseCode.FORBIDDEN,
    Reason.TOO_MANY_STREAMS: CloseCode.RATE_LIMITED,
    Reason.RATE_LIMITED: CloseCode.RATE_LIMITED,
    Reason.SHUTTING_DOWN: CloseCode.UNAVAILABLE,
    Reason.REPLAY_UNAVAILABLE: CloseCode.UNAVAILABLE,
    Reason.OVERLOADED: CloseCode.UNAVAILABLE,
}

_ENDINGS: dict[CloseReason, CloseCode] = {
    CloseReason.CLIENT: CloseCode.NORMAL,
    CloseReason.LAGGED: CloseCode.LAGGED,
    CloseReason.TOKEN_EXPIRED: CloseCode.TOKEN_EXPIRED,
    CloseReason.SERVER_SHUTDOWN: CloseCode.GOING_AWAY,
    CloseReason.ERROR: CloseCode.INTERNAL,
    CloseReason.ACCESS_CHANGED: CloseCode.ACCESS_CHANGED,
    CloseReason.DISCONNECTED: CloseCode.DISCONNECTED,
    CloseReason.NO_PONG: CloseCode.NO_PONG,
}


def refusal_close(reason: Reason) -> CloseCode:
    """The close code of a connection the front door refused for ``reason``."""
    return _REFUSALS[reason]


def ending_close(reason: CloseReason | None) -> CloseCode:
    """The close code of a session that ended for ``reason`` (``None``: cut from outside, which
    only a shutdown does)."""
    return _ENDINGS[CloseReason.SERVER_SHUTDOWN if reason is None else reason]
