"""The adapter actor: records in, events out to the replay cache and sessions; bad ones skipped."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from actors.adapter import Adapter
from actors.registry import SessionRegistry
from actors.session import CloseReason, Offer, Session
from router.bus.base import Record
from router.cache.memory import MemoryReplayCache
from router.core.cursor import Cursor, parse_cursor
from router.core.history import Entry
from router.core.mapping import convert_batch
from router.core.permissions import Principal, StreamFilter
from router.metrics import Metrics
from tests.actor_helpers import EPOCH, Reader, identity, in_an_hour

OCCURRED = "2026-11-28T10:00:00Z"


def raw(event_type: str, scope: dict[str, Any], **payload: Any) -> bytes:
    body = {"event_type": event_type, "occurred_at": OCCURRED, "scope": scope, "payload": payload}
    return json.dumps(body).encode()


def content(version: int, novel_id: str = "n1") -> bytes:
    return raw(
        "Content.Updated", {"novel_id": novel_id}, novel_id=novel_id, content_version=version
    )


BAD: dict[str, bytes] = {
    "not json": b'{"event_type": "Content.Updated",',
    "not utf-8": b"\xff\xfe{}",
    "not an object": b"[1, 2, 3]",
    "nested too deeply": b"[" * 100_000,
    "missing payload": b'{"event_type": "Content.Updated", "occurred_at": "2026-11-28T10:00:00Z",'
    b' "scope": {"novel_id": "n1"}}',
    "unknown type": raw("Novel.Deleted", {"novel_id": "n1"}, novel_id="n1"),
    "invalid payload": raw(
        "Content.Updated", {"novel_id": "n1"}, novel_id="n1", content_version=-1
    ),
    "missing payload field": raw("Content.Updated", {"novel_id": "n1"}, novel_id="n1"),
    "empty scope": raw("Content.Updated", {}, novel_id="n1", content_version=1),
    "broadcast progress": raw("Task.ProgressUpdated", {"broadcast": True}, task_id="t", progress=1),
    "scope and payload disagree": raw(
        "Content.Updated", {"novel_id": "n2"}, novel_id="n1", content_version=1
    ),
}
PROBLEM = {
    "not json": "malformed",
    "not utf-8": "malformed",
    "not an object": "malformed",
    "nested too deeply": "malformed",
    "missing payload": "malformed",
    "unknown type": "unknown-type",
    "invalid payload": "invalid-payload",
    "missing payload field": "invalid-payload",
    "empty scope": "unroutable",
    "broadcast progress": "unroutable",
    "scope and payload disagree": "unroutable",
}


class RecordingCache(MemoryReplayCache):
    """The embedded cache, remembering each append as it was made."""

    def __init__(self) -> None:
        super().__init__(max_events=1000, source="memory", epoch=EPOCH)
        self.appends: list[list[Entry]] = []

    async def append(self, entries: Sequence[Entry]) -> None:
        self.appends.append(list(entries))
        await super().append(entries)


def reader_of_n1(registry: SessionRegistry, nursery: trio.Nursery) -> tuple[Session, Reader]:
    session = Session(
        Principal("u1", novels=frozenset({"n1"})), StreamFilter(), expires_at=in_an_hour()
    )
    registry.add(session)
    send, receive = trio.open_memory_channel[bytes](1)
    reader = Reader(receive)
    nursery.start_soon(session.run, send, None)
    nursery.start_soon(reader.run)
    return session, reader


async def test_bad_records_are_counted_logged_and_skipped_and_good_ones_flow_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = RecordingCache()
    registry = SessionRegistry()
    adapter = Adapter(cache, registry)
    # Good and bad records interleaved, in one partition: good versions 0..N, each followed by
    # one kind of bad record.
    records: list[Record] = []
    bad_at: dict[str, str] = {}
    for version, name in enumerate(BAD):
        records.append(Record(identity(len(records)), content(version)))
        bad_at[name] = str(identity(len(records)))
        records.append(Record(identity(len(records)), BAD[name]))
    records.append(Record(identity(len(records)), content(len(BAD))))
    caplog.set_level(logging.WARNING, logger="actors.adapter")

    async with trio.open_nursery() as nursery:
        session, reader = reader_of_n1(registry, nursery)
        await adapter.process(records)
        await trio.testing.wait_all_tasks_blocked()
        session.stop(CloseReason.CLIENT)

    good_versions = list(range(len(BAD) + 1))
    assert [d["content_version"] for d in reader.data()] == good_versions
    good_offsets = [2 * version for version in good_versions]
    assert [e.last_event_id for e in reader.events] == [f"memory@e1:0:{o}" for o in good_offsets]
    (appended,) = cache.appends
    assert [e.identity.offset for e in appended] == [(o,) for o in good_offsets]

    assert adapter.stats.consumed == len(records)
    assert adapter.stats.rejected == Counter(PROBLEM.values())
    assert adapter.stats.offers == Counter({Offer.QUEUED: len(good_versions)})
    assert str(adapter.cursor) == f"memory@e1:0:{len(records) - 1}"

    logged = [r for r in caplog.records if r.name == "actors.adapter"]
    assert len(logged) == len(BAD)
    assert all(r.levelno == logging.WARNING for r in logged)
    for name, record in zip(BAD, logged, strict=True):  # in bus order
        assert record.getMessage() == "event rejected"
        assert record.position == bad_at[name], name  # type: ignore[attr-defined]  # extra field
        assert record.reason == PROBLEM[name], name  # type: ignore[attr-defined]


async def test_a_batch_of_only_bad_records_moves_the_cursor_and_appends_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = RecordingCache()
    adapter = Adapter(cache, SessionRegistry())
    caplog.set_level(logging.WARNING, logger="actors.adapter")
    await adapter.process([Record(identity(0), content(0))])
    await adapter.process([Record(identity(n), bad) for n, bad in enumerate(BAD.values(), 1)])
    assert len(cache.appends) == 1
    assert adapter.cursor == Cursor.of(identity(len(BAD)))
    # The next good record's id is after the skipped ones: they are never read again.
    await adapter.process([Record(identity(len(BAD) + 1), content(1))])
    (entry,) = cache.appends[-1]
    assert entry.message.id == f"memory@e1:0:{len(BAD) + 1}"


async def test_cached_entries_carry_their_message_id_as_cursor_and_the_append_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    cache = RecordingCache()
    adapter = Adapter(cache, SessionRegistry())
    records = [
        Record(identity(0, "0"), content(0)),
        Record(identity(0, "1"), content(1, "n2")),
        Record(identity(1, "0"), content(2)),
        Record(identity(1, "1"), b"garbage"),
        Record(identity(0, "2"), content(3, "n3")),
    ]
    await trio.sleep(5)
    await adapter.process(records)
    (entries,) = cache.appends
    for entry in entries:
        assert entry.appended_at == 5
    assert [e.message.id for e in entries] == [
        "memory@e1:0:0",
        "memory@e1:0:0,1:0",
        "memory@e1:0:1,1:0",
        "memory@e1:0:1,1:1,2:0",  # past the rejected record at 1:1
    ]
    expected = convert_batch((r.identity, r.raw) for r in records)
    assert [str(c.cursor) for c in expected.events] == [e.message.id for e in entries]
    assert adapter.cursor == expected.events[-1].cursor


async def test_the_cursor_carries_on_from_one_batch_to_the_next() -> None:
    cache = RecordingCache()
    adapter = Adapter(cache, SessionRegistry())
    await adapter.process([Record(identity(0, "0"), content(0)), Record(identity(4, "1"), b"{")])
    assert adapter.cursor == parse_cursor("memory@e1:0:0,1:4")
    await adapter.process([Record(identity(1, "0"), content(1))])
    assert adapter.cursor == parse_cursor("memory@e1:0:1,1:4")
    assert cache.appends[-1][0].message.id == "memory@e1:0:1,1:4"


async def test_an_event_is_offered_only_to_the_sessions_it_is_for() -> None:
    registry = SessionRegistry()
    adapter = Adapter(RecordingCache(), registry)
    async with trio.open_nursery() as nursery:
        reader_session, reader = reader_of_n1(registry, nursery)
        outsider = Session(
            Principal("u2", novels=frozenset({"n2"})), StreamFilter(), expires_at=in_an_hour()
        )
        registry.add(outsider)
        await adapter.process([Record(identity(n), content(n, f"n{n % 2 + 1}")) for n in range(6)])
        await trio.testing.wait_all_tasks_blocked()
        reader_session.stop(CloseReason.CLIENT)
    assert [d["novel_id"] for d in reader.data()] == ["n1"] * 3
    assert adapter.stats.offers == Counter({Offer.QUEUED: 6})  # 3 each, none to the other


async def test_run_processes_batches_until_its_channel_closes() -> None:
    cache = RecordingCache()
    adapter = Adapter(cache, SessionRegistry())
    send, receive = trio.open_memory_channel[Sequence[Record]](0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(adapter.run, receive)
        async with send:
            await send.send([Record(identity(0), content(0))])
            await send.send([Record(identity(1), b"nope"), Record(identity(2), content(1))])
    appended = [e.identity.offset for entries in cache.appends for e in entries]
    assert appended == [(0,), (2,)]
    assert adapter.stats.consumed == 3
    assert adapter.stats.rejected == Counter({"malformed": 1})


async def test_an_event_published_twice_reaches_nobody_twice() -> None:
    """The producer's event_id identifies a retry (an outbox relay that died between publishing
    and deleting publishes its rows again); the second copy is dropped and counted."""

    def with_id(version: int, event_id: str) -> bytes:
        body = json.loads(content(version))
        body["event_id"] = event_id
        return json.dumps(body).encode()

    cache = RecordingCache()
    adapter = Adapter(cache, SessionRegistry(), dedup_window=100)
    await adapter.process(
        [
            Record(identity(0), with_id(1, "row-1")),
            Record(identity(1), with_id(2, "row-2")),
            Record(identity(2), with_id(1, "row-1")),  # the relay's second try
            Record(identity(3), content(3)),  # no event_id: nothing to compare
            Record(identity(4), content(3)),
        ]
    )
    (entries,) = cache.appends
    assert [e.identity.offset for e in entries] == [(0,), (1,), (3,), (4,)]
    assert adapter.stats.rejected == {"duplicate": 1}
    assert adapter.cursor == Cursor.of(identity(4))  # consumed all the same


class Writes:
    """A session output that keeps each write apart, to see which events went out together."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    async def send(self, value: bytes, /) -> None:
        self.chunks.append(value)

    def close(self) -> None:
        pass

    def versions_per_write(self) -> list[list[int]]:
        return [
            [json.loads(line[6:])["content_version"] for line in chunk.splitlines()
             if line.startswith(b"data: ")]
            for chunk in self.chunks[1:]  # after the retry hint
        ]  # fmt: skip


