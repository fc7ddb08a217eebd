"""What a session writes next, as a state machine: the writer's side of a stream, sans I/O.

No trio and no I/O, in the way of h11's ``Connection``. Whoever drives a :class:`Writer` (the
session actor, ``actors/session.py``; a test with plain calls) asks :meth:`Writer.next` what to do:

- a chunk of the session's :class:`~router.core.wire.WireFormat`: write it, then call
  :meth:`Writer.wrote` once it went out (a write cut short is never counted as sent);
- :attr:`Pause.CHECKPOINT`: let other tasks run, then ask again (between a replay's slices, so a
  10,000-event replay does not hold the loop);
- :attr:`Pause.WAIT`: nothing to write until an offer, a tick or a change of scope; ask again
  once woken.

The order it gives: the hello; ``history-truncated`` if the resume was, the replay, the client's
cursor moved up to the router's position if the replay did not say it; then, before anything of
the inbox, a change of scope (its replay, then its answers: :class:`~router.core.handover.Handover`,
which also holds the inbox back while a change's replay is fetched); the inbox's batches (a
``history-truncated`` first when the bus's history was replaced); a heartbeat when one is due
and nothing was written since. Every event is checked by ``admitted`` as it is chosen, so a
narrowed session never writes what it no longer may see, whenever that event was queued.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from router.core.cursor import Cursor
from router.core.goodbye import HISTORY_REPLACED, HISTORY_TRUNCATED
from router.core.handover import Change, Handover
from router.core.history import Replay
from router.core.inbox import MAX_WRITE_BATCH, Delivery, Inbox, SharedBatch
from router.core.observer import StreamObserver, Transport
from router.core.permissions import Principal, StreamFilter, admits
from router.core.replay_share import ReplayShare, replay_writes
from router.core.sent import Sent
from router.core.serving import hello, serve_each
from router.core.sse import SSEMessage
from router.core.wire import WireFormat

__all__ = ["Pause", "Writer"]

_END = object()
_UNCHANGED = Handover()
"""The hand-over of every stream that has not changed scope: nothing under way, ever (no call
but :meth:`Handover.take` reaches it, which changes nothing here)."""


class Pause(enum.Enum):
    """What :meth:`Writer.next` answers when there is no chunk to write now."""

    WAIT = "wait"
    CHECKPOINT = "checkpoint"


class Writer(Sent):
    """A stream's writer side over its ``inbox`` (shared with the adapter's side, which offers
    to it), for ``principal`` and ``stream_filter`` (checked as each event is chosen), framing
    in ``wire``, counting what went out (:class:`~router.core.sent.Sent`). :meth:`changing` is its
    change of scope under way: the hub's side calls it, and the writer takes what it says
    first.

    A base of every session rather than an object of its own, and the live path allocates
    nothing of its own per write (the steps of a replay or a change are a generator, made once
    per replay or change): at 10,000 streams each object and each write counts."""

    __slots__ = (
        "_each",
        "_handover",
        "_shared",
        "_steps",
        "inbox",
        "principal",
        "stream_filter",
        "wire",
    )

    def __init__(
        self,
        inbox: Inbox,
        wire: WireFormat[Any],
        principal: Principal,
        stream_filter: StreamFilter,
        observer: StreamObserver,
        *,
        transport: Transport = Transport.SSE,
        sample_rate: float = 0.0,
    ) -> None:
        super().__init__(observer, transport, sample_rate=sample_rate)
        self.inbox, self.wire = inbox, wire
        self.principal, self.stream_filter = principal, stream_filter
        self._handover = _UNCHANGED
        self._steps: Iterator[object] | None = None
        """The rest of a replay or a change, chunks and checkpoints, before anything else."""
        self._shared: SharedBatch | None = None
        """The shared batch the chunk in hand carries, counted once it went out."""
        self._each: list[Delivery] | None = None
        """The deliveries the chunk in hand carries, served one by one: the same."""

    def changing(self) -> Handover:
        """The stream's own hand-over, made at its first change of scope: most streams never
        change, and 10,000 of them need not carry one each."""
        handover = self._handover
        if handover is _UNCHANGED:
            handover = self._handover = Handover()
        return handover

    def admitted(self, message: SSEMessage) -> bool:
        """Whether the stream's principal and filter, as they are now, admit ``message``."""
        return admits(message, self.principal, self.stream_filter)

    def start(
        self,
        resume: Replay | None,
        position: Cursor | None,
        retry_ms: int,
        connection_id: str,
        expires_at: float,
        replayed: Callable[[], object] | None = None,
        share: ReplayShare | None = None,
    ) -> None:
        """The stream begins: its hello (where the client stands: its own cursor when it
        resumes, else ``position``, the router's cursor when the session registered), then the
        ``resume``, if any, up to ``position``; ``replayed`` is called once all of that went
        out (the hub gives the resume's turn back then, and its ``share``), and the steps let
        go of ``resume``. ``share`` is the resume's hold on the replay shared among the
        streams resuming from the same cursor (:mod:`router.core.replay_share`): the same
        bytes and cursor as without it, worked out once for all of them."""
        inbox = self.inbox
        if resume is None and position is not None and inbox.cursor is None:
            inbox.cursor = position
        first = hello(retry_ms, inbox.cursor, resume, connection_id, expires_at)
        self._steps = self._opening(self.wire.hello(first), resume, position, replayed, share)

    def next(self) -> object:
        """The next chunk to write, or a :class:`Pause`. Never blocks; loops only over batches
        that had nothing left to write (at most the inbox's capacity of them)."""
        inbox, handover = self.inbox, self._handover
        while True:
            if self._steps is not None:
                step = next(self._steps, _END)
                if step is not _END:
                    return step
                self._steps = None
            if handover.holding:  # a change's replay is being fetched: nothing goes out
                return Pause.WAIT
            change = handover.take()
            if change is not None:
                self._steps = self._changing(change)
                continue
            batch = inbox.take(MAX_WRITE_BATCH)
            if batch:
                if inbox.history_replaced(batch):
                    self._steps = self._replaced(batch)
                    continue
                chunk = self._serve(batch)
                if chunk is not None:
                    return chunk
            elif not inbox.heartbeat_due:
                return Pause.WAIT
            if inbox.heartbeat_due:
                heartbeat = inbox.heartbeat()
                moved = heartbeat.moved_to
                chunk = self.wire.heartbeat() if moved is None else self.wire.cursor(moved)
                if heartbeat.history_replaced:  # a new history under a quiet stream: said first
                    self._steps = self._said_first(HISTORY_REPLACED, chunk)
                    continue
                if chunk is not None:
                    return chunk
                inbox.written()  # the transport keeps the connection alive by itself

    def wrote(self) -> dict[str, object] | None:
        """The chunk :meth:`next` gave went out: the silence a heartbeat fills starts again, and
        what it carried is counted. Returns the fields to log when the write is sampled."""
        inbox, shared, each = self.inbox, self._shared, self._each
        # Only the chunk of the batch in hand lets its bytes go: an error said before it does not.
        inbox.written(batch=shared is not None or each is not None)
        if shared is not None:
            self._shared = None
            return self.count_shared(shared, inbox.waiting)
        if each is not None:
            self._each = None
            return self.count_each(each, inbox.waiting)
        return None

    def _serve(self, batch: Sequence[Delivery]) -> object | None:
        inbox = self.inbox
        if inbox.serve_shared(batch):
            # The same encoding as every other session of this format writing this batch.
            self._shared = batch
            chunk: object = batch.encoded(self.wire)
            return chunk
        messages, sent = serve_each(inbox, batch, self.admitted)
        if not messages:
            inbox.let_go()
            return None
        self._each = sent
        events: object = self.wire.events(messages)
        return events

    # -- the steps: what runs after each ``yield`` runs once that chunk went out ------------------

    def _opening(
        self,
        first: object,
        resume: Replay | None,
        position: Cursor | None,
        replayed: Callable[[], object] | None,
        share: ReplayShare | None,
    ) -> Iterator[object]:
        yield first
        if resume is not None:
            yield from self._replay(resume, position, share)
        if replayed is not None:
            replayed()

    def _changing(self, change: Change) -> Iterator[object]:
        if change.replay is not None:
            yield from self._replay(change.replay, change.position)
        yield from change.answers

    def _replay(
        self, resume: Replay, position: Cursor | None, share: ReplayShare | None = None
    ) -> Iterator[object]:
        """What the client missed, a checkpoint after each slice, then, if its cursor moved past
        the last id it was sent, that cursor. With a ``share``, the slices it holds are written
        as encoded once for every stream admitted to all of them."""
        inbox = self.inbox
        if resume.truncated:
            yield from self._say(HISTORY_TRUNCATED)
        told = inbox.cursor  # the last cursor the client was sent
        for write, served in replay_writes(share, resume.entries, inbox, self.admitted, self.wire):
            if write is not None:
                chunk, counts = write
                yield chunk
                self.count_replayed_names(counts)
                told = served
            yield Pause.CHECKPOINT
        if position is not None and (caught_up := inbox.caught_up(position)) != told:
            yield self.wire.cursor(caught_up)

    def _replaced(self, batch: Sequence[Delivery]) -> Iterator[object]:
        yield from self._say(HISTORY_REPLACED)
        chunk = self._serve(batch)
        if chunk is not None:
            yield chunk

    def _said_first(self, error: SSEMessage, then: object | None) -> Iterator[object]:
        yield from self._say(error)
        if then is not None:
            yield then

    def _say(self, error: SSEMessage) -> Iterator[object]:
        """One of the router's own ``sse.error`` events, counted like any event sent."""
        yield self.wire.events((error,))
        self.count_own(error, self.inbox.waiting)
