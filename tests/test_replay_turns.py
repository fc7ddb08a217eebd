"""A reconnect storm's replays take turns (``HubSettings.replay_concurrency``), and a replay's
entries are let go of once written: a storm of N resumes from before a full cache never holds N
copies of it at once, nor keeps any copy for the rest of its streams' lives.

Under trio's autojump clock, through the hub's real actors and the embedded bus and cache.
"""

from __future__ import annotations

import gc
import weakref

import trio
import trio.testing

from actors.hub import Hub, Opened
from actors.session import CloseReason
from router.cache.memory import MemoryReplayCache
from router.core.cursor import Cursor
from router.core.history import Entry, Replay
from tests.actor_helpers import Reader
from tests.test_hub import (
    GUARD_SECONDS,
    SlowCache,
    client,
    labels,
    notice,
    open_session,
    running_hub,
)

settle = trio.testing.wait_all_tasks_blocked


class EntryList(list[Entry]):
    """A list a test can hold a weak reference to (a plain list takes none)."""


class WatchedCache(MemoryReplayCache):
    """The embedded cache, each replay's entries a list of their own that the test can watch."""

    watched: list[weakref.ref[EntryList]]

    async def replay(self, after: Cursor, up_to: Cursor | None) -> Replay:
        replay = await super().replay(after, up_to)
        entries = EntryList(replay.entries)
        self.watched.append(weakref.ref(entries))
        return Replay(entries, replay.truncated, replay.unavailable)


async def publish_notices(hub: Hub, count: int, first: int = 0) -> None:
    for n in range(first, first + count):
        await hub.publish([notice(f"n{n}")])
    await settle()