async def fan_out_to_three(
    nursery: trio.Nursery, pause_above: int
) -> tuple[Adapter, trio.MemorySendChannel[Sequence[Record]], list[Writes]]:
    registry = SessionRegistry()
    adapter = Adapter(
        RecordingCache(), registry, fanout_pause_seconds=0.02, fanout_pause_above=pause_above
    )
    outputs = [Writes() for _ in range(3)]
    for output in outputs:
        session = Session(
            Principal("u1", novels=frozenset({"n1"})), StreamFilter(), expires_at=in_an_hour()
        )
        registry.add(session)
        nursery.start_soon(session.run, output, None)
    records_send, records_receive = trio.open_memory_channel[Sequence[Record]](16)
    nursery.start_soon(adapter.run, records_receive)
    return adapter, records_send, outputs


async def test_after_a_wide_fan_out_the_adapter_pauses_and_what_came_meanwhile_goes_out_together(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with trio.open_nursery() as nursery:
        adapter, records, outputs = await fan_out_to_three(nursery, pause_above=3)
        await records.send([Record(identity(0), content(0))])
        await adapter.wait_consumed(1)
        routed_at = trio.current_time()
        for offset in range(1, 6):  # one batch at a time, as publishes arrive
            await records.send([Record(identity(offset), content(offset))])
        await trio.testing.wait_all_tasks_blocked()
        assert adapter.stats.consumed == 1  # still pausing
        await adapter.wait_consumed(6)
        assert trio.current_time() - routed_at >= 0.02
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    for output in outputs:
        assert output.versions_per_write() == [[0], [1, 2, 3, 4, 5]]


async def test_a_narrow_fan_out_routes_the_next_events_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with trio.open_nursery() as nursery:
        adapter, records, outputs = await fan_out_to_three(nursery, pause_above=4)
        started = trio.current_time()
        for offset in range(3):
            await records.send([Record(identity(offset), content(offset))])
            await adapter.wait_consumed(offset + 1)
            await trio.testing.wait_all_tasks_blocked()  # the sessions have written it
        assert trio.current_time() == started
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    for output in outputs:
        assert output.versions_per_write() == [[0], [1], [2]]


async def test_each_session_is_offered_its_share_of_a_step_in_one_batch() -> None:
    registry = SessionRegistry()
    adapter = Adapter(RecordingCache(), registry)
    outputs: dict[str, Writes] = {}
    async with trio.open_nursery() as nursery:
        for name, novels in {"n1": {"n1"}, "n2": {"n2"}, "both": {"n1", "n2"}}.items():
            session = Session(
                Principal(name, novels=frozenset(novels)), StreamFilter(), expires_at=in_an_hour()
            )
            registry.add(session)
            outputs[name] = Writes()
            nursery.start_soon(session.run, outputs[name], None)
        await trio.testing.wait_all_tasks_blocked()
        records_send, records_receive = trio.open_memory_channel[Sequence[Record]](16)
        novel_of = ["n1", "n1", "n2", "n1", "n1", "n1"]
        for first in (0, 2, 4):  # three batches of two, all waiting when the adapter starts
            await records_send.send(
                [Record(identity(n), content(n, novel_of[n])) for n in (first, first + 1)]
            )
        nursery.start_soon(adapter.run, records_receive)
        await adapter.wait_consumed(6)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert outputs["n1"].versions_per_write() == [[0, 1, 3, 4, 5]]
    assert outputs["n2"].versions_per_write() == [[2]]
    assert outputs["both"].versions_per_write() == [[0, 1, 2, 3, 4, 5]]
    assert adapter.stats.offers == Counter({Offer.QUEUED: 5 + 1 + 6})


async def test_a_burst_for_one_audience_reaches_each_session_filtered_in_one_write() -> None:
    """Events whose candidates are the same sessions (here: all of user u1's) are offered as
    one batch, narrowed per session by the same check as any other event."""
    registry = SessionRegistry()
    adapter = Adapter(RecordingCache(), registry)
    outputs = {"all": Writes(), "progress only": Writes()}
    filters = {
        "all": StreamFilter(),
        "progress only": StreamFilter(event_types=frozenset({"task.progress-updated"})),
    }
    async with trio.open_nursery() as nursery:
        for name, output in outputs.items():
            session = Session(
                Principal("u1", novels=frozenset({"n1"})), filters[name], expires_at=in_an_hour()
            )
            registry.add(session)
            nursery.start_soon(session.run, output, None)
        await trio.testing.wait_all_tasks_blocked()
        mine = {"user_id": "u1", "novel_id": "n1"}
        await adapter.process(
            [
                Record(identity(0), raw("Content.Updated", mine, novel_id="n1", content_version=1)),
                Record(identity(1), raw("Task.ProgressUpdated", {"user_id": "u1"},
                                        task_id="t1", progress=50)),
                Record(identity(2), raw("Content.Updated", mine, novel_id="n1", content_version=2)),
            ]
        )  # fmt: skip
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [len(chunk.split(b"\n\n")) - 1 for chunk in outputs["all"].chunks[1:]] == [3]
    assert [len(chunk.split(b"\n\n")) - 1 for chunk in outputs["progress only"].chunks[1:]] == [1]
    assert b"task.progress-updated" in outputs["progress only"].chunks[1]
    assert adapter.stats.offers == Counter({Offer.QUEUED: 3 + 1})


async def test_a_different_event_that_reuses_a_producer_id_is_delivered_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Producers share one id space: the same id with another type, scope or payload is not a
    retry of the first event but another event, and it is delivered."""

    def with_id(body: bytes, event_id: str) -> bytes:
        decoded = json.loads(body)
        decoded["event_id"] = event_id
        return json.dumps(decoded).encode()

    cache = RecordingCache()
    adapter = Adapter(cache, SessionRegistry(), dedup_window=100)
    caplog.set_level(logging.INFO, logger="actors.adapter")
    notice = raw(
        "System.NotificationSent", {"broadcast": True}, level="info", title="t", message="m"
    )
    await adapter.process(
        [
            Record(identity(0), with_id(content(1), "42")),
            Record(identity(1), with_id(content(2), "42")),  # another payload
            Record(identity(2), with_id(content(1, "n2"), "42")),  # another scope
            Record(identity(3), with_id(notice, "42")),  # another type
            Record(identity(4), with_id(content(2), "42")),  # a retry of the second
        ]
    )
    (entries,) = cache.appends
    assert [e.identity.offset for e in entries] == [(0,), (1,), (2,), (3,)]
    assert adapter.stats.id_reused == 3
    assert adapter.stats.rejected == {"duplicate": 1}
    reused = [r for r in caplog.records if r.getMessage() == "event id reused by another event"]
    assert [r.position for r in reused] == [str(identity(n)) for n in (1, 2, 3)]  # type: ignore[attr-defined]


async def test_records_the_bus_deleted_unread_end_the_streams_behind_them_and_truncate_resumes(
    autojump_clock: trio.abc.Clock,
) -> None:
    cache = RecordingCache()
    registry = SessionRegistry()
    adapter = Adapter(cache, registry)
    async with trio.open_nursery() as nursery:
        behind, reader = reader_of_n1(registry, nursery)
        await adapter.process([Record(identity(0), content(0))])
        with trio.fail_after(5):  # a hang guard (mock clock): the session writes it
            while not reader.events:
                await trio.sleep(0.01)
        ahead = Session(
            Principal("u2", novels=frozenset({"n1"})), StreamFilter(), expires_at=in_an_hour()
        )
        ahead.cursor = Cursor.of(identity(5))  # served by an instance that read them in time
        registry.add(ahead)
        await adapter.process(
            [Record(identity(5), b"", lost=True), Record(identity(6), content(6))]
        )
        assert behind.close_reason is CloseReason.LAGGED
        assert ahead.close_reason is None
        assert adapter.cursor == Cursor.of(identity(6))
        assert adapter.stats.lost_on_bus == 1
        assert adapter.stats.rejected == {}  # the marker is no malformed record
        from_before = await cache.replay(Cursor.of(identity(0)), adapter.cursor)
        assert from_before.truncated
        assert [e.identity for e in from_before.entries] == [identity(6)]
        assert not (await cache.replay(Cursor.of(identity(5)), adapter.cursor)).truncated
        nursery.cancel_scope.cancel()


class ObservedMetrics(Metrics):
    """The router's metrics, also keeping each report of a step's offers as it came."""

    def __init__(self) -> None:
        super().__init__()
        self.offer_reports: list[dict[Offer, int]] = []

    def offered(self, outcomes: Mapping[Offer, int]) -> None:
        self.offer_reports.append(dict(outcomes))
        super().offered(outcomes)


async def test_the_observer_hears_every_count_and_a_steps_offers_in_one_report(
    autojump_clock: trio.abc.Clock,
) -> None:
    """What the adapter counts reaches its observer as it happens; the offers of a step, made
    one per session, are reported once for the whole step (the hot path makes no call each)."""
    metrics = ObservedMetrics()
    registry = SessionRegistry()
    adapter = Adapter(RecordingCache(), registry, dedup_window=100, observer=metrics)
    async with trio.open_nursery() as nursery:
        first, _ = reader_of_n1(registry, nursery)
        second, _ = reader_of_n1(registry, nursery)
        with_id = json.loads(content(1))
        with_id["event_id"] = "e-1"
        again = json.dumps(with_id).encode()
        await adapter.process(
            [
                Record(identity(0), content(0)),
                Record(identity(1), again),
                Record(identity(2), again),  # the same event again: a duplicate
                Record(identity(3), b"{"),
            ]
        )
        await adapter.process([Record(identity(4), b"", lost=True)])  # ends both as lagged
        await adapter.process([Record(identity(5), content(5))])  # to two closed streams
        nursery.cancel_scope.cancel()
    assert metrics.offer_reports == [{Offer.QUEUED: 2 + 2}, {Offer.CLOSED: 2}]
    assert metrics.offers == adapter.stats.offers
    assert metrics.records_consumed == adapter.stats.consumed == 4 + 1
    assert metrics.records_rejected.counts["malformed"] == 1
    assert metrics.records_rejected.counts["duplicate"] == 1
    assert metrics.records_lost == 1
    assert (first.close_reason, second.close_reason) == (CloseReason.LAGGED, CloseReason.LAGGED)


async def test_a_client_that_reads_nothing_and_is_only_coalesced_holds_no_one_back(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Once a stuck client's inbox is full, its progress events are coalesced aside and it is
    never cut: the pause that lets a reader catch up after a step that filled an inbox must not
    follow every step from then on, or every other stream waits for this one."""
    from actors.session import SessionSettings

    registry = SessionRegistry()
    adapter = Adapter(RecordingCache(), registry, fanout_pause_seconds=0.02)
    stuck = Session(
        Principal("u1"),
        StreamFilter(),
        expires_at=in_an_hour(),
        settings=SessionSettings(session_buffer=2),
    )
    registry.add(stuck)
    output, _never_read = trio.open_memory_channel[bytes](0)

    def progress(n: int) -> Record:
        body = raw("Task.ProgressUpdated", {"user_id": "u1"}, task_id="t1", progress=n)
        return Record(identity(n), body)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stuck.run, output, None)
        records, records_receive = trio.open_memory_channel[Sequence[Record]](16)
        nursery.start_soon(adapter.run, records_receive)
        for n in range(3):  # two fill its inbox, the third is coalesced aside
            await records.send([progress(n)])
            await adapter.wait_consumed(n + 1)
        await trio.sleep(1)
        started = trio.current_time()
        for n in range(3, 8):
            await records.send([progress(n)])
            await adapter.wait_consumed(n + 1)
        assert trio.current_time() - started < 0.02
        assert stuck.close_reason is None
        assert adapter.stats.offers[Offer.COALESCED] == 6
        nursery.cancel_scope.cancel()
