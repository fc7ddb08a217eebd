"""Event identities and resume cursors: what goes in an event's ``id:`` and comes back as
``Last-Event-ID``.

A bus orders events only inside a partition, and one client's events come from several of them. So
the ``id:`` the router sends is not "the last event" but a **cursor**: for every partition of the
source, the offset up to which the client has been served (delivered, or seen and filtered out).
Resuming replays exactly what lies after it, partition by partition.

Grammar (ABNF, RFC 5234)::

    cursor    = head ":" ( text-body / compact-body )
    head      = source [ "@" epoch ]
    text-body = [ position *( "," position ) ]
    compact-body = "~" 2*( ALPHA / DIGIT / "-" / "_" )        ; base64url, no padding
    position  = partition ":" offset
    source    = %x61-7A *15( %x61-7A / DIGIT / "-" )          ; "kafka", "redis", "memory"
    epoch     = 1*32( ALPHA / DIGIT / "_" / "-" )
    partition = 1*64( ALPHA / DIGIT / "." / "_" / "-" )
    offset    = number [ "-" number ]                         ; "105", or Redis "1700000000000-0"
    number    = "0" / ( %x31-39 *18DIGIT )                    ; at most 2^63 - 1, no leading zeros

The **compact** body is base64url (RFC 4648 section 5, no padding) of a binary payload of unsigned
LEB128 varints, so that a cursor of a thousand partitions still fits in a ``Last-Event-ID``::

    payload  = version kind runs named          ; version 1
    kind     = 1 (one-number offsets) / 2 (two-number offsets) / 0 (mixed: each offset is
               preceded by its count of numbers, 1 or 2)
    runs     = count *( gap length length*offset )   ; numeric partitions, ascending, in runs of
               consecutive numbers; a run starts ``gap`` after the previous run's end (after -1
               for the first), so partitions 0..127 are one run "0 128"
    named    = count *( size name offset )      ; other partitions, ``size`` ASCII bytes each
    offset   = [ numbers ] zigzag( first - previous first ) [ second ]

The first number of each offset is coded against the previous position's first number (0 before
the first), zigzag-mapped so that a smaller one costs as little as a larger one: partitions at
similar offsets cost a byte or three each. A numeric partition is one spelled as a canonical
number up to 2^63 - 1; anything else ("01", "events") is named.

A cursor names each partition once. The router prints it with its partitions in order (numeric
ones numerically), in whichever of the two forms is shorter (the text form on a tie), so one
position has exactly one spelling; the parser accepts both forms, and any order. A cursor read
from a client is at most :data:`MAX_CURSOR_LENGTH` bytes; one the router builds is never refused
for its length (the bus's partitions are checked against the bound at start instead: see
:func:`longest_cursor`).

A cursor with no position (``memory@k3f9a1:``) is the start of its epoch: nothing served yet. A
stream carries it from its first bytes when the router has routed nothing, so that even a client
that drops before the first event reconnects with a position.

An **event identity** is a cursor with exactly one position, e.g. ``kafka@Tq3x:2:105``. The plain
seed form without an epoch (``kafka:2:105``) parses too, but since it cannot say which history it
belongs to it never matches a live source: see :meth:`Cursor.is_from`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAX_CURSOR_LENGTH = 16 * 1024
"""The longest ``Last-Event-ID`` accepted, in bytes: room for the compact form of 1,024 numeric
partitions at any offsets (about 13,700 bytes; see docs/cursor.md)."""
MAX_OFFSET = 2**63 - 1
_MAX_OFFSET_DIGITS = len(str(MAX_OFFSET))
COMPACT_MARK = "~"
COMPACT_VERSION = 1
_MAX_VARINT_BYTES = 10  # enough for a zigzag-coded difference of two offsets (< 2^64)

Offset = tuple[int, ...]
"""One or two non-negative integers; tuples compare the way the bus orders its entries."""

_SOURCE = re.compile(r"[a-z][a-z0-9-]{0,15}")
_EPOCH = re.compile(r"[A-Za-z0-9_-]{1,32}")
_PARTITION = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Any length here, so that a 20-digit offset is reported as too large rather than as malformed.
_NUMBER = re.compile(r"0|[1-9][0-9]*")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class CursorError(ValueError):
    """A cursor or identity that does not follow the grammar; the message says where."""


def check_source(source: str) -> str:
    if not _SOURCE.fullmatch(source):
        raise CursorError(
            f"source must be a lower-case name of at most 16 characters, got {source!r}"
        )
    return source


def check_epoch(epoch: str | None) -> str | None:
    if epoch is not None and not _EPOCH.fullmatch(epoch):
        raise CursorError(f"epoch must be 1 to 32 of A-Z a-z 0-9 _ -, got {epoch!r}")
    return epoch


def check_partition(partition: str) -> str:
    if not _PARTITION.fullmatch(partition):
        raise CursorError(f"partition must be 1 to 64 of A-Z a-z 0-9 . _ -, got {partition!r}")
    return partition


def parse_offset(text: str) -> Offset:
    parts = text.split("-")
    if len(parts) > 2 or not all(_NUMBER.fullmatch(part) for part in parts):
        raise CursorError(
            f"offset must be a non-negative integer without leading zeros, or two joined by "
            f"'-', got {text!r}"
        )
    # Compared by length first: Python refuses to convert a string of thousands of digits, and a
    # cursor may be long enough to hold one.
    if any(len(part) > _MAX_OFFSET_DIGITS for part in parts):
        raise CursorError(f"offset {_clipped(text)!r} is larger than 2^63 - 1")
    offset = tuple(int(part) for part in parts)
    if any(part > MAX_OFFSET for part in offset):
        raise CursorError(f"offset {text!r} is larger than 2^63 - 1")
    return offset


def _clipped(text: str, most: int = 40) -> str:
    return text if len(text) <= most else f"{text[:most]}..."


def format_offset(offset: Offset) -> str:
    if len(offset) == 1:  # most buses' offsets: one number, spelled per event
        return str(offset[0])
    return "-".join(map(str, offset))


def check_offset(offset: Offset) -> Offset:
    if len(offset) == 1 and type(offset[0]) is int and 0 <= offset[0] <= MAX_OFFSET:
        return offset  # one number, as most buses give: checked per event, without a generator
    if not 1 <= len(offset) <= 2 or any(
        isinstance(part, bool) or not isinstance(part, int) or not 0 <= part <= MAX_OFFSET
        for part in offset
    ):
        raise CursorError(f"offset must be one or two integers in 0..2^63-1, got {offset!r}")
    return offset


def _partition_order(partition: str) -> tuple[int, int, str]:
    # The name breaks ties between numeric spellings of one number ("1", "01").
    return (0, int(partition), partition) if partition.isdigit() else (1, 0, partition)


def _head(source: str, epoch: str | None) -> str:
    return source if epoch is None else f"{source}@{epoch}"


@dataclass(frozen=True, slots=True)
class EventIdentity:
    """Where one event sits on its bus: ``{source}[@{epoch}]:{partition}:{offset}``."""

    source: str
    partition: str
    offset: Offset
    epoch: str | None = None

    def __post_init__(self) -> None:
        source, epoch, partition = self.source, self.epoch, self.partition
        # A bus builds an identity per event, in a handful of places (source, epoch,
        # partition): each place is checked the first time, and only the offset after that.
        # Only plain strings are remembered, so a place is found again by equality alone.
        if (
            type(source) is not str
            or type(partition) is not str
            or (epoch is not None and type(epoch) is not str)
            or (source, epoch, partition) not in _CHECKED_PLACES
        ):
            check_source(source)
            check_epoch(epoch)
            check_partition(partition)
            _remember_checked(source, epoch, partition)
        check_offset(self.offset)

    def __str__(self) -> str:
        return f"{_head(self.source, self.epoch)}:{self.partition}:{format_offset(self.offset)}"


MOST_CHECKED_PLACES = 1024
"""How many places (source, epoch, partition) an identity skips checking again: far more than
one router's buses have. Past that (a client's cursors naming places of their own) the memory
starts again empty, so the bus's own are remembered again at their next event."""
_CHECKED_PLACES: set[tuple[str, str | None, str]] = set()


