"""The health monitor: measures the router's pressure continuously and walks the overload ladder.

One task in the root nursery. Every ``interval_seconds`` it wakes, and how late it woke is the
event loop's lag (a loop busy with other tasks runs it late); then it counts the bytes waiting
for each stream and the streams that are behind (half their inbox waiting, by events or by bytes:
:func:`~router.core.overload.is_behind`), the resumes being read, and the process's resident set,
feeds
the pressure to the :class:`~router.core.overload.Ladder` (rules in router/core/overload.py) and
applies the rung it stands on:

- ``coalesce`` and above: every stream coalesces low-priority events early;
- ``refuse`` and above: :attr:`OverloadMonitor.refusing` (the front door refuses new streams,
  ``/readyz`` says degraded);
- ``shed``: the slowest streams behind, by the bytes waiting for them, are ended as lagged, a
  share of them per round.

The bytes waiting for a stream are those in its inbox and its writer's hand
(:attr:`Session.held_bytes`) and, for a stream that holds any, those its socket has not sent
(:meth:`Session.unsent_bytes`, one system call): a stream holding nothing is keeping up, and at
10,000 of them the round asks no socket of theirs.

Everything is reported to the observer; nothing here waits on anything but the clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from actors.session import CloseReason, Session
from router.core.observer import NO_OBSERVER, Observer
from router.core.overload import (
    Ladder,
    LadderSettings,
    Level,
    Sample,
    Thresholds,
    is_behind,
    pressure,
)
from router.core.overload import slowest as slowest_streams

log = logging.getLogger(__name__)

SESSIONS_PER_CHECKPOINT = 1000
"""Streams examined between two checkpoints of one round (10,000 streams: ten of them)."""


@dataclass(frozen=True, slots=True)
class OverloadSettings:
    interval_seconds: float = 0.25
    """How often the monitor measures (and so the loop lag's resolution)."""
    thresholds: Thresholds = field(default_factory=Thresholds)
    ladder: LadderSettings = field(default_factory=LadderSettings)
    shed_share: float = 0.25
    """The share of the streams behind that one round at the ``shed`` rung ends (at least one)."""


class OverloadMonitor:
    """Measures, climbs and descends the ladder; the hub's streams and resumes are given as
    callables so a test can drive it with its own."""

    def __init__(
        self,
        sessions: Callable[[], Iterable[Session]],
        replays_in_flight: Callable[[], int],
        settings: OverloadSettings = OverloadSettings(),
        observer: Observer = NO_OBSERVER,
        *,
        resident_bytes: Callable[[], int | None] = lambda: None,
    ) -> None:
        self._sessions = sessions
        self._replays_in_flight = replays_in_flight
        self.settings = settings
        self.observer = observer
        self._resident_bytes = resident_bytes
        self.ladder = Ladder(settings.ladder)
        self.last: Sample | None = None
        """The latest round's measurements."""
        self.shed_total = 0
        self.changed = trio.Event()
        """Set (and replaced) every time the rung changes, for a task or a test to wait on."""

    @property
    def level(self) -> Level:
        return self.ladder.level

    @property
    def refusing(self) -> bool:
        """Whether new streams are to be refused (the ``refuse`` rung or above)."""
        return self.ladder.level >= Level.REFUSE

    async def run(self) -> None:
        """Measure and act every ``interval_seconds`` until cancelled."""
        interval = self.settings.interval_seconds
        due = trio.current_time() + interval
        while True:
            await trio.sleep_until(due)
            woke = trio.current_time()
            await self.measure(loop_lag=max(0.0, woke - due))
            # Late rounds are not made up: the next is one interval after this one woke.
            due = max(due + interval, woke + interval / 2)

    async def measure(self, *, loop_lag: float) -> Level:
        """One round: measure, move the ladder, apply its rung; returns the rung."""
        eager = self.ladder.level >= Level.COALESCE
        streams = behind = 0
        total = most = on_sockets = most_on_socket = 0
        bytes_behind: dict[Session, int] = {}
        for examined, session in enumerate(self._sessions(), start=1):
            streams += 1
            if eager:  # a stream opened since the rung was reached; below it every inbox is not
                session.coalesce_eagerly(True)
            backlog = session.backlog
            waiting = session.held_bytes
            # Holding nothing, it keeps up: not behind, and its socket is not asked (most of
            # 10,000 streams, each round: this path is kept to two reads).
            if waiting or backlog:
                unsent = session.unsent_bytes() or 0
                waiting += unsent
                on_sockets += unsent
                most_on_socket = max(most_on_socket, unsent)
                total += waiting
                most = max(most, waiting)
                if is_behind(backlog, session.inbox_capacity, waiting, session.inbox_byte_bound):
                    behind += 1
                    bytes_behind[session] = waiting
            if examined % SESSIONS_PER_CHECKPOINT == 0:
                await trio.lowlevel.checkpoint()
        sample = Sample(
            loop_lag=loop_lag,
            streams=streams,
            streams_behind=behind,
            replays_in_flight=self._replays_in_flight(),
            resident_bytes=self._resident_bytes(),
            bytes_waiting=total,
            bytes_waiting_max=most,
            socket_bytes=on_sockets,
            socket_bytes_max=most_on_socket,
        )
        measured = pressure(sample, self.settings.thresholds)
        self.last = sample
        self.observer.health_measured(sample, measured)
        before = self.ladder.level
        level = self.ladder.observe(measured, trio.current_time())
        if level is not before:
            self._changed(before, level, sample, measured)
        if level is Level.SHED:
            self._shed(bytes_behind)
        return level

    def _changed(self, before: Level, level: Level, sample: Sample, measured: float) -> None:
        (log.warning if level > before else log.info)(
            "overload level changed",
            extra={
                "from": before.label,
                "to": level.label,
                "pressure": round(measured, 3),
                "loop_lag_seconds": round(sample.loop_lag, 4),
                "streams": sample.streams,
                "streams_behind": sample.streams_behind,
                "bytes_waiting": sample.bytes_waiting,
                "replays_in_flight": sample.replays_in_flight,
                "resident_bytes": sample.resident_bytes,
            },
        )
        self.observer.overload_changed(level)
        eager = level >= Level.COALESCE
        if eager != (before >= Level.COALESCE):
            for session in self._sessions():  # no checkpoint: a change is rare and cheap
                session.coalesce_eagerly(eager)
        self.changed.set()
        self.changed = trio.Event()

    def _shed(self, bytes_behind: dict[Session, int]) -> None:
        """End the slowest of the streams behind (the most bytes waiting) as lagged: they resume
        from the cache."""
        shed = 0
        for session in slowest_streams(bytes_behind, 0, self.settings.shed_share):
            if session.close_reason is None:
                session.stop(CloseReason.LAGGED)
                shed += 1
        if shed:
            self.shed_total += shed
            self.observer.shed(shed)
            log.warning("overload: slowest streams shed as lagged", extra={"streams": shed})
