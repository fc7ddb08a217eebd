"""The hub: the router's running actors, and what a transport may ask of them.

A transport opens an admitted stream with :meth:`Hub.open`, which makes its session: from
:attr:`HubSettings.session`, with the hub's observer and the resume cursor it vouched for.

:meth:`Hub.run` is the actor part of the nursery tree::

    hub nursery
    ├── consumer   bus -> records channel (capacity: records_buffer batches)
    ├── adapter    records channel -> replay cache, and each session's inbox (send_nowait)
    ├── heartbeat clock   ticks every session; a quiet one gets a heartbeat in its inbox
    └── sessions nursery
        └── session, one per client: inbox (capacity: session.session_buffer) -> its output

Cancelling the hub's scope stops all of it. :meth:`Hub.close_sessions` is the graceful step before
that: every session says goodbye (``server-shutdown``) and ends its response.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from actors.adapter import Adapter
from actors.consumer import run_consumer
from actors.heartbeats import run_heartbeat_clock
from actors.publisher import GuardedPublisher
from actors.registry import SessionRegistry
from actors.session import CloseReason, Output, Session, SessionSettings
from actors.settings import HubSettings as HubSettings
from actors.shared_fetch import SharedFetches
from router.bus.base import BusUnavailableError, EventBus, Record
from router.cache.base import ReplayCache
from router.cache.controls import ControlStore, ProcessControls
from router.core.control import AccessRules, Control, Effect, effect_on
from router.core.cursor import (
    MAX_CURSOR_LENGTH,
    Cursor,
    EventIdentity,
    Offset,
    longest_cursor,
)
from router.core.dedup import RecentIds, Sighting, event_digest
from router.core.envelope import Publishable
from router.core.history import Entry, Replay
from router.core.mapping import Converted, convert_batch
from router.core.observer import NO_OBSERVER, Observer, ReplayOutcome, ReplaySource
from router.core.permissions import Principal, StreamFilter
from router.core.replay_share import ReplayMemo, ReplayShare
from router.core.scope import Scope
from router.core.wire import SSE, WireFormat

log = logging.getLogger(__name__)


BUS_REPLAY_SLICE = 250
"""Records a resume read again from the bus converts between two checkpoints: a few ms of the
loop, where a whole replay (up to ``bus_replay_limit``) took seconds of it."""


class CursorBoundError(Exception):
    """The bus has more partitions (or longer names) than a cursor can hold; for the operator."""


class _ReplayTurn:
    """A resume's hold on one of the hub's replay turns, given back once (:meth:`end` again is
    harmless); ``None``: a stream that does not resume, which holds none. :attr:`share`, its
    hold on the replay shared with the resumes from the same cursor, ends with it."""

    def __init__(self, turns: trio.Semaphore | None) -> None:
        self._turns = turns
        self.share: ReplayShare | None = None

    def end(self) -> None:
        """Give the turn back, and the share. Never checkpoints."""
        turns, self._turns = self._turns, None
        share, self.share = self.share, None
        if share is not None:
            share.release()
        if turns is not None:
            turns.release()


class ReplayUnavailableError(Exception):
    """A resume that cannot be served now: the replay cache cannot be read and the bus does not
    hold what the client missed, or the bus has not answered yet. The client should come back
    after ``wait`` seconds."""

    def __init__(
        self, wait: float, why: str = "the replay cache cannot be read now; reconnect to resume"
    ) -> None:
        super().__init__(why)
        self.wait = wait


@dataclass(frozen=True, slots=True)
class Opened:
    """A session :meth:`Hub.open` made and started."""

    session: Session
    replay: Replay | None
    """What the replay gave back for its cursor (``None`` without one), to say if truncated."""
    output: trio.MemoryReceiveChannel[bytes] | None
    """The receiving end of the session's output, when ``open`` was given none (tests read it)."""