async def test_a_reconnect_storm_replays_a_few_at_a_time_and_every_client_gets_everything(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Ten resumes from before 40 events, three turns: while no client reads, three sessions
    hold a replay and the other seven wait unregistered; once they read, every client gets
    every event once, those published during the storm included."""
    async with running_hub(replay_concurrency=3) as (hub, nursery):
        before = hub.position()
        await publish_notices(hub, 40)
        opened: list[Opened] = []

        async def resume() -> None:
            opened.append(await open_session(hub, client("u1"), before))

        for _ in range(10):
            nursery.start_soon(resume)
        await settle()
        # Nobody reads: each of three sessions waits on its first write, its turn held.
        assert len(opened) == 3
        assert len(hub.registry) == 3
        await publish_notices(hub, 5, first=40)  # live for three, replayed for the others

        readers: list[Reader] = []
        with trio.fail_after(GUARD_SECONDS):
            while len(readers) < 10:
                while len(readers) < len(opened):
                    output = opened[len(readers)].output
                    assert output is not None
                    readers.append(Reader(output))
                    nursery.start_soon(readers[-1].run)
                await trio.sleep(1)  # the mock clock jumps once everyone waits
        await publish_notices(hub, 5, first=45)
        for reader_opened in opened:
            reader_opened.session.stop(CloseReason.CLIENT)
        with trio.fail_after(GUARD_SECONDS):
            for reader in readers:
                await reader.closed.wait()

    expected = {f"n{n}": 1 for n in range(50)}
    for reader in readers:
        assert labels(reader) == expected


async def test_a_session_lets_go_of_its_replay_once_written_and_streams_on(
    autojump_clock: trio.abc.Clock,
) -> None:
    """After its replay is written, nothing in the hub or the session refers to its entries
    any more, while the stream stays open and live events still reach it."""
    WatchedCache.watched = []
    async with running_hub(cache_class=WatchedCache) as (hub, nursery):
        before = hub.position()
        await publish_notices(hub, 20)
        opened = await open_session(hub, client("u1"), before)
        assert opened.output is not None
        reader = Reader(opened.output)
        nursery.start_soon(reader.run)
        session = opened.session
        del opened  # what the transport keeps of it is the session
        await settle()
        gc.collect()
        assert [entries() for entries in WatchedCache.watched] == [None]

        await publish_notices(hub, 1, first=20)
        session.stop(CloseReason.CLIENT)
        with trio.fail_after(GUARD_SECONDS):
            await reader.closed.wait()
    assert labels(reader) == {f"n{n}": 1 for n in range(21)}


async def test_a_resume_whose_client_leaves_mid_replay_gives_its_turn_to_the_next(
    autojump_clock: trio.abc.Clock,
) -> None:
    """One turn: the first resume's client never reads and leaves; the second resume, which
    waited for the turn, is then served all of its replay."""
    async with running_hub(replay_concurrency=1) as (hub, nursery):
        before = hub.position()
        await publish_notices(hub, 10)
        first = await open_session(hub, client("u1"), before)
        second: list[Opened] = []

        async def resume() -> None:
            second.append(await open_session(hub, client("u2"), before))

        nursery.start_soon(resume)
        await settle()
        assert second == []  # waiting for the turn the first holds

        first.session.stop(CloseReason.CLIENT)
        assert first.output is not None
        await first.output.aclose()  # the client is gone: its writes fail
        with trio.fail_after(GUARD_SECONDS):
            while not second:
                await trio.sleep(1)  # the mock clock jumps: a turn never given back fails
        assert second[0].output is not None
        reader = Reader(second[0].output)
        nursery.start_soon(reader.run)
        await settle()
        second[0].session.stop(CloseReason.CLIENT)
        with trio.fail_after(GUARD_SECONDS):
            await reader.closed.wait()
    assert labels(reader) == {f"n{n}": 1 for n in range(10)}


async def test_resumes_from_one_cursor_share_one_encoding_of_each_slice(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Twenty resumes from before 150 events and five from after the first 10, four turns:
    each slice of each replay is encoded once (three slices each: 150 and 140 entries), not once
    per client, every client gets every event once, and the memo holds nothing after."""
    async with running_hub(replay_concurrency=4) as (hub, nursery):
        before = hub.position()
        await publish_notices(hub, 10)
        middle = hub.position()
        await publish_notices(hub, 140, first=10)
        opened: list[tuple[Opened, int]] = []

        async def resume(cursor: Cursor, first: int) -> None:
            opened.append((await open_session(hub, client("u1"), cursor), first))

        for n in range(25):
            nursery.start_soon(resume, *((before, 0) if n % 5 else (middle, 10)))
        readers: list[tuple[Reader, int]] = []
        with trio.fail_after(GUARD_SECONDS):
            while len(readers) < 25:
                while len(readers) < len(opened):
                    session, first = opened[len(readers)]
                    assert session.output is not None
                    readers.append((Reader(session.output), first))
                    nursery.start_soon(readers[-1][0].run)
                await trio.sleep(1)
        await settle()
        assert hub.replay_memo.encodings == 3 + 3
        assert len(hub.replay_memo) == 0
        assert hub.replay_memo.held == 0
        for session, _ in opened:
            session.session.stop(CloseReason.CLIENT)
        with trio.fail_after(GUARD_SECONDS):
            for reader, _ in readers:
                await reader.closed.wait()
    for reader, first in readers:
        assert labels(reader) == {f"n{n}": 1 for n in range(first, 150)}


class CountingCache(SlowCache):
    """A cache with a networked one's checkpoints, counting its replays."""

    replays = 0

    async def replay(self, after: Cursor, up_to: Cursor | None) -> Replay:
        CountingCache.replays += 1
        return await super().replay(after, up_to)


async def test_resumes_from_one_cursor_at_once_are_answered_by_one_cache_read(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Eight resumes from one cursor, registered with nothing routed between them: one read
    of the cache answers them all, and each gets every event once."""
    CountingCache.replays = 0
    async with running_hub(cache_class=CountingCache, replay_concurrency=8) as (hub, nursery):
        before = hub.position()
        await publish_notices(hub, 30)
        opened: list[Opened] = []

        async def resume() -> None:
            opened.append(await open_session(hub, client("u1"), before))

        async with trio.open_nursery() as storm:
            for _ in range(8):
                storm.start_soon(resume)
        assert CountingCache.replays == 1
        readers = []
        for session in opened:
            assert session.output is not None
            readers.append(Reader(session.output))
            nursery.start_soon(readers[-1].run)
        await settle()
        for session in opened:
            session.session.stop(CloseReason.CLIENT)
        with trio.fail_after(GUARD_SECONDS):
            for reader in readers:
                await reader.closed.wait()
    for reader in readers:
        assert labels(reader) == {f"n{n}": 1 for n in range(30)}
