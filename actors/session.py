"""The session actor: one per connected client, from its resume to its last byte.

A session owns a bounded inbox the adapter fills (never blocking on it), the client's principal and
filter, and its cursor. It writes the stream's bytes to an :class:`Output` (the HTTP response's
body, or a memory channel in tests); when the client reads slowly those writes wait, the session
stops reading its inbox, the inbox fills, and the adapter applies :meth:`Session.offer`'s policy.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from router.core.cursor import Cursor, EventIdentity, advance
from router.core.events import ErrorCode, SSEErrorEvent
from router.core.history import Replay
from router.core.observer import NO_OBSERVER, StreamObserver
from router.core.observer import CloseReason as CloseReason
from router.core.observer import Offer as Offer
from router.core.permissions import Principal, StreamFilter, admits
from router.core.sse import Priority, SSEMessage, encode_comment, encode_id, encode_retry

MAX_WRITE_BATCH = 64
"""Most events in one write, live or replayed. A replay also checkpoints after each write: an
output may take the bytes without one (the HTTP body's direct writer does while the socket
takes them), and a 10,000-event replay would otherwise hold the loop for tens of ms."""
TICKS_PER_HEARTBEAT = 4
"""A session writes a heartbeat after this many ticks of the heartbeat clock with no write."""
log = logging.getLogger(__name__)


class Output(Protocol):
    """Where a session writes its stream: ``send`` waits while the client is not reading;
    ``close`` ends the stream. A ``trio.MemorySendChannel[bytes]`` is one."""

    async def send(self, value: bytes, /) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """One routed event, shared by every session it goes to.

    ``seq`` is the adapter's processing order; ``cursor`` is the router's cursor just after the
    event, which is also ``message.id``.
    """

    seq: int
    identity: EventIdentity
    cursor: Cursor
    message: SSEMessage
    occurred_at: float | None = None
    """When the event happened, in seconds since the epoch, for the delivery lag metric."""


class SharedBatch(tuple[Delivery, ...]):
    """Deliveries the adapter offers as they are to every session it admitted to all of them.

    A session in step with the router's cursor writes exactly the same bytes for them as every
    other such session, so their encoding and what is counted of them are worked out once, by
    the first session that writes them.
    """

    @functools.cached_property
    def wire(self) -> bytes:
        return b"".join(delivery.message.to_sse_format() for delivery in self)

    @functools.cached_property
    def event_counts(self) -> Counter[str]:
        return Counter(delivery.message.event for delivery in self)

    @functools.cached_property
    def oldest_occurred_at(self) -> float | None:
        return min((d.occurred_at for d in self if d.occurred_at is not None), default=None)


class _Heartbeat:
    """What the heartbeat clock puts in a quiet session's inbox to wake it."""


HEARTBEAT = _Heartbeat()


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


