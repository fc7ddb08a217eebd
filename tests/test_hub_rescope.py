"""Hub.rescope with the hub's actors running: a widened filter while events are published gets
every event after its cursor once, a narrowed principal stops at once, and a session changed
before it first ran loses nothing."""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing

from actors.session import CloseReason
from router.cache.memory import MemoryReplayCache
from router.core.cursor import EventIdentity
from router.core.permissions import Principal, StreamFilter
from tests.actor_helpers import Reader
from tests.test_hub import (
    GUARD_SECONDS,
    SlowCache,
    attach,
    client,
    content,
    identities,
    open_session,
    running_hub,
    settle,
)

NOVELS = [f"n{k}" for k in range(8)]


@pytest.mark.parametrize("cache_class", [MemoryReplayCache, SlowCache])
@pytest.mark.parametrize("checkpoints_before_rescope", [0, 1, 3, 7])
async def test_a_widened_filter_while_publishing_gets_every_event_after_its_cursor_once(
    cache_class: type[MemoryReplayCache],
    checkpoints_before_rescope: int,
    autojump_clock: trio.abc.Clock,
) -> None:
    published: list[EventIdentity] = []

    async def publish(hub_: object, numbers: range) -> None:
        for n in numbers:
            published.extend(await hub.publish([content(NOVELS[n % 8], n)]))
            await trio.lowlevel.checkpoint()

    async with running_hub(partitions=4, cache_class=cache_class) as (hub, nursery):
        session, reader = await attach(hub, nursery, client("u1", NOVELS, novel_filter=NOVELS[:4]))
        await publish(hub, range(20))
        async with trio.open_nursery() as during:
            during.start_soon(publish, hub, range(20, 60))
            for _ in range(checkpoints_before_rescope):
                await trio.lowlevel.checkpoint()
            at = session.cursor
            assert at is not None
            await hub.rescope(
                session, session.principal, StreamFilter(), expires_at=session.expires_at
            )
        await publish(hub, range(60, 70))
        await settle()
        session.stop(CloseReason.CLIENT)
        with trio.fail_after(GUARD_SECONDS):
            await reader.closed.wait()
    got = [str(identity) for identity in identities(reader)]
    assert len(got) == len(set(got))  # nothing twice
    by_number = dict(zip(map(str, published), range(70), strict=True))
    wanted = {
        str(identity)
        for identity, n in zip(published, range(70), strict=True)
        if n % 8 < 4 or not at.covers(identity)
    }
    assert set(got) == wanted  # nothing missing: what it followed, and the rest after its cursor
    numbers = [by_number[g] for g in got]
    for k in range(8):  # each novel's events in the order they were published
        mine = [n for n in numbers if n % 8 == k]
        assert mine == sorted(mine)


async def test_a_narrowed_principal_writes_nothing_of_what_it_lost_even_queued(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_hub() as (hub, _):
        opened = await open_session(hub, client("u1", ["n1", "n2"]))
        session, output = opened.session, opened.output
        assert output is not None
        await hub.publish([content("n1", 0), content("n2", 1)])
        await hub.adapter.wait_consumed(2)
        await settle()  # nobody reads: the hello waits in the output, this write in flight
        await hub.publish([content(f"n{n % 2 + 1}", n) for n in range(2, 22)])
        await hub.adapter.wait_consumed(22)
        await settle()  # queued in the session's inbox, for the principal it had
        narrowed = Principal("u1", frozenset({"n2"}))
        await hub.rescope(session, narrowed, StreamFilter(), expires_at=session.expires_at)
        await hub.publish([content("n1", 100), content("n2", 101)])
        async with trio.open_nursery() as nursery:
            reader = Reader(output)
            nursery.start_soon(reader.run)
            await hub.adapter.wait_consumed(24)
            await settle()
            session.stop(CloseReason.CLIENT)
    got = [(d["novel_id"], d["content_version"]) for d in reader.data() if "novel_id" in d]
    assert got == [("n1", 0), ("n2", 1)] + [("n2", n) for n in range(3, 22, 2)] + [("n2", 101)]


async def test_a_session_has_its_position_as_cursor_before_it_first_runs(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A rescope right after Hub.open, before the session ran, replays from where it opened:
    without the cursor then, it would replay nothing, and lose what its new filter admits."""
    async with running_hub() as (hub, nursery):
        await hub.publish([content("n1", 0)])
        await hub.adapter.wait_consumed(1)
        opened = await hub.open(
            Principal("u1", frozenset({"n1"})),
            StreamFilter(),
            expires_at=time.time() + 3600,
        )
        assert opened.session.cursor == hub.position()
        nursery.cancel_scope.cancel()
