"""Event identities and resume cursors: what goes in an event's ``id:`` and comes back as
``Last-Event-ID``.

A bus orders events only inside a partition, and one client's events come from several of them. So
the ``id:`` the router sends is not "the last event" but a **cursor**: for every partition of the
source, the offset up to which the client has been served (delivered, or seen and filtered out).
Resuming replays exactly what lies after it, partition by partition.

Grammar (ABNF, RFC 5234)::

    cursor    = source [ "@" epoch ] ":" [ position *( "," position ) ]
    position  = partition ":" offset
    source    = %x61-7A *15( %x61-7A / DIGIT / "-" )          ; "kafka", "redis", "memory"
    epoch     = 1*32( ALPHA / DIGIT / "_" / "-" )
    partition = 1*64( ALPHA / DIGIT / "." / "_" / "-" )
    offset    = number [ "-" number ]                         ; "105", or Redis "1700000000000-0"
    number    = "0" / ( %x31-39 *18DIGIT )                    ; at most 2^63 - 1, no leading zeros

A cursor is at most :data:`MAX_CURSOR_LENGTH` bytes, names each partition once, and is printed with
its partitions in order (numeric ones numerically), so one position has exactly one spelling.

A cursor with no position (``memory@k3f9a1:``) is the start of its epoch: nothing served yet. A
stream carries it from its first bytes when the router has routed nothing, so that even a client
that drops before the first event reconnects with a position.

An **event identity** is a cursor with exactly one position, e.g. ``kafka@Tq3x:2:105``. The plain
seed form without an epoch (``kafka:2:105``) parses too, but since it cannot say which history it
belongs to it never matches a live source: see :meth:`Cursor.is_from`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_CURSOR_LENGTH = 512
MAX_OFFSET = 2**63 - 1

Offset = tuple[int, ...]
"""One or two non-negative integers; tuples compare the way the bus orders its entries."""

_SOURCE = re.compile(r"[a-z][a-z0-9-]{0,15}")
_EPOCH = re.compile(r"[A-Za-z0-9_-]{1,32}")
_PARTITION = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Any length here, so that a 20-digit offset is reported as too large rather than as malformed.
_NUMBER = re.compile(r"0|[1-9][0-9]*")


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
    offset = tuple(int(part) for part in parts)
    if any(part > MAX_OFFSET for part in offset):
        raise CursorError(f"offset {text!r} is larger than 2^63 - 1")
    return offset


def format_offset(offset: Offset) -> str:
    return "-".join(str(part) for part in offset)


def check_offset(offset: Offset) -> Offset:
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
        check_source(self.source)
        check_epoch(self.epoch)
        check_partition(self.partition)
        check_offset(self.offset)

    def __str__(self) -> str:
        return f"{_head(self.source, self.epoch)}:{self.partition}:{format_offset(self.offset)}"


@dataclass(frozen=True, slots=True)
class Cursor:
    """The offset served up to in each partition of one source's history (its epoch).

    A partition the cursor does not name has had nothing served from it yet.
    """

    source: str
    epoch: str | None
    positions: tuple[tuple[str, Offset], ...]
    _text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_source(self.source)
        check_epoch(self.epoch)
        for partition, offset in self.positions:
            check_partition(partition)
            check_offset(offset)
        ordered = tuple(sorted(self.positions, key=lambda item: _partition_order(item[0])))
        if len({partition for partition, _ in ordered}) != len(ordered):
            raise CursorError("a cursor names each partition once")
        object.__setattr__(self, "positions", ordered)
        body = ",".join(f"{p}:{format_offset(o)}" for p, o in ordered)
        text = f"{_head(self.source, self.epoch)}:{body}"
        if len(text) > MAX_CURSOR_LENGTH:
            raise CursorError(
                f"a cursor is at most {MAX_CURSOR_LENGTH} bytes; this one is {len(text)}"
            )
        object.__setattr__(self, "_text", text)

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
        for name, offset in self.positions:
            if name == partition:
                return offset
        return None

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
        others = tuple(item for item in self.positions if item[0] != identity.partition)
        return Cursor(self.source, self.epoch, (*others, (identity.partition, identity.offset)))


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
