"""The health monitor counts a stream as behind by the bytes waiting for it, not only its events.

Real sessions write into a :class:`SlowSocket`: an output that takes bytes the way a kernel send
buffer does, up to its size, and then holds the writer while its client reads nothing, telling
the monitor what it holds unsent (as :mod:`router.http.socket_backlog` does with ``SIOCOUTQ``).
On the mock clock, driven by the monitor's own rounds (:meth:`OverloadMonitor.measure`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from actors.overload import OverloadMonitor, OverloadSettings
from actors.session import CloseReason, Session, SessionSettings
from router.core.events import ContentUpdateEvent
from router.core.observer import NoObserver
from router.core.overload import LadderSettings, Level, Sample, Thresholds
from router.core.permissions import Principal, StreamFilter
from router.core.scope import Scope
from router.core.sse import SSEMessage
from tests.actor_helpers import Feed, in_an_hour, offer_batch

ME = Principal(user_id="u1", novels=frozenset({"n1"}))
KIB = 1024


def big(version: int, size: int) -> SSEMessage:
    """A high-priority event of about ``size`` bytes on the wire."""
    return ContentUpdateEvent(
        novel_id="n1", content_version=version, summary="x" * size, scope=Scope(novel_id="n1")
    )


@dataclass
class SlowSocket:
    """A send buffer of ``buffer`` bytes whose client reads nothing: writes go in until it is
    full, then the one that does not fit waits for ever (as a direct writer waits in
    ``send_all``)."""

    buffer: int
    unsent: int = 0
    asked: int = 0
    """How many times the monitor read the send queue (a system call each, on a real socket)."""
    closed: bool = False
    _never: trio.Event = field(default_factory=trio.Event)

    async def send(self, chunk: object, /) -> None:
        size = len(chunk) if isinstance(chunk, bytes) else 0
        if self.unsent + size > self.buffer:
            self.unsent = self.buffer
            await self._never.wait()
        self.unsent += size

    def close(self) -> None:
        self.closed = True

    def unsent_bytes(self) -> int | None:
        self.asked += 1
        return self.unsent


@dataclass
class Measured(NoObserver):
    samples: list[Sample] = field(default_factory=list)
    shed_streams: int = 0

    def health_measured(self, sample: Sample, pressure: float) -> None:
        self.samples.append(sample)

    def shed(self, streams: int) -> None:
        self.shed_streams += streams


BOUND = 64 * KIB
"""The sessions' byte bound (``--session-buffer-bytes``): half of it is behind."""


def new_session(capacity: int = 256) -> Session:
    settings = SessionSettings(session_buffer=capacity, session_buffer_bytes=BOUND)
    return Session(ME, StreamFilter(), in_an_hour(), settings=settings)


async def started(
    nursery: trio.Nursery, session: Session, output: SlowSocket, *offers: Sequence[SSEMessage]
) -> None:
    """Run ``session`` into ``output``, and make each of ``offers`` once its writer is stuck."""
    nursery.start_soon(session.run, output)
    feed = Feed()
    for events in offers:
        offer_batch(session, [feed.next(e) for e in events])
        await trio.testing.wait_all_tasks_blocked()


def monitor_of(sessions: list[Session], observer: Measured, **thresholds: int) -> OverloadMonitor:
    return OverloadMonitor(
        lambda: sessions,
        lambda: 0,
        OverloadSettings(
            thresholds=Thresholds(streams_behind_fraction=0.01, **thresholds),  # type: ignore[arg-type]
            ladder=LadderSettings(rise_seconds=0.0, calm_seconds=60.0),
            shed_share=0.01,  # one stream per round
        ),
        observer,
    )


async def test_a_few_large_events_unsent_on_a_full_socket_are_a_stream_behind(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Three events of 9 KiB to a client that reads nothing: its inbox holds no event, but the
    batch in its writer's hand and its socket's 16 KiB are more than half its byte bound. By
    events alone it was not behind."""
    observer = Measured()
    session, socket = new_session(), SlowSocket(buffer=16 * KIB)
    async with trio.open_nursery() as nursery:
        await started(nursery, session, socket, [big(n, 9 * KIB) for n in range(3)])
        assert session.backlog == 0  # all three in the writer's hand
        assert 27 * KIB < session.held_bytes < BOUND // 2
        monitor = monitor_of([session], observer, streams_behind_minimum=1)
        await monitor.measure(loop_lag=0.0)
        (sample,) = observer.samples
        assert sample.streams_behind == 1
        assert sample.socket_bytes == sample.socket_bytes_max == 16 * KIB
        assert sample.bytes_waiting == sample.bytes_waiting_max == session.held_bytes + 16 * KIB
        nursery.cancel_scope.cancel()


async def test_a_stream_holding_nothing_in_the_router_is_not_asked_for_its_socket(
    autojump_clock: trio.abc.Clock,
) -> None:
    """At 10,000 streams a round makes no system call for those keeping up."""
    observer = Measured()
    session, socket = new_session(), SlowSocket(buffer=256 * KIB)
    async with trio.open_nursery() as nursery:
        await started(nursery, session, socket, [big(0, 9 * KIB)])
        assert session.held_bytes == 0
        assert socket.unsent > 0
        await monitor_of([session], observer).measure(loop_lag=0.0)
        assert socket.asked == 0
        assert observer.samples[0].bytes_waiting == 0
        nursery.cancel_scope.cancel()


async def test_the_stream_shed_first_is_the_one_with_the_most_bytes_waiting_not_events(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Two streams behind: one by its count of small events, one by a few large ones. At the
    shed rung, one stream a round, the first shed is the one the router and its socket hold the
    most bytes for."""
    observer = Measured()
    by_count, count_socket = new_session(capacity=64), SlowSocket(buffer=16)
    by_bytes, bytes_socket = new_session(capacity=64), SlowSocket(buffer=16 * KIB)
    async with trio.open_nursery() as nursery:
        small = [big(n, 100) for n in range(61)]
        await started(nursery, by_count, count_socket, small[:1], small[1:])
        large = [big(n, 9 * KIB) for n in range(5)]
        await started(nursery, by_bytes, bytes_socket, large[:2], large[2:])
        assert by_count.backlog >= 60 > by_bytes.backlog
        assert by_count.held_bytes < by_bytes.held_bytes
        monitor = monitor_of([by_count, by_bytes], observer, streams_behind_minimum=1)
        while monitor.level is not Level.SHED:
            await monitor.measure(loop_lag=0.0)
        await trio.testing.wait_all_tasks_blocked()
        assert observer.samples[-1].streams_behind == 2
        assert observer.shed_streams == 1
        assert by_bytes.close_reason is CloseReason.LAGGED
        assert by_count.close_reason is None
        nursery.cancel_scope.cancel()
