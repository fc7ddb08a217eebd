"""The session actor: one per connected client, from its resume to its last byte.

The actor only waits, writes to its :class:`Output` (an HTTP body, a WebSocket, a memory channel
in tests) and says goodbye. What to write, and when to wait, is the pure state's in the core: the
:class:`~router.core.inbox.Inbox` the adapter fills without blocking, and the
:class:`~router.core.writer.Writer` over it. When the client reads slowly the writes wait, the
inbox fills, and the adapter's offers meet the inbox's policy.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import trio

from actors.wakeup import Wakeup
from router.core.cursor import Cursor
from router.core.goodbye import last_words
from router.core.history import Replay
from router.core.inbox import MAX_WRITE_BATCH, TICKS_PER_HEARTBEAT, Delivery, SharedBatch
from router.core.observer import CloseReason, Offer, Transport
from router.core.output import Output, SendQueue
from router.core.permissions import Principal, StreamFilter
from router.core.replay_share import ReplayShare
from router.core.session_settings import SessionSettings
from router.core.stream import Stream
from router.core.writer import Pause

__all__ = [  # the inbox's and the observer's names stay importable from here, as before
    "MAX_WRITE_BATCH",
    "TICKS_PER_HEARTBEAT",
    "CloseReason",
    "Delivery",
    "Offer",
    "Output",
    "SendQueue",
    "Session",
    "SessionSettings",
    "SharedBatch",
    "Transport",
]

log = logging.getLogger(__name__)


class Session(Stream):
    """A client's stream (:class:`~router.core.stream.Stream`), from the first bytes to the
    goodbye, with the waiting: every call from the hub's and the adapter's side returns at once
    and never checkpoints, and wakes the writer when it has something to do."""

    def _made(self) -> None:
        self._send_queue: SendQueue | None = None
        """Its output, when that can tell what waits on its socket (set as the stream starts)."""
        self.finished = trio.Event()
        """Set when :meth:`run` has returned, however it ended."""
        # The writer's wake-up, called only while the writer waits for it (and the flag is
        # cleared as it is called), so none is lost.
        self._wakeup = Wakeup()
        self._writer_waiting = False
        self._scope = trio.CancelScope()

    def unsent_bytes(self) -> int | None:
        """The bytes written to the client that its socket has not sent yet (0 before the
        stream starts), or ``None`` when its output cannot tell. A system call: for the health
        monitor's round, not for every write."""
        return 0 if self._send_queue is None else self._send_queue.unsent_bytes()

    # -- the adapter's and the hub's side: never blocks, never checkpoints ------------------------

    def offer(self, deliveries: Sequence[Delivery], outcomes: Counter[Offer]) -> bool:
        """Queue ``deliveries`` without waiting, count what became of each in ``outcomes``, and
        return whether the inbox is now at or past its bound (:meth:`Inbox.offer`). The lag
        verdict stops the stream as lagged: the client resumes from the replay cache."""
        inbox = self.inbox
        filled = inbox.offer(deliveries, outcomes)
        if inbox.lagged:
            self.stop(CloseReason.LAGGED)
        elif self._writer_waiting:  # inline: once per session and step, at 10,000 sessions
            self._writer_waiting = False
            self._wakeup.wake()
        return filled

    def tick(self, progress: Cursor | None = None) -> None:
        """One tick of the heartbeat clock (``progress``: the router's cursor, every event up
        to it that is for this session offered); see :meth:`Inbox.tick`."""
        if self.inbox.tick(progress):
            self._wake_writer()

    def stop(self, reason: CloseReason) -> None:
        super().stop(reason)
        self._scope.cancel()

    def begin_rescope(
        self, principal: Principal, stream_filter: StreamFilter, expires_at: float
    ) -> None:
        super().begin_rescope(principal, stream_filter, expires_at)
        self._set_deadline()

    def finish_rescope(self, replay: Replay | None, position: Cursor, then: object = None) -> None:
        super().finish_rescope(replay, position, then)
        self._wake_writer()

    def narrow(self, principal: Principal, notice: object) -> None:
        super().narrow(principal, notice)
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self._writer_waiting:
            self._writer_waiting = False
            self._wakeup.wake()

    def _set_deadline(self) -> None:
        self._scope.deadline = trio.current_time() + max(0.0, self.expires_at - time.time())

    # -- the session's side ----------------------------------------------------------------------

    async def run(
        self,
        output: Output[Any],
        resume: Replay | None = None,
        position: Cursor | None = None,
        *,
        replayed: Callable[[], object] | None = None,
        share: ReplayShare | None = None,
    ) -> None:
        """Write the stream into ``output`` until the session is stopped or its token expires:
        what :class:`~router.core.writer.Writer` says, from the hello and the ``resume`` up to
        ``position`` (the router's cursor when the session registered: Hub.position) to live
        events; ``replayed`` is called once the replay is written (and let go of: its entries
        are freed while the stream goes on). ``share``: the replay's slices shared with the
        streams resuming from the same cursor (:meth:`Writer.start`). Stopped for a reason the
        client should hear, it says so last, waiting at most ``goodbye_timeout_seconds``. Closes
        ``output`` on the way out. Cancelled from outside, it stops at once, without a goodbye.
        """
        if isinstance(output, SendQueue):
            self._send_queue = output
        try:
            self._set_deadline()
            with self._scope:
                retry_ms = self.settings.retry_ms
                self.start(
                    resume,
                    position,
                    retry_ms,
                    self.connection_id,
                    self.expires_at,
                    replayed,
                    share,
                )
                resume = share = None  # the writer's steps hold it until written, and no longer
                await self._write(output)
            if self.close_reason is None:  # only the deadline ends the scope without a reason
                self.close_reason = CloseReason.TOKEN_EXPIRED
            await self._say_goodbye(output)
        except trio.BrokenResourceError:  # the transport went away: the client left
            self.stop(CloseReason.CLIENT)
        finally:
            output.close()
            self.finished.set()

    async def _write(self, output: Output[Any]) -> None:
        while True:
            step = self.next()
            if step is Pause.WAIT:
                self._writer_waiting = True  # until an offer, a tick or a rescope wakes it
                await self._wakeup.wait()
            elif step is Pause.CHECKPOINT:
                await trio.lowlevel.checkpoint()
            else:
                await output.send(step)
                if (sampled := self.wrote()) is not None:
                    log.info("events sent", extra={"connection_id": self.connection_id, **sampled})

    async def _say_goodbye(self, output: Output[Any]) -> None:
        settings = self.settings
        event = last_words(
            self.close_reason, settings.shutdown_retry_ms, settings.shutdown_retry_spread_ms
        )
        if event is None:
            return
        with trio.move_on_after(settings.goodbye_timeout_seconds) as scope:
            scope.shield = True
            await output.send(self.wire.events((event,)))
        if not scope.cancelled_caught:
            self.count_own(event, self.inbox.waiting)
