"""The hub's actors together, without HTTP: routing, the resume hand-over, shutdown, failures.

Everything runs under trio's autojump clock: waiting is for something to happen (a stream ends,
every task is blocked), and the ``fail_after`` guards only turn a hang into a prompt failure.
"""

from __future__ import annotations

import contextvars
import logging
import socket
import time
from collections import Counter, defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
import trio_asyncio

import actors.adapter
import router.core.mapping
from actors.adapter import Failure
from actors.hub import Hub, HubSettings, Opened, ReplayUnavailableError
from actors.session import CloseReason, Offer, Session, SessionSettings
from router.bus.base import Record
from router.bus.memory import MemoryBus
from router.cache.memory import MemoryReplayCache
from router.cache.redis import RedisReplayCache
from router.config import Settings
from router.core.cursor import (
    Cursor,
    CursorError,
    EventIdentity,
    Offset,
    parse_cursor,
    parse_identity,
)
from router.core.envelope import Envelope, parse_envelope
from router.core.history import Entry, Replay
from router.core.observer import NoObserver, Transport
from router.core.permissions import Principal, StreamFilter
from router.core.schema import MAX_TEXT_LENGTH
from router.core.sse import SSEMessage
from tests.actor_helpers import Reader
from tests.redis_helpers import new_prefix

GUARD_SECONDS = 600
settle = trio.testing.wait_all_tasks_blocked


def envelope(event_type: str, scope: dict[str, Any], **payload: Any) -> Envelope:
    return parse_envelope(
        {
            "event_type": event_type,
            "occurred_at": "2026-11-28T10:00:00Z",
            "scope": scope,
            "payload": payload,
        }
    )


def content(novel_id: str, version: int, **scope: str) -> Envelope:
    return envelope(
        "Content.Updated",
        {"novel_id": novel_id, **scope},
        novel_id=novel_id,
        content_version=version,
    )


def progress(user_id: str, task_id: str, **scope: str) -> Envelope:
    return envelope(
        "Task.ProgressUpdated", {"user_id": user_id, **scope}, task_id=task_id, progress=50
    )


def status(scope: dict[str, str], task_id: str) -> Envelope:
    return envelope(
        "Task.StatusChanged", scope, task_id=task_id, old_status="running", new_status="done"
    )


def notice(title: str) -> Envelope:
    return envelope(
        "System.NotificationSent", {"broadcast": True}, level="info", title=title, message="hi"
    )


@dataclass(frozen=True)
class Client:
    """What a client asks the hub for; :meth:`Hub.open` makes its session."""

    principal: Principal
    stream_filter: StreamFilter
    connection_id: str
    settings: SessionSettings | None


def client(
    user_id: str,
    novels: Iterable[str] = (),
    session_id: str | None = None,
    novel_filter: Iterable[str] = (),
    connection_id: str | None = None,
    **settings: Any,
) -> Client:
    return Client(
        Principal(user_id, frozenset(novels), session_id),
        StreamFilter(novel_ids=frozenset(novel_filter)),
        connection_id or user_id,
        SessionSettings(**settings) if settings else None,
    )


async def open_session(hub: Hub, asked: Client, resume_from: Cursor | None = None) -> Opened:
    return await hub.open(
        asked.principal,
        asked.stream_filter,
        expires_at=time.time() + 30 * 86400,  # far beyond anything the mock clock reaches here
        resume_from=resume_from,
        connection_id=asked.connection_id,
        settings=asked.settings,
    )


class SlowCache(MemoryReplayCache):
    """The embedded cache, with the checkpoints a networked one would have around each call."""

    async def append(self, entries: Sequence[Entry]) -> None:
        await trio.lowlevel.checkpoint()
        await super().append(entries)
        await trio.lowlevel.checkpoint()

    async def replay(self, after: Cursor, up_to: Cursor | None) -> Replay:
        await trio.lowlevel.checkpoint()
        replay = await super().replay(after, up_to)
        await trio.lowlevel.checkpoint()
        return replay


@asynccontextmanager
async def running_hub(
    *,
    partitions: int = 1,
    bus_capacity: int = 10_000,
    cache_class: type[MemoryReplayCache] = MemoryReplayCache,
    cache_events: int = 100_000,
    bus: MemoryBus | None = None,
    **hub_settings: Any,
) -> AsyncIterator[tuple[Hub, trio.Nursery]]:
    # A bus given here may not answer yet: its cache then learns the epoch from the first event.
    epoch = None
    if bus is None:
        bus = MemoryBus(partitions=partitions, capacity=bus_capacity)
        epoch = await bus.epoch()
    cache = cache_class(max_events=cache_events, source="memory", epoch=epoch)
    hub = Hub(bus, cache, HubSettings(**hub_settings))
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        yield hub, nursery
        nursery.cancel_scope.cancel()


async def attach(
    hub: Hub, nursery: trio.Nursery, asked: Client, resume_from: Cursor | None = None
) -> tuple[Session, Reader]:
    """The session the hub made for ``asked``, and a reader of its output, reading."""
    opened = await open_session(hub, asked, resume_from)
    assert opened.output is not None
    reader = Reader(opened.output)
    nursery.start_soon(reader.run)
    return opened.session, reader


def labels(reader: Reader) -> Counter[str]:
    """What a client got, one label per event: a task, a content version, a notice, an error."""
    got: Counter[str] = Counter()
    for event in reader.data():
        label = next(
            event[k] for k in ("task_id", "content_version", "title", "code") if k in event
        )
        got[str(label)] += 1
    return got


