"""A session's inbox as a state machine: what waits for one client, and what it has been served.

No trio and no I/O, in the way of h11's ``Connection``: the adapter's side feeds it
(:meth:`Inbox.offer`, :meth:`Inbox.tick`, :meth:`Inbox.close`), the writer's side asks it what to
write next (:meth:`Inbox.take`, :meth:`Inbox.serve_shared`, :meth:`Inbox.serve`,
:meth:`Inbox.heartbeat`) and says when it wrote (:meth:`Inbox.written`). Whoever drives it
decides how to wait and where the bytes go: the session actor (``actors/session.py``) with a trio
wake-up and the client's response, a test with plain calls.

The policy: an offer never waits. It is taken whole while fewer than ``capacity`` events, and
fewer than ``max_bytes`` bytes of them (their encoded size), wait from earlier offers or are in
the writer's hand (taken, not yet written: :attr:`Inbox.in_hand_bytes`); past either
bound a low-priority event is coalesced with the newest of its kind, held aside (at most
``capacity`` kinds), and a high-priority one is the lag verdict: the inbox closes, and the client
resumes from the replay cache. The writer takes at most ``most`` events at
a time, in the adapter's order, coalesced ones in their place.

The bookkeeping: :attr:`Inbox.cursor` is what the client has been served, the router's cursor
merged with what it had before (it may come from an instance ahead in some partitions). Every id
the writer sends is that cursor, so no id names a position past an event still to come.
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeGuard, TypeVar

from router.core.cursor import Cursor, EventIdentity, advance
from router.core.observer import Offer
from router.core.sse import Priority, SSEMessage
from router.core.wire import WireFormat

_Chunk = TypeVar("_Chunk")

__all__ = [
    "DEFAULT_INBOX_MAX_BYTES",
    "MAX_WRITE_BATCH",
    "TICKS_PER_HEARTBEAT",
    "Delivery",
    "Heartbeat",
    "Inbox",
    "Offer",
    "SharedBatch",
    "replayed_after",
]

MAX_WRITE_BATCH = 64
"""Most events in one write, live or replayed. A replay also checkpoints after each write: an
output may take the bytes without one (the HTTP body's direct writer does while the socket
takes them), and a 10,000-event replay would otherwise hold the loop for tens of ms."""
TICKS_PER_HEARTBEAT = 4
"""A heartbeat is due after this many ticks of the heartbeat clock with no write."""
EAGER_COALESCE_DIVISOR = 4
"""Coalescing eagerly starts once this share (a quarter) of the capacity waits."""
DEFAULT_INBOX_MAX_BYTES = 1024 * 1024
"""Bytes of events (their encoded size) that may wait for one stream before backpressure: 256
events of a few KiB fit, and a stream of events of tens of KiB is bounded by its bytes instead of
its count (``--session-buffer-bytes``)."""


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

    def encoded(self, wire: WireFormat[_Chunk]) -> _Chunk:
        """These events in ``wire``'s format, encoded by the first session of that format that
        writes them and kept for every other (one encoding per format, however many streams)."""
        encodings = self._encodings
        try:
            return encodings[wire.name]  # type: ignore[return-value]
        except KeyError:
            chunk = encodings[wire.name] = wire.events([d.message for d in self])
            return chunk

    @functools.cached_property
    def _encodings(self) -> dict[str, object]:
        return {}

    @functools.cached_property
    def wire_size(self) -> int:
        """The bytes of these events on an event stream, summed once for every inbox they wait
        in (the inbox's byte bound)."""
        return sum(len(delivery.message.to_sse_format()) for delivery in self)

    @functools.cached_property
    def event_counts(self) -> Counter[str]:
        return Counter(delivery.message.event for delivery in self)

    @functools.cached_property
    def oldest_occurred_at(self) -> float | None:
        return min((d.occurred_at for d in self if d.occurred_at is not None), default=None)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The heartbeat that is due (:meth:`Inbox.heartbeat`)."""

    moved_to: Cursor | None = None
    """The client's cursor moved up to the router's progress, to send as an id-only block (as
    good a keep-alive), or ``None`` for a comment."""
    history_replaced: bool = False
    """The progress is of another history than the client's cursor: the bus's history was lost
    or replaced under this quiet stream, and before its cursor moves into the new one it is to
    be told so, as a stream with events of its own is (:meth:`Inbox.history_replaced`)."""


_COMMENT = Heartbeat()


def replayed_after(cursor: Cursor | None, identity: EventIdentity) -> Cursor | None:
    """The cursor of a client at ``cursor`` once the replayed event at ``identity`` is served,
    or ``None`` when ``cursor`` covers it (:meth:`Inbox.replayed`; a shared replay works its
    cursors out with the same rule, ``router/core/replay_share.py``)."""
    if cursor is not None and cursor.covers(identity):
        return None
    return advance(cursor, identity)


def _wire_size(deliveries: Sequence[Delivery]) -> int:
    """The bytes of ``deliveries`` on an event stream: a shared batch's are summed once."""
    if isinstance(deliveries, SharedBatch):
        return deliveries.wire_size
    return sum(len(delivery.message.to_sse_format()) for delivery in deliveries)


class Inbox:
    """What waits for one client, bounded by ``capacity`` events and ``max_bytes`` bytes of
    them, and the client's cursor.

    Neither side ever waits on it: every method returns at once. Batches offered are kept as
    they are (a :class:`SharedBatch` is shared with other sessions: never changed in place).
    The public attributes are there to be read (plain attributes, not properties: the adapter's
    side reads them once per offer, for 10,000 sessions); they change only through the calls,
    but for :attr:`cursor`, which a driver may set before the stream starts (a resume).
    """

    __slots__ = (
        "_aside",
        "_batches",
        "_coalesce_from_bytes",
        "_held",
        "_in_sync",
        "_progress",
        "_quiet_ticks",
        "byte_bound",
        "capacity",
        "closed",
        "coalesce_from",
        "cursor",
        "heartbeat_due",
        "in_hand_bytes",
        "lagged",
        "waiting",
        "waiting_bytes",
    )

    def __init__(
        self,
        capacity: int,
        cursor: Cursor | None = None,
        *,
        max_bytes: int | None = DEFAULT_INBOX_MAX_BYTES,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"an inbox holds at least one event, not {capacity}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"an inbox holds at least one byte, not {max_bytes} (None: no bound)")
        self.capacity = capacity
        self.byte_bound = sys.maxsize if max_bytes is None else max_bytes
        """``max_bytes``, or a bound never reached when there is none (one comparison per offer
        either way)."""
        self.coalesce_from = capacity
        """While this many events wait, low-priority ones are coalesced: the capacity, or less
        when the router is overloaded (:meth:`coalesce_eagerly`)."""
        self._coalesce_from_bytes = self.byte_bound
        """The same for the bytes waiting: the byte bound, or the same share of it."""
        self.cursor = cursor
        """What the client has been served: every id it is sent is this cursor."""
        self.closed = False
        """Set by :meth:`close` or by the lag verdict: later offers are counted ``CLOSED``."""
        self.lagged = False
        """The lag verdict: an event that had to be queued found no room."""
        self.waiting = 0
        """Events offered and queued, not yet taken (those coalesced aside are not counted)."""
        self.waiting_bytes = 0
        """The encoded size of the events counted in :attr:`waiting`."""
        self.in_hand_bytes = 0
        """The encoded size of the events the last :meth:`take` gave the writer, until it says
        it wrote them (:meth:`written`), is done with them unwritten (:meth:`let_go`) or takes
        again: up to :data:`MAX_WRITE_BATCH` events that left :attr:`waiting` but not the
        router's memory, and count in the byte bound until then."""
        self._held: Sequence[Delivery] = ()
        """The next events to take, in the order offered: the rest of a batch cut at a take, or
        the one batch offered while nothing waited."""
        # A list, not a deque: few batches wait behind ``_held`` at a time, and a deque's first
        # block is 500 bytes more per session, at 10,000 sessions.
        self._batches: list[Sequence[Delivery]] = []
        self._aside: dict[str, Delivery] = {}
        self._in_sync = False
        self._quiet_ticks = 0
        self.heartbeat_due = False
        """Set by :meth:`tick` when a heartbeat is owed; :meth:`heartbeat` and :meth:`written`
        clear it."""
        self._progress: Cursor | None = None
        """The router's cursor at a tick that found nothing waiting here: everything up to it
        that was for this client had been taken, so once that is written the client has been
        served up to it (what passed for others counts as served)."""

    # -- the adapter's side ----------------------------------------------------------------------

    def coalesce_eagerly(self, eager: bool) -> None:
        """Coalesce low-priority events once a quarter of the capacity (or of the byte bound)
        waits (``eager``, the first rung of the overload ladder: router/core/overload.py), or
        only once all of it does. High-priority events are queued as before, up to the bounds."""
        eager_from = max(1, self.capacity // EAGER_COALESCE_DIVISOR)
        self.coalesce_from = eager_from if eager else self.capacity
        eager_bytes = max(1, self.byte_bound // EAGER_COALESCE_DIVISOR)
        self._coalesce_from_bytes = eager_bytes if eager else self.byte_bound

    def offer(self, deliveries: Sequence[Delivery], outcomes: Counter[Offer]) -> bool:
        """Queue ``deliveries`` (in the adapter's order), count what became of each in
        ``outcomes``, and return whether the inbox is now at or past its bound.

        The bound is on what still waits from earlier offers: while fewer than ``capacity`` events
        do, and fewer than ``max_bytes`` bytes of them and of those in the writer's hand
        (:attr:`held_bytes`), an offer is taken whole, however large. Past either bound (the same
        verdict for both), a low-priority event is coalesced with the newest of its kind, held aside
        (at most ``capacity`` of them), and a high-priority one is the lag verdict: :attr:`lagged`
        and :attr:`closed` are set, and neither it nor the rest of the offer is queued (the client
        is to resume from the replay cache). An offer taken whole, with nothing held aside, is kept
        as it is. An offer that queues nothing (all of it coalesced aside) does not fill the inbox,
        however much waits: that client is not reading, and a driver that paused for it would wait
        on every offer.
        """
        if self.closed:
            outcomes[Offer.CLOSED] += len(deliveries)
            return False
        if not deliveries:
            return False
        capacity = self.capacity
        byte_bound = self.byte_bound
        held_bytes = self.waiting_bytes + self.in_hand_bytes
        has_room = self.waiting < capacity and held_bytes < byte_bound
        room = len(deliveries) if has_room else 0
        eager = self.waiting >= self.coalesce_from or held_bytes >= self._coalesce_from_bytes
        if room and not self._aside and not eager:
            # With nothing waiting the batch is the next to take: no list to grow and shrink.
            if self.waiting:
                self._batches.append(deliveries)
            else:
                self._held = deliveries
            self.waiting += room
            self.waiting_bytes += _wire_size(deliveries)
            outcomes[Offer.QUEUED] += room
            return self.waiting >= capacity or self.waiting_bytes + self.in_hand_bytes >= byte_bound
        queued: list[Delivery] = []
        aside = self._aside
        lagged_at = None
        for index, delivery in enumerate(deliveries):
            message = delivery.message
            key = message.coalesce_key if message.priority is Priority.LOW else None
            if key is not None and (key in aside or (eager and len(aside) < capacity)):
                aside[key] = delivery
            elif len(queued) < room:
                queued.append(delivery)
                continue
            elif key is not None and len(aside) < capacity:
                aside[key] = delivery
            else:
                lagged_at = index
                break
            outcomes[Offer.COALESCED] += 1
        if queued:
            if self.waiting:
                self._batches.append(queued)
            else:
                self._held = queued
            self.waiting += len(queued)
            self.waiting_bytes += _wire_size(queued)
            outcomes[Offer.QUEUED] += len(queued)
        if lagged_at is not None:
            self.lagged = self.closed = True
            outcomes[Offer.DISCONNECTED] += 1
            if lagged_at + 1 < len(deliveries):
                outcomes[Offer.CLOSED] += len(deliveries) - lagged_at - 1
            return False
        return bool(queued) and (
            self.waiting >= capacity or self.waiting_bytes + self.in_hand_bytes >= byte_bound
        )

    def tick(self, progress: Cursor | None = None) -> bool:
        """One tick of the heartbeat clock; return whether a heartbeat just became due.

        After :data:`TICKS_PER_HEARTBEAT` ticks without a write a heartbeat is due. ``progress``
        is the router's cursor now, with every event up to it that is for this client already
        offered: if none of them still waits (queued or held aside), the heartbeat may move the
        client's cursor up to it. Never past an event still waiting: what waits was offered after
        ``progress`` was recorded, so it lies beyond it.
        """
        if progress is not None and not self.waiting and not self._aside:
            self._progress = progress
        self._quiet_ticks += 1
        if self._quiet_ticks >= TICKS_PER_HEARTBEAT and not self.heartbeat_due:
            self.heartbeat_due = True
            return True
        return False

    def close(self) -> None:
        """Take no more offers; what waits can still be taken."""
        self.closed = True

    # -- the writer's side -----------------------------------------------------------------------

    @property
    def held_bytes(self) -> int:
        """The bytes this stream holds in the router: waiting, and in the writer's hand (what the
        byte bound bounds, and what the overload monitor counts a stream behind by)."""
        return self.waiting_bytes + self.in_hand_bytes

    @property
    def set_aside(self) -> int:
        """How many coalesced events are held aside."""
        return len(self._aside)

    @property
    def ready(self) -> bool:
        """Whether the writer has something to do: events to take, or a heartbeat due."""
        return bool(self.waiting or self._aside or self.heartbeat_due)

    def take(self, most: int = MAX_WRITE_BATCH) -> Sequence[Delivery]:
        """The next events to write, at most ``most``, in the adapter's order (a coalesced event
        keeps its place before the events offered after it); empty only when none waits, queued
        or held aside. A batch offered alone and small enough comes back as it was offered.

        What it gives is in the writer's hand (:attr:`in_hand_bytes`) until :meth:`written` of it,
        :meth:`let_go` or the next take (a writer takes again only once it is done with the last
        batch, written or not: a batch its client was not to see leaves nothing to write)."""
        if not self.waiting and not self._aside:
            self.in_hand_bytes = 0
            return ()
        held = self._held
        batches = self._batches
        joined = 0
        while joined < len(batches) and len(held) < most:
            batch = batches[joined]
            joined += 1
            held = batch if not held else [*held, *batch]
        if joined:
            del batches[:joined]
        if self._aside:
            return self._merge_aside(held, most)
        if len(held) > most:
            taken, self._held = held[:most], held[most:]
        else:
            taken, self._held = held, ()
        size = _wire_size(taken)
        self.waiting -= len(taken)
        self.waiting_bytes -= size
        self.in_hand_bytes = size
        return taken

    def _merge_aside(self, held: Sequence[Delivery], most: int) -> list[Delivery]:
        """The earliest of ``held`` and of those coalesced aside, in the adapter's order."""
        aside = sorted(self._aside.items(), key=lambda kv: kv[1].seq)
        taken: list[Delivery] = []
        taken_held = taken_aside = aside_size = 0
        while len(taken) < most and (taken_held < len(held) or taken_aside < len(aside)):
            if taken_aside < len(aside) and (
                taken_held == len(held) or aside[taken_aside][1].seq < held[taken_held].seq
            ):
                key, delivery = aside[taken_aside]
                del self._aside[key]
                taken_aside += 1
                aside_size += len(delivery.message.to_sse_format())
            else:
                delivery = held[taken_held]
                taken_held += 1
            taken.append(delivery)
        queued_size = _wire_size(held[:taken_held])
        self.waiting -= taken_held
        self.waiting_bytes -= queued_size
        # Those coalesced aside were bounded by their count, not their bytes, while they waited;
        # in the writer's hand they weigh what they are.
        self.in_hand_bytes = queued_size + aside_size
        self._held = held[taken_held:]
        return taken

    def history_replaced(self, taken: Sequence[Delivery]) -> bool:
        """Whether ``taken`` (not empty) comes from another history than the client's cursor:
        the bus's history was lost or replaced under this stream, and events may be missing.
        If so, the router's progress recorded in the history before is forgotten: a heartbeat
        must never move the client back into it."""
        if self._replaced_by(taken[-1].cursor):
            self._progress = None
            return True
        return False

    def _replaced_by(self, newer: Cursor) -> bool:
        """Whether the router's cursor ``newer`` is of another history than the client's. A
        cursor of no epoch is a stream that opened before the bus answered: it missed nothing,
        and every event since reached it live."""
        cursor = self.cursor
        return (
            cursor is not None
            and cursor.epoch is not None
            and (newer.source, newer.epoch) != (cursor.source, cursor.epoch)
        )

    def serve_shared(self, taken: Sequence[Delivery]) -> TypeGuard[SharedBatch]:
        """Whether ``taken`` is written as the adapter encoded it (``SharedBatch.encoded``): it is
        a shared batch and the client is in step with the router's cursor. If so, the client
        has been served up to its end."""
        if self._in_sync and isinstance(taken, SharedBatch):
            self.cursor = taken[-1].cursor
            return True
        return False

    def serve(self, delivery: Delivery) -> SSEMessage | None:
        """The message to write for ``delivery`` with the client's cursor as its id, or ``None``
        when the client had it (from a replay, or from another instance). Once the client's
        cursor and the router's agree, every later message of this epoch is the router's."""
        if self._in_sync:
            self.cursor = delivery.cursor
            return delivery.message
        cursor = self.cursor
        if cursor is not None and cursor.covers(delivery.identity):
            return None
        merged = delivery.cursor if cursor is None else cursor.merge(delivery.cursor)
        self.cursor = merged
        self._in_sync = merged == delivery.cursor
        return delivery.message if self._in_sync else delivery.message.with_id(str(merged))

    def replayed(self, identity: EventIdentity) -> Cursor | None:
        """The client's cursor once a replayed event is served, or ``None`` when it had it.

        A replayed event moves the cursor by its own place only: the cache may hold events
        another instance appended, whose cursors describe that instance's progress, not what
        this client has been served."""
        served = replayed_after(self.cursor, identity)
        if served is not None:
            self.cursor = served
        return served

    def caught_up(self, position: Cursor) -> Cursor:
        """The client's cursor once everything up to the router's ``position`` is served (what
        passed for others counts as served)."""
        self.cursor = position if self.cursor is None else self.cursor.merge(position)
        return self.cursor

    def rescoped(self) -> None:
        """The client's principal or filter changed: what waits was chosen for the old one, and
        a replay from the client's cursor is to come before it (:meth:`replayed`). Until the
        client's cursor and the router's agree again, every delivery is served one by one,
        skipped when that cursor covers it (no shared batch is written whole), and the router's
        progress seen before is forgotten.

        What waits loses its shared form too: a shared batch was admitted whole for the old
        scope, and the client is back in step after its first event served, long before a
        backlog of more than one write is taken; written whole then, it would carry what the
        new scope does not admit. At most ``capacity`` events are copied, once per change."""
        self._in_sync = False
        self._progress = None
        if isinstance(self._held, SharedBatch):
            self._held = tuple(self._held)
        self._batches = [tuple(b) if isinstance(b, SharedBatch) else b for b in self._batches]

    def written(self, *, batch: bool = True) -> None:
        """The writer wrote to the client: the silence a heartbeat fills starts again, and, when
        the write carried the ``batch`` last taken, what it had in hand is the socket's now. A
        write of the router's own before that batch (the ``history-truncated`` that a batch of a
        new history comes after) leaves the batch in hand: its bytes still count in the bound."""
        if batch:
            self.let_go()
        self._quiet_ticks = 0
        self.heartbeat_due = False

    def let_go(self) -> None:
        """The writer is done with the batch in hand without writing any of it (its client was
        not to see it): its bytes are held no more."""
        self.in_hand_bytes = 0

    def heartbeat(self) -> Heartbeat:
        """Take the heartbeat that is due: the client's cursor moved up to the router's progress,
        or a comment when the router has not moved past the client with nothing for it; and
        whether that progress is of a new history, which the client is to hear of first."""
        self.heartbeat_due = False
        progress, self._progress = self._progress, None
        if progress is None:
            return _COMMENT
        served = progress if self.cursor is None else self.cursor.merge(progress)
        if served == self.cursor:  # never so for a new history: it replaces the cursor whole
            return _COMMENT
        replaced = self._replaced_by(progress)
        # In step with the router before, still in step: ``progress`` is a cursor the router
        # had, and every later delivery's cursor is at or past it.
        self.cursor = served
        return Heartbeat(served, replaced)
