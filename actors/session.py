"""The session actor: one per connected client, from its resume to its last byte.

A session owns a bounded :class:`~router.core.inbox.Inbox` the adapter fills (never blocking on
it), the client's principal and filter. The inbox holds the policy and the client's cursor, the
:class:`~router.core.wire.WireFormat` the framing, :mod:`router.core.serving` what to write of a
replay or a batch, :mod:`router.core.goodbye` the router's own words; the actor only waits, writes
to its :class:`Output` (an HTTP body, a WebSocket, a memory channel in tests), heartbeats and says
goodbye. When the client reads slowly the writes wait, the inbox fills, and the adapter's offers
meet the inbox's policy.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import trio

from router.core.control import Control
from router.core.cursor import Cursor
from router.core.goodbye import HISTORY_REPLACED, HISTORY_TRUNCATED, goodbye, says_goodbye
from router.core.history import Replay
from router.core.inbox import (
    DEFAULT_INBOX_MAX_BYTES,
    MAX_WRITE_BATCH,
    TICKS_PER_HEARTBEAT,
    Delivery,
    Inbox,
    SharedBatch,
)
from router.core.observer import NO_OBSERVER, CloseReason, Offer, StreamObserver
from router.core.permissions import Principal, StreamFilter, admits
from router.core.serving import replay_slices, serve_each
from router.core.sse import SSEMessage
from router.core.wire import SSE, Hello, ReplayState, WireFormat

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
    "Transport",
]

log = logging.getLogger(__name__)
_Chunk = TypeVar("_Chunk", contravariant=True)


Transport = Literal["sse", "websocket"]
"""What carries a session's stream to its client."""


class Output(Protocol[_Chunk]):
    """Where a session writes its stream: ``send`` waits while the client is not reading;
    ``close`` ends the stream. A ``trio.MemorySendChannel[bytes]`` is one."""

    async def send(self, value: _Chunk, /) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionSettings:
    inbox_capacity: int = 256
    inbox_max_bytes: int | None = DEFAULT_INBOX_MAX_BYTES
    """The encoded size of the events that may wait in the inbox, or ``None`` for no byte bound."""
    retry_ms: int = 2000
    shutdown_retry_ms: int = 1000
    shutdown_retry_spread_ms: int = 0
    """On shutdown each client is told to wait ``shutdown_retry_ms`` plus a random share of this,
    so thousands of clients do not all reconnect in the same instant."""
    goodbye_timeout_seconds: float = 1.0
    log_sample_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class _Rescope:
    """A change of principal or filter, to write before anything else: the replay of what the
    new scope admits since the client's cursor, then ``then`` (the transport's answers)."""

    replay: Replay | None
    position: Cursor | None
    then: tuple[object, ...]