def versions(reader: Reader) -> list[int]:
    return [int(str(d["content_version"])) for d in reader.data() if "content_version" in d]


def identities(reader: Reader) -> list[EventIdentity]:
    return [parse_identity(str(d["event_id"])) for d in reader.data() if "event_id" in d]


# -- routing ---------------------------------------------------------------------------------------


async def test_each_event_reaches_exactly_the_sessions_it_is_for(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_hub(partitions=3) as (hub, nursery):
        asks = [
            client("alice", novels={"n1"}, session_id="s-a"),
            client("bob", novels={"n2"}, session_id="s-b"),
            client("carol", novels={"n1", "n2"}, novel_filter={"n2"}),
        ]
        attached = {a.connection_id: await attach(hub, nursery, a) for a in asks}
        await hub.publish(
            [
                progress("alice", "alice-task"),
                content("n1", 1),  # alice; carol may read n1 but asked for n2 only
                content("n2", 2),
                status({"session_id": "s-b"}, "bob-session-task"),
                # a user sees the events of all their sessions, when the event says whose
                status({"user_id": "alice", "session_id": "s-b"}, "alice-other-session-task"),
                content("n1", 3, user_id="bob"),  # bob may not read n1: nobody
                progress("dave", "dave-task"),  # nobody connected
                content("n9", 4),  # nobody reads n9
                status({"session_id": "s-z"}, "nobody-session-task"),
                notice("maintenance"),
            ]
        )
        await settle()
        for subject, _ in attached.values():
            subject.stop(CloseReason.CLIENT)
    assert {name: labels(reader) for name, (_, reader) in attached.items()} == {
        "alice": Counter(["alice-task", "1", "alice-other-session-task", "maintenance"]),
        "bob": Counter(["2", "bob-session-task", "maintenance"]),
        "carol": Counter(["2", "maintenance"]),
    }
    assert hub.adapter.stats.offers == Counter({Offer.QUEUED: 4 + 3 + 2})


@pytest.mark.parametrize("count", [10, 1000])
async def test_a_targeted_event_is_checked_against_its_sessions_only(
    count: int, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    """The registry's index finds the candidates: the work per event does not grow with the
    number of sessions connected."""
    checked: list[str] = []
    admits = actors.adapter.admits

    def counting_admits(message: SSEMessage, principal: Principal, f: StreamFilter) -> bool:
        checked.append(principal.user_id)
        return admits(message, principal, f)

    monkeypatch.setattr(actors.adapter, "admits", counting_admits)
    async with running_hub(partitions=4) as (hub, nursery):
        asks = [client(f"u{n}", {f"n{n % 10}"}, f"s{n}") for n in range(count)]
        readers = [(await attach(hub, nursery, asked))[1] for asked in asks]
        offers = hub.adapter.stats.offers

        await hub.publish([progress("u7", "for-u7")])
        await settle()
        assert (checked, offers) == (["u7"], Counter({Offer.QUEUED: 1}))

        await hub.publish([status({"session_id": "s3"}, "for-s3")])
        await settle()
        assert (checked[1:], offers) == (["u3"], Counter({Offer.QUEUED: 2}))

        await hub.publish([content("n4", 1)])  # a novel's readers: one in ten
        await settle()
        assert len(checked) == 2 + count // 10
        assert offers == Counter({Offer.QUEUED: 2 + count // 10})
        hub.close_sessions()
        with trio.fail_after(GUARD_SECONDS):
            for reader in readers:
                await reader.closed.wait()
    assert labels(readers[7]) == Counter(["for-u7", "server-shutdown"])
    assert labels(readers[3]) == Counter(["for-s3", "server-shutdown"])
    assert labels(readers[4]) == Counter(["1", "server-shutdown"])
    assert labels(readers[5]) == Counter(["server-shutdown"])


class CountingObserver(NoObserver):
    def __init__(self) -> None:
        self.opened_streams = 0

    def opened(self, transport: Transport) -> None:
        self.opened_streams += 1


async def test_the_hub_makes_each_session_with_its_settings_observer_and_cursor(
    autojump_clock: trio.abc.Clock,
) -> None:
    """What a session is built with comes from the hub: its settings (``--session-buffer``
    among them), the hub's observer, and the cursor it resumes from, at construction."""
    bus = MemoryBus()
    cache = MemoryReplayCache(max_events=100, source="memory", epoch=await bus.epoch())
    own = SessionSettings(session_buffer=3, retry_ms=1234)
    observer = CountingObserver()
    hub = Hub(bus, cache, HubSettings(session=own), observer=observer)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        (written,) = await hub.publish([content("n1", 1)])
        await settle()
        opened = await open_session(hub, client("u1", {"n1"}), Cursor.of(written))
        assert opened.session.settings is own
        assert opened.session.observer is observer
        assert opened.session.cursor == Cursor.of(written)
        assert opened.session.connection_id == "u1"
        assert list(hub.registry) == [opened.session]
        elsewhere = await open_session(hub, client("u2"), parse_cursor("memory@other:0:0"))
        assert elsewhere.session.cursor is None  # another history: replayed as truncated
        asked = SessionSettings(session_buffer=9)
        assert (await open_session(hub, client("u3", session_buffer=9))).session.settings == asked
        await settle()
        assert observer.opened_streams == 3
        assert opened.output is not None
        assert (await opened.output.receive()).startswith(b"retry: 1234\n")
        nursery.cancel_scope.cancel()


# -- the resume hand-over --------------------------------------------------------------------------

NOVELS = [f"n{k}" for k in range(8)]


@pytest.mark.parametrize("cache_class", [MemoryReplayCache, SlowCache], ids=["memory", "slow"])
@pytest.mark.parametrize("checkpoints_before_open", [0, 1, 2, 5, 11, 40])
async def test_a_resume_continues_with_no_gap_and_no_duplicate(
    cache_class: type[MemoryReplayCache],
    checkpoints_before_open: int,
    autojump_clock: trio.abc.Clock,
) -> None:
    """Two successive sessions of one client, the second resuming from the first's last id: what
    they got together is every event exactly once, in order in each partition, although events
    are published before, during and after the second one is attached."""
    published: list[EventIdentity] = []

    async def publish(hub: Hub, numbers: range) -> None:
        for n in numbers:
            published.extend(await hub.publish([content(NOVELS[n % 8], n)]))
            await trio.lowlevel.checkpoint()

    async with running_hub(partitions=4, cache_class=cache_class) as (hub, nursery):
        first, first_reader = await attach(hub, nursery, client("u1", NOVELS))
        await publish(hub, range(20))
        await settle()
        published.extend(await hub.publish([content(NOVELS[n % 8], n) for n in range(20, 30)]))
        first.stop(CloseReason.CLIENT)  # probably before it got all of those
        with trio.fail_after(GUARD_SECONDS):
            await first_reader.closed.wait()
        last_id = first_reader.events[-1].last_event_id

        await publish(hub, range(30, 40))  # while no session is attached
        async with trio.open_nursery() as during:
            during.start_soon(publish, hub, range(40, 70))
            for _ in range(checkpoints_before_open):
                await trio.lowlevel.checkpoint()
            opened = await open_session(hub, client("u1", NOVELS), parse_cursor(last_id))
            assert opened.output is not None
            second, replay = opened.session, opened.replay
            second_reader = Reader(opened.output)
            nursery.start_soon(second_reader.run)
        await publish(hub, range(70, 80))
        await settle()
        second.stop(CloseReason.CLIENT)
        with trio.fail_after(GUARD_SECONDS):
            await second_reader.closed.wait()

    assert replay is not None
    assert not replay.truncated
    got = identities(first_reader) + identities(second_reader)
    assert sorted(map(str, got)) == sorted(map(str, published))  # each one, once
    assert len(got) == len(published) == 80
    per_partition: defaultdict[str, list[int]] = defaultdict(list)
    for identity in got:
        per_partition[identity.partition].append(identity.offset[0])
    assert len(per_partition) > 1
    for offsets in per_partition.values():
        assert offsets == list(range(len(offsets)))
    for k in range(8):  # one novel's versions in the order they were published
        mine = [v for v in versions(first_reader) + versions(second_reader) if v % 8 == k]
        assert mine == list(range(k, 80, 8))
    final = parse_cursor(second_reader.events[-1].last_event_id)
    assert all(final.covers(identity) for identity in published)


# -- stopping --------------------------------------------------------------------------------------


async def test_close_sessions_says_goodbye_to_everyone_and_empties_the_registry(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_hub() as (hub, nursery):
        asks = [client(f"u{n}", {"n1"}, shutdown_retry_ms=700) for n in range(5)]
        attached = [await attach(hub, nursery, asked) for asked in asks]
        sessions = [subject for subject, _ in attached]
        readers = [reader for _, reader in attached]
        opened = await open_session(hub, client("u9", {"n1"}, goodbye_timeout_seconds=2.0))
        stalled, stalled_output = opened.session, opened.output  # nobody ever reads it
        assert stalled_output is not None
        await hub.publish([content("n1", 1)])
        await settle()
        assert len(hub.registry) == 6
        started = trio.current_time()
        hub.close_sessions()
        with trio.fail_after(GUARD_SECONDS):
            for reader in readers:
                await reader.closed.wait()
            await stalled.finished.wait()
        assert stalled not in list(hub.registry)  # gone by the time anyone hears it finished
        await settle()
        assert len(hub.registry) == 0
        # The stalled client held the shutdown up for its goodbye timeout, and no longer.
        assert trio.current_time() - started <= 2.0
    for subject, reader in zip(sessions, readers, strict=True):
        assert subject.close_reason is CloseReason.SERVER_SHUTDOWN
        assert [e.event for e in reader.events] == ["content.updated", "sse.error"]
        assert reader.data()[-1]["code"] == "server-shutdown"
        assert reader.events[-1].retry == 700
    assert stalled.close_reason is CloseReason.SERVER_SHUTDOWN
    assert stalled_output.receive_nowait().startswith(b"retry:")
    with pytest.raises(trio.EndOfChannel):  # the event and the goodbye were never read
        stalled_output.receive_nowait()


async def test_cancelling_the_hub_stops_everything_at_once_even_with_stalled_readers(
    autojump_clock: trio.abc.Clock,
) -> None:
    stalled: list[tuple[Session, trio.MemoryReceiveChannel[bytes]]] = []
    with trio.fail_after(GUARD_SECONDS):
        async with running_hub(partitions=2, bus_capacity=4, records_buffer=1) as (hub, nursery):
            for n in range(3):
                opened = await open_session(hub, client(f"u{n}", {"n1", "n2"}))
                assert opened.output is not None
                stalled.append((opened.session, opened.output))
            live, live_reader = await attach(hub, nursery, client("u9", {"n1", "n2"}))

            async def publish_forever() -> None:
                n = 0
                while True:
                    await hub.publish([content(f"n{n % 2 + 1}", n)])
                    n += 1
                    await trio.sleep(0.01)

            nursery.start_soon(publish_forever)
            await trio.sleep(1)
            assert len(versions(live_reader)) > 50
            assert all(subject.close_reason is None for subject, _ in stalled)  # not lagging yet
            started = trio.current_time()
            nursery.cancel_scope.cancel()
    assert trio.current_time() == started  # no timeout was involved in stopping
    assert live.finished.is_set()
    for subject, output in stalled:
        assert subject.close_reason is None  # cut without a goodbye
        assert subject.finished.is_set()
        assert output.receive_nowait().startswith(b"retry:")
        with pytest.raises(trio.EndOfChannel):
            output.receive_nowait()


async def test_a_stalled_session_is_cut_off_as_lagged_and_nobody_else_waits_for_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_hub(partitions=2, bus_capacity=4, records_buffer=1) as (hub, nursery):
        opened = await open_session(hub, client("u1", {"n1", "n2"}, session_buffer=4))
        stalled, stalled_output = opened.session, opened.output  # its reader stopped reading
        assert stalled_output is not None
        live, live_reader = await attach(hub, nursery, client("u2", {"n1", "n2"}))
        all_published = trio.Event()

        async def publish_all() -> None:
            for n in range(500):
                await hub.publish([content(f"n{n % 2 + 1}", n)])
            all_published.set()

        nursery.start_soon(publish_all)
        with trio.fail_after(GUARD_SECONDS):
            await all_published.wait()  # through a bus of 4 per partition: nothing was held up
            await stalled.finished.wait()
        await settle()
        assert stalled.close_reason is CloseReason.LAGGED
        assert list(hub.registry) == [live]
        assert live.close_reason is None
        assert sorted(versions(live_reader)) == list(range(500))
        for k in (0, 1):
            assert [v for v in versions(live_reader) if v % 2 == k] == list(range(k, 500, 2))
        assert hub.adapter.stats.offers[Offer.DISCONNECTED] == 1
        # Its stream ended: the retry hint it had, and nothing after (the goodbye gave up).
        assert stalled_output.receive_nowait().startswith(b"retry:")
        with pytest.raises(trio.EndOfChannel):
            stalled_output.receive_nowait()
        live.stop(CloseReason.CLIENT)


class SlowLink(Reader):
    """A client on a slow link: it takes each chunk, then as long as ``bytes_per_second`` needs
    for it before it takes the next."""

    def __init__(self, receive: trio.MemoryReceiveChannel[bytes], bytes_per_second: int) -> None:
        super().__init__(receive)
        self.bytes_per_second = bytes_per_second

    async def run(self) -> None:
        async with self.receive:
            async for chunk in self.receive:
                self.raw += chunk
                await trio.sleep(len(chunk) / self.bytes_per_second)
        self.closed.set()


def big_notice(n: int) -> Envelope:
    """A notice of about 20 kB on the wire: a title and a message as long as they may be."""
    text = f"{n:05}" + "x" * (MAX_TEXT_LENGTH - 5)
    return envelope(
        "System.NotificationSent", {"broadcast": True}, level="info", title=text, message=text
    )


@pytest.mark.parametrize("bounded_by_bytes", [True, False])
async def test_a_slow_reader_of_big_events_is_cut_by_their_bytes_and_resumes_complete(
    bounded_by_bytes: bool, autojump_clock: trio.abc.Clock
) -> None:
    """Notices of 20 kB, ten a second, to a client that reads 50 kB a second: what waits for it
    passes --session-buffer-bytes (1 MiB) long before --session-buffer's 256 events, and it is
    cut as lagged then; it resumes from its last id with every notice after it, none twice,
    while a client that keeps up gets them all. Without the byte bound the same client is not
    cut by the count before 150 notices."""
    count = 150
    settings = SessionSettings() if bounded_by_bytes else SessionSettings(session_buffer_bytes=None)
    async with running_hub(session=settings) as (hub, nursery):
        fast, fast_reader = await attach(hub, nursery, client("u1"))
        opened = await open_session(hub, client("u2"))
        assert opened.output is not None
        slow, slow_reader = opened.session, SlowLink(opened.output, bytes_per_second=50_000)
        nursery.start_soon(slow_reader.run)
        cut_after = None
        with trio.fail_after(GUARD_SECONDS):
            for n in range(count):
                await hub.publish([big_notice(n)])
                await hub.adapter.wait_consumed(n + 1)
                await settle()
                if cut_after is None and slow.close_reason is not None:
                    cut_after = n + 1
                await trio.sleep(0.1)
            if not bounded_by_bytes:
                while len([d for d in slow_reader.data() if "title" in d]) < count:
                    assert slow.close_reason is None
                    await trio.sleep(1)  # it reads the rest, slowly
                slow.stop(CloseReason.CLIENT)
            await slow_reader.closed.wait()
        had = [str(d["title"])[:5] for d in slow_reader.data() if "title" in d]
        assert had == [f"{n:05}" for n in range(len(had))]
        if bounded_by_bytes:
            assert slow.close_reason is CloseReason.LAGGED
            assert cut_after is not None
            assert settings.session_buffer_bytes is not None
            at_least = 2 * MAX_TEXT_LENGTH  # a notice's bytes: its title and message alone
            bound = settings.session_buffer_bytes
            assert cut_after * at_least > bound  # not before the bytes passed
            assert cut_after < settings.session_buffer  # before the count would have
            assert len(had) < cut_after
            resumed, resumed_reader = await attach(
                hub, nursery, client("u2"), parse_cursor(slow_reader.events[-1].last_event_id)
            )
            await settle()
            resumed.stop(CloseReason.CLIENT)
            with trio.fail_after(GUARD_SECONDS):
                await resumed_reader.closed.wait()
            had += [str(d["title"])[:5] for d in resumed_reader.data() if "title" in d]
        fast.stop(CloseReason.CLIENT)
        with trio.fail_after(GUARD_SECONDS):
            await fast_reader.closed.wait()
    assert had == [f"{n:05}" for n in range(count)]
    assert [str(d["title"])[:5] for d in fast_reader.data()] == [f"{n:05}" for n in range(count)]


# -- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["at once", "mid-stream"])
async def test_a_session_that_fails_is_removed_and_the_hub_carries_on(
    where: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.abc.Clock,
) -> None:
    caplog.set_level(logging.ERROR, logger="actors.hub")
    async with running_hub() as (hub, nursery):
        healthy, healthy_reader = await attach(hub, nursery, client("u1", {"n1"}))
        # The hub made the session, which runs from the next checkpoint on: patched before.
        broken_one = client("u2", {"n1"}, connection_id="broken-one")
        broken, broken_reader = await attach(hub, nursery, broken_one)
        if where == "at once":

            async def fail(*args: object, **kwargs: object) -> None:
                raise RuntimeError("boom")

            monkeypatch.setattr(broken, "run", fail)
        else:

            async def fail_to_write(*args: object) -> None:
                raise RuntimeError("boom")

            monkeypatch.setattr(broken, "_write", fail_to_write)
        await hub.publish([content("n1", 1)])
        with trio.fail_after(GUARD_SECONDS):
            await broken_reader.closed.wait()  # its response ends; it does not hang
        await settle()
        assert broken.close_reason is CloseReason.ERROR
        assert list(hub.registry) == [healthy]
        await hub.publish([content("n1", 2)])
        await settle()
        healthy.stop(CloseReason.CLIENT)
    assert versions(healthy_reader) == [1, 2]
    assert versions(broken_reader) == []
    (logged,) = [r for r in caplog.records if r.name == "actors.hub"]
    assert logged.connection_id == "broken-one"  # type: ignore[attr-defined]  # an extra field
    assert logged.exc_info is not None
    assert logged.exc_info[0] is RuntimeError


async def test_a_failing_replay_lets_the_session_go_and_leaves_the_hub_running(
    autojump_clock: trio.abc.Clock,
) -> None:
    class FailingCache(MemoryReplayCache):
        async def replay(self, after: Cursor, up_to: Cursor | None) -> Replay:
            raise ConnectionError("cache unreachable")

    async with running_hub(cache_class=FailingCache) as (hub, nursery):
        await hub.publish([content("n1", 1)])
        await settle()
        with pytest.raises(ConnectionError):
            await open_session(hub, client("u1", {"n1"}), hub.adapter.cursor)
        assert len(hub.registry) == 0
        fresh, reader = await attach(hub, nursery, client("u1", {"n1"}))
        await hub.publish([content("n1", 2)])
        await settle()
        fresh.stop(CloseReason.CLIENT)
    assert versions(reader) == [2]


async def test_a_record_whose_conversion_or_cursor_fails_is_skipped_and_the_rest_flows(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.abc.Clock,
) -> None:
    """A failure nobody foresaw in one record (a bug in its conversion, a cursor that cannot take
    its position) costs that record only: logged with its position, counted, skipped."""
    to_sse, advance = router.core.mapping.to_sse, router.core.mapping.advance

    def failing_to_sse(envelope: Envelope, identity: EventIdentity, **kwargs: Any) -> Any:
        if envelope.payload.get("content_version") == 13:
            raise RuntimeError("a conversion bug")
        return to_sse(envelope, identity, **kwargs)

    def failing_advance(cursor: Cursor | None, identity: EventIdentity) -> Cursor:
        if identity.offset == (2,):
            raise CursorError("a cursor that cannot take this position")
        return advance(cursor, identity)

    monkeypatch.setattr(router.core.mapping, "to_sse", failing_to_sse)
    monkeypatch.setattr(router.core.mapping, "advance", failing_advance)
    caplog.set_level(logging.ERROR, logger="actors.adapter")
    async with running_hub() as (hub, nursery):
        subject, reader = await attach(hub, nursery, client("u1", {"n1"}))
        # offsets 0, 1 (fails to convert), 2 (fails to advance), 3
        await hub.publish([content("n1", 1), content("n1", 13), content("n1", 2)])
        await hub.publish([content("n1", 3)])  # a later step: the actors are still there
        await settle()
        subject.stop(CloseReason.CLIENT)
    assert versions(reader) == [1, 3]
    assert hub.adapter.stats.consumed == 4
    assert hub.adapter.stats.failures == Counter({Failure.RECORD: 2})
    assert hub.adapter.cursor == parse_cursor(f"memory@{hub.epoch}:0:3")
    logged = [r for r in caplog.records if r.getMessage() == "event failed"]
    assert [r.position for r in logged] == [  # type: ignore[attr-defined]  # an extra field
        f"memory@{hub.epoch}:0:1",
        f"memory@{hub.epoch}:0:2",
    ]
    assert [r.exc_info[0] for r in logged if r.exc_info] == [RuntimeError, CursorError]


@pytest.mark.parametrize("audience", ["one kind", "two kinds", "two audiences"])
async def test_a_session_whose_offer_fails_is_ended_and_the_others_are_served(
    audience: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.abc.Clock,
) -> None:
    caplog.set_level(logging.ERROR, logger="actors.adapter")
    async with running_hub() as (hub, nursery):
        asks = [client("u1", {"n1"}), client("u2", {"n1"}, connection_id="broken-one")]
        asks.append(client("u3", {"n1"}))
        attached = [await attach(hub, nursery, asked) for asked in asks]
        (before, _), (broken, _), (after, _) = attached
        readers = [reader for _, reader in attached]

        def fail(*args: object) -> None:
            raise RuntimeError("boom")

        monkeypatch.setattr(broken, "offer", fail)
        events = {
            "one kind": [content("n1", 1)],
            "two kinds": [content("n1", 1), notice("hello")],
            "two audiences": [content("n1", 1), notice("hello"), progress("u9", "t")],
        }[audience]
        await hub.publish(events)
        await settle()
        assert broken.close_reason is CloseReason.ERROR
        assert list(hub.registry) == [before, after]
        await hub.publish([content("n1", 2)])
        await settle()
        before.stop(CloseReason.CLIENT)
        after.stop(CloseReason.CLIENT)
    assert versions(readers[0]) == versions(readers[2]) == [1, 2]
    assert versions(readers[1]) == []
    assert hub.adapter.stats.failures == Counter({Failure.OFFER: 1})
    (logged,) = [r for r in caplog.records if r.getMessage() == "offer failed: stream ended"]
    assert logged.connection_id == "broken-one"  # type: ignore[attr-defined]
    assert logged.exc_info is not None


class FlakyBus(MemoryBus):
    """The memory bus, whose reader fails (as a bug in a bus would) after its first batch, the
    first two times it is read; opened again, it yields the last batch it had yielded first (as a
    bus that starts a little early would)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[Mapping[str, Offset] | None] = []
        self.last: Sequence[Record] = ()

    async def read(self, start: Mapping[str, Offset] | None) -> AsyncGenerator[Sequence[Record]]:
        self.reads.append(start)
        if self.last:
            yield self.last
        async with aclosing(super().read(start)) as records:
            async for batch in records:
                self.last = batch
                yield batch
                if len(self.reads) < 3:
                    raise RuntimeError("the bus reader broke")


async def test_a_consumer_whose_bus_read_fails_backs_off_and_reads_on_from_where_it_was(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.abc.Clock
) -> None:
    caplog.set_level(logging.ERROR, logger="actors.consumer")
    bus = FlakyBus()
    cache = MemoryReplayCache(max_events=1000, source="memory", epoch=await bus.epoch())
    hub = Hub(bus, cache)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        subject, reader = await attach(hub, nursery, client("u1", {"n1"}))
        for version in range(1, 6):
            await hub.publish([content("n1", version)])
            with trio.fail_after(GUARD_SECONDS):  # through the consumer's backoff
                await hub.adapter.wait_consumed(version)
        await settle()
        subject.stop(CloseReason.CLIENT)
        nursery.cancel_scope.cancel()
    assert versions(reader) == [1, 2, 3, 4, 5]
    assert hub.adapter.stats.failures == Counter({Failure.BUS_READ: 2})
    assert bus.reads == [None, None, None]  # from the start given, and nothing twice
    assert len([r for r in caplog.records if r.getMessage() == "bus read failed"]) == 2


# -- bursts ----------------------------------------------------------------------------------------


async def test_a_full_publish_batch_reaches_a_reader_that_keeps_up_and_cuts_one_that_does_not(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A producer may publish 1,000 events in one request (--publish-max-batch), four times what
    an inbox holds (--session-buffer): a client that keeps up takes them all; one that reads
    nothing is cut as lagged, once the step after the burst finds its inbox still full."""
    burst = Settings().publish_max_batch
    assert burst > SessionSettings().session_buffer
    async with running_hub() as (hub, nursery):
        fast, fast_reader = await attach(hub, nursery, client("u1"))
        stalled = (await open_session(hub, client("u1"))).session  # its reader never reads
        await hub.publish([status({"user_id": "u1"}, f"t{n}") for n in range(burst)])
        with trio.fail_after(GUARD_SECONDS):
            await hub.adapter.wait_consumed(burst)
            await settle()
            await hub.publish([status({"user_id": "u1"}, "after")])
            await stalled.finished.wait()
            await hub.adapter.wait_consumed(burst + 1)
        await settle()
        assert stalled.close_reason is CloseReason.LAGGED
        assert fast.close_reason is None
        fast.stop(CloseReason.CLIENT)
    assert [d["task_id"] for d in fast_reader.data()] == [f"t{n}" for n in range(burst)] + ["after"]


async def test_a_client_a_little_ahead_of_this_router_keeps_what_it_has(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Its cursor is past this router's, but within what the bus has written (another instance
    read further): not truncated history; the events it had are skipped when they arrive."""
    async with running_hub() as (hub, nursery):
        await hub.publish([content("n1", 1)])
        await settle()
        # Published with no checkpoint: the bus has them, this router has not read them yet.
        written = await hub.publish([content("n1", n) for n in (2, 3, 4)])
        ahead = Cursor.of(written[1])
        assert hub.adapter.cursor is not None
        assert not hub.adapter.cursor.covers(written[0])
        opened = await open_session(hub, client("u1", {"n1"}), ahead)
        resuming, replay = opened.session, opened.replay
        assert replay is not None
        assert not replay.truncated
        assert resuming.cursor == ahead
        assert opened.output is not None
        reader = Reader(opened.output)
        nursery.start_soon(reader.run)
        await settle()
        resuming.stop(CloseReason.CLIENT)
        with trio.fail_after(GUARD_SECONDS):
            await reader.closed.wait()
    assert versions(reader) == [4]
    assert hub.replays["complete", "cache"] == 1


# -- the client's position, from the first bytes and while others' events pass -------------------


@pytest.mark.parametrize("routed_before", [False, True], ids=["nothing routed", "after others"])
async def test_a_stream_cut_before_its_first_event_resumes_from_its_first_bytes(
    routed_before: bool, autojump_clock: trio.abc.Clock
) -> None:
    """The browser reconnects with the id of the first bytes, and gets what was published while
    it was away: complete, nothing lost, even on a router that has routed nothing yet."""
    async with running_hub(partitions=3) as (hub, nursery):
        if routed_before:
            await hub.publish([content("n2", n) for n in range(5)])
            await settle()
        first, first_reader = await attach(hub, nursery, client("alice", novels={"n1"}))
        await settle()
        position = first_reader.last_event_id
        first.stop(CloseReason.CLIENT)  # cut before any event
        with trio.fail_after(GUARD_SECONDS):
            await first_reader.closed.wait()
        assert first_reader.events == []
        if not routed_before:
            assert position == str(Cursor.empty("memory", hub.epoch))
        published = await hub.publish([content("n1", n) for n in range(6)])
        await settle()
        opened = await open_session(hub, client("alice", novels={"n1"}), parse_cursor(position))
        second, replay = opened.session, opened.replay
        assert opened.output is not None
        second_reader = Reader(opened.output)
        nursery.start_soon(second_reader.run)
        await settle()
        second.stop(CloseReason.CLIENT)
    assert replay is not None
    assert not replay.truncated
    assert versions(second_reader) == list(range(6))
    assert identities(second_reader) == published


class UnansweringBus(MemoryBus):
    """A bus that does not answer until ``answer`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = trio.Event()

    async def epoch(self) -> str:
        await self.answer.wait()
        return await super().epoch()


async def test_before_the_bus_answers_a_stream_starts_at_no_epoch_then_follows_the_router(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Before the bus answers no offset can be trusted: the first id has no epoch. A resume then
    waits a little for the bus, and is refused for a retry while it stays silent; from a cursor
    of no epoch, once the bus answered, it is answered as truncated, never as complete. Once
    the bus answers, the next heartbeat gives the early stream a real position."""
    bus = UnansweringBus()
    async with running_hub(bus=bus, heartbeat_seconds=15) as (hub, nursery):
        early, early_reader = await attach(hub, nursery, client("alice", novels={"n1"}))
        await settle()
        assert early_reader.last_event_id == "memory:"
        with pytest.raises(ReplayUnavailableError) as refused:
            await open_session(hub, client("alice", novels={"n1"}), parse_cursor("memory:"))
        assert refused.value.wait == hub.settings.replay_retry_seconds
        assert "bus" in str(refused.value)
        bus.answer.set()
        await hub.reading.wait()
        opened = await open_session(hub, client("alice", novels={"n1"}), parse_cursor("memory:"))
        assert opened.replay is not None
        assert opened.replay.truncated
        opened.session.stop(CloseReason.CLIENT)
        await trio.sleep(15 + 1)  # a whole heartbeat period of ticks after the bus answered
        assert early_reader.last_event_id == str(Cursor.empty("memory", hub.epoch))
        await hub.publish([content("n1", 1)])
        await settle()
        early.stop(CloseReason.CLIENT)
    assert versions(early_reader) == [1]


async def test_a_resume_just_after_a_restart_waits_for_the_bus_and_is_complete(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A router restarted while its tabs reconnect: their resumes arrive before it has heard
    from the bus. Answered at once they could only say truncated (every tab would refetch its
    state for nothing); they wait for the bus instead, and get exactly what they missed. (The
    memory bus keeps nothing once read, so here what was missed is still unread, and arrives
    live; tests/test_workers.py restarts routers on Redis and Kafka.)"""
    bus = UnansweringBus()
    await MemoryBus.publish(bus, [content("n1", n) for n in range(4)])
    epoch = await MemoryBus.epoch(bus)
    seen_first = Cursor.from_positions("memory", epoch, [("0", (0,))])  # the tab had version 0
    async with running_hub(bus=bus, partitions=1) as (hub, nursery):
        answered: list[Opened] = []

        async def reconnect() -> None:
            answered.append(await open_session(hub, client("alice", novels={"n1"}), seen_first))

        nursery.start_soon(reconnect)
        await trio.sleep(hub.settings.replay_retry_seconds / 2)
        assert not answered  # waiting for the bus
        bus.answer.set()
        await hub.reading.wait()
        await settle()
        (opened,) = answered
        assert opened.output is not None
        reader = Reader(opened.output)
        nursery.start_soon(reader.run)
        await settle()
        opened.session.stop(CloseReason.CLIENT)
    assert versions(reader) == [1, 2, 3]


async def test_a_resume_long_after_the_start_of_a_silent_bus_is_let_through_as_truncated(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Past the outage grace a client is not refused for ever: it gets live events, and is told
    its history may be incomplete."""
    bus = UnansweringBus()
    async with running_hub(bus=bus) as (hub, _):
        await trio.sleep(hub.settings.replay_outage_grace_seconds)
        opened = await open_session(hub, client("alice", novels={"n1"}), parse_cursor("memory:"))
        assert opened.replay is not None
        assert opened.replay.truncated
        opened.session.stop(CloseReason.CLIENT)


async def test_a_quiet_stream_follows_the_router_and_resumes_complete_past_a_small_window(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Others' events pass a tab that sees none of them, many more than the replay window
    holds. Its heartbeats move its cursor along, so when it reconnects the resume is complete,
    not history-truncated, and the event for it published while it was away arrives."""
    async with running_hub(partitions=3, cache_events=5, heartbeat_seconds=15) as (hub, nursery):
        quiet, quiet_reader = await attach(hub, nursery, client("alice", novels={"n1"}))
        for n in range(40):
            await hub.publish([content("n2", n)])
            await trio.sleep(1)
        await trio.sleep(15)
        position = parse_cursor(quiet_reader.last_event_id)
        assert position == hub.adapter.cursor
        quiet.stop(CloseReason.CLIENT)
        await hub.publish([content("n1", 100)])
        await hub.publish([content("n2", n) for n in range(41, 44)])
        await settle()
        opened = await open_session(hub, client("alice", novels={"n1"}), position)
        again, replay = opened.session, opened.replay
        assert opened.output is not None
        again_reader = Reader(opened.output)
        nursery.start_soon(again_reader.run)
        await settle()
        again.stop(CloseReason.CLIENT)
    assert quiet_reader.events == []
    assert replay is not None
    assert not replay.truncated
    assert versions(again_reader) == [100]
    assert labels(again_reader)["history-truncated"] == 0


async def test_a_resume_the_cache_cannot_read_is_refused_for_a_while_then_truncated(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A Redis cache that is down, behind a bus that keeps nothing to read again: the history
    is most likely still in Redis, so for ``replay_outage_grace_seconds`` the client is asked to
    come back; past that it gets what is held in memory, as truncated, and live events."""
    with socket.socket() as probe:  # a port nothing listens on: the cache's Redis is down
        probe.bind(("127.0.0.1", 0))
        down = f"redis://127.0.0.1:{probe.getsockname()[1]}"
    bus = MemoryBus()
    cache = RedisReplayCache(down, key_prefix=new_prefix(), source="memory", max_events=100)
    hub = Hub(bus, cache, HubSettings(replay_outage_grace_seconds=30, replay_retry_seconds=2))
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        await hub.reading.wait()
        await hub.publish([content("n1", 1), content("n1", 2)])
        await hub.adapter.wait_consumed(2)
        assert hub.adapter.cursor is not None
        first = Cursor.of(EventIdentity("memory", "0", (0,), hub.epoch))
        with pytest.raises(ReplayUnavailableError) as refused:
            await open_session(hub, client("u1", novels=["n1"]), first)
        assert refused.value.wait == 2
        assert len(hub.registry) == 0  # the refused stream holds no slot
        mock_clock.jump(29)
        with pytest.raises(ReplayUnavailableError):
            await open_session(hub, client("u1", novels=["n1"]), first)
        mock_clock.jump(2)
        opened = await open_session(hub, client("u1", novels=["n1"]), first)
        assert opened.replay is not None
        assert opened.replay.truncated
        assert [e.identity.offset for e in opened.replay.entries] == [(1,)]  # held in memory
        assert hub.replays == {("refused", "cache"): 2, ("truncated", "cache"): 1}
        nursery.cancel_scope.cancel()


_OPENERS_VARIABLE: contextvars.ContextVar[str] = contextvars.ContextVar("openers_variable")
"""A context variable the opening task set, as Quart sets its request's for a handler."""


class ContextSeen:
    """An output that notes, at each write, what the writing task's context holds."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []
        self.wrote = trio.Event()

    async def send(self, value: bytes, /) -> None:
        self.seen.append(_OPENERS_VARIABLE.get(None))
        self.wrote.set()

    def close(self) -> None:
        pass


async def test_a_session_writes_with_the_hubs_context_not_the_opening_requests() -> None:
    """Sessions start from the hub's context variables: the request that opened one (Quart's
    request context, its headers) is not held for as long as the stream lasts."""
    async with running_hub() as (hub, _):
        output = ContextSeen()
        asked = client("u1")
        set_here = _OPENERS_VARIABLE.set("the opening request's")
        try:
            await hub.open(
                asked.principal,
                asked.stream_filter,
                expires_at=time.time() + 30 * 86400,
                connection_id=asked.connection_id,
                output=output,
            )
        finally:
            _OPENERS_VARIABLE.reset(set_here)
        with trio.fail_after(5):
            await output.wrote.wait()  # the hello
    assert output.seen[0] is None
