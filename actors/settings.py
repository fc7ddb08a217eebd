"""The actors' settings and their defaults, apart from the actors: ``router/config.py`` reads
its flags' defaults here, and the supervisor of ``serve --workers N``, which reads the config,
must not import the stack the actors need (tests/test_supervisor_imports.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from router.core.breaker import BreakerSettings
from router.core.session_settings import SessionSettings

__all__ = ["FANOUT_PAUSE_ABOVE", "FANOUT_PAUSE_SECONDS", "HubSettings", "RelaySettings"]

FANOUT_PAUSE_SECONDS = 0.02
"""``--fanout-pause-ms``: how long the adapter waits after a wide step (see :meth:`Adapter.run`)."""
FANOUT_PAUSE_ABOVE = 1000
"""Offers in one step from which the step counts as wide."""


@dataclass(frozen=True, slots=True)
class HubSettings:
    records_buffer: int = 16
    """``--records-buffer``: batches of records between the consumer and the adapter (each at
    most a few hundred)."""
    output_capacity: int = 1
    """Chunks between a session and a memory-channel output (when ``open`` is given none)."""
    bus_replay_limit: int = 100_000
    """Most events read again from the bus for one resume; beyond, the resume is truncated."""
    heartbeat_seconds: float = 15.0
    """A stream that carried nothing for this long gets a comment line (see actors/heartbeats)."""
    fanout_pause_seconds: float = FANOUT_PAUSE_SECONDS
    """After a step that made many offers, the adapter waits this long (see :meth:`Adapter.run`)."""
    session: SessionSettings = field(default_factory=SessionSettings)
    """What every session :meth:`Hub.open` makes is built with (its inbox: ``--session-buffer``)."""
    replay_outage_grace_seconds: float = 30.0
    """For this long after the replay cache was first found unreadable, a resume that neither
    it nor the bus can serve is refused for a retry (:class:`ReplayUnavailableError`), not
    answered as truncated: the history is most likely still there, and a short outage should
    cost a client nothing. Past it, the client gets what is held, as truncated, and live events."""
    replay_retry_seconds: float = 2.0
    """How long a client refused for an unreadable cache is told to wait."""
    bus_breaker: BreakerSettings = field(default_factory=BreakerSettings)
    """``--bus-breaker-*``: the circuit breaker publishing goes through (:attr:`Hub.publisher`)."""
    replay_concurrency: int = 16
    """Resumes that fetch and write their replay at once; the others wait their turn before
    they register. A replay holds what it read of the cache (a copy of every entry, about
    1.7 KiB each, with the Redis cache) until its session has written it, so without a bound a
    reconnect storm of N clients holds N copies of the cache at once. The loop serves one
    replay at a time anyway: in the bench's storm (300 clients, 340 events each, the Redis
    cache) 64 turns grew the router by 47-53 MiB, 16 by 23-24 and 8 by 17-19, all in the same
    time within the noise, and the live streams' p99 was 2-6 s at 64 and about 1 s at 16 or 8."""


@dataclass(frozen=True, slots=True)
class RelaySettings:
    parts: int = 16
    batch: int = 100
    poll_seconds: float = 1.0
    publish_timeout_seconds: float = 10.0
    """How long one publish may take, even when the relay is being cancelled: past it the rows
    are given back (published again later, the copy dropped by its ``event_id``)."""
