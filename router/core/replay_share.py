"""A replay's slices worked out once for every stream that resumes from the same cursor.

After a deploy every client reconnects at once, most of them with the same ``Last-Event-ID``.
The ids a replay gives its events (the client's cursor after each: :meth:`Inbox.replayed`), and
so the bytes of each slice, depend only on the cursor the client starts from and on the entries:
they are the same for all of those clients. Only what each may see differs (``admitted``: its
principal and filter, checked per event as each slice is chosen, as on the unshared path). So a
:class:`SharedReplay` works out each slice's cursors once, and encodes a slice once per wire
format for the streams admitted to every event of it. A stream that is not admitted to all of a
slice writes that slice its own way (with the cursors worked out already): its cursor ends where
it would have either way.

Clients from the same cursor share a prefix: a replay is shared slice by slice for as long as
the entries are the same (the same objects, or events alike in identity, scope and bytes), so
two resumes from one cursor whose ``up_to`` differ (they registered at different moments) share
the slices they have in common, and each writes the rest of its own. Clients from different
cursors share nothing. Slices are cut at the same places on either path (every
:data:`~router.core.inbox.MAX_WRITE_BATCH` entries examined), so the writes are the same too.

:class:`ReplayMemo` hands shared replays out, one per starting cursor, and lets go of one when
the last stream replaying it is done (:meth:`ReplayShare.release`). What all of them keep is
bounded by :data:`REPLAY_SHARE_MAX_BYTES`: past it, slices are still shared among the streams
that hold them, but new ones are worked out by each stream for itself. Pure: no trio, no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from router.core.cursor import Cursor
from router.core.history import Entry
from router.core.inbox import MAX_WRITE_BATCH, Inbox, replayed_after
from router.core.serving import replay_slices
from router.core.sse import SSEMessage
from router.core.wire import WireFormat

__all__ = [
    "CURSOR_WEIGHT",
    "REPLAY_SHARE_MAX_BYTES",
    "ReplayMemo",
    "ReplayShare",
    "ReplayWrite",
    "SharedReplay",
    "SharedSlice",
    "replay_writes",
]

REPLAY_SHARE_MAX_BYTES = 32 * 1024 * 1024
"""What the shared replays of one hub keep at most: their encoded slices, and their entries'
cursors (:data:`CURSOR_WEIGHT` each). A reconnect storm from one cursor over a cache of 10,000
events of 1-2 KiB holds one copy of its encoding, not one per client, well within it."""
CURSOR_WEIGHT = 512
"""What one entry's cursor is counted as against :data:`REPLAY_SHARE_MAX_BYTES` (a cursor of
one partition weighs about this much with its spellings)."""

Admitted = Callable[[SSEMessage], bool]
ReplayWrite = tuple[object, Mapping[str, int]] | None
"""One slice of a replay as the writer takes it: the chunk and the count of its events by name,
or ``None`` when the client has nothing of that slice to be written."""


def _same(mine: Entry, theirs: Entry) -> bool:
    """Whether two entries write the same for every client: the same event at the same place,
    with the same scope and the same bytes (names, id, data: everything a wire format writes)."""
    if mine is theirs:
        return True
    a, b = mine.message, theirs.message
    return (
        mine.identity == theirs.identity
        and a.scope == b.scope
        and a.event == b.event
        and a.to_sse_format() == b.to_sse_format()
    )


def _weight(chunk: object) -> int:
    """What an encoded slice is counted as: its bytes, or for a WebSocket's frames their text
    and the bytes they are framed into once written (``Frames.on_the_wire``)."""
    if isinstance(chunk, bytes | bytearray):
        return len(chunk)
    if isinstance(chunk, tuple):
        return 2 * sum(len(part) for part in chunk if isinstance(part, str))
    return 0


class SharedSlice:
    """Up to ``most`` entries of a replay, for a client at ``before``: the cursor after each
    (``None`` for an entry the client had), the cursor after all of them (:attr:`after`), the
    last cursor written as an id (:attr:`told`), and the slice's encodings (one per wire)."""

    __slots__ = ("_encodings", "_owner", "after", "before", "counts", "entries", "served", "told")

    def __init__(
        self, before: Cursor | None, entries: Sequence[Entry], owner: SharedReplay | None
    ) -> None:
        self.before, self.entries, self._owner = before, entries, owner
        served: list[Cursor | None] = []
        cursor = before
        told = None
        for entry in entries:
            moved = replayed_after(cursor, entry.identity)
            served.append(moved)
            if moved is not None:
                cursor = told = moved
        self.served = tuple(served)
        self.after, self.told = cursor, told
        self.counts = Counter(
            entry.message.event
            for entry, moved in zip(entries, served, strict=True)
            if moved is not None
        )
        self._encodings: dict[str, object] = {}

    def messages(self) -> list[SSEMessage]:
        """The slice's events to write, with their ids."""
        return [
            entry.message.with_id(str(moved))
            for entry, moved in zip(self.entries, self.served, strict=True)
            if moved is not None
        ]

    def admitted_to(self, admitted: Admitted) -> tuple[list[SSEMessage], Cursor | None]:
        """The slice's events to write that ``admitted`` admits, with their ids, and the cursor
        the last of them carries (``None`` when there is none): a client's own way."""
        messages: list[SSEMessage] = []
        told = None
        for entry, moved in zip(self.entries, self.served, strict=True):
            if moved is not None and admitted(entry.message):
                messages.append(entry.message.with_id(str(moved)))
                told = moved
        return messages, told

    def encoded(self, wire: WireFormat[Any]) -> object:
        """The whole slice in ``wire``'s format, encoded by the first stream of that format
        admitted to all of it, and kept (within the memo's bound) for every other."""
        chunk = self._encodings.get(wire.name)
        if chunk is None:
            chunk = wire.events(self.messages())
            owner = self._owner
            if owner is not None and owner.hold(_weight(chunk)):
                self._encodings[wire.name] = chunk
            if owner is not None:
                owner.memo.encodings += 1
        return chunk