class Hub:
    def __init__(
        self,
        bus: EventBus,
        cache: ReplayCache,
        settings: HubSettings = HubSettings(),
        observer: Observer = NO_OBSERVER,
        *,
        access: AccessRules | None = None,
        controls: ControlStore | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.cache = cache
        self.settings = settings
        self.observer = observer
        self.registry = SessionRegistry()
        self.adapter = Adapter(
            cache,
            self.registry,
            fanout_pause_seconds=settings.fanout_pause_seconds,
            observer=observer,
        )
        self.adapter.controls = self
        self.access = AccessRules() if access is None else access
        """The controls in force here (see :meth:`apply`); the front door reads them too."""
        self.controls: ControlStore = ProcessControls() if controls is None else controls
        """Where controls are kept beyond this process (the replay cache's store)."""
        self.wall_clock = wall_clock
        """What token times and controls are compared with (seconds since the epoch)."""
        self._started_epoch = ""
        self._read_from: Cursor | None = None
        """Where the consumer started reading: what :meth:`position` is until the first event."""
        self._cache_unreadable_since: float | None = None
        """When a replay first found the cache unreadable, since it last could read it."""
        self.closing = False
        """Set by :meth:`close_sessions`: the router is shutting down and takes no new streams."""
        self.replays: Counter[tuple[ReplayOutcome, ReplaySource]] = Counter()
        """Resumes served, by (``complete`` or ``truncated``, ``cache`` or ``bus``)."""
        self.reading = trio.Event()
        """Set once the bus answered: every event published from then on will be routed."""
        self._started_at: float | None = None
        """When :meth:`run` started (trio's clock): a resume before the bus answered is
        refused for a retry for ``replay_outage_grace_seconds`` from then."""
        self._sessions_nursery: trio.Nursery | None = None
        self._sessions_context = contextvars.Context()
        """The context variables sessions start with: the hub's (taken in :meth:`run`), never
        those of the request that opened them (see :meth:`open`)."""
        self._records: trio.MemoryReceiveChannel[Sequence[Record]] | None = None
        self.publisher = GuardedPublisher(bus, settings.bus_breaker, observer)
        """The bus behind its circuit breaker: what ``POST /api/v1/events`` and the outbox
        relay publish through."""
        self.replays_in_flight = 0
        """Resumes :meth:`open` is reading now, for the health monitor."""
        self._replay_turns = trio.Semaphore(settings.replay_concurrency)
        """A turn per resume from its fetch until its session has written the replay."""
        self._cache_replays = SharedFetches[tuple[Cursor, Cursor | None], Replay]()
        """The replay cache's reads under way, each answering every resume that asks the same
        meanwhile (the Redis cache reads every entry from Redis again for each)."""
        self.replay_memo = ReplayMemo()
        """The replays being written, shared among the resumes from the same cursor: each
        resume holds a share from before it waits for its turn until the turn ends, and only
        resumes with a turn work slices out (what all of them keep is bounded:
        ``REPLAY_SHARE_MAX_BYTES``)."""

    @property
    def epoch(self) -> str:
        """The epoch of the history the router routes now: the bus's when it first answered,
        then that of the last event routed, so a new history found at run time (a recreated
        topic, a Redis that lost its data) is the one resumes are compared with."""
        cursor = self.adapter.cursor
        if cursor is not None and cursor.epoch is not None:
            return cursor.epoch
        return self._started_epoch

    def position(self) -> Cursor:
        """Where the router stands in the bus: every event up to here has been routed (or was
        there before the router started reading), every later one will be offered to the
        sessions registered now. It is the hand-over point of a resume, and a new stream's first
        id.

        The adapter's cursor once it has routed an event; before, where the consumer started (a
        router whose consumer is still starting, or has found nothing yet, stands there all the
        same). Before the bus answered, the start of no epoch: no offset can be trusted yet, and
        a resume from a cursor without an epoch is answered as truncated, so a client that keeps
        it is told plainly rather than shown a guess that could hide events.
        """
        here = self.progress()
        return Cursor.empty(self.bus.source, None) if here is None else here

    def progress(self) -> Cursor | None:
        """:meth:`position`, or ``None`` until the bus has answered: the hand-over point of a
        resume, and what a quiet session may follow (:meth:`Session.tick`; before the bus
        answered there is no position worth moving a client to)."""
        routed = self.adapter.cursor
        return self._read_from if routed is None else routed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the consumer, the adapter and the sessions until cancelled.

        Reports started once sessions can be attached. On cancellation every task here stops at its
        next checkpoint; sessions still open are cut without a goodbye, so call
        :meth:`close_sessions` first for a graceful stop. Raises :class:`CursorBoundError` once
        the bus answers if a cursor of all its partitions could be too long for a client to send.
        """
        records_send, records_receive = trio.open_memory_channel[Sequence[Record]](
            self.settings.records_buffer
        )
        self._records = records_receive
        self._started_at = trio.current_time()
        self._sessions_context = contextvars.copy_context()
        await self._load_controls()
        async with trio.open_nursery() as nursery:
            self._sessions_nursery = await nursery.start(_open_sessions_nursery)
            nursery.start_soon(self.cache.run)
            nursery.start_soon(
                run_heartbeat_clock, self.registry, self.settings.heartbeat_seconds, self.progress
            )
            task_status.started()
            # A bus that cannot be reached yet is waited for here, with sessions already served:
            # until its epoch is known no resume can be told what it missed (see _bus_answered).
            self._started_epoch = await self.bus.epoch()
            await self._check_cursor_bound()
            start = await self.cache.resume_point(self._started_epoch)
            if start:  # the cache holds this history: carry on where the deployment got to
                self.adapter.cursor = Cursor.from_positions(
                    self.bus.source, self._started_epoch, start.items()
                )
            read_from = await self.bus.start_positions() if start is None else start
            if start is None:
                # The cache holds nothing of this history, and the router starts reading past
                # the events up to ``read_from``: a resume from before them must find them
                # missing (and read them again from the bus), not be answered complete without.
                for partition, offset in read_from.items():
                    await self.cache.forget(
                        EventIdentity(self.bus.source, partition, offset, self._started_epoch)
                    )
            self._read_from = Cursor.from_positions(
                self.bus.source, self._started_epoch, read_from.items()
            )
            self.reading.set()
            nursery.start_soon(run_consumer, self.bus, start, records_send, self.adapter.failed)
            nursery.start_soon(self.adapter.run, records_receive)

    def _replay_start(self, resume_from: Cursor) -> Cursor | None:
        """The session's cursor as the replay from ``resume_from`` starts: ``resume_from`` when
        it is of this history, else none (the replay then holds everything retained)."""
        return resume_from if resume_from.is_from(self.bus.source, self.epoch) else None

    async def _check_cursor_bound(self) -> None:
        partitions = await self.bus.partitions()
        longest = longest_cursor(self.bus.source, self.epoch, partitions, self.bus.offset_width)
        if longest > MAX_CURSOR_LENGTH:
            raise CursorBoundError(
                f"the {self.bus.source} bus has {len(partitions)} partitions: a cursor of all of "
                f"them can take {longest} bytes, more than the {MAX_CURSOR_LENGTH} a "
                "Last-Event-ID may have; use at most 1,024 partitions (or shorter stream names)"
            )
        log.info(
            "cursor bound checked",
            extra={"partitions": len(partitions), "longest_cursor_bytes": longest},
        )

    async def open(
        self,
        principal: Principal,
        stream_filter: StreamFilter,
        *,
        expires_at: float,
        resume_from: Cursor | None = None,
        output: Output[Any] | None = None,
        connection_id: str = "",
        address: str = "",
        settings: SessionSettings | None = None,
        issued_at: float | None = None,
        wire: WireFormat[Any] = SSE,
        narrow_notice: Callable[[Control], object] | None = None,
    ) -> Opened:
        """Make the session of an admitted stream, register it for live events, fetch its
        replay, start its actor.

        The session is built with the hub's :attr:`HubSettings.session` (or ``settings``, for a
        transport or a test that needs others), the hub's observer, ``wire`` (the format
        ``output`` takes), and its cursor: ``resume_from`` as far as the bus vouches for it,
        when it is of this history. It writes to ``output``, or,
        without one, to a new memory channel whose receiving end is returned. Registration and
        reading the adapter's cursor happen with no checkpoint between them: every event after
        that cursor is offered to the session live, every event up to it comes from the replay
        cache, so the hand-over has no gap; the session skips what its own cursor covers, so it
        has no duplicate either. The session's stream starts with its position (:meth:`position`
        then), so a client cut before its first event resumes from there. Cancelled (or failing)
        before it returns, the session is unregistered and never runs; once it returns, the
        session runs in the hub's sessions nursery, and the caller stops it with
        :meth:`Session.stop` when its client leaves.

        ``principal`` is narrowed by the controls in force (its token issued at ``issued_at``)
        in the same step as the registration: a control the adapter applies before it narrows
        this session, one applied after finds it registered (:meth:`apply`), so none passes in
        between however long the front door took. A token disconnected meanwhile gets a stream
        that says only ``disconnected``.

        ``narrow_notice`` is for a transport that can tell its client of a revocation on the
        open stream (a chunk in ``wire``'s format): a revocation then narrows the session in
        place (:meth:`apply`) rather than ending it.
        """
        assert self._sessions_nursery is not None, "the hub is not running"
        doubtful = False
        cursor = None
        turn = _ReplayTurn(None)
        if resume_from is not None:
            # Vouching, and the turn, may wait: meanwhile the stream counts as open, so a storm
            # of resumes admitted together cannot overshoot the front door's stream caps.
            with self.registry.opening(principal.user_id, address):
                await self._bus_answered()
                vouched = await self._vouched(resume_from)
                # Held while it waits: the resumes from one cursor share its replay's slices,
                # kept for as long as some of them are still to write it.
                share = self.replay_memo.share(self._replay_start(vouched))
                # Before registering: a resume waiting its turn fills no inbox. Its replay
                # reaches up to the router's progress once it registers, however long it waited.
                try:
                    await self._replay_turns.acquire()
                except BaseException:
                    share.release()
                    raise
                turn = _ReplayTurn(self._replay_turns)
                turn.share = share
            doubtful, resume_from = vouched is not resume_from, vouched
            cursor = self._replay_start(resume_from)
        now = self.wall_clock()
        session = Session(
            self.access.narrow(principal, issued_at, now),
            stream_filter,
            expires_at=expires_at,
            settings=self.settings.session if settings is None else settings,
            connection_id=connection_id,
            address=address,
            observer=self.observer,
            cursor=cursor,
            issued_at=issued_at,
            wire=wire,
        )
        session.narrow_notice = narrow_notice
        if self.access.refuses(principal, issued_at, now):
            session.stop(CloseReason.DISCONNECTED)
        self.registry.add(session)
        up_to = self.progress()
        position = self.position()
        if resume_from is None:
            session.cursor = position  # from now on, not when it first runs: a rescope reads it
        self.replays_in_flight += resume_from is not None
        try:
            resume = (
                None
                if resume_from is None
                else await self._replay(resume_from, up_to, doubtful=doubtful)
            )
        except BaseException:
            self.registry.remove(session)
            turn.end()
            raise
        finally:
            self.replays_in_flight -= resume_from is not None
        if turn.share is not None and resume is not None:
            if turn.share.replay is not None and turn.share.replay.start != cursor:
                # A new history came in while it waited: shared with those from its cursor now.
                turn.share.release()
                turn.share = self.replay_memo.share(cursor)
            turn.share.agree(resume.entries)
        receive: trio.MemoryReceiveChannel[bytes] | None = None
        if output is None:
            output, receive = trio.open_memory_channel[bytes](self.settings.output_capacity)
        try:
            # A task starts with a copy of its spawner's context variables: started from here, a
            # session would hold the opening request's (Quart's request context, the request and
            # its headers) for as long as its stream lasts, after the HTTP layer let them go.
            self._sessions_context.run(
                self._sessions_nursery.start_soon,
                self._run_session, session, output, resume, position, turn,
            )  # fmt: skip
        except BaseException:  # the hub is closing: the session never runs
            self.registry.remove(session)
            turn.end()
            raise
        return Opened(session, resume, receive)

    async def rescope(
        self,
        session: Session,
        principal: Principal,
        stream_filter: StreamFilter,
        *,
        expires_at: float,
        then: object = None,
    ) -> Replay | None:
        """Make an open ``session`` one for ``principal`` and ``stream_filter`` until
        ``expires_at`` (a refreshed token, a new filter; issue 16 narrows sessions with it), as
        if it resumed from its own cursor, and have it write ``then`` (its transport's answer,
        in its wire format) once the change took effect; return the replay it was given.

        Narrowing never leaks: from this call on the session writes nothing that is not
        checked against the new scope, whatever it had queued (shared batches included).
        Widening has no gap and no duplicate: the session is registered anew and the router's
        progress read with no checkpoint between, and until the replay from the session's
        cursor up to that progress is fetched and written, it writes nothing live; its cursor
        skips what it was already served. The replay refused for now
        (:class:`ReplayUnavailableError`) ends the session as lagged, so its client resumes.
        A session already ended is left as it is.
        """
        if session.close_reason is not None:
            return None
        self.registry.remove(session)
        session.begin_rescope(principal, stream_filter, expires_at)
        self.registry.add(session)
        up_to = self.progress()
        position = self.position()
        after = session.cursor
        replay = None
        # Nothing to replay when the client has been served up to the router (a cache that
        # has held nothing yet would answer even that as truncated).
        behind = up_to is not None and after is not None and after.merge(up_to) != after
        if behind and after is not None and after.epoch is not None and up_to is not None:
            try:
                replay = await self._replay(after, up_to, doubtful=False)
            except ReplayUnavailableError:
                session.stop(CloseReason.LAGGED)
                return None
            except BaseException:
                session.stop(CloseReason.ERROR)
                raise
        session.finish_rescope(replay, position, then)
        return replay

    async def _bus_answered(self) -> None:
        """Wait, for a resume, until the bus has answered, at most ``replay_retry_seconds``.

        Before it answers the router knows neither the bus's history nor where it reads from, so
        a resume could only be answered as truncated: after a restart or a deploy, that would
        tell every reconnecting tab to refetch its state for nothing. A router usually hears
        from its bus within moments of starting, so the resume waits that long; if the bus is
        still silent, it is refused for a retry (:class:`ReplayUnavailableError`) for as long as
        ``replay_outage_grace_seconds`` since the hub started, and after that let through (and
        answered as truncated, as a long outage must be, so clients get live events).
        """
        if self.reading.is_set():
            return
        with trio.move_on_after(self.settings.replay_retry_seconds):
            await self.reading.wait()
        started = trio.current_time() if self._started_at is None else self._started_at
        within_grace = trio.current_time() - started < self.settings.replay_outage_grace_seconds
        if not self.reading.is_set() and within_grace:
            raise ReplayUnavailableError(
                self.settings.replay_retry_seconds,
                "the router has not heard from its bus yet; reconnect to resume",
            )

    async def _vouched(self, cursor: Cursor) -> Cursor:
        """``cursor`` without the positions the bus cannot vouch for: of a partition it does
        not have, or past the last offset it has written (itself when it has none such).

        Such a position names events that never were, so it says nothing of what the client
        has; kept, it would hide every live event of its partition. A position up to this
        router's own cursor was written; one past it is asked of the bus, since another
        instance may be a little ahead (when the bus does not answer, it is dropped: a replay
        too many is said in-band, an event hidden is not). A cursor of another history is
        returned as it is; the replay answers it as truncated.
        """
        if not cursor.is_from(self.bus.source, self.epoch):
            return cursor
        known = set(await self.bus.partitions())
        here = self.progress()
        ahead = {
            partition
            for partition, offset in cursor.positions
            if partition in known
            and (here is None or (mine := here.position(partition)) is None or offset > mine)
        }
        ends: Mapping[str, Offset] = {}
        if ahead:
            try:
                ends = await self.bus.end_offsets()
            except BusUnavailableError as error:
                log.warning("cannot check a resume cursor against the bus: %s", error)
        vouched = cursor.restricted(
            partition
            for partition, offset in cursor.positions
            if partition in known
            and (
                partition not in ahead
                or ((end := ends.get(partition)) is not None and offset <= end)
            )
        )
        if vouched is not cursor:
            log.info(
                "resume cursor names positions the bus does not have",
                extra={"dropped": len(cursor.positions) - len(vouched.positions)},
            )
        return vouched

    async def _replay(self, after: Cursor, up_to: Cursor | None, *, doubtful: bool) -> Replay:
        """From the cache; when it no longer holds everything, from the bus; and only when
        neither has it all, a truncated replay. A ``doubtful`` cursor (see :meth:`_vouched`)
        gets what the cache holds after it, as a truncated replay."""
        complete, truncated = ReplayOutcome.COMPLETE, ReplayOutcome.TRUNCATED
        # Every resume from ``after`` registered at ``up_to`` while this one is read is
        # answered by the same read: a storm's resumes mostly ask the same.
        from_cache = await self._cache_replays.get(
            (after, up_to), lambda: self.cache.replay(after, up_to)
        )
        if not from_cache.unavailable:
            self._cache_unreadable_since = None
        elif self._cache_unreadable_since is None:
            self._cache_unreadable_since = trio.current_time()
        if doubtful:
            self._replayed(truncated, ReplaySource.CACHE)
            return Replay(from_cache.entries, truncated=True)
        if not from_cache.truncated or up_to is None:
            self._replayed(truncated if from_cache.truncated else complete, ReplaySource.CACHE)
            return from_cache
        records = await self.bus.replay(after, up_to, self.settings.bus_replay_limit)
        if records is None:
            self._refuse_while_the_cache_is_briefly_unreadable(from_cache)
            self._replayed(truncated, ReplaySource.CACHE)
            return from_cache
        kept = [r for r in records if not r.lost]
        converted: list[Converted] = []
        for start in range(0, len(kept), BUS_REPLAY_SLICE):  # up to bus_replay_limit records
            slice_ = kept[start : start + BUS_REPLAY_SLICE]
            converted += convert_batch((r.identity, r.raw) for r in slice_).events
            await trio.lowlevel.checkpoint()
        now = trio.current_time()
        # What the adapter dropped live as a repeat (the same event published again) is on the
        # bus all the same: dropped here too, so a resume never shows it twice.
        seen = RecentIds(max(1, len(converted)))
        entries = [
            Entry(c.identity, c.message, now)
            for c in converted
            if c.envelope.event_id is None
            or seen.sight(c.envelope.event_id, event_digest(c.envelope)) is not Sighting.DUPLICATE
        ]
        if not any(r.lost for r in records):
            self._replayed(complete, ReplaySource.BUS)
            return Replay(entries, truncated=False)
        # The bus deleted some of what the client missed: truncated, with every event either
        # still holds, each partition's in offset order.
        self._replayed(truncated, ReplaySource.BUS)
        held = {(e.identity.partition, e.identity.offset): e for e in from_cache.entries}
        held.update({(e.identity.partition, e.identity.offset): e for e in entries})
        return Replay([held[place] for place in sorted(held)], truncated=True)

    def _refuse_while_the_cache_is_briefly_unreadable(self, from_cache: Replay) -> None:
        """Raise :class:`ReplayUnavailableError` for a replay the cache could not read, within
        ``replay_outage_grace_seconds`` of the first such replay."""
        since = self._cache_unreadable_since
        if not from_cache.unavailable or since is None:
            return
        if trio.current_time() - since < self.settings.replay_outage_grace_seconds:
            self._replayed(ReplayOutcome.REFUSED, ReplaySource.CACHE)
            raise ReplayUnavailableError(self.settings.replay_retry_seconds)

    def _replayed(self, outcome: ReplayOutcome, source: ReplaySource) -> None:
        self.replays[outcome, source] += 1
        self.observer.replayed(outcome, source)

    async def _run_session(
        self,
        session: Session,
        output: Output[Any],
        resume: Replay | None,
        position: Cursor,
        turn: _ReplayTurn,
    ) -> None:
        """Run ``session`` to its end; its replay ``turn`` ends once the replay is written (or
        the session ended first). Nothing here keeps ``resume`` past that: a replay's entries
        are freed once written, not when the stream ends."""
        started = trio.current_time()
        self.observer.opened(session.transport)
        try:
            running = session.run(output, resume, position, replayed=turn.end, share=turn.share)
            del resume  # the session's own reference is the only one, and it lets go of it
            await running
        except Exception:
            # One broken stream must not take the router down with it.
            session.stop(CloseReason.ERROR)
            log.exception("session failed", extra={"connection_id": session.connection_id})
        finally:
            turn.end()
            # Closed here too (closing twice is harmless, and this does not checkpoint): a session
            # that fails before it takes charge of its output must still end its response.
            output.close()
            self.registry.remove(session)
            reason = session.close_reason or CloseReason.SERVER_SHUTDOWN  # cut by cancellation
            duration = trio.current_time() - started
            self.observer.closed(reason.value, duration, session.transport)
            log.info(
                "stream closed",
                extra={
                    "connection_id": session.connection_id,
                    "user_id": session.principal.user_id,
                    "reason": reason.value,
                    "duration_seconds": round(duration, 3),
                    "events_sent": session.events_sent,
                },
            )

    def records_waiting(self) -> int:
        """Batches of records the adapter has not taken yet."""
        return 0 if self._records is None else self._records.statistics().current_buffer_used

    def close_sessions(self, reason: CloseReason = CloseReason.SERVER_SHUTDOWN) -> None:
        """Stop every session for ``reason``; from now on :attr:`closing` refuses new ones."""
        self.closing = True
        for session in self.registry:
            session.stop(reason)

    async def publish(self, envelopes: Sequence[Publishable]) -> list[EventIdentity]:
        """Publish through the bus's breaker (:class:`actors.publisher.GuardedPublisher`)."""
        return await self.publisher.publish(envelopes)

    # -- access control ----------------------------------------------------------------------------

    def apply(self, control: Control) -> None:
        """Put ``control`` in force on this instance: the one place that decides what a control
        does to the sessions. Held in :attr:`access` (so the front door and :meth:`open`
        narrow or refuse tokens issued before it), and every open stream it concerns is told at
        once (no checkpoint: the adapter routes the events after it only once this returns).

        A disconnect ends the stream (``disconnected``). A revocation narrows a session whose
        transport can say so (:attr:`Session.narrow_notice`, a WebSocket) in place; an event
        stream cannot change what it follows, so it ends with ``access-changed`` (its client
        reconnects and is admitted without the grant).
        """
        now = self.wall_clock()
        if not self.access.apply(control, now):
            log.info("control ignored: every token it concerns has expired", extra=_said(control))
            return
        concerned: set[Session] = set()
        if control.user_id is not None:
            concerned.update(self.registry.candidates(Scope(user_id=control.user_id)))
        if control.session_id is not None:
            concerned.update(self.registry.candidates(Scope(session_id=control.session_id)))
        ended = narrowed = 0
        for session in concerned:
            effect = effect_on(control, session.principal, session.stream_filter, session.issued_at)
            if effect is None or session.close_reason is not None:
                continue
            if effect is Effect.ACCESS_CHANGED and self._narrow_in_place(session, control, now):
                narrowed += 1
            else:
                session.stop(CloseReason(effect.value))
                ended += 1
        self.observer.control_applied(control.action, ended, narrowed)
        log.info(
            "control applied",
            extra={**_said(control), "streams_ended": ended, "streams_narrowed": narrowed},
        )

    def _narrow_in_place(self, session: Session, control: Control, now: float) -> bool:
        """Narrow ``session`` by the controls in force, ``control`` among them, and have it say
        so; ``False`` when it cannot (its transport has no word for it, or the grant survived
        the narrowing: it must then end, never go on with it). Registered anew, so the adapter
        offers it only what it may still see; no checkpoint."""
        notice = session.narrow_notice
        if notice is None:
            return False
        principal = self.access.narrow(session.principal, session.issued_at, now)
        if (control.novel_id is not None and control.novel_id in principal.novels) or (
            control.session_id is not None and control.session_id == principal.session_id
        ):
            return False
        self.registry.remove(session)
        session.narrow(principal, notice(control))
        self.registry.add(session)
        return True

    async def keep(self, controls: Sequence[Control]) -> None:
        """Keep ``controls`` in the store until they run out (never raises)."""
        now = self.wall_clock()
        await self.controls.keep(
            [(control, self.access.until(control, now)) for control in controls], now
        )

    def hold(self, controls: Sequence[Control]) -> None:
        """Put ``controls`` in force at this instance's front door now (the tokens they concern
        are refused or narrowed from here on), ahead of their coming round the bus: open
        streams are told only then, in bus order (:meth:`apply`). Holding one twice is harmless."""
        now = self.wall_clock()
        for control in controls:
            self.access.apply(control, now)

    async def _load_controls(self) -> None:
        """Put in force the controls kept before this instance started: what it will not read
        from the bus, which it reads from its resume point or its end."""
        loaded = await self.controls.in_force(self.wall_clock())
        for control in loaded:
            self.apply(control)
        if loaded:
            log.info("controls loaded", extra={"controls": len(loaded)})

    def streams(self, user_id: str | None = None) -> list[Session]:
        """The open streams of this instance (of ``user_id`` only, when given)."""
        if user_id is None:
            return list(self.registry)
        return list(self.registry.candidates(Scope(user_id=user_id)))


def _said(control: Control) -> dict[str, object]:
    """What the log says of a control (ids, never a token)."""
    return {
        "control": control.action.value,
        "user_id": control.user_id,
        "novel_id": control.novel_id,
        "session_id": control.session_id,
        "issued_at": control.issued_at,
    }


async def _open_sessions_nursery(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    async with trio.open_nursery() as sessions:
        task_status.started(sessions)
        await trio.sleep_forever()
