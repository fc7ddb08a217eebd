"""A session's writer side on its own, the way h11 tests its connection: plain calls in, chunks out.

No trio, no event loop, no private fields: a :class:`router.core.writer.Writer` is driven through
the calls the adapter (offer, tick), the hub (a rescope's begin and finish, a narrowing) and the
session actor (next, wrote) make, the hub's side played as ``Hub.rescope`` plays it (the replay
is every event after the client's cursor up to the router's position when the change began). The
wire format here makes each chunk a tuple, so the test reads what was written without parsing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.cursor import Cursor, EventIdentity, parse_cursor
from router.core.events import ContentUpdateEvent
from router.core.history import Entry, Replay
from router.core.inbox import TICKS_PER_HEARTBEAT, Delivery, Inbox, SharedBatch
from router.core.observer import NO_OBSERVER, Offer
from router.core.permissions import Principal, StreamFilter, admits
from router.core.scope import Scope
from router.core.sse import SSEMessage
from router.core.wire import Hello
from router.core.writer import Pause, Writer
from tests.actor_helpers import Feed

BOTH = Principal("u1", frozenset({"n1", "n2"}))
ONLY_N2 = Principal("u1", frozenset({"n2"}))
FILTERS = (
    StreamFilter(),
    StreamFilter(novel_ids=frozenset({"n1"})),
    StreamFilter(novel_ids=frozenset({"n2"})),
)


class Frames:
    """A wire format whose chunks are tuples."""

    name = "frames"

    def hello(self, hello: Hello, /) -> tuple[object, ...]:
        return ("hello", hello.position, hello.replay)

    def events(self, messages: Sequence[SSEMessage], /) -> tuple[object, ...]:
        return ("events", tuple(messages))

    def cursor(self, cursor: Cursor, /) -> tuple[object, ...]:
        return ("cursor", cursor)

    def heartbeat(self) -> tuple[object, ...]:
        return ("beat",)


def content(novel_id: str, version: int) -> SSEMessage:
    return ContentUpdateEvent(
        novel_id=novel_id, content_version=version, scope=Scope(novel_id=novel_id)
    )


def version_of(message: SSEMessage) -> int:
    version = message.data["content_version"]
    assert isinstance(version, int)
    return version


@dataclass
class Stream:
    """The writer, and the hub's and the adapter's sides around it, as plain calls."""

    log: list[Delivery] = field(default_factory=list)
    cursor: Cursor | None = None
    written: list[tuple[object, ...]] = field(default_factory=list)
    leaks: list[int] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    answers_given: list[object] = field(default_factory=list)
    began_at: tuple[Cursor | None, Cursor | None, int] | None = None
    """While a change's replay is fetched: the client's cursor, the router's and the log's
    length when it began."""
    since: Cursor | None = None
    """The client's cursor when the last change began."""

    def __post_init__(self) -> None:
        self.inbox = Inbox(10_000)
        self.writer = Writer(self.inbox, Frames(), BOTH, FILTERS[0], NO_OBSERVER)
        first = self.publish("n3", shared=False)  # for no one: where the stream starts
        self.writer.start(None, first.cursor, retry_ms=1000, connection_id="c", expires_at=0.0)

    def admitted(self, message: SSEMessage) -> bool:
        return admits(message, self.writer.principal, self.writer.stream_filter)

    def publish(self, novel_id: str, *, shared: bool) -> Delivery:
        identity = EventIdentity("memory", "0", (len(self.log),), "e1")
        self.cursor = Cursor.of(identity) if self.cursor is None else self.cursor.advance(identity)
        message = content(novel_id, len(self.log)).with_id(str(self.cursor))
        delivery = Delivery(len(self.log), identity, self.cursor, message)
        self.log.append(delivery)
        if self.admitted(message):  # the adapter offers what the registered scope admits
            batch: Sequence[Delivery] = SharedBatch([delivery]) if shared else [delivery]
            self.inbox.offer(batch, Counter[Offer]())
        return delivery

    def begin(self, stream_filter: StreamFilter) -> None:
        if self.began_at is not None:
            return  # Hub.rescope is awaited: one change at a time
        self.writer.stream_filter = stream_filter
        self.inbox.rescoped()
        self.writer.changing().begin()
        self.began_at = self.inbox.cursor, self.cursor, len(self.log)
        self.since = self.inbox.cursor

    def finish(self, index: int) -> None:
        if self.began_at is None:
            return
        after, position, logged = self.began_at
        self.began_at = None
        entries = [
            Entry(d.identity, d.message, 0.0)
            for d in self.log[:logged]
            if after is None or not after.covers(d.identity)
        ]
        answer = ("answer", index)
        self.writer.changing().finish(Replay(entries, truncated=False), position, answer)
        self.answers_given.append(answer)

    def narrow(self, index: int) -> None:
        self.writer.principal = ONLY_N2
        self.inbox.rescoped()
        notice = ("notice", index)
        self.writer.changing().narrow(notice)
        self.answers_given.append(notice)

    def write(self, most: int) -> None:
        for _ in range(most):
            step = self.writer.next()
            if step is Pause.WAIT:
                return
            if step is Pause.CHECKPOINT:
                continue
            assert isinstance(step, tuple)
            self.written.append(step)
            if step[0] == "events":
                for message in step[1]:
                    if message.scope is None:  # the router's own sse.error
                        continue
                    if not self.admitted(message):
                        self.leaks.append(version_of(message))
                    self.versions.append(version_of(message))
            self.writer.wrote()

    @property
    def answers_written(self) -> list[object]:
        return [chunk for chunk in self.written if chunk[0] in ("answer", "notice")]