class SharedReplay:
    """The slices of the replays from ``start`` (the client's cursor as its replay begins),
    worked out as streams reach them, kept while some stream replays them."""

    __slots__ = ("_slices", "entries", "memo", "most", "start", "users", "weight")

    def __init__(
        self, memo: ReplayMemo, start: Cursor | None, entries: Sequence[Entry], most: int
    ) -> None:
        self.memo, self.start, self.entries, self.most = memo, start, entries, most
        self.users = 0
        """Streams holding a :class:`ReplayShare` of it."""
        self.weight = 0
        """What its slices are counted as against the memo's bound."""
        self._slices: dict[tuple[int, int], SharedSlice] = {}

    def agreed(self, entries: Sequence[Entry]) -> int:
        """How many of ``entries``' first entries are the same as this replay's (:func:`_same`);
        when ``entries`` agrees with all of them and is longer, it is this replay's from now on
        (the first resume's, or one that registered later: its replay reaches further)."""
        mine = self.entries
        if entries is mine:
            return len(mine)
        agreed = 0
        for a, b in zip(mine, entries, strict=False):
            if not _same(a, b):
                break
            agreed += 1
        if agreed == len(mine) and len(entries) > agreed:
            self.entries = entries
            return len(entries)
        return agreed

    def slice(self, first: int, count: int, before: Cursor | None) -> SharedSlice:
        """The ``count`` entries from ``first``, for a client at ``before`` (where the slice
        before left it): the one kept, or one worked out now, and kept if the bound allows."""
        kept = self._slices.get((first, count))
        if kept is not None and (kept.before is before or kept.before == before):
            return kept
        entries = self.entries[first : first + count]
        if kept is None and self.hold(CURSOR_WEIGHT * count):
            made = self._slices[first, count] = SharedSlice(before, entries, self)
            return made
        return SharedSlice(before, entries, None)

    def holds(self, first: int, count: int) -> bool:
        """Whether the slice of ``count`` entries from ``first`` is kept."""
        return (first, count) in self._slices

    def hold(self, weight: int) -> bool:
        """Count ``weight`` more against the memo's bound, if it fits and some stream still
        replays this (one let go of keeps nothing more)."""
        memo = self.memo
        if self.users <= 0 or memo.held + weight > memo.max_bytes:
            return False
        memo.held += weight
        self.weight += weight
        return True

    def drop(self) -> None:
        """Let go of everything kept: no stream replays this any more."""
        self._slices.clear()
        self.entries = ()
        self.memo.held -= self.weight
        self.weight = 0


class ReplayShare:
    """One resume's hold on a :class:`SharedReplay`, from before it waits for its turn (so a
    replay is kept while resumes from its cursor are still to come) until :meth:`release`
    (once the replay is written, or the stream ended; again is harmless). The first
    :attr:`agreed` entries of its own replay are the shared one's (:meth:`agree`)."""

    __slots__ = ("agreed", "replay")

    def __init__(self, replay: SharedReplay) -> None:
        self.replay: SharedReplay | None = replay
        self.agreed = 0

    def agree(self, entries: Sequence[Entry]) -> None:
        """The resume's own replay is ``entries``: how much of it is shared is worked out."""
        if self.replay is not None:
            self.agreed = self.replay.agreed(entries)

    def release(self) -> None:
        replay, self.replay = self.replay, None
        if replay is not None:
            replay.memo.let_go(replay)


