"""The :class:`EventBus` Protocol: what the consumer actor and the publish endpoint need."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from router.core.cursor import Cursor, EventIdentity, Offset
from router.core.envelope import Envelope, Publishable
from router.core.scope import Scope


def partition_key(scope: Scope) -> str:
    """What a bus partitions by: the first owner the scope names, so that all of one user's (or
    one novel's, or one session's) events land in one partition, in order."""
    if scope.broadcast:
        return "broadcast"
    return scope.user_id or scope.novel_id or scope.session_id or ""


class BusUnavailableError(Exception):
    """The bus did not take what was published; the caller may retry later."""


@dataclass(frozen=True, slots=True)
class Record:
    """One entry read from a bus: where it sits, and its raw bytes (not yet parsed)."""

    identity: EventIdentity
    raw: bytes
    lost: bool = False
    """No record, but the place of records the bus deleted before they were read (Kafka's
    retention or DeleteRecords): every offset of the partition up to ``identity`` that the reader
    had not reached is gone. ``raw`` is empty. The router moves past it and tells every client
    behind it that its history is truncated."""
    envelope: Envelope | None = None
    """The envelope ``raw`` encodes, when the bus was handed it in this process (the embedded
    bus, from a :class:`~router.core.envelope.Sealed`): the adapter routes it without parsing
    ``raw`` again. Never set from bytes read off a broker."""


class EventBus(Protocol):
    @property
    def source(self) -> str:
        """The cursor source name: ``memory``, ``kafka``, ``redis``."""
        ...

    async def epoch(self) -> str:
        """The current history's epoch (see docs/cursor.md)."""
        ...

    @property
    def offset_width(self) -> int:
        """How many numbers an offset of this bus has: 1 (a Kafka or memory offset) or 2 (a
        Redis entry id, ``ms-seq``); with :meth:`partitions`, what sizes the longest cursor."""
        ...

    async def partitions(self) -> Sequence[str]:
        """Every partition of the current epoch, waiting for the bus as :meth:`epoch` does."""
        ...

    async def end_offsets(self) -> Mapping[str, Offset]:
        """The last offset written in each partition, asked of the bus now (a partition it
        does not name holds nothing yet): a cursor past it names events that never were.

        Raises :class:`BusUnavailableError` when the bus does not answer in time.
        """
        ...

    async def start_positions(self) -> Mapping[str, Offset]:
        """Where ``read(None)`` starts, said as ``read``'s ``start`` would say it: per partition,
        the last offset it does not read (a partition not named is read from its beginning).
        Waits for the bus as :meth:`epoch` does, and gives the same answer every time: where a
        router reading from "now on" stands before it has read anything."""
        ...

    def read(self, start: Mapping[str, Offset] | None) -> AsyncGenerator[Sequence[Record], None]:
        """Batches of records in bus order, after ``start``: the last offset consumed per
        partition, a partition it does not name being read from its beginning; or ``None`` to
        start from the end of every partition (what is published from now on).

        The generator waits for new records; cancelling the caller stops it. The caller closes it
        (``contextlib.aclosing``), so it is not left suspended for the garbage collector.
        """
        ...

    async def publish(self, envelopes: Sequence[Publishable]) -> list[EventIdentity]:
        """Append envelopes, each to the partition its scope hashes to, so one user's or one
        novel's events keep their order; returns where each landed.

        Raises :class:`BusUnavailableError` when the bus does not take them.
        """
        ...

    async def replay(self, after: Cursor, up_to: Cursor, limit: int) -> list[Record] | None:
        """The records after ``after`` up to ``up_to`` (both of the current epoch), read again
        from the bus, for a resume the replay cache cannot serve; ``None`` when the bus no longer
        holds them all, or they are more than ``limit``. A bus that knows what it deleted may
        instead return what it still holds, after a ``lost`` record for each partition that
        no longer reaches back to ``after``."""
        ...

    @property
    def errors(self) -> int:
        """Failed calls so far, for the metrics."""
        ...

    def consumer_lag(self) -> Mapping[str, int]:
        """Per partition, how many records the bus holds that the router has not read yet."""
        ...

    async def healthy(self) -> bool: ...

    async def aclose(self) -> None:
        """Release connections; shielded from cancellation, as it runs during shutdown."""
        ...
