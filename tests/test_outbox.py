"""The transactional outbox relay, from SQLite and from PostgreSQL, to SSE clients."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import ExitStack, aclosing
from functools import partial
from pathlib import Path

import pytest
import trio

from actors.relay import Relay, RelaySettings
from router.bus.memory import MemoryBus
from router.core.cursor import EventIdentity
from router.core.envelope import Envelope, parse_envelope
from router.outbox.base import Claim
from router.outbox.postgres import PostgresOutbox
from router.outbox.sqlite import SqliteOutbox
from tests.e2e_helpers import auth, content, running_router
from tests.outbox_helpers import (
    postgres_business_transaction,
    postgres_outbox,
    postgres_rows,
    sqlite_business_transaction,
    sqlite_outbox,
)

HEADERS = auth("u1", novels=["n1", "n2"])


def by_novel(data: list[dict[str, object]]) -> dict[object, list[object]]:
    grouped: dict[object, list[object]] = {}
    for item in data:
        grouped.setdefault(item["novel_id"], []).append(item["content_version"])
    return grouped


async def test_rows_committed_in_sqlite_reach_clients_once_in_order(tmp_path: Path) -> None:
    with sqlite_outbox(tmp_path) as dsn:
        async with (
            running_router(
                heartbeat_seconds=0.05,
                outbox_dsn=dsn,
                outbox_poll_seconds=0.05,
                memory_partitions=2,
            ) as router,
            router.stream(HEADERS) as stream,
        ):
            sqlite_business_transaction(dsn, [content("n1", 1), content("n2", 1)])
            sqlite_business_transaction(dsn, [content("n1", 99)], commit=False)  # rolled back
            sqlite_business_transaction(dsn, [content("n1", 2), content("n2", 2)])
            await stream.events_count(4)
            await router.running.hub.adapter.wait_consumed(4)
            await router.flush(stream)
        assert by_novel(stream.data()) == {"n1": [1, 2], "n2": [1, 2]}
        with sqlite3.connect(dsn.removeprefix("sqlite:///")) as db:
            assert db.execute("SELECT count(*) FROM sse_outbox").fetchone() == (0,)


async def test_mark_mode_keeps_the_rows_with_their_publish_time(tmp_path: Path) -> None:
    with sqlite_outbox(tmp_path) as dsn:
        async with (
            running_router(
                heartbeat_seconds=0.05, outbox_dsn=dsn, outbox_poll_seconds=0.05, outbox_mode="mark"
            ) as router,
            router.stream(HEADERS) as stream,
        ):
            sqlite_business_transaction(dsn, [content("n1", 1)])
            await stream.events_count(1)
        with sqlite3.connect(dsn.removeprefix("sqlite:///")) as db:
            ((published_at,),) = db.execute("SELECT published_at FROM sse_outbox").fetchall()
        assert published_at is not None


async def test_a_row_the_bus_cannot_carry_is_rejected_and_the_rest_flows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite keeps whatever a back end's json.dumps wrote, NaN and lone surrogates included."""
    nan_row = content("n1", 2)
    nan_row["payload"]["internal_ratio"] = float("nan")
    surrogate_row = content("n1", 3, summary="half of \ud83d")
    with sqlite_outbox(tmp_path) as dsn:
        async with (
            running_router(
                heartbeat_seconds=0.05, outbox_dsn=dsn, outbox_poll_seconds=0.05
            ) as router,
            router.stream(HEADERS) as stream,
        ):
            sqlite_business_transaction(
                dsn, [content("n1", 1), nan_row, surrogate_row, content("n1", 4)]
            )
            await stream.events_count(2)
            await router.flush(stream)
        assert [d["content_version"] for d in stream.data()] == [1, 4]
        assert caplog.text.count("outbox row rejected") == 2
        with sqlite3.connect(dsn.removeprefix("sqlite:///")) as db:
            assert db.execute("SELECT count(*) FROM sse_outbox").fetchone() == (0,)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_a_relay_that_dies_between_publishing_and_deleting_causes_no_duplicate(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: type[SqliteOutbox | PostgresOutbox] = (
        SqliteOutbox if database == "sqlite" else PostgresOutbox
    )
    settle = store.settle
    deaths = []

    def die_once(self: SqliteOutbox | PostgresOutbox, claim: Claim) -> None:
        if not deaths:
            deaths.append(claim)
            raise RuntimeError("the relay died after publishing")
        settle(self, claim)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "settle", die_once)
    with ExitStack() as stack:
        if database == "sqlite":
            dsn = stack.enter_context(sqlite_outbox(tmp_path))
            settings: dict[str, object] = {}
            write = partial(sqlite_business_transaction, dsn)
        else:
            dsn, table = stack.enter_context(postgres_outbox())
            settings = {"outbox_table": table}
            write = partial(postgres_business_transaction, dsn, table)
        async with (
            running_router(
                heartbeat_seconds=0.05, outbox_dsn=dsn, outbox_poll_seconds=0.05, **settings
            ) as router,
            router.stream(HEADERS) as stream,
        ):
            await trio.to_thread.run_sync(write, [content("n1", 1), content("n1", 2)])
            await router.running.hub.adapter.wait_consumed(4)  # published twice
            await router.flush(stream)
        assert deaths
        assert [d["content_version"] for d in stream.data()] == [1, 2]  # once each
        assert router.running.hub.adapter.stats.rejected == {"duplicate": 2}