class ReplayMemo:
    """The shared replays of the streams replaying now, one per starting cursor, keeping at
    most ``max_bytes`` (:data:`REPLAY_SHARE_MAX_BYTES`) of slices among them all.

    :attr:`encodings` counts the slices encoded (once per slice and wire when shared)."""

    def __init__(self, max_bytes: int = REPLAY_SHARE_MAX_BYTES, most: int = MAX_WRITE_BATCH):
        self.max_bytes, self.most = max_bytes, most
        self.held = 0
        """What the shared replays keep now, as counted against ``max_bytes``."""
        self.encodings = 0
        self._replays: dict[Cursor | None, SharedReplay] = {}

    def __len__(self) -> int:
        """How many shared replays are held (one per starting cursor being replayed)."""
        return len(self._replays)

    def share(self, start: Cursor | None) -> ReplayShare:
        """A hold on the shared replay of the resumes whose cursor is ``start`` as their replay
        starts (its entries are the first of them to :meth:`ReplayShare.agree`)."""
        shared = self._replays.get(start)
        if shared is None:
            shared = self._replays[start] = SharedReplay(self, start, (), self.most)
        shared.users += 1
        return ReplayShare(shared)

    def let_go(self, shared: SharedReplay) -> None:
        shared.users -= 1
        if shared.users <= 0:
            if self._replays.get(shared.start) is shared:
                del self._replays[shared.start]
            shared.drop()


def replay_writes(
    share: ReplayShare | None,
    entries: Sequence[Entry],
    inbox: Inbox,
    admitted: Admitted,
    wire: WireFormat[Any],
) -> Iterator[tuple[ReplayWrite, Cursor | None]]:
    """What :func:`~router.core.serving.replay_slices` gives for ``entries`` (the stream's own
    replay), a write per slice with the cursor its last event carries (``None``: nothing to
    write), the shared slices' encodings used where the client is admitted to all of a slice
    (with no ``share``: none, every slice the client's own).

    The client's cursor (``inbox.cursor``) moves exactly as it does there. A slice no other
    stream holds a share of (and none kept) is served the unshared way: a replay from a cursor
    of its own costs what it did, and keeps nothing. From the first entry the stream's own
    replay and the shared one disagree on (or with a cursor that is not the shared replay's),
    the rest is served the unshared way."""
    shared = None if share is None else share.replay
    first = 0
    if share is not None and shared is not None and inbox.cursor == shared.start:
        most, agreed = shared.most, share.agreed
        while first < len(entries):
            count = min(most, len(entries) - first)
            if first + count > agreed:
                break
            if shared.users > 1 or shared.holds(first, count):
                yield _shared_write(shared.slice(first, count, inbox.cursor), inbox, admitted, wire)
            else:
                yield _own_write(entries[first : first + count], inbox, admitted, wire)
            first += count
    for messages, served in replay_slices(entries, inbox, admitted, first=first):
        yield _written(messages, served, wire)


def _shared_write(
    piece: SharedSlice, inbox: Inbox, admitted: Admitted, wire: WireFormat[Any]
) -> tuple[ReplayWrite, Cursor | None]:
    """``piece`` written for this client: its shared encoding when the client is admitted to
    every event of it to write, else what it is admitted to, encoded for it alone."""
    inbox.cursor = piece.after
    told = piece.told
    if told is None:
        return None, None
    if all(
        admitted(entry.message)
        for entry, moved in zip(piece.entries, piece.served, strict=True)
        if moved is not None
    ):
        return (piece.encoded(wire), piece.counts), told
    messages, told = piece.admitted_to(admitted)
    return _written(messages, told, wire)


def _own_write(
    entries: Sequence[Entry], inbox: Inbox, admitted: Admitted, wire: WireFormat[Any]
) -> tuple[ReplayWrite, Cursor | None]:
    """One slice of ``entries`` written the unshared way."""
    for messages, served in replay_slices(entries, inbox, admitted, len(entries)):
        return _written(messages, served, wire)
    return None, None  # a last slice with nothing to write: replay_slices says nothing of it


def _written(
    messages: list[SSEMessage], told: Cursor | None, wire: WireFormat[Any]
) -> tuple[ReplayWrite, Cursor | None]:
    if told is None:
        return None, None
    return (wire.events(messages), Counter(m.event for m in messages)), told
