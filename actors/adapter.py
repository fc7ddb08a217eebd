"""The adapter actor: records in, SSE events out to the replay cache and to the sessions."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import trio

from actors.registry import SessionRegistry
from actors.session import CloseReason, Delivery, Offer, Session, SharedBatch
from actors.settings import FANOUT_PAUSE_ABOVE, FANOUT_PAUSE_SECONDS
from router.bus.base import Record
from router.cache.base import ReplayCache
from router.core.control import Control
from router.core.cursor import Cursor, EventIdentity, advance
from router.core.dedup import RecentIds, Sighting, event_digest
from router.core.history import Entry
from router.core.mapping import ControlRead, Converted, convert_batch
from router.core.observer import DUPLICATE, NO_OBSERVER, Observer
from router.core.observer import Failure as Failure
from router.core.permissions import admits

log = logging.getLogger(__name__)


@dataclass
class AdapterStats:
    """What the adapter has counted, for its own waits and for tests; the same counts go to its
    :class:`~router.core.observer.Observer` as they happen."""

    consumed: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    offers: Counter[Offer] = field(default_factory=Counter)
    id_reused: int = 0
    """Events delivered though their producer ``event_id`` came with another event recently."""
    failures: Counter[Failure] = field(default_factory=Counter)
    lost_on_bus: int = 0
    """Times the bus had deleted records before they were read (``lost`` records)."""


class ControlSink(Protocol):
    """Who applies the control envelopes the adapter reads (the hub)."""

    def apply(self, control: Control) -> None:
        """Put ``control`` in force, at once (no checkpoint): the events after it in bus order
        are routed under it."""
        ...

    async def keep(self, controls: Sequence[Control]) -> None:
        """Keep ``controls`` beyond this process (never raises)."""
        ...


class Adapter:
    """Converts, keeps and routes events; the only writer of the router's cursor.

    ``cursor`` is where the router stands in the bus after the last event it routed. A session
    that registers and reads ``cursor`` in the same step (no checkpoint between) receives live
    exactly the events after it, which is what makes the resume hand-over gap-free.
    """

    def __init__(
        self,
        cache: ReplayCache,
        registry: SessionRegistry,
        *,
        clock: Callable[[], float] = trio.current_time,
        dedup_window: int = 10_000,
        fanout_pause_seconds: float = FANOUT_PAUSE_SECONDS,
        fanout_pause_above: int = FANOUT_PAUSE_ABOVE,
        observer: Observer = NO_OBSERVER,
    ) -> None:
        self.cache = cache
        self.registry = registry
        self.cursor: Cursor | None = None
        self.stats = AdapterStats()
        self.observer = observer
        self._clock = clock
        self.fanout_pause_seconds = fanout_pause_seconds
        self.fanout_pause_above = fanout_pause_above
        self._seq = 0
        self._processed = trio.Event()
        self._recent_ids = RecentIds(dedup_window)
        self._inbox_filled = False
        """Whether an offer of the current step filled a session's inbox (see :meth:`run`)."""
        self.controls: ControlSink | None = None
        """Who applies the control envelopes read; without one they are skipped (and logged)."""

    async def run(self, records_in: trio.MemoryReceiveChannel[Sequence[Record]]) -> None:
        """Process batches until ``records_in`` is closed or this is cancelled.

        A malformed or unknown event is counted and logged with its position, and skipped: its
        position still advances the cursor, so it is never read again.

        Everything waiting in ``records_in`` is processed in one step, and each session is
        offered its share of it in one batch, which it writes in one write. After a step that
        made at least ``fanout_pause_above`` offers, the adapter first lets the sessions write
        (their turn is the next scheduling round, and its own the one after), then waits
        ``fanout_pause_seconds`` before routing more. Without that pause a wide fan-out is one
        long round per event, and the publishes, connects and resumes that are in flight move
        one step per long round: events trickle in one by one and every stream pays a write for
        each. With it, they arrive during a few short rounds and go out together. The pause is
        the most it adds to an event's delivery.

        The same pause follows a step that filled a session's inbox (a burst: a full publish
        batch is four inboxes): a session that keeps up writes what it was offered before the
        next step finds its inbox still full and cuts it as lagged (see :meth:`Session.offer`).
        One that does not keep up is cut by that next step; the others wait for it no longer
        than the pause.
        """
        async with records_in:
            async for records in records_in:
                waiting = [records]
                while True:
                    try:
                        waiting.append(records_in.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                offers_before = self._offers_made()
                self._inbox_filled = False
                await self.process(
                    records if len(waiting) == 1 else [r for batch in waiting for r in batch]
                )
                woken = self._offers_made() - offers_before
                wide = woken >= self.fanout_pause_above
                if self._inbox_filled or (self.fanout_pause_seconds and wide):
                    await trio.lowlevel.checkpoint()  # the sessions write, in the next round
                    await trio.lowlevel.checkpoint()  # and we are back after them
                    await trio.sleep(self.fanout_pause_seconds)

    async def process(self, records: Sequence[Record]) -> None:
        if any(r.lost for r in records):
            await self._pass_over_lost([r for r in records if r.lost])
            records = [r for r in records if not r.lost]
        batch = convert_batch(
            ((r.identity, r.raw if r.envelope is None else r.envelope) for r in records),
            self.cursor,
        )
        self.stats.consumed += len(records)
        self.observer.consumed(len(records))
        for rejected in batch.rejected:
            self.stats.rejected[rejected.problem.value] += 1
            self.observer.rejected(rejected.problem.value)
            log.warning(
                "event rejected",
                extra={
                    "position": str(rejected.identity),
                    "reason": rejected.problem.value,
                    "detail": rejected.detail,
                },
            )
        for failed in batch.failed:
            self._record_failed(failed.identity, failed.error)
        for bad in batch.bad_controls:
            self.observer.control_rejected()
            log.warning(
                "control envelope rejected",
                extra={
                    "position": str(bad.identity),
                    "reason": bad.problem.value,
                    "detail": bad.detail,
                },
            )
        fresh: list[tuple[Converted, float, int]] = []
        for index, converted in enumerate(batch.events):
            try:
                if self._duplicate(converted):
                    continue
                occurred_at = _seconds(converted.envelope.occurred_at)
            except Exception as error:  # a bug this record met: this record only is skipped
                self._record_failed(converted.identity, error)
                continue
            fresh.append((converted, occurred_at, index))
        now = self._clock()
        entries = [Entry(c.identity, c.message, now) for c, _, _ in fresh]
        if entries:
            await self.cache.append(entries)
        # From here to the end: no checkpoint, so no session registers half-way through.
        self.cursor = batch.cursor
        deliveries = []
        for converted, occurred_at, _ in fresh:
            self._seq += 1
            deliveries.append(
                Delivery(
                    self._seq, converted.identity, converted.cursor, converted.message, occurred_at
                )
            )
        if batch.controls:
            self._route_under_controls(deliveries, [index for _, _, index in fresh], batch.controls)
        else:
            self.route(deliveries)
        self._processed.set()
        self._processed = trio.Event()
        if batch.controls and self.controls is not None:
            await self.controls.keep([read.control for read in batch.controls])

    def _route_under_controls(
        self,
        deliveries: Sequence[Delivery],
        indexes: Sequence[int],
        controls: Sequence[ControlRead],
    ) -> None:
        """Route ``deliveries`` (``indexes``: each one's place among the batch's events) with
        each control applied where it stood in the bus: the events before it are routed under
        the rights before it, the events after it under the rights after it. No checkpoint."""
        start = 0
        for read in controls:
            end = start
            while end < len(deliveries) and indexes[end] < read.events_before:
                end += 1
            self.route(deliveries[start:end])
            start = end
            if self.controls is None:
                log.warning("control envelope skipped: nothing applies controls here")
                continue
            try:
                self.controls.apply(read.control)
            except Exception as error:  # a bug: this control only is lost, loudly
                self._record_failed(read.identity, error)
        self.route(deliveries[start:])

    async def _pass_over_lost(self, lost: Sequence[Record]) -> None:
        """Records the bus deleted before they were read: the cache learns it first, so a resume
        from before them is truncated; then the cursor moves past them and every open stream
        behind them ends as lagged (with no checkpoint between, so none registers half-way): its
        client resumes and is told its history is truncated. Nothing here can tell whom the lost
        events were for, so every stream behind them is told."""
        for marker in lost:
            await self.cache.forget(marker.identity)
        self.stats.lost_on_bus += len(lost)
        self.observer.lost_on_bus(len(lost))
        for marker in lost:
            self.cursor = advance(self.cursor, marker.identity)
        for session in list(self.registry):
            if session.cursor is None or not all(session.cursor.covers(m.identity) for m in lost):
                session.stop(CloseReason.LAGGED)
        log.warning(
            "records deleted from the bus before they were read",
            extra={"positions": [str(m.identity) for m in lost]},
        )

    def _record_failed(self, identity: EventIdentity, error: Exception) -> None:
        """One record met a failure no rule foresaw: logged with its position, counted, and
        skipped (its position is consumed all the same, so it is not read again)."""
        self.failed(Failure.RECORD)
        log.error("event failed", extra={"position": str(identity)}, exc_info=error)

    def _offer_failed(self, session: Session, error: Exception) -> None:
        """Offering to ``session`` raised: that stream ends (``error``), logged and counted once;
        the step goes on for every other session."""
        if session.close_reason is not None:
            return  # already ended: its failure was reported, or it was leaving anyway
        session.stop(CloseReason.ERROR)
        self.failed(Failure.OFFER)
        log.error(
            "offer failed: stream ended",
            extra={"connection_id": session.connection_id},
            exc_info=error,
        )

    def failed(self, failure: Failure) -> None:
        """Count a contained failure (the consumer reports its bus reads' here too)."""
        self.stats.failures[failure] += 1
        self.observer.failed(failure)

    def _duplicate(self, converted: Converted) -> bool:
        """An event seen within the window, by its producer id and its content, is dropped
        (counted, logged): a publisher that retried after a crash must not make a client see it
        twice. Another event under an id seen before is delivered, and counted and logged as a
        reuse: ids are shared by every producer, so a clash must not lose an event."""
        envelope = converted.envelope
        if envelope.event_id is None:
            return False
        sighting = self._recent_ids.sight(envelope.event_id, event_digest(envelope))
        if sighting is Sighting.NEW:
            return False
        where = {"position": str(converted.identity), "event_id": envelope.event_id}
        if sighting is Sighting.REUSED_ID:
            self.stats.id_reused += 1
            self.observer.id_reused()
            log.warning("event id reused by another event", extra=where)
            return False
        self.stats.rejected[DUPLICATE] += 1
        self.observer.rejected(DUPLICATE)
        log.info("event dropped as a duplicate", extra=where)
        return True

    async def wait_consumed(self, count: int) -> None:
        """Return once ``count`` records in all have been processed (for observers and tests)."""
        while self.stats.consumed < count:
            await self._processed.wait()

    def _offers_made(self) -> int:
        """Offers so far, of any outcome: a step woke at most the difference of two readings."""
        return sum(self.stats.offers.values())

    def route(self, deliveries: Sequence[Delivery]) -> None:
        """Offer each session, in one batch, the deliveries that are for it.

        What became of the offers is counted in a ``Counter`` of this step's own, and reported
        to the observer once, when the step is over. A call per offer (one per session and step)
        measured about half again the cost of the ``Counter`` increment, a few percent of the
        3.5 us per session that ``python -m bench.actor_round`` gives the routing; once a step
        it is nothing."""
        outcomes: Counter[Offer] = Counter()
        self._route(deliveries, outcomes)
        if outcomes:
            self.stats.offers.update(outcomes)
            self.observer.offered(outcomes)

    def _route(self, deliveries: Sequence[Delivery], offers: Counter[Offer]) -> None:
        audiences: dict[int, tuple[Collection[Session], list[Delivery]]] = {}
        each_audience = []  # each delivery's candidates: no checkpoint here, so they hold below
        for delivery in deliveries:
            assert delivery.message.scope is not None
            candidates = self.registry.candidates(delivery.message.scope)
            each_audience.append(candidates)
            audience = audiences.get(id(candidates))
            if audience is None:
                audiences[id(candidates)] = (candidates, [delivery])
            else:
                audience[1].append(delivery)
        if len(audiences) == 1:  # one event, or a burst for the same audience
            ((candidates, shared),) = audiences.values()
            self._offer_to_audience(candidates, SharedBatch(shared), offers)
            return
        batches: dict[Session, list[Delivery]] = {}
        # In order: a session's batch keeps the adapter's order.
        for delivery, candidates in zip(deliveries, each_audience, strict=True):
            message = delivery.message
            for session in candidates:
                try:
                    admitted = admits(message, session.principal, session.stream_filter)
                except Exception as error:
                    self._offer_failed(session, error)
                    continue
                if admitted:
                    batch = batches.get(session)
                    if batch is None:
                        batches[session] = [delivery]
                    else:
                        batch.append(delivery)
        for session, batch in batches.items():
            try:
                if session.offer(batch, offers):
                    self._inbox_filled = True
            except Exception as error:
                self._offer_failed(session, error)

    def _offer_to_audience(
        self, candidates: Collection[Session], deliveries: SharedBatch, offers: Counter[Offer]
    ) -> None:
        """Offer deliveries that share their candidates: a session admitted to all of them
        (the usual case) gets the one batch every such session shares.

        The check looks at an event's scope and name only, so it is made once per kind of event
        in the batch (usually one: a burst of broadcasts, or of one novel's updates), and per
        event only for a session admitted to some kinds and not others.
        """
        kinds = list({(d.message.scope, d.message.event): d.message for d in deliveries}.values())
        if len(kinds) == 1:
            (kind,) = kinds
            for session in candidates:
                try:  # free unless it raises: one session's failure ends that session only
                    if admits(kind, session.principal, session.stream_filter) and session.offer(
                        deliveries, offers
                    ):
                        self._inbox_filled = True
                except Exception as error:
                    self._offer_failed(session, error)
            return
        for session in candidates:
            principal, stream_filter = session.principal, session.stream_filter
            try:
                admitted = [admits(kind, principal, stream_filter) for kind in kinds]
                if all(admitted):
                    filled = session.offer(deliveries, offers)
                elif any(admitted):
                    batch = [d for d in deliveries if admits(d.message, principal, stream_filter)]
                    filled = session.offer(batch, offers)
                else:
                    continue
                if filled:
                    self._inbox_filled = True
            except Exception as error:
                self._offer_failed(session, error)


def _seconds(timestamp: str) -> float:
    """An envelope's (normalised, UTC) ``occurred_at`` as seconds since the epoch."""
    return datetime.fromisoformat(timestamp).timestamp()