async def test_postgres_rows_reach_clients_woken_by_notify() -> None:
    with postgres_outbox() as (dsn, table):
        async with (
            running_router(
                heartbeat_seconds=0.05, outbox_dsn=dsn, outbox_table=table, outbox_poll_seconds=60
            ) as router,
            router.stream(HEADERS) as stream,
        ):
            # Polling every minute: only LISTEN/NOTIFY can deliver within the guard.
            with trio.fail_after(10):
                await trio.to_thread.run_sync(
                    postgres_business_transaction, dsn, table, [content("n1", 1), content("n2", 1)]
                )
                await trio.to_thread.run_sync(
                    lambda: postgres_business_transaction(
                        dsn, table, [content("n1", 99)], commit=False
                    )
                )
                await trio.to_thread.run_sync(
                    postgres_business_transaction, dsn, table, [content("n1", 2)]
                )
                await stream.events_count(3)
            await router.running.hub.adapter.wait_consumed(3)
            await router.flush(stream)
        assert by_novel(stream.data()) == {"n1": [1, 2], "n2": [1]}
        assert postgres_rows(dsn, table) == []


async def test_two_relays_on_one_postgres_table_deliver_every_row_once() -> None:
    with postgres_outbox() as (dsn, table):
        async with (
            running_router(
                heartbeat_seconds=0.05,
                outbox_dsn=dsn,
                outbox_table=table,
                outbox_poll_seconds=0.05,
                memory_partitions=3,
            ) as router,
            router.stream(auth("u1", novels=[f"n{n}" for n in range(8)])) as stream,
        ):
            second = Relay(
                lambda: PostgresOutbox(dsn, table, parts=RelaySettings().parts),
                router.running.hub.bus,
                RelaySettings(poll_seconds=0.05),
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(second.run)
                for start in range(0, 80, 10):
                    batch = [content(f"n{n % 8}", n) for n in range(start, start + 10)]
                    await trio.to_thread.run_sync(postgres_business_transaction, dsn, table, batch)
                await stream.events_count(80)
                await router.running.hub.adapter.wait_consumed(80)
                nursery.cancel_scope.cancel()
            await router.flush(stream)
        assert second.stats.published > 0  # the second relay did take part
        stats = router.running.hub.adapter.stats
        assert stats.consumed == 80 + 1  # every row once (and the test's marker): none twice
        assert not stats.rejected
        got = by_novel(stream.data())
        assert sorted(v for versions in got.values() for v in versions) == list(range(80))
        assert all(versions == sorted(versions) for versions in got.values())


def test_a_control_row_holds_back_the_later_rows_of_every_other_part_until_it_is_published() -> (
    None
):
    """Parts are relayed each on its own, so without a barrier an event of n1 written after a
    revocation of n1 could reach the bus, and a user, before the revocation does."""
    revoke = {"control": "revoke", "user_id": "u1", "novel_id": "n1", "issued_at": _NOW}
    with postgres_outbox() as (dsn, table):
        rows = [content("n1", 1), revoke, content("n1", 2), content("n2", 3)]
        postgres_business_transaction(dsn, table, rows)
        store = PostgresOutbox(dsn, table, parts=16)
        try:
            claimable = _claimable_by_part(store)
            control_part = next(p for p, ids in claimable.items() if 2 in ids)
            assert all(control_part != part for part, ids in claimable.items() if 3 in ids)
            assert sorted(i for ids in claimable.values() for i in ids) == [1, 2]
            claim = store.claim(control_part, 100)
            assert claim is not None
            store.settle(claim)  # the control is on the bus: what follows it may go
            claimable = _claimable_by_part(store)
            assert sorted(i for ids in claimable.values() for i in ids) == [1, 3, 4]
        finally:
            store.close()


_NOW = "2026-12-01T12:00:00Z"


def _claimable_by_part(store: PostgresOutbox) -> dict[int, list[int]]:
    """The ids each part would give a relay now (given back at once)."""
    claimable = {}
    for part in range(store.parts):
        claim = store.claim(part, 100)
        assert claim is not None
        claimable[part] = [row_id for row_id, _ in claim.rows]
        store.abandon(claim)
    return claimable


class WatchedBus(MemoryBus):
    """The memory bus, saying when a publish has begun (and may be waiting for room)."""

    def __init__(self, **settings: int) -> None:
        super().__init__(**settings)
        self.publishing = trio.Event()

    async def publish(self, envelopes: Sequence[Envelope]) -> list[EventIdentity]:
        self.publishing.set()
        return await super().publish(envelopes)


async def test_a_relay_cancelled_while_its_publish_waits_for_a_full_bus_still_stops(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """The publish is shielded (a publish must not be left half-known), but only for a while:
    cancelled while the bus has no room, the relay gives the rows back and ends."""
    bus = WatchedBus(partitions=1, capacity=1)
    await bus.publish([parse_envelope(content("n1", 0))])  # the one place is taken: full
    bus.publishing = trio.Event()
    with sqlite_outbox(tmp_path) as dsn:
        sqlite_business_transaction(dsn, [content("n1", 1)])
        relay = Relay(lambda: SqliteOutbox(dsn.removeprefix("sqlite:///"), "sse_outbox"), bus)
        stopped = trio.Event()
        relay_scope = trio.CancelScope()

        async def run_relay() -> None:
            with relay_scope:
                await relay.run()
            stopped.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_relay)
            await bus.publishing.wait()
            relay_scope.cancel()
            with trio.move_on_after(60):
                await stopped.wait()
            cut_short = stopped.is_set()
            if not cut_short:  # make room, so that the test itself can end
                async with aclosing(bus.read(None)) as batches:
                    await batches.__anext__()
                    await stopped.wait()
        assert cut_short, "the relay's shielded publish outlived its cancellation"
        assert relay.stats.published == 0
        with sqlite3.connect(dsn.removeprefix("sqlite:///")) as db:  # given back, not lost
            assert db.execute("SELECT count(*) FROM sse_outbox").fetchone() == (1,)
