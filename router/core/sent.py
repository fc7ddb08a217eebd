"""What a session has written to its client, counted, reported and sampled for the log.

Pure: the observer, the random draw and the wall clock are given. The writer
(:class:`router.core.writer.Writer`, which is a :class:`Sent`) calls one method after each write
that went out (a write cut short is not counted); a sampled write's log fields come back for the
session actor to log, so this module does no I/O.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from router.core.inbox import Delivery, SharedBatch
from router.core.observer import StreamObserver, Transport
from router.core.sse import SSEMessage

__all__ = ["Sent"]


class Sent:
    """A stream's count of events written (:attr:`events_sent`), and its reports of each write
    to ``observer``, as a stream carried by ``transport``. ``sample_rate`` is the share of live
    writes that come back with fields to log (0: none; a debugging aid at a few streams, not a
    per-event log).

    A base of every session's writer rather than an object of its own: its state is a few slots
    in the session, not one more object per stream (at 10,000 streams)."""

    __slots__ = ("_draw", "_sample_rate", "_wall_clock", "events_sent", "observer", "transport")

    def __init__(
        self,
        observer: StreamObserver,
        transport: Transport = Transport.SSE,
        *,
        sample_rate: float = 0.0,
        draw: Callable[[], float] = random.random,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.events_sent = 0
        self.observer = observer
        self.transport = transport
        """What carries the stream: every report says it (a metric label)."""
        self._sample_rate = sample_rate
        self._draw = draw
        self._wall_clock = wall_clock

    def count_replayed(self, messages: Sequence[SSEMessage]) -> None:
        """A slice of a replay went out. Their age says how long the client was away, not the
        router's lag: none is reported, and nothing waits behind a replay."""
        self.count_replayed_names(Counter(message.event for message in messages))

    def count_replayed_names(self, counts: Mapping[str, int]) -> None:
        """:meth:`count_replayed`, of a slice's events counted by name (a shared slice's
        counts are worked out once, for every stream that writes it)."""
        self.events_sent += sum(counts.values())
        self.observer.sent(counts, None, 0, self.transport)

    def count_own(self, event: SSEMessage, queued: int) -> None:
        """One of the router's own ``sse.error`` events went out, ``queued`` events behind it."""
        self.observer.sent({event.event: 1}, None, queued, self.transport)

    def count_shared(self, batch: SharedBatch, queued: int) -> dict[str, object] | None:
        """A shared batch went out as the adapter encoded it (its counts worked out once, for
        every session); the fields to log when this write is sampled, else ``None``."""
        return self._count_live(batch, batch.event_counts, batch.oldest_occurred_at, queued)

    def count_each(self, sent: Sequence[Delivery], queued: int) -> dict[str, object] | None:
        """``sent`` (not empty) went out, served one by one; as :meth:`count_shared`."""
        if len(sent) == 1:  # a targeted event: the usual write of a stream served one by one
            (only,) = sent
            return self._count_live(sent, {only.message.event: 1}, only.occurred_at, queued)
        occurred = [d.occurred_at for d in sent if d.occurred_at is not None]
        counts = Counter(d.message.event for d in sent)
        return self._count_live(sent, counts, min(occurred, default=None), queued)

    def _count_live(
        self,
        sent: Sequence[Delivery],
        event_counts: Mapping[str, int],
        oldest: float | None,
        queued: int,
    ) -> dict[str, object] | None:
        self.events_sent += len(sent)
        age = None if oldest is None else self._wall_clock() - oldest
        self.observer.sent(event_counts, age, queued, self.transport)
        rate = self._sample_rate
        if not rate or self._draw() >= rate:
            return None
        last = sent[-1].message
        return {"sse_event": last.event, "id": last.id, "in_write": len(sent)}