def _remember_checked(source: str, epoch: str | None, partition: str) -> None:
    """Remember a place that passed its checks (plain strings only)."""
    if type(source) is str and type(partition) is str and (epoch is None or type(epoch) is str):
        if len(_CHECKED_PLACES) >= MOST_CHECKED_PLACES:
            _CHECKED_PLACES.clear()
        _CHECKED_PLACES.add((source, epoch, partition))


@dataclass(frozen=True, slots=True)
class Cursor:
    """The offset served up to in each partition of one source's history (its epoch).

    A partition the cursor does not name has had nothing served from it yet.
    """

    source: str
    epoch: str | None
    positions: tuple[tuple[str, Offset], ...]
    _text: str = field(init=False, repr=False, compare=False)
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _pieces: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """Each position's ``partition:offset``, kept so that a cursor moved in one partition is
    spelled again without formatting the others."""
    _layout: _Layout | None = field(init=False, repr=False, compare=False)
    _chunks: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    """Each position's offset as coded in the payload, in payload order (with ``_layout``)."""

    def __post_init__(self) -> None:
        check_source(self.source)
        check_epoch(self.epoch)
        for partition, offset in self.positions:
            check_partition(partition)
            check_offset(offset)
        ordered = tuple(sorted(self.positions, key=lambda item: _partition_order(item[0])))
        index = {partition: i for i, (partition, _) in enumerate(ordered)}
        if len(index) != len(ordered):
            raise CursorError("a cursor names each partition once")
        object.__setattr__(self, "positions", ordered)
        object.__setattr__(self, "_index", index)
        pieces = tuple(f"{p}:{format_offset(o)}" for p, o in ordered)
        head = _head(self.source, self.epoch)
        layout: _Layout | None = None
        chunks: tuple[bytes, ...] = ()
        # Worked out only when it could be shorter: a payload holds at least 4 + n bytes.
        if sum(map(len, pieces)) + len(pieces) > 2 + _base64_length(4 + len(ordered)):
            layout = _Layout.of(ordered)
            chunks = layout.chunks(ordered, index)
        self._spell(head, pieces, layout, chunks)

    def _spell(
        self,
        head: str,
        pieces: tuple[str, ...],
        layout: _Layout | None,
        chunks: tuple[bytes, ...],
    ) -> None:
        text = f"{head}:{','.join(pieces)}"
        if layout is not None:
            compact = f"{head}:{COMPACT_MARK}{_base64url(layout.payload(chunks))}"
            if len(compact) < len(text):
                text = compact
        object.__setattr__(self, "_pieces", pieces)
        object.__setattr__(self, "_layout", layout)
        object.__setattr__(self, "_chunks", chunks)
        object.__setattr__(self, "_text", text)

    def _moved(self, partition: str, offset: Offset) -> Cursor | None:
        """This cursor with ``partition`` (already named) at ``offset``, spelled again by
        changing only what that position touches; ``None`` when that does not apply.

        The adapter moves its cursor once per event (a new ``id:`` each): checking and spelling
        every position anew cost about a fifth of converting an event (cProfile of
        ``convert_batch``, one partition)."""
        layout = self._layout
        i = self._index[partition]
        positions = (*self.positions[:i], (partition, offset), *self.positions[i + 1 :])
        pieces = self._pieces
        pieces = (*pieces[:i], f"{partition}:{format_offset(offset)}", *pieces[i + 1 :])
        if layout is None:
            # Spelled as text: it stays so unless the compact form could now be shorter, which
            # __post_init__ works out (the same test as there).
            if sum(map(len, pieces)) + len(pieces) > 2 + _base64_length(4 + len(positions)):
                return None
            chunks: tuple[bytes, ...] = ()
        # Mixed offsets (kind 0) may stop being mixed with this move, and the one spelling is
        # then of another kind: built anew (only a client's hostile or odd cursor is mixed).
        elif not layout.kind or len(offset) != layout.kind:
            return None
        else:
            chunks = layout.rechunk(self._chunks, positions, self._index, partition)
        moved = object.__new__(Cursor)
        object.__setattr__(moved, "source", self.source)
        object.__setattr__(moved, "epoch", self.epoch)
        object.__setattr__(moved, "positions", positions)
        object.__setattr__(moved, "_index", self._index)  # the same partitions, the same places
        moved._spell(_head(self.source, self.epoch), pieces, layout, chunks)
        return moved

    @classmethod
    def empty(cls, source: str, epoch: str | None) -> Cursor:
        """The start of ``epoch``: a client served nothing of it yet."""
        return cls(source, epoch, ())

    @classmethod
    def of(cls, identity: EventIdentity) -> Cursor:
        """The cursor of a client served exactly up to ``identity`` and nothing else."""
        return cls(identity.source, identity.epoch, ((identity.partition, identity.offset),))

    @classmethod
    def from_positions(
        cls, source: str, epoch: str | None, positions: Iterable[tuple[str, Offset]]
    ) -> Cursor:
        return cls(source, epoch, tuple(positions))

    def __str__(self) -> str:
        return self._text

    def position(self, partition: str) -> Offset | None:
        i = self._index.get(partition)
        return None if i is None else self.positions[i][1]

    def text_form(self) -> str:
        """The readable spelling, whatever :func:`str` prints (tests and docs compare them)."""
        body = ",".join(f"{p}:{format_offset(o)}" for p, o in self.positions)
        return f"{_head(self.source, self.epoch)}:{body}"

    def compact_form(self) -> str:
        """The compact spelling, whatever :func:`str` prints."""
        return f"{_head(self.source, self.epoch)}:{COMPACT_MARK}{_encode_compact(self.positions)}"

    def restricted(self, keep: Iterable[str]) -> Cursor:
        """This cursor with only the positions of partitions in ``keep`` (itself if that is all)."""
        wanted = set(keep)
        kept = tuple(item for item in self.positions if item[0] in wanted)
        return self if len(kept) == len(self.positions) else Cursor(self.source, self.epoch, kept)

    def is_from(self, source: str, epoch: str) -> bool:
        """Whether offsets in this cursor may be compared with ``source`` at ``epoch``.

        A cursor of another epoch, or of none, belongs to a history that has since been reset (or
        cannot say), so comparing its offsets could hide new events: the caller treats it as
        truncated history instead.
        """
        return self.source == source and self.epoch is not None and self.epoch == epoch

    def covers(self, identity: EventIdentity) -> bool:
        """Whether the event at ``identity`` was already served to a client at this cursor."""
        if identity.source != self.source or identity.epoch != self.epoch:
            return False
        served = self.position(identity.partition)
        return served is not None and identity.offset <= served

    def merge(self, other: Cursor) -> Cursor:
        """The partition-by-partition maximum of two cursors of one history.

        Returns ``other`` itself when it is already at or past this cursor everywhere (the common
        case, cheap to test with ``is``). A cursor of another history replaces this one: offsets of
        different epochs cannot be combined.
        """
        if (other.source, other.epoch) != (self.source, self.epoch):
            return other
        theirs = dict(other.positions)
        ahead = {
            partition: offset
            for partition, offset in self.positions
            if (their := theirs.get(partition)) is None or their < offset
        }
        if not ahead:
            return other
        return Cursor(self.source, self.epoch, tuple({**theirs, **ahead}.items()))

    def advance(self, identity: EventIdentity) -> Cursor:
        """This cursor moved on to include ``identity`` (a no-op if it already did)."""
        if identity.source != self.source or identity.epoch != self.epoch:
            raise CursorError(
                f"cannot advance a cursor of {_head(self.source, self.epoch)} "
                f"with an event of {_head(identity.source, identity.epoch)}"
            )
        if self.covers(identity):
            return self
        if identity.partition in self._index:
            moved = self._moved(identity.partition, identity.offset)
            if moved is not None:
                return moved
        others = tuple(item for item in self.positions if item[0] != identity.partition)
        return Cursor(self.source, self.epoch, (*others, (identity.partition, identity.offset)))