class Session:
    """A client's stream, from the first bytes to the goodbye. ``cursor`` is what the client has
    been served (kept by its inbox): where it resumes from, until its first write."""

    def __init__(
        self,
        principal: Principal,
        stream_filter: StreamFilter,
        expires_at: float,
        *,
        settings: SessionSettings = SessionSettings(),
        connection_id: str = "",
        address: str = "",
        observer: StreamObserver = NO_OBSERVER,
        cursor: Cursor | None = None,
        issued_at: float | None = None,
        wire: WireFormat[Any] = SSE,
    ) -> None:
        self.principal = principal
        self.stream_filter = stream_filter
        self.expires_at = expires_at
        """When the token expires, in seconds since the epoch."""
        self.issued_at = issued_at
        """When the token was issued (its ``iat``), if it said: what a control is compared with."""
        self.transport: Transport = "sse" if wire.name == SSE.name else "websocket"
        """What carries the stream, for the connections listing."""
        self.opened_at = time.time()
        self.settings = settings
        self.connection_id = connection_id
        self.address = address
        """The client's address, as the front door saw it (counted by the registry)."""
        self.observer = observer
        self.wire = wire
        self.close_reason: CloseReason | None = None
        self.events_sent = 0
        self._inbox = Inbox(settings.inbox_capacity, cursor, max_bytes=settings.inbox_max_bytes)
        # The writer's wake-up: at most one item, sent only while the writer waits for it (and
        # the flag is cleared as it is sent), so it never fills.
        self._wake_send, self._wake = trio.open_memory_channel[None](1)
        self._writer_waiting = False
        self._rescoping = False
        self._rescope: _Rescope | None = None
        self._notices: tuple[object, ...] = ()
        """What :meth:`narrow` had to say while the hub fetched a change's replay: written with
        that change's answer."""
        self.narrow_notice: Callable[[Control], object] | None = None
        """How its transport tells the client a revocation narrowed the stream in place (a chunk
        of its wire format); ``None``: the transport cannot, and such a revocation ends it
        (:meth:`actors.hub.Hub.apply`)."""
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

    # -- the adapter's and the hub's side: never blocks ------------------------------------------

    def offer(self, deliveries: Sequence[Delivery], outcomes: Counter[Offer]) -> bool:
        """Queue ``deliveries`` without waiting, count what became of each in ``outcomes``, and
        return whether the inbox is now at or past its bound (the policy:
        :meth:`router.core.inbox.Inbox.offer`). The lag verdict stops the stream as lagged: the
        client resumes from the replay cache, and no one waits for it."""
        inbox = self._inbox
        filled = inbox.offer(deliveries, outcomes)
        if inbox.lagged:
            self.stop(CloseReason.LAGGED)
        elif self._writer_waiting:  # inline: once per session and step, at 10,000 sessions
            self._writer_waiting = False
            self._wake_send.send_nowait(None)
        return filled

    def tick(self, progress: Cursor | None = None) -> None:
        """One tick of the heartbeat clock (``progress``: the router's cursor, every event up
        to it that is for this session offered); see :meth:`Inbox.tick`."""
        if self._inbox.tick(progress):
            self._wake_writer()

    def stop(self, reason: CloseReason) -> None:
        """End the stream for ``reason``; the first reason given is the one reported."""
        if self.close_reason is None:
            self.close_reason = reason
        self._inbox.close()
        self._scope.cancel()

    def begin_rescope(
        self, principal: Principal, stream_filter: StreamFilter, expires_at: float
    ) -> None:
        """From now on the session is for ``principal`` and ``stream_filter`` (until
        ``expires_at``); it writes nothing more until :meth:`finish_rescope` gives it the replay
        of what the new scope admits since its cursor. Everything it writes from then on,
        queued before or after, is checked against the new scope (:meth:`actors.hub.Hub.rescope`
        makes the hand-over)."""
        self.principal, self.stream_filter, self.expires_at = principal, stream_filter, expires_at
        self._scope.deadline = trio.current_time() + max(0.0, expires_at - time.time())
        self._inbox.rescoped()
        self._rescoping = True

    def finish_rescope(self, replay: Replay | None, position: Cursor, then: object = None) -> None:
        """The replay :meth:`begin_rescope` waits for, and what to write after it. A second
        rescope finished before the writer took the first replaces its replay (fetched from
        the same cursor or a later one, up to a later position) and answers both."""
        earlier = () if self._rescope is None else self._rescope.then
        notices, self._notices = self._notices, ()
        answers = (*earlier, *notices, *(() if then is None else (then,)))
        self._rescope = _Rescope(replay, position, answers)
        self._wake_writer()

    def narrow(self, principal: Principal, notice: object) -> None:
        """From now on the session is for ``principal``, which grants less than its own (a
        revocation, :meth:`actors.hub.Hub.apply`): nothing it does not admit is written from
        this call on, whatever was queued, and ``notice`` (the transport's word of it) goes
        before the next event. Nothing to replay: narrowing admits nothing new. Never
        checkpoints, and keeps a change under way whole (its replay is checked against
        ``principal`` as it is written; ``notice`` comes with its answer)."""
        self.principal = principal
        self._inbox.rescoped()
        pending = self._rescope
        if pending is not None:  # a change the writer has not taken yet
            self._rescope = _Rescope(pending.replay, pending.position, (*pending.then, notice))
        elif self._rescoping:  # the hub is fetching a change's replay: finish_rescope says it
            self._notices += (notice,)
        else:
            self._rescoping = True
            self._rescope = _Rescope(None, None, (notice,))
            self._wake_writer()

    def _wake_writer(self) -> None:
        if self._writer_waiting:
            self._writer_waiting = False
            self._wake_send.send_nowait(None)

    # -- the session's side ----------------------------------------------------------------------

    async def run(
        self,
        output: Output[Any],
        resume: Replay | None = None,
        position: Cursor | None = None,
        *,
        replayed: Callable[[], object] | None = None,
    ) -> None:
        """Write the stream into ``output`` until the session is stopped or its token expires.

        ``position`` is the router's cursor when the session registered for live events
        (:meth:`actors.hub.Hub.position`): every event up to it is the replay's business (or, for
        a stream that does not resume, none of the client's), every later one arrives live.
        First the hello (the retry hint and the client's position: its own cursor when it
        resumes, else ``position``), then ``history-truncated`` if the resume was, the replay,
        the client's cursor moved up to ``position`` if the replay did not say it, and live
        events; ``replayed`` is called once the replay is written (and ``resume`` let go of,
        so its entries are freed while the stream goes on). Stopped for a reason the client
        should hear, it says so last, waiting at most
        ``goodbye_timeout_seconds``. Closes ``output`` on the way out. Cancelled from outside,
        it stops at once without a goodbye.
        """
        try:
            self._scope.deadline = trio.current_time() + max(0.0, self.expires_at - time.time())
            with self._scope:
                if resume is None and position is not None and self._inbox.cursor is None:
                    self._inbox.cursor = position
                state: ReplayState = (
                    "none" if resume is None else "truncated" if resume.truncated else "complete"
                )
                hello = Hello(
                    self.settings.retry_ms,
                    self._inbox.cursor,
                    state,
                    self.connection_id,
                    self.expires_at,
                )
                await self._send(output, self.wire.hello(hello))
                if resume is not None:
                    await self._replay(output, resume, position)
                    resume = None
                if replayed is not None:
                    replayed()
                await self._stream_live(output)
            if self.close_reason is None:  # only the deadline ends the scope without a reason
                self.close_reason = CloseReason.TOKEN_EXPIRED
            await self._say_goodbye(output)
        except trio.BrokenResourceError:  # the transport went away: the client left
            self.stop(CloseReason.CLIENT)
        finally:
            output.close()
            self.finished.set()

    def _admitted(self, message: SSEMessage) -> bool:
        return admits(message, self.principal, self.stream_filter)

    async def _replay(self, output: Output[Any], resume: Replay, position: Cursor | None) -> None:
        """What the client missed (checkpointing after each slice), then, if its cursor moved
        past the last id it was sent, that cursor."""
        if resume.truncated:
            await self._send_error(output, HISTORY_TRUNCATED)
        told = self._inbox.cursor  # the last cursor the client was sent
        for messages, served in replay_slices(resume, self._inbox, self._admitted):
            if served is not None:
                await self._send(output, self.wire.events(messages))
                self.events_sent += len(messages)
                # Their age says how long the client was away, not the router's lag: none given.
                counts = Counter(message.event for message in messages)
                self.observer.sent(counts, oldest_age=None, queued=0)
                told = served
            await trio.lowlevel.checkpoint()
        if position is not None and (caught_up := self._inbox.caught_up(position)) != told:
            await self._send(output, self.wire.cursor(caught_up))

    async def _stream_live(self, output: Output[Any]) -> None:
        """Wait for the inbox (or a rescope) to have something, write it, and a heartbeat when
        one is due and nothing was written since (:meth:`Inbox.heartbeat`)."""
        inbox = self._inbox
        while True:
            if self._rescoping:
                if self._rescope is None:  # the hub is fetching its replay: nothing goes out
                    self._writer_waiting = True
                    await self._wake.receive()
                    continue
                rescope, self._rescope, self._rescoping = self._rescope, None, False
                if rescope.replay is not None:
                    await self._replay(output, rescope.replay, rescope.position)
                for answer in rescope.then:
                    await self._send(output, answer)
            batch = inbox.take(MAX_WRITE_BATCH)
            if batch:
                await self._write(output, batch)
            elif not inbox.heartbeat_due and not self._rescoping:
                self._writer_waiting = True  # until an offer, a tick or a rescope wakes it
                await self._wake.receive()
                continue
            if inbox.heartbeat_due:
                heartbeat = inbox.heartbeat()
                if heartbeat.history_replaced:  # a new history under a quiet stream: said first
                    await self._send_error(output, HISTORY_REPLACED)
                moved = heartbeat.moved_to
                chunk = self.wire.heartbeat() if moved is None else self.wire.cursor(moved)
                if chunk is None:
                    inbox.written()  # the transport keeps the connection alive by itself
                else:
                    await self._send(output, chunk)

    async def _send(self, output: Output[Any], chunk: object) -> None:
        await output.send(chunk)
        self._inbox.written()

    async def _send_error(self, output: Output[Any], error: SSEMessage) -> None:
        """Write one of the router's own ``sse.error`` events, counted like any event sent."""
        await self._send(output, self.wire.events((error,)))
        self.observer.sent({error.event: 1}, oldest_age=None, queued=self._inbox.waiting)

    async def _write(self, output: Output[Any], batch: Sequence[Delivery]) -> None:
        inbox = self._inbox
        if inbox.history_replaced(batch):
            await self._send_error(output, HISTORY_REPLACED)
        if inbox.serve_shared(batch):
            # The same encoding as every other session of this format writing this batch.
            await self._send(output, batch.encoded(self.wire))
            self._count_sent(batch, batch.event_counts, batch.oldest_occurred_at)
            return
        messages, sent = serve_each(inbox, batch, self._admitted)
        if not messages:
            return
        await self._send(output, self.wire.events(messages))
        occurred = [d.occurred_at for d in sent if d.occurred_at is not None]
        self._count_sent(sent, Counter(d.message.event for d in sent), min(occurred, default=None))

    def _count_sent(
        self, sent: Sequence[Delivery], event_counts: Mapping[str, int], oldest: float | None
    ) -> None:
        self.events_sent += len(sent)
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
        self.observer.sent(
            event_counts,
            oldest_age=None if oldest is None else time.time() - oldest,
            queued=self._inbox.waiting,
        )

    async def _say_goodbye(self, output: Output[Any]) -> None:
        reason = self.close_reason
        if reason is None or not says_goodbye(reason):
            return
        retry = self.settings.shutdown_retry_ms
        if reason is CloseReason.SERVER_SHUTDOWN and self.settings.shutdown_retry_spread_ms:
            retry += random.randint(0, self.settings.shutdown_retry_spread_ms)
        event = goodbye(reason, retry)
        with trio.move_on_after(self.settings.goodbye_timeout_seconds) as scope:
            scope.shield = True
            await output.send(self.wire.events((event,)))
        if not scope.cancelled_caught:
            self.observer.sent({event.event: 1}, oldest_age=None, queued=self._inbox.waiting)
