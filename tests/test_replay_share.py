"""A replay's slices shared among the streams that resume from one cursor
(``router/core/replay_share.py``), without trio: writers driven by plain calls, interleaved in
any order, against the same writers replaying their own way.

What must hold whatever the entries, the cursors, the scopes and the wire formats: each stream
writes the same chunks with and without sharing, its cursor ends in the same place, it never
writes an event its principal and filter do not admit, and the memo keeps at most its bound and
nothing once every stream let go of it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.cursor import Cursor, EventIdentity
from router.core.history import Entry, Replay
from router.core.inbox import MAX_WRITE_BATCH, Inbox
from router.core.observer import NO_OBSERVER
from router.core.permissions import Principal, StreamFilter, admits
from router.core.replay_share import CURSOR_WEIGHT, ReplayMemo, ReplayShare
from router.core.scope import Scope
from router.core.sse import SSEMessage
from router.core.wire import SSE, WireFormat
from router.core.writer import Pause, Writer
from router.core.ws_wire import JSONFrames

WIRES: tuple[WireFormat[Any], ...] = (SSE, JSONFrames("1"))
PRINCIPALS = (
    Principal("u1", frozenset({"n1", "n2"})),
    Principal("u1", frozenset({"n2"})),
    Principal("u2", frozenset({"n1"})),
)
FILTERS = (
    StreamFilter(),
    StreamFilter(novel_ids=frozenset({"n1"})),
    StreamFilter(event_types=frozenset({"a"})),
)
SCOPES = (
    Scope(broadcast=True),
    Scope(user_id="u1"),
    Scope(user_id="u2"),
    Scope(novel_id="n1"),
    Scope(novel_id="n2"),
)
PARTITIONS = ("0", "1", "2")


def entries_of(kinds: Sequence[tuple[int, int, str]]) -> list[Entry]:
    """One entry per ``(partition, scope, event)``, each partition's offsets rising, each event
    marked by its place (``{"n": k}``) so an output says which it carries."""
    offsets = dict.fromkeys(PARTITIONS, 0)
    made = []
    for n, (partition, scope, event) in enumerate(kinds):
        name = PARTITIONS[partition]
        offsets[name] += 1 + n % 3
        identity = EventIdentity("memory", name, (offsets[name],), "e1")
        message = SSEMessage(event=event, data={"n": n}, scope=SCOPES[scope])
        made.append(Entry(identity, message, 0.0))
    return made


def written_marks(chunks: Sequence[object]) -> list[int]:
    """The events' marks in what a stream wrote, in order, whatever its wire."""
    marks: list[int] = []
    for chunk in chunks:
        if isinstance(chunk, bytes):
            marks += [int(n) for n in re.findall(rb'^data: \{"n":(\d+)\}$', chunk, re.M)]
        else:
            assert isinstance(chunk, tuple)
            for frame in chunk:
                fields = json.loads(frame)
                if fields["type"] == "event":
                    marks.append(fields["data"]["n"])
    return marks


@dataclass
class Client:
    start: Cursor | None
    principal: Principal
    stream_filter: StreamFilter
    wire: WireFormat[Any]
    reach: int
    """How many of the entries its replay holds (resumes registered at different moments)."""


def writer_for(client: Client) -> Writer:
    inbox = Inbox(16, client.start)
    return Writer(inbox, client.wire, client.principal, client.stream_filter, NO_OBSERVER)


def start(writer: Writer, replay: Replay, share: ReplayShare | None) -> None:
    writer.start(replay, None, 1000, "c", 0.0, share=share)


def step(writer: Writer) -> object | None:
    """One chunk of the writer's replay (a checkpoint passed over), ``None`` once it is done."""
    while True:
        chunk = writer.next()
        if chunk is Pause.WAIT:
            return None
        if chunk is not Pause.CHECKPOINT:
            writer.wrote()
            return chunk


def own_way(client: Client, entries: list[Entry]) -> tuple[list[object], Cursor | None]:
    writer = writer_for(client)
    start(writer, Replay(entries[: client.reach], truncated=False), None)
    chunks = []
    while (chunk := step(writer)) is not None:
        chunks.append(chunk)
    return chunks, writer.inbox.cursor


starts = st.sampled_from(
    [
        None,
        Cursor("memory", "e1", ()),
        Cursor("memory", "e1", (("0", (3,)),)),
        Cursor("memory", "e1", (("0", (5,)), ("2", (40,)))),
        Cursor("memory", "e0", (("1", (2,)),)),
    ]
)
kinds = st.lists(
    st.tuples(
        st.integers(0, len(PARTITIONS) - 1),
        st.integers(0, len(SCOPES) - 1),
        st.sampled_from(("a", "b")),
    ),
    max_size=3 * MAX_WRITE_BATCH + 5,
)


@st.composite
def clients(draw: st.DrawFn, size: int) -> Client:
    return Client(
        draw(starts),
        draw(st.sampled_from(PRINCIPALS)),
        draw(st.sampled_from(FILTERS)),
        draw(st.sampled_from(WIRES)),
        draw(st.one_of(st.just(size), st.integers(0, size))),
    )