@dataclass(eq=False)
class Session:
    """A client's stream. ``resume`` is its cursor and what the replay cache gave back for it."""

    principal: Principal
    stream_filter: StreamFilter
    expires_at: float
    """When the token expires, in seconds since the epoch."""
    settings: SessionSettings = field(default_factory=SessionSettings)
    connection_id: str = ""
    observer: StreamObserver = NO_OBSERVER
    close_reason: CloseReason | None = None
    events_sent: int = 0
    cursor: Cursor | None = None
    _overflow: dict[str, Delivery] = field(default_factory=dict, repr=False)
    _held: Sequence[Delivery] = field(default=(), repr=False)
    _queued: int = field(default=0, repr=False)
    """Events offered and not yet written: in the inbox's batches and in ``_held``."""
    _batches_waiting: int = field(default=0, repr=False)
    """Items in the inbox channel (batches and the heartbeat), kept as they are sent and taken:
    asking the channel costs an object per call, and trying it costs an exception when empty."""
    _in_sync: bool = field(default=False, repr=False)
    _quiet_ticks: int = field(default=0, repr=False)
    _heartbeat_queued: bool = field(default=False, repr=False)
    _heartbeat_due: bool = field(default=False, repr=False)
    _progress: Cursor | None = field(default=None, repr=False)
    """The router's cursor at a tick that found nothing waiting for this session: everything up
    to it that was for the session had been taken from the inbox, so once that is written the
    client has been served up to it (what passed for others counts as served)."""

    def __post_init__(self) -> None:
        # Room for as many batches as events may wait (a batch holds at least one), and for the
        # heartbeat: what bounds the inbox is :meth:`offer`'s count of events, not the channel.
        self._inbox_send, self._inbox = trio.open_memory_channel[Sequence[Delivery] | _Heartbeat](
            self.settings.inbox_capacity + 1
        )
        self._scope = trio.CancelScope()
        self.finished = trio.Event()
        """Set when :meth:`run` has returned, however it ended."""

    # -- the adapter's side: never blocks --------------------------------------------------------

    def offer(self, deliveries: Sequence[Delivery], outcomes: Counter[Offer]) -> bool:
        """Queue ``deliveries`` (in the adapter's order) without waiting, and count what became
        of each in ``outcomes``; return whether the inbox is now at or past its bound.

        The bound is on what still waits from earlier offers: while fewer than
        ``inbox_capacity`` events do, an offer is taken whole, however large. The adapter makes
        one offer per session per step, and a step is bounded (at most ``--records-buffer`` bus
        batches), so at most ``inbox_capacity`` plus one step's events wait; and a burst larger
        than the inbox (a full publish batch) reaches a client that keeps up, because after a
        step that filled an inbox (this returns ``True``) the adapter lets the sessions write
        before it routes more (not after an offer coalesced aside whole: that client is not
        reading, and the pause would hold everyone back for it). Past the bound, a low-priority
        event is coalesced with the newest of its kind (held aside, at most ``inbox_capacity`` of
        them), and a high-priority one
        ends the stream as lagged: the client resumes from the replay cache, nothing is lost,
        and no one waits for this client. An offer taken whole, with nothing held aside, is
        queued as it is: one channel send, one wake-up, however many events it carries.
        """
        if self.close_reason is not None:
            outcomes[Offer.CLOSED] += len(deliveries)
            return False
        if not deliveries:
            return False
        capacity = self.settings.inbox_capacity
        room = len(deliveries) if self._queued < capacity else 0
        if room and not self._overflow:
            self._queue(deliveries, outcomes)
            return self._queued >= capacity
        queued: list[Delivery] = []
        lagged_at = None
        for index, delivery in enumerate(deliveries):
            message = delivery.message
            key = message.coalesce_key if message.priority is Priority.LOW else None
            if key is not None and key in self._overflow:
                self._overflow[key] = delivery
            elif len(queued) < room:
                queued.append(delivery)
                continue
            elif key is not None and len(self._overflow) < capacity:
                self._overflow[key] = delivery
            else:
                lagged_at = index
                break
            outcomes[Offer.COALESCED] += 1
        if queued:
            self._queue(queued, outcomes)
        if lagged_at is not None:
            self.stop(CloseReason.LAGGED)
            outcomes[Offer.DISCONNECTED] += 1
            if lagged_at + 1 < len(deliveries):
                outcomes[Offer.CLOSED] += len(deliveries) - lagged_at - 1
            return False
        # Only an offer that queued something filled the inbox: one coalesced aside whole is a
        # client that reads nothing, which the adapter's pause would wait for on every step.
        return bool(queued) and self._queued >= capacity

    def _queue(self, deliveries: Sequence[Delivery], outcomes: Counter[Offer]) -> None:
        """Put ``deliveries`` in the inbox as one batch; :meth:`offer` has made room for them."""
        self._inbox_send.send_nowait(deliveries)
        self._batches_waiting += 1
        self._queued += len(deliveries)
        outcomes[Offer.QUEUED] += len(deliveries)

    def tick(self, progress: Cursor | None = None) -> None:
        """One tick of the heartbeat clock (:func:`actors.heartbeats.run_heartbeat_clock`).

        After :data:`TICKS_PER_HEARTBEAT` ticks without a write, the session is woken to write a
        heartbeat: a quiet stream hears from the router at least once per heartbeat period, however
        many events a busy one writes, and no stream needs a timer of its own. The inbox always
        has room for the one heartbeat it may hold.

        ``progress`` is the router's cursor now, read with no checkpoint since the adapter last
        routed: every event up to it that is for this session has been offered. If none of them
        is still waiting here, the heartbeat carries the client's cursor moved up to it (an
        id-only block), so a client that sees nothing while others' events pass still resumes
        from where the router is, not from its last event. Never a position past an event still
        waiting: what waits was offered after ``progress`` was recorded, so it lies beyond it.
        """
        if progress is not None and not self._queued and not self._overflow:
            self._progress = progress
        self._quiet_ticks += 1
        if self._quiet_ticks >= TICKS_PER_HEARTBEAT and not self._heartbeat_queued:
            self._inbox_send.send_nowait(HEARTBEAT)
            self._batches_waiting += 1
            self._heartbeat_queued = True

    def stop(self, reason: CloseReason) -> None:
        """End the stream for ``reason``; the first reason given is the one reported."""
        if self.close_reason is None:
            self.close_reason = reason
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
                        self.cursor = position
                    if self.cursor is not None:
                        first += encode_id(str(self.cursor))
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
        told = self.cursor  # the last cursor the client was sent
        chunks: list[bytes] = []
        counts: Counter[str] = Counter()
        for examined, entry in enumerate(resume.entries, start=1):
            if self.cursor is None or not self.cursor.covers(entry.identity):
                # A replayed event moves the client's cursor by its own place only. The cache
                # may hold events another instance appended, whose cursors describe that
                # instance's progress, not what this client has been served.
                self.cursor = advance(self.cursor, entry.identity)
                if admits(entry.message, self.principal, self.stream_filter):
                    chunks.append(entry.message.with_id(str(self.cursor)).to_sse_format())
                    counts[entry.message.event] += 1
                    told = self.cursor
            if examined % MAX_WRITE_BATCH == 0:
                await self._write_replayed(output, chunks, counts)
                await trio.lowlevel.checkpoint()
        await self._write_replayed(output, chunks, counts)
        if position is not None:
            served = position if self.cursor is None else self.cursor.merge(position)
            self.cursor = served
            if served != told:
                await self._send(output, encode_id(str(served)))

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
        while True:
            batch = await self._next_batch()
            if batch:
                await self._write(output, batch)
            if self._heartbeat_due:
                self._heartbeat_due = False
                if self._quiet_ticks >= TICKS_PER_HEARTBEAT:  # no event went out meanwhile
                    if self._progress is not None and self._replaced_by(self._progress):
                        # Moved into a new history by others' events: told as if by its own.
                        await self._send_error(output, _HISTORY_REPLACED)
                    await self._send(output, self._heartbeat())

    def _heartbeat(self) -> bytes:
        """A comment, or, when the router has moved past the client's cursor with nothing for it
        (see :meth:`tick`), that cursor moved up as an id-only block: as good a keep-alive, at
        no extra wake-up or write."""
        progress, self._progress = self._progress, None
        if progress is None:
            return encode_comment()
        served = progress if self.cursor is None else self.cursor.merge(progress)
        if served == self.cursor:
            return encode_comment()
        # In step with the router before, still in step: ``progress`` is a cursor the router
        # had, and every later delivery's cursor is at or past it.
        self.cursor = served
        return encode_id(str(served))

    async def _send(self, output: Output, chunk: bytes) -> None:
        await output.send(chunk)
        self._quiet_ticks = 0

    async def _send_error(self, output: Output, error: bytes) -> None:
        """Write one of the router's own ``sse.error`` events, counted like any event sent."""
        await self._send(output, error)
        self.observer.sent({SSEErrorEvent.EVENT: 1}, oldest_age=None, queued=self._queued)

    def _replaced_by(self, newer: Cursor) -> bool:
        """Whether the router's cursor ``newer`` is of another history than the client's: the
        bus's history was lost or replaced under this stream, and events may be missing. A
        cursor of no epoch is a stream that opened before the bus answered: it missed nothing,
        and every event since reached it live."""
        return (
            self.cursor is not None
            and self.cursor.epoch is not None
            and (newer.source, newer.epoch) != (self.cursor.source, self.cursor.epoch)
        )

    async def _write(self, output: Output, batch: Sequence[Delivery]) -> None:
        if self._replaced_by(batch[-1].cursor):
            self._progress = None  # of the history before: never to move the client back to it
            await self._send_error(output, _HISTORY_REPLACED)
        if self._in_sync and isinstance(batch, SharedBatch):
            # Admitted whole by the adapter, and in step with the router's cursor: the same
            # bytes as every other session writing this batch, joined once for all of them.
            self.cursor = batch[-1].cursor
            await self._send(output, batch.wire)
            self._count_sent(batch, batch.event_counts, batch.oldest_occurred_at)
            return
        chunks, sent = [], []
        for delivery in batch:
            chunk = self._encode(delivery.identity, delivery.cursor, delivery.message)
            if chunk:
                chunks.append(chunk)
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
            queued=self._queued,
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

    async def _next_batch(self) -> Sequence[Delivery]:
        """The next deliveries in the adapter's order, at most :data:`MAX_WRITE_BATCH`, waiting
        for the first one (or for the heartbeat clock, which returns an empty batch with
        ``_heartbeat_due`` set)."""
        while not (self._held or self._overflow or self._heartbeat_due):
            self._take(await self._inbox.receive())
        while self._batches_waiting and len(self._held) < MAX_WRITE_BATCH:
            self._take(self._inbox.receive_nowait())
        if self._overflow:
            return self._merge_overflow()
        batch = self._held
        if len(batch) > MAX_WRITE_BATCH:
            batch, self._held = batch[:MAX_WRITE_BATCH], batch[MAX_WRITE_BATCH:]
        else:
            self._held = ()
        self._queued -= len(batch)
        return batch

    def _take(self, item: Sequence[Delivery] | _Heartbeat) -> None:
        self._batches_waiting -= 1
        if isinstance(item, _Heartbeat):
            self._heartbeat_queued = False
            self._heartbeat_due = True
        elif not self._held:
            self._held = item  # shared with other sessions: never changed in place
        else:
            self._held = [*self._held, *item]

    def _merge_overflow(self) -> list[Delivery]:
        """The earliest deliveries of those held and those coalesced aside, in the adapter's
        order: a coalesced event keeps its place before the events that came after it."""
        held, aside = self._held, sorted(self._overflow.items(), key=lambda kv: kv[1].seq)
        batch: list[Delivery] = []
        taken_held = taken_aside = 0
        while len(batch) < MAX_WRITE_BATCH and (taken_held < len(held) or taken_aside < len(aside)):
            if taken_aside < len(aside) and (
                taken_held == len(held) or aside[taken_aside][1].seq < held[taken_held].seq
            ):
                key, delivery = aside[taken_aside]
                del self._overflow[key]
                taken_aside += 1
            else:
                delivery = held[taken_held]
                taken_held += 1
            batch.append(delivery)
        self._held = held[taken_held:]
        self._queued -= taken_held
        return batch

    def _encode(self, identity: EventIdentity, cursor: Cursor, message: SSEMessage) -> bytes:
        """The bytes for one event, or ``b""`` if this client must not or need not see it.

        The ``id:`` is the client's own cursor: the router's cursor merged with what the client
        had already been served (it may have come from another instance, ahead in some
        partitions). Until the two agree the message is re-encoded; after that, every later event
        of this epoch is shared as it is.
        """
        if not self._in_sync:
            if self.cursor is not None and self.cursor.covers(identity):
                return b""  # served before this session: by the replay, or by another instance
            merged = cursor if self.cursor is None else self.cursor.merge(cursor)
            self._in_sync = merged == cursor
            self.cursor = merged
            if not self._in_sync:
                message = message.with_id(str(merged))
        else:
            self.cursor = cursor
        if not admits(message, self.principal, self.stream_filter):
            return b""
        return message.to_sse_format()

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
            self.observer.sent({SSEErrorEvent.EVENT: 1}, oldest_age=None, queued=self._queued)
