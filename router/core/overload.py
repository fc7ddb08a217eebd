"""The overload ladder: how far the router degrades for the pressure it measures, and back.

The rungs, in their fixed order (each one keeps the measures of those below it):

1. ``coalesce``: every stream coalesces low-priority events early (a quarter of its inbox
   waiting, not all of it: :meth:`router.core.inbox.Inbox.coalesce_eagerly`);
2. ``refuse``: new streams are refused, retryably, each told to come back after a spread wait
   (:func:`overload_refusal`), and ``/readyz`` says ``degraded`` so a load balancer sends new
   clients elsewhere;
3. ``shed``: the slowest streams, by the bytes waiting for them, are ended as ``lagged``
   (:func:`slowest`); they resume from the replay cache when they come back.

A stream is behind (:func:`is_behind`) with half its inbox's capacity waiting, or half its byte
bound: the bytes in its inbox, in its writer's hand and on its socket unsent, since a client that
reads slowly leaves them in the kernel's send buffer (megabytes) before its inbox fills.

High-priority events are never dropped for a stream that is admitted and keeps up: coalescing
touches low-priority events only, and shedding only streams that are behind.

Pressure is one number: the highest of each measurement over its threshold (:func:`pressure`),
so ``1.0`` is "at a threshold". The ladder climbs one rung once pressure has stayed at or above 1
for ``rise_seconds``, and one more after each further ``rise_seconds``; it steps down one rung
once pressure has stayed below ``recover_below`` for ``calm_seconds``, and one more after each
further ``calm_seconds``. Between the two it holds: the gap, and the time asked for at each step,
are what keep it from flapping.

Pure: the measurements and the time are passed in.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from router.core.admission import Reason, Refused
from router.core.refusal import Limit

__all__ = [
    "Ladder",
    "LadderSettings",
    "Level",
    "Sample",
    "Thresholds",
    "is_behind",
    "overload_refusal",
    "pressure",
    "slowest",
]

REFUSED_WAIT_SECONDS = 5.0
"""A new stream refused for overload comes back after this long at least..."""
REFUSED_SPREAD_SECONDS = 10.0
"""...plus a random share of this, so the refused do not all come back in the same instant."""


class Level(enum.IntEnum):
    NORMAL = 0
    COALESCE = 1
    REFUSE = 2
    SHED = 3

    @property
    def label(self) -> str:
        """The rung's name, fit for a metric label and ``/readyz``."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Where each measurement starts to count as pressure (``--overload-*`` flags)."""

    loop_lag_seconds: float = 1.0
    """How late the health probe may wake before the loop counts as overloaded."""
    streams_behind_fraction: float = 0.2
    """The share of open streams that may be behind (:func:`is_behind`)..."""
    streams_behind_minimum: int = 10
    """...counted only once this many are: a few slow clients are not an overload."""
    replays_in_flight: int = 200
    """Resumes being read at once (from the cache or the bus)."""
    max_memory_bytes: int = 0
    """``--max-memory``: pressure when the resident set reaches ``memory_fraction`` of it; 0 for
    no memory limit."""
    memory_fraction: float = 0.9


@dataclass(frozen=True, slots=True)
class Sample:
    """One round of measurements."""

    loop_lag: float
    """Seconds the health probe woke late."""
    streams: int
    """Open streams."""
    streams_behind: int
    """Open streams behind (:func:`is_behind`): half their inbox waiting, by events or bytes."""
    replays_in_flight: int
    resident_bytes: int | None = None
    """The process's resident set, when it can be read."""
    bytes_waiting: int = 0
    """Bytes waiting for the open streams: in their inboxes, in their writers' hands, and unsent
    on the sockets of those holding any in the router (the only ones whose socket is read)."""
    bytes_waiting_max: int = 0
    """The most of :attr:`bytes_waiting` for one stream."""
    socket_bytes: int = 0
    """The share of :attr:`bytes_waiting` on sockets, not yet sent by the kernel."""
    socket_bytes_max: int = 0
    """The most of :attr:`socket_bytes` on one stream's socket."""


