"""The :class:`EventBus` Protocol: what the consumer actor and the publish endpoint need."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from router.core.cursor import EventIdentity, Offset
from router.core.envelope import Envelope


@dataclass(frozen=True, slots=True)
class Record:
    """One entry read from a bus: where it sits, and its raw bytes (not yet parsed)."""

    identity: EventIdentity
    raw: bytes


class EventBus(Protocol):
    @property
    def source(self) -> str:
        """The cursor source name: ``memory``, ``kafka``, ``redis``."""
        ...

    async def epoch(self) -> str:
        """The current history's epoch (see docs/cursor.md)."""
        ...

    def read(self, start: Mapping[str, Offset]) -> AsyncGenerator[Sequence[Record], None]:
        """Batches of records in bus order, after ``start`` (the last offset consumed per
        partition; a partition it does not name is read from its beginning).

        The generator waits for new records; cancelling the caller stops it. The caller closes it
        (``contextlib.aclosing``), so it is not left suspended for the garbage collector.
        """
        ...

    async def publish(self, envelopes: Sequence[Envelope]) -> list[EventIdentity]:
        """Append envelopes, each to the partition its scope hashes to, so one user's or one
        novel's events keep their order; returns where each landed."""
        ...

    async def healthy(self) -> bool: ...
