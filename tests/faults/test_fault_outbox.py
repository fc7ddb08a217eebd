"""The outbox relay killed between publishing rows and settling them (docs/outbox.md)."""

from __future__ import annotations

import json
import random
import signal
from typing import Any

import psycopg
import redis
import trio

from tests.faults.harness import Behaviour, Frontend, RouterProcess, Run, now, router_processes
from tests.faults.oracle import Published
from tests.outbox_helpers import postgres_business_transaction, postgres_outbox
from tests.redis_helpers import REDIS_URL, delete_prefix, new_prefix

CATCH_ATTEMPTS = 400
"""Freezes of the relay's process before the test gives up catching it between publish and
settle (each freeze looks, frozen, whether a row on the bus is still in the table)."""


def caught_between_publish_and_settle(dsn: str, table: str, streams: tuple[str, ...]) -> bool:
    """With the relay frozen: is a row published on the bus and still in its table?"""
    with psycopg.connect(dsn) as db:
        pending = {f"outbox:{table}:{row[0]}" for row in db.execute(f"SELECT id FROM {table}")}
    if not pending:
        return False
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for stream in streams:
            for _, fields in client.xrevrange(stream, count=200):
                if json.loads(fields[b"envelope"]).get("event_id") in pending:
                    return True
    finally:
        client.close()
    return False


def copies_on_the_bus(streams: tuple[str, ...]) -> int:
    """Entries on the bus that repeat an earlier entry's ``event_id``: the relay's second sends."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        ids = [
            json.loads(fields[b"envelope"]).get("event_id")
            for stream in streams
            for _, fields in client.xrange(stream)
        ]
    finally:
        client.close()
    return len(ids) - len(set(ids))


async def test_a_relay_killed_between_publish_and_settle_duplicates_nothing_for_clients(
    redis_bus_settings: dict[str, Any],
) -> None:
    """Rows are committed while the relay works; its process is frozen until it is caught with
    rows on the bus but not yet settled, then killed there. Restarted in place, it publishes those
    rows again; the router drops the copies, and no tab sees an event twice."""
    prefix = new_prefix()
    run = Run("outbox relay killed before settle", seed=1440)
    rng = random.Random(1440)
    with postgres_outbox() as (dsn, table), router_processes() as routers:
        shared = {**redis_bus_settings, "cache": "redis", "redis_key_prefix": prefix}
        relaying = {**shared, "outbox_dsn": dsn, "outbox_table": table, "outbox_poll_seconds": 0.05}
        relay, other = RouterProcess(relaying), RouterProcess(shared)
        routers += [relay, other]
        await relay.start()
        await other.start()
        run.publish_through(lambda: other.url)  # unused: events come through the table
        frontend = Frontend(run.rng, relay.url, other.url)
        run.make_tabs(lambda spec: Behaviour(away_seconds=0.1))

        async def write_rows(batches: int) -> None:
            for _ in range(batches):
                drawn = [run.population.next_event() for _ in range(5)]
                sent_at = now()
                await trio.to_thread.run_sync(
                    postgres_business_transaction, dsn, table, [body for _, body in drawn]
                )
                acked_at = now()
                for record, _ in drawn:
                    run.publisher.published.append(
                        Published(record.key, record.event, record.scope, sent_at, acked_at)
                    )
                await trio.sleep(0.005)

        try:
            async with trio.open_nursery() as nursery:
                run.start(nursery, frontend)
                await run.all_connected()
                await write_rows(20)
                writing = trio.Event()

                async def write_throughout() -> None:
                    await write_rows(60)
                    writing.set()

                nursery.start_soon(write_throughout)
                caught = False
                for _ in range(CATCH_ATTEMPTS):
                    relay.signal(signal.SIGSTOP)
                    caught = await trio.to_thread.run_sync(
                        caught_between_publish_and_settle,
                        dsn,
                        table,
                        redis_bus_settings["redis_streams"],
                    )
                    if caught:
                        frontend.urls.remove(relay.url)
                        relay.signal(signal.SIGKILL)
                        relay.signal(signal.SIGCONT)
                        break
                    relay.signal(signal.SIGCONT)
                    await trio.sleep(rng.uniform(0, 0.01))
                assert caught, f"never caught between publish and settle in {CATCH_ATTEMPTS} tries"
                run.mark("relay killed between publish and settle")
                await relay.wait()
                await relay.start()  # in place: its relay publishes the unsettled rows again
                frontend.urls.append(relay.url)
                run.mark("relay restarted")
                with trio.fail_after(60):  # waiting for: the rows written meanwhile
                    await writing.wait()
                await write_rows(10)
                await run.settle()
                nursery.cancel_scope.cancel()
            copies = copies_on_the_bus(redis_bus_settings["redis_streams"])
        finally:
            delete_prefix(REDIS_URL, prefix)
    print(f"rows published twice on the bus (the fault took effect): {copies}")
    run.report()
    assert copies > 0, "the kill left no row to publish again: the fault was not injected"