def is_behind(backlog: int, capacity: int, bytes_waiting: int, byte_bound: int) -> bool:
    """Whether a stream counts as behind: at least half its inbox's ``capacity`` in events
    waiting (``backlog``), or half its ``byte_bound`` in bytes (``bytes_waiting``: in its inbox,
    in its writer's hand and on its socket). Either is a client that does not keep up."""
    return backlog * 2 >= capacity or bytes_waiting * 2 >= byte_bound


def pressure(sample: Sample, thresholds: Thresholds) -> float:
    """The highest of each measurement over its threshold: 1.0 is at a threshold."""
    behind_allowed = max(
        thresholds.streams_behind_minimum, thresholds.streams_behind_fraction * sample.streams
    )
    ratios = [
        sample.loop_lag / thresholds.loop_lag_seconds,
        sample.streams_behind / behind_allowed if behind_allowed else 0.0,
        sample.replays_in_flight / thresholds.replays_in_flight,
    ]
    if thresholds.max_memory_bytes and sample.resident_bytes is not None:
        memory_allowed = thresholds.max_memory_bytes * thresholds.memory_fraction
        ratios.append(sample.resident_bytes / memory_allowed)
    return max(ratios)


@dataclass(frozen=True, slots=True)
class LadderSettings:
    rise_seconds: float = 5.0
    """Pressure at or above 1 for this long climbs one rung."""
    calm_seconds: float = 10.0
    """Pressure below ``recover_below`` for this long steps down one rung."""
    recover_below: float = 0.7
    """Below this the pressure counts as calm; from here to 1 the ladder holds."""

    def __post_init__(self) -> None:
        if self.rise_seconds < 0 or self.calm_seconds < 0 or not 0 < self.recover_below <= 1:
            raise ValueError("a ladder needs times of at least 0 and 0 < recover_below <= 1")


class _Trend(enum.Enum):
    RISING = "rising"
    CALM = "calm"
    HOLDING = "holding"


class Ladder:
    """The rung the router stands on; :meth:`observe` moves it by the rules above."""

    def __init__(self, settings: LadderSettings = LadderSettings()) -> None:
        self.settings = settings
        self.level = Level.NORMAL
        self._trend = _Trend.HOLDING
        self._since = 0.0

    def observe(self, pressure: float, now: float) -> Level:
        """The rung after ``pressure`` was measured at ``now`` (at most one rung away)."""
        settings = self.settings
        if pressure >= 1.0:
            trend = _Trend.RISING
        elif pressure < settings.recover_below:
            trend = _Trend.CALM
        else:
            trend = _Trend.HOLDING
        if trend is not self._trend:
            self._trend, self._since = trend, now
        held = now - self._since
        if trend is _Trend.RISING and held >= settings.rise_seconds and self.level < Level.SHED:
            self.level = Level(self.level + 1)
            self._since = now
        elif trend is _Trend.CALM and held >= settings.calm_seconds and self.level > Level.NORMAL:
            self.level = Level(self.level - 1)
            self._since = now
        return self.level


def overload_refusal(share: float) -> Refused:
    """The answer to a new stream while the ladder refuses them; ``share`` (0 to 1, random)
    spreads the waits."""
    wait = REFUSED_WAIT_SECONDS + min(max(share, 0.0), 1.0) * REFUSED_SPREAD_SECONDS
    return Refused(
        Reason.OVERLOADED,
        "this instance is overloaded; reconnect later",
        retry_after=wait,
        limit=Limit.OVERLOAD,
    )


Key = TypeVar("Key", bound=Hashable)


def slowest(backlogs: Mapping[Key, int], behind_at: int, share: float) -> list[Key]:
    """The streams to shed: of those whose backlog is at least ``behind_at``, the ``share`` (at
    least one) with the longest backlogs, longest first. A stream under ``behind_at`` is keeping
    up, and is never among them. The monitor gives each stream behind with the bytes waiting for
    it: the slowest are those the router and the kernel hold the most for."""
    behind = sorted(
        (key for key, backlog in backlogs.items() if backlog >= behind_at),
        key=lambda key: backlogs[key],
        reverse=True,
    )
    if not behind:
        return []
    return behind[: max(1, int(len(behind) * share))]
