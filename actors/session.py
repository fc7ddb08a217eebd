"""The session actor: one per connected client, from its resume to its last byte.

A session owns a bounded inbox the adapter fills (never blocking on it), the client's principal and
filter, and its cursor. It writes the stream's bytes to an :class:`Output` (the HTTP response's
body, or a memory channel in tests); when the client reads slowly those writes wait, the session
stops reading its inbox, the inbox fills, and the adapter applies :meth:`Session.offer`'s policy.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from actors.observer import NO_OBSERVER, StreamObserver
from router.core.cursor import Cursor, EventIdentity, advance
from router.core.events import ErrorCode, SSEErrorEvent
from router.core.history import Replay
from router.core.permissions import Principal, StreamFilter, admits
from router.core.sse import Priority, SSEMessage, encode_comment, encode_retry

MAX_WRITE_BATCH = 64
TICKS_PER_HEARTBEAT = 4
"""A session writes a heartbeat after this many ticks of the heartbeat clock with no write."""
log = logging.getLogger(__name__)


class Output(Protocol):
    """Where a session writes its stream: ``send`` waits while the client is not reading;
    ``close`` ends the stream. A ``trio.MemorySendChannel[bytes]`` is one."""

    async def send(self, value: bytes, /) -> None: ...

    def close(self) -> None: ...


class CloseReason(enum.StrEnum):
    """Why a stream ended: a bounded set, fit for a metric label."""

    CLIENT = "client"
    LAGGED = "lagged"
    TOKEN_EXPIRED = "token-expired"
    SERVER_SHUTDOWN = "server-shutdown"
    ERROR = "error"


class Offer(enum.Enum):
    """What became of an event offered to a session."""

    QUEUED = "queued"
    COALESCED = "coalesced"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


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
    _held: Delivery | None = field(default=None, repr=False)
    _in_sync: bool = field(default=False, repr=False)
    _quiet_ticks: int = field(default=0, repr=False)
    _heartbeat_queued: bool = field(default=False, repr=False)
    _heartbeat_due: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self._inbox_send, self._inbox = trio.open_memory_channel[Delivery | _Heartbeat](
            self.settings.inbox_capacity
        )
        self._scope = trio.CancelScope()
        self.finished = trio.Event()
        """Set when :meth:`run` has returned, however it ended."""

    # -- the adapter's side: never blocks --------------------------------------------------------

    def offer(self, delivery: Delivery) -> Offer:
        """Queue ``delivery`` without waiting.

        A full inbox coalesces a low-priority event with the newest of its kind (held aside, at
        most ``inbox_capacity`` of them); a high-priority event that cannot be queued ends the
        stream as lagged, and the client resumes from the replay cache: nothing is lost, and no
        one waits for this client.
        """
        if self.close_reason is not None:
            return Offer.CLOSED
        message = delivery.message
        key = message.coalesce_key if message.priority is Priority.LOW else None
        if key is not None and key in self._overflow:
            self._overflow[key] = delivery
            return Offer.COALESCED
        try:
            self._inbox_send.send_nowait(delivery)
        except trio.WouldBlock:
            if key is None or len(self._overflow) >= self.settings.inbox_capacity:
                self.stop(CloseReason.LAGGED)
                return Offer.DISCONNECTED
            self._overflow[key] = delivery
            return Offer.COALESCED
        return Offer.QUEUED

    def tick(self) -> None:
        """One tick of the heartbeat clock (:func:`actors.heartbeats.run_heartbeat_clock`).

        After :data:`TICKS_PER_HEARTBEAT` ticks without a write, the session is woken to write a
        comment: a quiet stream hears from the router at least once per heartbeat period, however
        many events a busy one writes, and no stream needs a timer of its own. A full inbox means
        a write is coming anyway, so then nothing is queued.
        """
        self._quiet_ticks += 1
        if self._quiet_ticks >= TICKS_PER_HEARTBEAT and not self._heartbeat_queued:
            with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                self._inbox_send.send_nowait(HEARTBEAT)
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
    ) -> None:
        """Write the stream into ``output`` until the session is stopped or its token expires.

        Sends the retry hint at once, then ``history-truncated`` if the resume was truncated, the
        replay, and live events. When stopped for a reason the client should hear (lagged, token
        expired, shutdown), sends that ``sse.error`` last, waiting at most
        ``goodbye_timeout_seconds`` for a slow client. Closes ``output`` on the way out. If the
        surrounding nursery is cancelled, it stops at once without a goodbye.
        """
        try:
            await self._run(output, resume)
        finally:
            self.finished.set()

    async def _run(self, output: Output, resume: Replay | None) -> None:
        try:
            self._scope.deadline = trio.current_time() + max(0.0, self.expires_at - time.time())
            try:
                with self._scope:
                    await self._send(
                        output, encode_retry(self.settings.retry_ms) + encode_comment("ok")
                    )
                    if resume is not None:
                        await self._replay(output, resume)
                    await self._stream_live(output)
                if self.close_reason is None:  # only the deadline ends the scope without a reason
                    self.close_reason = CloseReason.TOKEN_EXPIRED
                await self._say_goodbye(output)
            except trio.BrokenResourceError:  # the HTTP side went away: the client left
                self.stop(CloseReason.CLIENT)
        finally:
            output.close()

    async def _replay(self, output: Output, resume: Replay) -> None:
        if resume.truncated:
            await self._send(
                output,
                SSEErrorEvent(
                    code=ErrorCode.HISTORY_TRUNCATED,
                    message="some events you missed are no longer kept; refetch your state",
                    retryable=True,
                ).to_sse_format(),
            )
        for entry in resume.entries:
            if self.cursor is not None and self.cursor.covers(entry.identity):
                continue  # the client had it already
            # A replayed event moves the client's cursor by its own place only. The cache may
            # hold events another instance appended, whose cursors describe that instance's
            # progress, not what this client has been served.
            self.cursor = advance(self.cursor, entry.identity)
            if admits(entry.message, self.principal, self.stream_filter):
                await self._send(output, entry.message.with_id(str(self.cursor)).to_sse_format())
                self.events_sent += 1
                # Counted as sent; its age says how long the client was away, not the router's
                # delivery lag, so no lag is reported for it.
                self.observer.sent([(entry.message.event, None)], queued=0)

    async def _stream_live(self, output: Output) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._write(output, batch)
            if self._heartbeat_due:
                self._heartbeat_due = False
                if self._quiet_ticks >= TICKS_PER_HEARTBEAT:  # no event went out meanwhile
                    await self._send(output, encode_comment())

    async def _send(self, output: Output, chunk: bytes) -> None:
        await output.send(chunk)
        self._quiet_ticks = 0

    async def _write(self, output: Output, batch: Sequence[Delivery]) -> None:
        chunks, sent = [], []
        for delivery in batch:
            chunk = self._encode(delivery.identity, delivery.cursor, delivery.message)
            if chunk:
                chunks.append(chunk)
                sent.append(delivery)
        if not chunks:
            return
        await self._send(output, chunks[0] if len(chunks) == 1 else b"".join(chunks))
        self.events_sent += len(sent)
        self._maybe_log_send(sent)
        now = time.time()
        self.observer.sent(
            [
                (d.message.event, None if d.occurred_at is None else now - d.occurred_at)
                for d in sent
            ],
            queued=self._inbox.statistics().current_buffer_used,
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
        """The next deliveries in the adapter's order, waiting for the first one (or for the
        heartbeat clock, which returns an empty batch with ``_heartbeat_due`` set)."""
        batch: list[Delivery] = []
        while len(batch) < MAX_WRITE_BATCH:
            delivery = self._pop_ready()
            if delivery is None:
                if batch or self._heartbeat_due:
                    break
                self._take(await self._inbox.receive())
                continue
            batch.append(delivery)
        return batch

    def _take(self, item: Delivery | _Heartbeat) -> None:
        if isinstance(item, _Heartbeat):
            self._heartbeat_queued = False
            self._heartbeat_due = True
        else:
            self._held = item

    def _pop_ready(self) -> Delivery | None:
        """The earliest delivery available now, from the inbox or the coalesced overflow."""
        while self._held is None:
            try:
                self._take(self._inbox.receive_nowait())
            except trio.WouldBlock:
                break
        if self._overflow:
            key, earliest = min(self._overflow.items(), key=lambda item: item[1].seq)
            if self._held is None or earliest.seq < self._held.seq:
                del self._overflow[key]
                return earliest
        delivery, self._held = self._held, None
        return delivery

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
