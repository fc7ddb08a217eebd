"""The bus's publishing breaker, wired: the publish endpoint and the outbox relay while the bus
is down and after it came back (its rules alone: test_breaker.py)."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Sequence
from contextlib import aclosing
from pathlib import Path

import httpx
import pytest
import redis
import trio

from actors.publisher import CircuitOpenError, GuardedPublisher
from actors.relay import Relay, RelaySettings
from router.bus.base import BusUnavailableError
from router.bus.memory import MemoryBus
from router.bus.redis import RedisStreamBus
from router.core.breaker import BreakerSettings, BreakerState
from router.core.cursor import EventIdentity
from router.core.envelope import Envelope, parse_envelope
from router.outbox.sqlite import SqliteOutbox
from tests.e2e_helpers import PUBLISHER, RouterUnderTest, auth, content, running_router
from tests.outbox_helpers import sqlite_business_transaction, sqlite_outbox
from tests.redis_helpers import RedisServer, delete_prefix, new_prefix


class SwitchedBus(MemoryBus):
    """The memory bus, with a switch that makes every publish fail; notes when it was asked."""

    def __init__(self) -> None:
        super().__init__(partitions=1, capacity=10_000)
        self.down = False
        self.asked_at: list[float] = []
        self.asked = trio.Event()

    async def publish(self, envelopes: Sequence[Envelope]) -> list[EventIdentity]:
        self.asked_at.append(trio.current_time())
        self.asked.set()
        self.asked = trio.Event()
        if self.down:
            raise BusUnavailableError("the bus is down")
        return await super().publish(envelopes)


async def test_a_relay_waits_on_the_open_breaker_and_loses_nothing(tmp_path: Path) -> None:
    """Once the breaker opened, the relay asks the bus only when the breaker probes: one, two,
    four, then four time units apart (its rows given back each time); once the bus is back
    every row is published, once. On the real clock, in short units: the relay's database calls
    run in worker threads, which a mock clock would jump over."""
    unit = 0.05
    bus = SwitchedBus()
    breaker = BreakerSettings(
        failure_threshold=2, open_seconds=unit, max_open_seconds=4 * unit, probe_wait_seconds=unit
    )
    publisher = GuardedPublisher(bus, breaker)
    with sqlite_outbox(tmp_path) as dsn:
        path = dsn.removeprefix("sqlite:///")
        relay = Relay(
            lambda: SqliteOutbox(path, "sse_outbox"),
            publisher,
            RelaySettings(parts=1, batch=10, poll_seconds=unit),
        )
        bus.down = True
        sqlite_business_transaction(dsn, [content("n1", n) for n in range(3)])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.run)
            with trio.fail_after(20):
                while len(bus.asked_at) < 7:
                    await bus.asked.wait()
            assert publisher.state is not BreakerState.CLOSED
            probes = bus.asked_at[1:]  # after the second failure, which opened it
            gaps = [later - earlier for earlier, later in itertools.pairwise(probes)]
            # Never sooner than the breaker allows (the database calls only make them later).
            for gap, allowed in zip(gaps, [1, 2, 4, 4, 4], strict=False):
                assert gap >= allowed * unit
            assert relay.stats.published == 0
            # In a thread: the relay holds a claim on the table between its own thread calls.
            more = [content("n1", n) for n in range(3, 5)]
            await trio.to_thread.run_sync(sqlite_business_transaction, dsn, more)
            bus.down = False
            with trio.fail_after(20):
                while relay.stats.published < 5:
                    await relay.stats.round_done.wait()
            nursery.cancel_scope.cancel()
        assert publisher.state is BreakerState.CLOSED
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT count(*) FROM sse_outbox").fetchone() == (0,)
    assert sorted(await _versions_on(bus, 5)) == list(range(5))  # each row once


async def _versions_on(bus: MemoryBus, count: int) -> list[int]:
    """The content versions of the first ``count`` records on ``bus``."""
    versions: list[int] = []
    async with aclosing(bus.read({})) as batches:
        async for batch in batches:
            versions += [json.loads(r.raw)["payload"]["content_version"] for r in batch]
            if len(versions) >= count:
                return versions
    return versions


async def test_a_publish_during_an_outage_is_refused_at_once_and_the_breaker_closes_itself(
    autojump_clock: trio.abc.Clock,
) -> None:
    bus = SwitchedBus()
    publisher = GuardedPublisher(bus, BreakerSettings(failure_threshold=1, open_seconds=2.0))
    batch = [parse_envelope(content("n1", 1))]
    bus.down = True
    with pytest.raises(BusUnavailableError) as found_down:
        await publisher.publish(batch)
    assert not isinstance(found_down.value, CircuitOpenError)  # the bus was asked, and failed
    for _ in range(10):
        with pytest.raises(CircuitOpenError) as refused:
            await publisher.publish(batch)
        assert 0 < refused.value.wait <= 2.0
    assert len(bus.asked_at) == 1  # refused without asking the bus
    bus.down = False
    await trio.sleep(2.0)
    assert len(await publisher.publish(batch)) == 1  # the probe
    assert publisher.state is BreakerState.CLOSED


async def _publish(router: RouterUnderTest, version: int) -> httpx.Response:
    return await router.client.post(
        "/api/v1/events", json=content("n1", version), headers=PUBLISHER
    )


async def test_publishers_are_told_at_once_while_redis_is_down_and_nothing_is_lost_after(
    tmp_path: Path,
) -> None:
    """The bus is a Redis of the test's own, stopped with its data saved and started again:
    while it is down every publish after the first is refused at once (503, Retry-After) without
    asking Redis; rows committed to the outbox meanwhile wait; once it is back the breaker closes
    by itself, and the client sees every event accepted and every row, once each."""
    server = RedisServer()
    server.start()
    prefix = new_prefix()
    try:
        with sqlite_outbox(tmp_path) as dsn:
            async with running_router(
                bus="redis",
                redis_url=server.url,
                redis_key_prefix=prefix,
                redis_streams=(f"{prefix.rsplit(':', 1)[1]}-s",),
                bus_breaker_failures=1,
                bus_breaker_open_seconds=0.5,
                outbox_dsn=dsn,
                outbox_poll_seconds=0.05,
            ) as router:
                bus = router.running.hub.bus
                assert isinstance(bus, RedisStreamBus)
                await router.running.hub.reading.wait()
                async with router.stream(auth("u1", novels=["n1"])) as events:
                    await router.publish(content("n1", 0))
                    await events.events_count(1)
                    control = redis.Redis.from_url(server.url)
                    control.save()  # what it holds survives the restart: the same history
                    control.close()
                    server.stop()
                    first = await _publish(router, 100)
                    assert first.status_code == 503  # the one that found it down
                    refused = [await _publish(router, 101 + n) for n in range(5)]
                    assert {r.status_code for r in refused} == {503}
                    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
                    exposition = (await router.client.get("/metrics")).text
                    # All five refused by the breaker: Redis was not asked.
                    assert "sse_bus_breaker_refused_total 5.0" in exposition
                    assert 'sse_bus_breaker_state{state="open"} 1.0' in exposition
                    rows = [content("n1", n) for n in (1, 2)]
                    await trio.to_thread.run_sync(sqlite_business_transaction, dsn, rows)
                    server.start()
                    accepted = await _publish_until_accepted(router, 3)
                    await router.publish(content("n1", 4))
                    await events.events_count(5)
                    await router.flush(events)
        versions = [d["content_version"] for d in events.data()]
        assert sorted(versions) == [0, 1, 2, 3, 4]  # none of the refused ones, none twice
        assert accepted.status_code == 202
    finally:
        server.remove()
        delete_prefix(server.url, prefix)


async def _publish_until_accepted(router: RouterUnderTest, version: int) -> httpx.Response:
    """What a well-behaved publisher does: retry after the ``Retry-After`` it was given."""
    with trio.fail_after(30):
        while (answer := await _publish(router, version)).status_code == 503:
            await trio.sleep(min(1.0, float(answer.headers.get("Retry-After", "1"))))
    return answer