# --- The compact form --------------------------------------------------------------------------


def _base64_length(size: int) -> int:
    """Characters of ``size`` bytes in unpadded base64."""
    return (4 * size + 2) // 3


def _numeric(partition: str) -> int | None:
    """The number a partition is the canonical spelling of, if it is one the payload can run."""
    if _NUMBER.fullmatch(partition) and (number := int(partition)) <= MAX_OFFSET:
        return number
    return None


def _put(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _offset_kind(positions: Sequence[tuple[str, Offset]]) -> int:
    widths = {len(offset) for _, offset in positions}
    return widths.pop() if len(widths) == 1 else 0


def _varint(value: int) -> bytes:
    out = bytearray()
    _put(out, value)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class _Layout:
    """What the compact payload of one set of partitions holds besides the offsets: worked out
    once for the set, and shared by the cursors that move on within it.

    The payload is ``head``, then for each position in payload order the bytes ``before`` it (a
    run's gap and length, or a name) and its offset (together: its chunk), then ``tail``.
    """

    kind: int
    order: tuple[str, ...]
    rank: dict[str, int]
    head: bytes
    before: tuple[bytes, ...]
    tail: bytes

    @classmethod
    def of(cls, positions: Sequence[tuple[str, Offset]]) -> _Layout:
        kind = _offset_kind(positions)
        numbered: list[tuple[int, str]] = []
        named: list[str] = []
        for partition, _ in positions:
            number = _numeric(partition)
            if number is None:
                named.append(partition)
            else:
                numbered.append((number, partition))
        numbered.sort()  # already so in a cursor's order, but "01" and "1" differ there
        runs: list[list[tuple[int, str]]] = []
        for item in numbered:
            if runs and runs[-1][-1][0] + 1 == item[0]:
                runs[-1].append(item)
            else:
                runs.append([item])
        head = bytes((COMPACT_VERSION, kind)) + _varint(len(runs))
        before: list[bytes] = []
        end = -1
        for run in runs:
            before.append(_varint(run[0][0] - end - 1) + _varint(len(run)))
            before += [b""] * (len(run) - 1)
            end = run[-1][0]
        count = _varint(len(named))
        for k, partition in enumerate(named):
            name = _varint(len(partition)) + partition.encode("ascii")
            before.append(count + name if k == 0 else name)
        order = (*(p for run in runs for _, p in run), *named)
        return cls(
            kind,
            order,
            {p: r for r, p in enumerate(order)},
            head,
            tuple(before),
            b"" if named else count,
        )

    def chunk(self, rank: int, offset: Offset, previous: int) -> bytes:
        """The position at ``rank`` in payload order, after one whose first number is
        ``previous``."""
        out = bytearray(self.before[rank])
        if not self.kind:
            out.append(len(offset))
        delta = offset[0] - previous
        _put(out, delta << 1 if delta >= 0 else (-delta << 1) - 1)
        if len(offset) == 2:
            _put(out, offset[1])
        return bytes(out)

    def chunks(
        self, positions: Sequence[tuple[str, Offset]], index: dict[str, int]
    ) -> tuple[bytes, ...]:
        coded, previous = [], 0
        for rank, partition in enumerate(self.order):
            offset = positions[index[partition]][1]
            coded.append(self.chunk(rank, offset, previous))
            previous = offset[0]
        return tuple(coded)

    def rechunk(
        self,
        chunks: tuple[bytes, ...],
        positions: Sequence[tuple[str, Offset]],
        index: dict[str, int],
        partition: str,
    ) -> tuple[bytes, ...]:
        """``chunks`` after ``partition`` moved: its own offset and the next one change."""
        r = self.rank[partition]

        def first(rank: int) -> int:
            return 0 if rank < 0 else positions[index[self.order[rank]]][1][0]

        coded = list(chunks)
        for k in (r, r + 1)[: len(coded) - r]:
            coded[k] = self.chunk(k, positions[index[self.order[k]]][1], first(k - 1))
        return tuple(coded)

    def payload(self, chunks: Sequence[bytes]) -> bytes:
        return self.head + b"".join(chunks) + self.tail


def _payload(positions: Sequence[tuple[str, Offset]]) -> bytes:
    index = {partition: i for i, (partition, _) in enumerate(positions)}
    layout = _Layout.of(positions)
    return layout.payload(layout.chunks(positions, index))


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _encode_compact(positions: Sequence[tuple[str, Offset]]) -> str:
    return _base64url(_payload(positions))


class _Reader:
    """Reads a payload front to back; every problem is a :class:`CursorError`."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def byte(self) -> int:
        if self.at >= len(self.data):
            raise CursorError("the compact cursor ends too early")
        self.at += 1
        return self.data[self.at - 1]

    def varint(self) -> int:
        value = shift = 0
        for _ in range(_MAX_VARINT_BYTES):
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise CursorError(f"a number in the compact cursor is over {_MAX_VARINT_BYTES} bytes")

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise CursorError("the compact cursor ends too early")
        self.at += size
        return self.data[self.at - size : self.at]


def _decode_compact(body: str) -> list[tuple[str, Offset]]:
    if not _BASE64URL.fullmatch(body) or len(body) % 4 == 1:
        raise CursorError("a compact cursor is unpadded base64url after '~'")
    try:
        data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise CursorError("a compact cursor is unpadded base64url after '~'") from None
    if _base64url(data) != body:
        raise CursorError("a compact cursor has unused bits set in its last character")
    reader = _Reader(data)
    version = reader.byte()
    if version != COMPACT_VERSION:
        raise CursorError(f"compact cursor version {version} is unknown (known: 1)")
    kind = reader.byte()
    if kind not in (0, 1, 2):
        raise CursorError(f"compact cursor offset kind {kind} is unknown (known: 0, 1, 2)")
    previous = 0

    def offset() -> Offset:
        nonlocal previous
        width = reader.byte() if kind == 0 else kind
        if width not in (1, 2):
            raise CursorError(f"an offset has one or two numbers, not {width}")
        coded = reader.varint()
        first = previous + (coded >> 1 if not coded & 1 else -((coded + 1) >> 1))
        if not 0 <= first <= MAX_OFFSET:
            raise CursorError("an offset in the compact cursor is out of 0..2^63-1")
        previous = first
        return check_offset((first,) if width == 1 else (first, reader.varint()))

    positions: list[tuple[str, Offset]] = []
    end = -1
    for _ in range(reader.varint()):
        start = end + 1 + reader.varint()
        length = reader.varint()
        if length < 1 or start + length - 1 > MAX_OFFSET:
            raise CursorError("a run of partitions in the compact cursor is empty or too far")
        for number in range(start, start + length):
            positions.append((str(number), offset()))  # each reads a byte: the loop is bounded
        end = start + length - 1
    for _ in range(reader.varint()):
        name = reader.take(reader.varint()).decode("ascii", "replace")
        positions.append((check_partition(name), offset()))
    if reader.at != len(data):
        raise CursorError("the compact cursor has bytes after its last position")
    return positions


def longest_cursor(
    source: str, epoch: str | None, partitions: Iterable[str], offset_width: int
) -> int:
    """The most bytes a cursor of ``partitions`` (every one at an offset of ``offset_width``
    numbers) can be printed in, at any offsets: what the bus's partitions need of the bound.

    The text form is longest at 2^63 - 1 everywhere; the compact form when consecutive offsets
    swing between 0 and 2^63 - 1 (10 bytes for each first number, 9 for a second): the router
    prints the shorter of the two, so it is never longer than the shorter of these worst cases.
    """
    names = sorted(set(partitions), key=_partition_order)
    highest = (MAX_OFFSET,) * offset_width
    text = Cursor(source, epoch, tuple((p, highest) for p in names)).text_form()
    zeros = (0,) * offset_width
    payload = len(_payload([(p, zeros) for p in names])) + len(names) * (
        9 if offset_width == 1 else 9 + 8
    )
    compact = len(_head(source, epoch)) + 2 + _base64_length(payload)
    return min(len(text), compact)


def advance(cursor: Cursor | None, identity: EventIdentity) -> Cursor:
    """``cursor`` moved on to ``identity``; no cursor yet, or an identity of another history (a
    new epoch), starts a new cursor at ``identity``."""
    if cursor is None or (cursor.source, cursor.epoch) != (identity.source, identity.epoch):
        return Cursor.of(identity)
    return cursor.advance(identity)


def parse_cursor(text: str) -> Cursor:
    """Parse a ``Last-Event-ID``: a cursor, or the single-event seed form.

    Raises :class:`CursorError` with a message fit to return to the client.
    """
    if not isinstance(text, str):
        raise CursorError(f"a cursor is text, got {type(text).__name__}")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CURSOR_LENGTH:
        raise CursorError(f"a cursor is at most {MAX_CURSOR_LENGTH} bytes")
    if not text.isascii() or not text.isprintable() or " " in text:
        raise CursorError("a cursor is printable ASCII: no control characters, spaces or Unicode")
    head, colon, body = text.partition(":")
    if not colon:
        raise CursorError(f"a cursor looks like source[@epoch]:partition:offset, got {text!r}")
    source, at, epoch = head.partition("@")
    check_source(source)
    if at:
        check_epoch(epoch)
    if body.startswith(COMPACT_MARK):
        return Cursor(source, epoch if at else None, tuple(_decode_compact(body[1:])))
    positions: list[tuple[str, Offset]] = []
    for item in body.split(",") if body else ():
        partition, colon, offset = item.partition(":")
        if not colon:
            raise CursorError(f"each position looks like partition:offset, got {item!r}")
        positions.append((check_partition(partition), parse_offset(offset)))
    return Cursor(source, epoch if at else None, tuple(positions))


def parse_identity(text: str) -> EventIdentity:
    """Parse ``{source}[@{epoch}]:{partition}:{offset}``; exactly one position."""
    cursor = parse_cursor(text)
    if len(cursor.positions) != 1:
        raise CursorError(f"an event identity names exactly one partition, got {text!r}")
    ((partition, offset),) = cursor.positions
    return EventIdentity(cursor.source, partition, offset, cursor.epoch)
