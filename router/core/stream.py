"""A client's stream as pure state: who it is for, what waits for it, what it has been sent.

The session actor (``actors/session.py``) is a :class:`Stream` and the waiting: a trio wake-up,
the cancel scope its token's expiry sets, the loop that writes what its
:class:`~router.core.writer.Writer` says. Everything here returns at once and touches no event
loop, so the hub's and the adapter's calls are tested without one (``tests/test_stream.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from router.core.control import Control
from router.core.cursor import Cursor
from router.core.history import Replay
from router.core.inbox import Inbox
from router.core.observer import NO_OBSERVER, CloseReason, StreamObserver, Transport
from router.core.permissions import Principal, StreamFilter
from router.core.session_settings import DEFAULT_SESSION_SETTINGS, SessionSettings
from router.core.wire import SSE, WireFormat
from router.core.writer import Writer

__all__ = ["Stream"]


class Stream(Writer):
    """A client's stream: its :class:`~router.core.writer.Writer` (what to write next, what was
    sent), and the hub's and the adapter's side of it. ``cursor`` is what the client has been
    served (kept by its inbox): where it resumes from, until its first write. ``principal`` and
    ``stream_filter`` are plain attributes: the adapter reads them for every session it routes
    to."""

    def __init__(
        self,
        principal: Principal,
        stream_filter: StreamFilter,
        expires_at: float,
        *,
        settings: SessionSettings = DEFAULT_SESSION_SETTINGS,
        connection_id: str = "",
        address: str = "",
        observer: StreamObserver = NO_OBSERVER,
        cursor: Cursor | None = None,
        issued_at: float | None = None,
        wire: WireFormat[Any] = SSE,
    ) -> None:
        inbox = Inbox(settings.session_buffer, cursor, max_bytes=settings.session_buffer_bytes)
        super().__init__(
            inbox,
            wire,
            principal,
            stream_filter,
            observer,
            transport=Transport.SSE if wire.name == SSE.name else Transport.WEBSOCKET,
            sample_rate=settings.log_sample_rate,
        )
        self.expires_at = expires_at
        """When the token expires, in seconds since the epoch."""
        self.issued_at = issued_at
        """When the token was issued (its ``iat``), if it said: what a control is compared with."""
        self.opened_at = time.time()
        self.settings, self.connection_id = settings, connection_id
        self.address = address
        """The client's address, as the front door saw it (counted by the registry)."""
        self.close_reason: CloseReason | None = None
        self.narrow_notice: Callable[[Control], object] | None = None
        """How its transport tells the client a revocation narrowed the stream in place (a chunk
        of its wire format); ``None``: it cannot, and such a revocation ends it (Hub.apply)."""
        self._made()

    def _made(self) -> None:
        """Called last as a stream is made: where a driver adds its own state (the session
        actor its wake-up), so the constructor's parameters and defaults are written once."""

    @property
    def cursor(self) -> Cursor | None:
        return self.inbox.cursor

    @cursor.setter
    def cursor(self, cursor: Cursor | None) -> None:
        self.inbox.cursor = cursor

    @property
    def backlog(self) -> int:
        """Events waiting for this client, queued or coalesced aside."""
        return self.inbox.waiting + self.inbox.set_aside

    @property
    def inbox_capacity(self) -> int:
        return self.inbox.capacity

    @property
    def held_bytes(self) -> int:
        """Bytes of events waiting for this client, or in its writer's hand (being written)."""
        inbox = self.inbox  # read for every stream in each health round: no nested property
        return inbox.waiting_bytes + inbox.in_hand_bytes

    @property
    def inbox_byte_bound(self) -> int:
        """The inbox's byte bound (``--session-buffer-bytes``; ``sys.maxsize`` for none)."""
        return self.inbox.byte_bound

    def coalesce_eagerly(self, eager: bool) -> None:
        """Coalesce low-priority events early (:meth:`Inbox.coalesce_eagerly`), or not."""
        self.inbox.coalesce_eagerly(eager)

    def stop(self, reason: CloseReason) -> None:
        """End the stream for ``reason``; the first reason given is the one reported. What
        waits is still there to take; later offers are refused."""
        if self.close_reason is None:
            self.close_reason = reason
        self.inbox.close()

    def begin_rescope(
        self, principal: Principal, stream_filter: StreamFilter, expires_at: float
    ) -> None:
        """From now on the stream is for ``principal`` and ``stream_filter`` (until
        ``expires_at``); nothing of its inbox is written until :meth:`finish_rescope` gives the
        new scope's replay (:class:`~router.core.handover.Handover`; Hub.rescope makes the
        hand-over)."""
        self.principal, self.stream_filter, self.expires_at = principal, stream_filter, expires_at
        self.inbox.rescoped()
        self.changing().begin()

    def finish_rescope(self, replay: Replay | None, position: Cursor, then: object = None) -> None:
        """The replay :meth:`begin_rescope` waits for, and ``then`` to write after it."""
        self.changing().finish(replay, position, then)

    def narrow(self, principal: Principal, notice: object) -> None:
        """From now on the stream is for ``principal``, which grants less (a revocation,
        Hub.apply): nothing it does not admit is written from this call on, whatever was
        queued, and ``notice`` goes before the next event (or with a change under way)."""
        self.principal = principal
        self.inbox.rescoped()
        self.changing().narrow(notice)