Action = tuple[str, int]
actions = st.lists(
    st.tuples(
        st.sampled_from(["n1", "n2", "shared-n1", "shared-n2", "begin", "finish", "narrow"])
        | st.sampled_from(["write", "tick"]),
        st.integers(0, 5),
    ),
    max_size=50,
)


def play(actions: list[Action]) -> Stream:
    stream = Stream()
    for index, (action, value) in enumerate(actions):
        if action in ("n1", "n2"):
            stream.publish(action, shared=False)
        elif action.startswith("shared-"):
            stream.publish(action.removeprefix("shared-"), shared=True)
        elif action == "begin":
            stream.begin(FILTERS[value % len(FILTERS)])
        elif action == "finish":
            stream.finish(index)
        elif action == "narrow":
            stream.narrow(index)
        elif action == "write":
            stream.write(value + 1)
        elif action == "tick":
            stream.inbox.tick(stream.cursor)
    stream.finish(len(actions))
    stream.write(100_000)
    return stream


@settings(max_examples=600, deadline=None)
@given(actions=actions)
def test_never_an_event_the_scope_in_force_does_not_admit_nor_one_twice(
    actions: list[Action],
) -> None:
    stream = play(actions)
    assert stream.leaks == []
    assert len(stream.versions) == len(set(stream.versions))
    assert stream.written[0][0] == "hello"


@settings(max_examples=600, deadline=None)
@given(actions=actions)
def test_every_event_the_last_scope_admits_since_its_change_is_written_in_order(
    actions: list[Action],
) -> None:
    """No gap: whatever the interleaving of changes, offers and writes, every event the final
    scope admits after the client's cursor when its last change began (every one, if none did)
    reaches the client, and in the order of the log."""
    stream = play(actions)
    since = stream.since
    owed = [
        version_of(d.message)
        for d in stream.log
        if stream.admitted(d.message) and (since is None or not since.covers(d.identity))
    ]
    assert set(owed) <= set(stream.versions)
    assert stream.versions == sorted(stream.versions)


@settings(max_examples=400, deadline=None)
@given(actions=actions)
def test_every_answer_and_notice_is_written_once_in_the_order_given(
    actions: list[Action],
) -> None:
    stream = play(actions)
    assert stream.answers_written == stream.answers_given


def test_a_replay_checkpoints_between_slices_and_says_the_cursor_it_ends_at() -> None:
    stream = Stream()
    for _ in range(200):
        stream.publish("n2", shared=False)
    stream.write(1)  # the hello
    stream.begin(FILTERS[1])  # n1 only: nothing queued is for it
    stream.finish(0)
    steps = []
    while (step := stream.writer.next()) is not Pause.WAIT:
        steps.append(step)
        if step is not Pause.CHECKPOINT:
            stream.writer.wrote()
    assert steps.count(Pause.CHECKPOINT) >= 3  # 200 entries examined, 64 at a time
    assert steps[-2] == ("cursor", stream.cursor)
    assert steps[-1] == ("answer", 0)


def test_a_batch_of_a_new_history_is_in_hand_until_it_is_written_not_its_error() -> None:
    """A batch that meets "history replaced" is written after the ``history-truncated`` that
    says so: while that error goes out, the batch is still the writer's, and its bytes count in
    the inbox's byte bound until the batch itself is written."""
    inbox = Inbox(10, max_bytes=1_000_000, cursor=parse_cursor("memory@e0:0:41"))
    writer = Writer(inbox, Frames(), BOTH, FILTERS[0], NO_OBSERVER)
    writer.start(None, None, retry_ms=1000, connection_id="c", expires_at=0.0)
    assert writer.next()[0] == "hello"  # type: ignore[index]
    writer.wrote()
    feed = Feed()  # of epoch e1
    batch = [feed.next(content("n1", n)) for n in range(3)]
    inbox.offer(batch, Counter[Offer]())
    in_hand = sum(len(d.message.to_sse_format()) for d in batch)

    error = writer.next()
    assert isinstance(error, tuple)
    assert error[1][0].scope is None  # the router's own sse.error
    writer.wrote()
    assert inbox.held_bytes == in_hand  # the batch is not written yet

    events = writer.next()
    assert isinstance(events, tuple)
    assert [m.data for m in events[1]] == [d.message.data for d in batch]
    writer.wrote()
    assert inbox.held_bytes == 0


def test_a_batch_the_client_may_not_see_is_held_no_more_once_chosen_out() -> None:
    """Nothing of it goes out: its bytes are let go at once, not only at the next take, so a
    heartbeat and a change's wait after it hold nothing of it."""
    stream = Stream()
    stream.write(1)  # the hello
    stream.publish("n1", shared=False)
    stream.writer.principal = ONLY_N2  # narrowed after the adapter offered it
    assert stream.inbox.held_bytes > 0
    for _ in range(TICKS_PER_HEARTBEAT):
        stream.inbox.tick()
    assert stream.writer.next() == ("beat",)
    stream.writer.wrote()
    stream.writer.changing().begin()
    assert stream.writer.next() is Pause.WAIT
    assert stream.inbox.held_bytes == 0
