"""The overload ladder driven for real: one hub, its health monitor and its front door, pushed
past their thresholds by a burst of streams and events, on the mock clock.

What it proves: the router degrades in the documented order (coalesce, refuse, shed) and comes
back down by itself in reverse, a rung at a time; new streams are refused retryably with a spread
wait while it refuses; it sheds only the slowest streams, as lagged; the streams that keep up are
served throughout and get every high-priority event; the streams shed resume complete from the
replay cache once they are let back in.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from actors.hub import Hub, HubSettings
from actors.overload import OverloadMonitor, OverloadSettings
from actors.session import CloseReason, Session, SessionSettings
from router.admission import Admission, AdmissionSettings, Ask
from router.auth import TokenVerifier, mint_token
from router.bus.memory import MemoryBus
from router.cache.memory import MemoryReplayCache
from router.core.admission import Admitted, Credentials, Reason, Refused, StreamCaps
from router.core.observer import NoObserver
from router.core.overload import (
    REFUSED_SPREAD_SECONDS,
    REFUSED_WAIT_SECONDS,
    LadderSettings,
    Level,
    Thresholds,
)
from router.core.refusal import Limit
from tests.actor_helpers import Reader
from tests.test_hub import content, progress, status

SECRET = "overload-tests-secret-0123456789abcdef"
KEEPERS = [f"keeper-{n}" for n in range(4)]
LAGGARDS = [f"laggard-{n}" for n in range(6)]
ROUNDS = 400
ROUND_SECONDS = 0.05
INBOX = 32
GUARD_SECONDS = 600


@dataclass
class Recorder(NoObserver):
    """What the monitor and the front door report."""

    levels: list[Level] = field(default_factory=list)
    shed_streams: int = 0
    refused: Counter[Limit] = field(default_factory=Counter)

    def overload_changed(self, level: Level) -> None:
        self.levels.append(level)

    def shed(self, streams: int) -> None:
        self.shed_streams += streams

    def refused_by_limit(self, limit: Limit) -> None:
        self.refused[limit] += 1


@dataclass
class Router:
    hub: Hub
    monitor: OverloadMonitor
    door: Admission
    nursery: trio.Nursery

    def ask(self, user: str, novels: list[str], last_event_id: str | None = None) -> Ask:
        token = mint_token(SECRET, sub=user, novels=novels)
        return Ask(Credentials(authorization=f"Bearer {token}"), [], last_event_id, "10.0.0.1")

    async def open(self, admitted: Admitted) -> tuple[Session, trio.MemoryReceiveChannel[bytes]]:
        opened = await self.hub.open(
            admitted.principal,
            admitted.stream_filter,
            expires_at=time.time() + 86400,
            resume_from=admitted.resume_from,
        )
        assert opened.output is not None
        return opened.session, opened.output


@asynccontextmanager
async def overloadable_router(recorder: Recorder) -> AsyncIterator[Router]:
    bus = MemoryBus(partitions=2, capacity=10_000)
    cache = MemoryReplayCache(max_events=100_000, source="memory", epoch=await bus.epoch())
    hub = Hub(bus, cache, HubSettings(session=SessionSettings(session_buffer=INBOX)))
    monitor = OverloadMonitor(
        lambda: hub.registry,
        lambda: hub.replays_in_flight,
        OverloadSettings(
            interval_seconds=0.25,
            thresholds=Thresholds(streams_behind_fraction=0.25, streams_behind_minimum=2),
            ladder=LadderSettings(rise_seconds=1.0, calm_seconds=5.0),
        ),
        recorder,
    )
    door = Admission(
        TokenVerifier.from_key(secret=SECRET),
        AdmissionSettings(
            StreamCaps(per_instance=10_000, per_address=10_000, per_user=10),
            connects_per_minute=1000,
            bad_tokens_per_minute=1000,
            trusted_proxies=(),
        ),
        recorder,
        streams_open=hub.registry.open_streams,
        closing=lambda: hub.closing,
        overloaded=lambda: monitor.refusing,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        await hub.reading.wait()
        nursery.start_soon(monitor.run)
        yield Router(hub, monitor, door, nursery)
        nursery.cancel_scope.cancel()


async def test_a_burst_past_the_thresholds_sheds_in_order_serves_the_keepers_and_recovers(
    autojump_clock: trio.abc.Clock,
) -> None:
    recorder = Recorder()
    async with overloadable_router(recorder) as router:
        keepers: dict[str, tuple[Session, Reader]] = {}
        for user in KEEPERS:  # they read all the time
            admitted = router.door.admit(router.ask(user, ["n1"]))
            assert isinstance(admitted, Admitted)
            session, output = await router.open(admitted)
            reader = Reader(output)
            router.nursery.start_soon(reader.run)
            keepers[user] = session, reader
        laggards: dict[str, tuple[Session, trio.MemoryReceiveChannel[bytes]]] = {}
        for user in LAGGARDS:  # they read nothing for now
            admitted = router.door.admit(router.ask(user, []))
            assert isinstance(admitted, Admitted)
            laggards[user] = await router.open(admitted)

        # Every laggard's one high-priority event, then a stream of progress for everyone.
        for user in LAGGARDS:
            await router.hub.publish([status({"user_id": user}, f"{user}-setup")])
        published = trio.Event()
        progress_ids: dict[str, list[str]] = {user: [] for user in LAGGARDS}

        async def publish() -> None:
            for n in range(ROUNDS):
                batch = [content("n1", n)]
                batch += [progress(user, f"t{n % 2}") for user in LAGGARDS]
                landed = await router.hub.publish(batch)
                for user, identity in zip(LAGGARDS, landed[1:], strict=True):
                    progress_ids[user].append(str(identity))
                await trio.sleep(ROUND_SECONDS)
            published.set()

        router.nursery.start_soon(publish)

        # Past the thresholds: the ladder climbs to refusing, and a burst of new streams is
        # turned away retryably, each told a spread wait, before any token work.
        with trio.fail_after(GUARD_SECONDS):
            while not router.monitor.refusing:
                await router.monitor.changed.wait()
        burst = [router.door.admit(router.ask(f"new-{n}", ["n1"])) for n in range(50)]
        assert all(isinstance(r, Refused) and r.reason is Reason.OVERLOADED for r in burst)
        waits = [r.retry_after for r in burst if isinstance(r, Refused)]
        assert all(
            REFUSED_WAIT_SECONDS <= w <= REFUSED_WAIT_SECONDS + REFUSED_SPREAD_SECONDS
            for w in waits
        )
        assert len(set(waits)) > 1  # spread
        assert recorder.refused[Limit.OVERLOAD] == 50

        # Then it sheds the slowest: every laggard, and no keeper.
        with trio.fail_after(GUARD_SECONDS):
            for session, _ in laggards.values():
                await session.finished.wait()
        assert recorder.levels == [Level.COALESCE, Level.REFUSE, Level.SHED]
        assert recorder.shed_streams == len(LAGGARDS)
        assert all(s.close_reason is CloseReason.LAGGED for s, _ in laggards.values())
        assert all(s.close_reason is None for s, _ in keepers.values())

        # The laggards come back, as a browser does: refused (with its wait) while the ladder
        # refuses, then admitted, resuming from the last id they received.
        async def come_back(user: str, first: trio.MemoryReceiveChannel[bytes]) -> None:
            before = Reader(first)
            await before.run()
            last_id = before.last_event_id
            while isinstance(answer := router.door.admit(router.ask(user, [], last_id)), Refused):
                assert answer.retry_after is not None
                await trio.sleep(answer.retry_after)
            assert answer.resume_from is not None
            session, output = await router.open(answer)
            after = Reader(output)
            router.nursery.start_soon(after.run)
            resumed[user] = before, session, after

        resumed: dict[str, tuple[Reader, Session, Reader]] = {}
        async with trio.open_nursery() as returning:
            for user, (_, first) in laggards.items():
                returning.start_soon(come_back, user, first)
        with trio.fail_after(GUARD_SECONDS):
            await published.wait()
            while router.monitor.level is not Level.NORMAL:
                await router.monitor.changed.wait()
        assert recorder.levels == [
            Level.COALESCE, Level.REFUSE, Level.SHED,  # up, in order
            Level.REFUSE, Level.COALESCE, Level.NORMAL,  # and down by itself, in reverse
        ]  # fmt: skip
        await trio.testing.wait_all_tasks_blocked()
        for session, _ in keepers.values():
            session.stop(CloseReason.CLIENT)
        for _, session, _ in resumed.values():
            session.stop(CloseReason.CLIENT)
        await trio.testing.wait_all_tasks_blocked()

    assert len(resumed) == len(LAGGARDS)
    # The keepers were served throughout: every high-priority event, in order, never shed.
    for session, reader in keepers.values():
        assert session.close_reason is CloseReason.CLIENT
        got = [d["content_version"] for d in reader.data() if "content_version" in d]
        assert got == list(range(ROUNDS))
    # The laggards resumed complete: their high-priority event once, nothing twice, and of
    # their progress (low priority, which may be coalesced live) the last of each task; what
    # they missed while away came whole from the cache, not truncated.
    for user, (before, _, after) in resumed.items():
        data = before.data() + after.data()
        assert [d["task_id"] for d in data if "new_status" in d] == [f"{user}-setup"]
        ids = [d["event_id"] for d in data if "event_id" in d]
        assert len(ids) == len(set(ids))
        seen = {d["event_id"] for d in data if "progress" in d}
        assert seen <= set(progress_ids[user])
        assert set(progress_ids[user][-2:]) <= seen
        assert not any(d.get("code") == "history-truncated" for d in data)


@dataclass
class QuietStream:
    """What a monitor's round reads of a session, and what it tells it."""

    backlog: int = 0
    inbox_capacity: int = INBOX
    held_bytes: int = 0
    inbox_byte_bound: int = 1 << 20
    told: list[bool] = field(default_factory=list)

    def coalesce_eagerly(self, eager: bool) -> None:
        self.told.append(eager)

    def unsent_bytes(self) -> int | None:
        return 0


async def test_a_round_below_the_coalesce_rung_leaves_every_inbox_and_above_it_tells_new_ones() -> (
    None
):
    """Every stream's inbox is told once per round while the ladder is at ``coalesce`` or above
    (a stream opened since must coalesce early too); below it none is: an inbox starts not eager
    and the step down tells them all. At 10,000 streams a call each, four rounds a second, was
    CPU spent on nothing."""
    streams = [QuietStream(), QuietStream()]
    monitor = OverloadMonitor(lambda: streams, lambda: 0)  # type: ignore[arg-type, return-value]
    await monitor.measure(loop_lag=0.0)
    assert [s.told for s in streams] == [[], []]
    monitor.ladder.level = Level.COALESCE
    streams.append(QuietStream())  # opened while the router coalesces early
    await monitor.measure(loop_lag=0.0)
    assert [s.told for s in streams] == [[True], [True], [True]]
