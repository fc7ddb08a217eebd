"""The session actor: one per connected client, from its resume to its last byte.

A session owns a bounded :class:`~router.core.inbox.Inbox` the adapter fills (never blocking on
it), the client's principal and filter. The inbox holds the policy and the client's cursor; the
actor only waits for it to have something, writes the stream's bytes to an :class:`Output` (the
HTTP response's body, or a memory channel in tests), heartbeats and says goodbye. When the client
reads slowly those writes wait, the session stops taking from its inbox, the inbox fills, and the
adapter's offers meet the inbox's policy.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from router.core.cursor import Cursor
from router.core.events import ErrorCode, SSEErrorEvent
from router.core.history import Replay
from router.core.inbox import MAX_WRITE_BATCH, TICKS_PER_HEARTBEAT, Delivery, Inbox, SharedBatch
from router.core.observer import NO_OBSERVER, CloseReason, Offer, StreamObserver
from router.core.permissions import Principal, StreamFilter, admits
from router.core.sse import encode_comment, encode_id, encode_retry

__all__ = [  # the inbox's and the observer's names stay importable from here, as before
    "MAX_WRITE_BATCH",
    "TICKS_PER_HEARTBEAT",
    "CloseReason",
    "Delivery",
    "Offer",
    "Output",
    "Session",
    "SessionSettings",
    "SharedBatch",
]

log = logging.getLogger(__name__)


class Output(Protocol):
    """Where a session writes its stream: ``send`` waits while the client is not reading;
    ``close`` ends the stream. A ``trio.MemorySendChannel[bytes]`` is one."""

    async def send(self, value: bytes, /) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionSettings:
    inbox_capacity: int = 256
    retry_ms: int = 2000
    shutdown_retry_ms: int = 1000
    shutdown_retry_spread_ms: int = 0
    """On shutdown each client is told to wait ``shutdown_retry_ms`` plus a random share of this,
    so thousands of clients do not all reconnect in the same instant."""
    goodbye_timeout_seconds: float = 1.0
    log_sample_rate: float = 0.0


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


_HISTORY_TRUNCATED = SSEErrorEvent(
    code=ErrorCode.HISTORY_TRUNCATED,
    message="some events you missed are no longer kept; refetch your state",
    retryable=True,
).to_sse_format()
_HISTORY_REPLACED = SSEErrorEvent(
    code=ErrorCode.HISTORY_TRUNCATED,
    message="the event history was lost or replaced; events may be missing: refetch your state",
    retryable=True,
).to_sse_format()


_DEFAULT_SETTINGS = SessionSettings()


class Session:
    """A client's stream, from the first bytes to the goodbye. ``cursor`` is what the client has
    been served (kept by its inbox): where it resumes from, until its first write."""

    def __init__(
        self,
        principal: Principal,
        stream_filter: StreamFilter,
        expires_at: float,
        *,
        settings: SessionSettings = _DEFAULT_SETTINGS,
        connection_id: str = "",
        observer: StreamObserver = NO_OBSERVER,
        cursor: Cursor | None = None,
    ) -> None:
        self.principal = principal
        self.stream_filter = stream_filter
        self.expires_at = expires_at
        """When the token expires, in seconds since the epoch."""
        self.settings = settings
        self.connection_id = connection_id
        self.observer = observer
        self.close_reason: CloseReason | None = None
        self.events_sent = 0
        self._inbox = Inbox(settings.inbox_capacity, cursor)
        # The writer's wake-up: at most one item, sent only while the writer waits for it (and
        # the flag is cleared as it is sent), so it never fills.
        self._wake_send, self._wake = trio.open_memory_channel[None](1)
        self._writer_waiting = False
        self._scope = trio.CancelScope()
        self.finished = trio.Event()
        """Set when :meth:`run` has returned, however it ended."""

    @property
    def cursor(self) -> Cursor | None:
        return self._inbox.cursor

    @cursor.setter
    def cursor(self, cursor: Cursor | None) -> None:
        self._inbox.cursor = cursor

    @property
    def backlog(self) -> int:
        """Events waiting for this client, queued or coalesced aside."""
        return self._inbox.waiting + self._inbox.set_aside

    @property
    def inbox_capacity(self) -> int:
        return self._inbox.capacity

    def coalesce_eagerly(self, eager: bool) -> None:
        """Coalesce low-priority events early (:meth:`Inbox.coalesce_eagerly`), or not."""
        self._inbox.coalesce_eagerly(eager)

    # -- the adapter's side: never blocks --------------------------------------------------------

    def offer(self, deliveries: Sequence[Delivery], outcomes: Counter[Offer]) -> bool:
        """Queue ``deliveries`` (in the adapter's order) without waiting, and count what became
        of each in ``outcomes``; return whether the inbox is now at or past its bound.

        The policy is the inbox's (:meth:`router.core.inbox.Inbox.offer`). The adapter makes one
        offer per session per step, and a step is bounded (at most ``--records-buffer`` bus
        batches), so at most ``inbox_capacity`` plus one step's events wait; and a burst larger
        than the inbox reaches a client that keeps up, because after a step that filled an inbox
        (this returns ``True``) the adapter lets the sessions write before it routes more. The
        lag verdict stops the stream as lagged: the client resumes from the replay cache,
        nothing is lost, and no one waits for this client. One wake-up however many offers come
        before the session runs.
        """
        inbox = self._inbox
        filled = inbox.offer(deliveries, outcomes)
        if inbox.lagged:
            if self.close_reason is None:
                self.stop(CloseReason.LAGGED)
        elif self._writer_waiting:
            self._writer_waiting = False
            self._wake_send.send_nowait(None)
        return filled

    def tick(self, progress: Cursor | None = None) -> None:
        """One tick of the heartbeat clock (:func:`actors.heartbeats.run_heartbeat_clock`).

        After :data:`TICKS_PER_HEARTBEAT` ticks without a write, the session is woken to write a
        heartbeat: a quiet stream hears from the router at least once per heartbeat period, however
        many events a busy one writes, and no stream needs a timer of its own.

        ``progress`` is the router's cursor now, read with no checkpoint since the adapter last
        routed: every event up to it that is for this session has been offered. If none of them
        is still waiting here, the heartbeat carries the client's cursor moved up to it (an
        id-only block), so a client that sees nothing while others' events pass still resumes
        from where the router is, not from its last event (:meth:`Inbox.tick`).
        """
        if self._inbox.tick(progress) and self._writer_waiting:
            self._writer_waiting = False
            self._wake_send.send_nowait(None)

    def stop(self, reason: CloseReason) -> None:
        """End the stream for ``reason``; the first reason given is the one reported."""
        if self.close_reason is None:
            self.close_reason = reason
        self._inbox.close()
        self._scope.cancel()

    # -- the session's side ----------------------------------------------------------------------

    async def run(
        self,
        output: Output,
        resume: Replay | None = None,
        position: Cursor | None = None,
    ) -> None:
        """Write the stream into ``output`` until the session is stopped or its token expires.

        ``position`` is the router's cursor when the session registered for live events
        (:meth:`actors.hub.Hub.position`): every event up to it is the replay's business (or, for
        a stream that does not resume, none of the client's), every later one arrives live.

        Sends the retry hint at once, with the client's position as an id-only block (its own
        cursor when it resumes, else ``position``), so a client cut before its first event
        reconnects from there; then ``history-truncated`` if the resume was truncated, the
        replay, the client's cursor moved up to ``position`` if the replay did not already say
        it, and live events. When stopped for a reason the client should hear (lagged, token
        expired, shutdown), sends that ``sse.error`` last, waiting at most
        ``goodbye_timeout_seconds`` for a slow client. Closes ``output`` on the way out. If the
        surrounding nursery is cancelled, it stops at once without a goodbye; the replay
        checkpoints after each write, so that may be half-way through it.
        """
        try:
            await self._run(output, resume, position)
        finally:
            self.finished.set()

    async def _run(self, output: Output, resume: Replay | None, position: Cursor | None) -> None:
        try:
            self._scope.deadline = trio.current_time() + max(0.0, self.expires_at - time.time())
            try:
                with self._scope:
                    first = encode_retry(self.settings.retry_ms) + encode_comment("ok")
                    if resume is None and position is not None:
                        self._inbox.cursor = position
                    if self._inbox.cursor is not None:
                        first += encode_id(str(self._inbox.cursor))
                    await self._send(output, first)
                    if resume is not None:
                        await self._replay(output, resume, position)
                    await self._stream_live(output)
                if self.close_reason is None:  # only the deadline ends the scope without a reason
                    self.close_reason = CloseReason.TOKEN_EXPIRED
                await self._say_goodbye(output)
            except trio.BrokenResourceError:  # the HTTP side went away: the client left
                self.stop(CloseReason.CLIENT)
        finally:
            output.close()

    async def _replay(self, output: Output, resume: Replay, position: Cursor | None) -> None:
        """Write what the client missed, at most :data:`MAX_WRITE_BATCH` events a write, with a
        checkpoint after each batch of entries (written or skipped); then, if the client's cursor
        moved past the last id it was sent (events it may not see, and all of ``position``, were
        served too), that cursor as an id-only block."""
        if resume.truncated:
            await self._send_error(output, _HISTORY_TRUNCATED)
        inbox = self._inbox
        told = inbox.cursor  # the last cursor the client was sent
        chunks: list[bytes] = []
        counts: Counter[str] = Counter()
        for examined, entry in enumerate(resume.entries, start=1):
            served = inbox.replayed(entry.identity)
            if served is not None and admits(entry.message, self.principal, self.stream_filter):
                chunks.append(entry.message.with_id(str(served)).to_sse_format())
                counts[entry.message.event] += 1
                told = served
            if examined % MAX_WRITE_BATCH == 0:
                await self._write_replayed(output, chunks, counts)
                await trio.lowlevel.checkpoint()
        await self._write_replayed(output, chunks, counts)
        if position is not None and inbox.caught_up(position) != told:
            await self._send(output, encode_id(str(inbox.cursor)))

    async def _write_replayed(
        self, output: Output, chunks: list[bytes], counts: Counter[str]
    ) -> None:
        """Write and count the replayed events in ``chunks``, and empty it and ``counts``."""
        if not chunks:
            return
        await self._send(output, b"".join(chunks))
        self.events_sent += len(chunks)
        # Counted as sent; their age says how long the client was away, not the router's
        # delivery lag, so no lag is reported for them.
        self.observer.sent(dict(counts), oldest_age=None, queued=0)
        chunks.clear()
        counts.clear()

    async def _stream_live(self, output: Output) -> None:
        """Wait for the inbox to have something, write it, and a heartbeat when one is due and
        nothing was written since (:meth:`Inbox.heartbeat`: a comment, or the client's cursor
        moved up to the router's as an id-only block)."""
        inbox = self._inbox
        while True:
            batch = inbox.take(MAX_WRITE_BATCH)
            if batch:
                await self._write(output, batch)
            elif not inbox.heartbeat_due:  # nothing waits: until an offer or a tick wakes it
                self._writer_waiting = True
                await self._wake.receive()
                continue
            if inbox.heartbeat_due:
                heartbeat = inbox.heartbeat()
                if heartbeat.history_replaced:
                    # Moved into a new history by others' events: told as if by its own.
                    await self._send_error(output, _HISTORY_REPLACED)
                moved = heartbeat.moved_to
                await self._send(
                    output, encode_comment() if moved is None else encode_id(str(moved))
                )

    async def _send(self, output: Output, chunk: bytes) -> None:
        await output.send(chunk)
        self._inbox.written()

    async def _send_error(self, output: Output, error: bytes) -> None:
        """Write one of the router's own ``sse.error`` events, counted like any event sent."""
        await self._send(output, error)
        self.observer.sent({SSEErrorEvent.EVENT: 1}, oldest_age=None, queued=self._inbox.waiting)

    async def _write(self, output: Output, batch: Sequence[Delivery]) -> None:
        inbox = self._inbox
        if inbox.history_replaced(batch):
            await self._send_error(output, _HISTORY_REPLACED)
        if inbox.serve_shared(batch):
            # The same bytes as every other session in step writing this batch, joined once.
            await self._send(output, batch.wire)
            self._count_sent(batch, batch.event_counts, batch.oldest_occurred_at)
            return
        chunks, sent = [], []
        for delivery in batch:
            message = inbox.serve(delivery)
            if message is not None and admits(message, self.principal, self.stream_filter):
                chunks.append(message.to_sse_format())
                sent.append(delivery)
        if not chunks:
            return
        await self._send(output, chunks[0] if len(chunks) == 1 else b"".join(chunks))
        occurred = [d.occurred_at for d in sent if d.occurred_at is not None]
        self._count_sent(sent, Counter(d.message.event for d in sent), min(occurred, default=None))

    def _count_sent(
        self, sent: Sequence[Delivery], event_counts: Mapping[str, int], oldest: float | None
    ) -> None:
        self.events_sent += len(sent)
        self._maybe_log_send(sent)
        self.observer.sent(
            event_counts,
            oldest_age=None if oldest is None else time.time() - oldest,
            queued=self._inbox.waiting,
        )

    def _maybe_log_send(self, sent: Sequence[Delivery]) -> None:
        rate = self.settings.log_sample_rate
        if rate and random.random() < rate:
            last = sent[-1].message
            log.info(
                "events sent",
                extra={
                    "connection_id": self.connection_id,
                    "sse_event": last.event,
                    "id": last.id,
                    "in_write": len(sent),
                },
            )

    async def _say_goodbye(self, output: Output) -> None:
        if self.close_reason not in _CLOSING_ERRORS:
            return
        code, text = _CLOSING_ERRORS[self.close_reason]
        retry = None
        if self.close_reason is CloseReason.SERVER_SHUTDOWN:
            spread = self.settings.shutdown_retry_spread_ms
            retry = self.settings.shutdown_retry_ms + (random.randint(0, spread) if spread else 0)
        goodbye = SSEErrorEvent(
            code=code,
            message=text,
            retryable=self.close_reason is not CloseReason.TOKEN_EXPIRED,
            retry=retry,
        )
        with trio.move_on_after(self.settings.goodbye_timeout_seconds) as scope:
            scope.shield = True
            await output.send(goodbye.to_sse_format())
        if not scope.cancelled_caught:
            self.observer.sent(
                {SSEErrorEvent.EVENT: 1}, oldest_age=None, queued=self._inbox.waiting
            )