@settings(max_examples=150, deadline=None)
@given(data=st.data(), kinds=kinds, max_bytes=st.sampled_from((0, 2_000, 40_000, 10**9)))
def test_shared_and_unshared_write_the_same(
    data: st.DataObject, kinds: list[tuple[int, int, str]], max_bytes: int
) -> None:
    entries = entries_of(kinds)
    group = data.draw(st.lists(clients(len(entries)), min_size=1, max_size=6))
    memo = ReplayMemo(max_bytes=max_bytes)
    writers, shares, outputs = [], [], []
    for client in group:
        share = memo.share(client.start)
        replay = Replay(entries[: client.reach], truncated=False)
        share.agree(replay.entries)
        writer = writer_for(client)
        start(writer, replay, share)
        writers.append(writer)
        shares.append(share)
        outputs.append([])
    running = set(range(len(group)))
    while running:
        turn = data.draw(st.sampled_from(sorted(running)))
        chunk = step(writers[turn])
        assert memo.held <= max_bytes
        if chunk is None:
            running.discard(turn)
            shares[turn].release()
            shares[turn].release()  # again is harmless
        else:
            outputs[turn].append(chunk)
    assert len(memo) == 0
    assert memo.held == 0
    for client, writer, chunks in zip(group, writers, outputs, strict=True):
        expected, cursor = own_way(client, entries)
        assert chunks == expected
        assert writer.inbox.cursor == cursor
        admitted = {
            n
            for n, entry in enumerate(entries[: client.reach])
            if admits(entry.message, client.principal, client.stream_filter)
        }
        marks = written_marks(chunks)
        assert set(marks) <= admitted
        assert len(marks) == len(set(marks))


def test_a_storm_from_one_cursor_encodes_each_slice_once() -> None:
    entries = entries_of([(0, 0, "a")] * (10 * MAX_WRITE_BATCH + 7))
    memo = ReplayMemo()
    at = Cursor("memory", "e1", ())
    shares = [memo.share(at) for _ in range(50)]
    writers = []
    for share in shares:
        writer = writer_for(Client(at, PRINCIPALS[0], FILTERS[0], SSE, len(entries)))
        share.agree(entries)
        start(writer, Replay(list(entries), truncated=False), share)
        writers.append(writer)
    written = [
        b"".join(c for c in iter(lambda w=writer: step(w), None) if isinstance(c, bytes))
        for writer in writers
    ]
    assert written == [written[0]] * 50
    assert memo.encodings == 11  # one per slice, for 50 streams
    assert len(memo) == 1
    # One copy of the replay's bytes (the hello and nothing else besides), and its cursors.
    assert memo.held <= len(written[0]) + CURSOR_WEIGHT * len(entries)
    for share in shares:
        share.release()
    assert len(memo) == 0
    assert memo.held == 0


def test_a_stream_not_admitted_to_a_slice_writes_it_its_own_way() -> None:
    # One targeted event in the middle: u2 is not admitted to it, u1 is to all.
    kinds = [(0, 0, "a")] * MAX_WRITE_BATCH
    kinds[7] = (0, 1, "a")
    entries = entries_of(kinds)
    memo = ReplayMemo()
    got = {}
    shares = [memo.share(None), memo.share(None)]  # both resumes are under way
    for principal, share in zip((PRINCIPALS[0], PRINCIPALS[2]), shares, strict=True):
        client = Client(None, principal, FILTERS[0], SSE, len(entries))
        share.agree(entries)
        writer = writer_for(client)
        start(writer, Replay(entries, truncated=False), share)
        got[principal.user_id] = written_marks(list(iter(lambda w=writer: step(w), None)))
        share.release()
    assert got["u1"] == list(range(MAX_WRITE_BATCH))
    assert got["u2"] == [n for n in range(MAX_WRITE_BATCH) if n != 7]
    assert memo.encodings == 1  # u2 encoded none of the shared slice


def test_a_resume_alone_from_its_cursor_keeps_nothing() -> None:
    entries = entries_of([(0, 0, "a")] * (2 * MAX_WRITE_BATCH))
    memo = ReplayMemo()
    share = memo.share(None)
    share.agree(entries)
    writer = writer_for(Client(None, PRINCIPALS[0], FILTERS[0], SSE, len(entries)))
    start(writer, Replay(entries, truncated=False), share)
    assert written_marks(list(iter(lambda: step(writer), None))) == list(range(len(entries)))
    assert memo.encodings == 0
    assert memo.held == 0
    share.release()
    assert len(memo) == 0


def test_later_resumes_from_one_cursor_share_the_prefix_they_have_in_common() -> None:
    entries = entries_of([(0, 0, "a")] * (3 * MAX_WRITE_BATCH))
    memo = ReplayMemo()
    first, later = memo.share(None), memo.share(None)
    first.agree(entries[: 2 * MAX_WRITE_BATCH + 3])
    later.agree(entries)  # registered after more events were routed: its replay reaches further
    assert (first.agreed, later.agreed) == (2 * MAX_WRITE_BATCH + 3, 3 * MAX_WRITE_BATCH)
    other = memo.share(None)
    other.agree(entries_of([(1, 0, "a")] * 5))  # the same cursor, other events: shares none
    assert other.agreed == 0
