"""The embedded default bus: in-process partitions, gone when the process stops.

Its epoch is random per process start, so a cursor from a previous run is never compared with the
new run's offsets. Each partition keeps at most ``capacity`` records that the consumer has not yet
read, of at most ``max_bytes`` bytes together (a record larger than that alone still goes in when
its partition is empty); a publisher waits while its partition is full, which is how backpressure
from the consumer reaches whoever publishes.
"""

from __future__ import annotations

import secrets
import zlib
from collections import deque
from collections.abc import AsyncGenerator, Mapping, Sequence

import trio

from router.bus.base import Record, partition_key
from router.core.cursor import Cursor, EventIdentity, Offset
from router.core.envelope import Publishable, Sealed
from router.core.scope import Scope

MAX_BATCH = 256

DEFAULT_PARTITIONS = 1
"""``--memory-partitions``."""
DEFAULT_CAPACITY = 10_000
"""``--memory-bus-capacity``: unread records per partition."""


class MemoryBus:
    def __init__(
        self,
        *,
        partitions: int = DEFAULT_PARTITIONS,
        capacity: int = DEFAULT_CAPACITY,
        max_bytes: int | None = None,
    ) -> None:
        if partitions < 1 or capacity < 1:
            raise ValueError("a memory bus needs at least one partition and a capacity of one")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("a memory bus's max_bytes is positive, or None for no size bound")
        self._epoch = secrets.token_hex(4)
        self.errors = 0  # nothing can fail here
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._unread: list[deque[Record]] = [deque() for _ in range(partitions)]
        self._partition_names = [str(p) for p in range(partitions)]
        self._unread_bytes = [0] * partitions
        self._next_offset = [0] * partitions
        self._changed = trio.Event()  # set when records are appended or read; then replaced

    @property
    def source(self) -> str:
        return "memory"

    async def epoch(self) -> str:
        return self._epoch

    offset_width = 1

    async def partitions(self) -> Sequence[str]:
        return list(self._partition_names)

    async def end_offsets(self) -> Mapping[str, Offset]:
        return {str(p): (end - 1,) for p, end in enumerate(self._next_offset) if end}

    async def start_positions(self) -> Mapping[str, Offset]:
        return {}  # read(None) takes everything not read yet: every partition from its start

    async def healthy(self) -> bool:
        return True

    async def replay(self, after: Cursor, up_to: Cursor, limit: int) -> list[Record] | None:
        return None  # this bus keeps nothing once read

    def consumer_lag(self) -> Mapping[str, int]:
        return {str(p): len(unread) for p, unread in enumerate(self._unread)}

    async def aclose(self) -> None:
        pass

    def _partition_of(self, scope: Scope) -> int:
        if len(self._unread) == 1:  # the default: every scope's events in the one partition
            return 0
        return zlib.crc32(partition_key(scope).encode()) % len(self._unread)

    def _full(self, partition: int, adding: int) -> bool:
        """Whether ``partition`` has no room for a record of ``adding`` bytes."""
        unread = self._unread[partition]
        if len(unread) >= self._capacity:
            return True
        held = self._unread_bytes[partition]
        return self._max_bytes is not None and bool(unread) and held + adding > self._max_bytes

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def publish(self, envelopes: Sequence[Publishable]) -> list[EventIdentity]:
        identities = []
        epoch, names, unread, unread_bytes = (
            self._epoch, self._partition_names, self._unread, self._unread_bytes
        )  # fmt: skip
        try:
            for envelope in envelopes:
                partition = self._partition_of(envelope.scope)
                raw = envelope.to_bytes()
                while self._full(partition, len(raw)):
                    self._notify()  # the reader may be waiting for what this call appended
                    await self._changed.wait()
                offset = self._next_offset[partition]
                self._next_offset[partition] += 1
                identity = EventIdentity("memory", names[partition], (offset,), epoch)
                # A sealed envelope was checked and encoded by its publisher: handed over as it
                # is, the adapter does not parse its bytes back (about 15 us an event).
                parsed = envelope.envelope if isinstance(envelope, Sealed) else None
                unread[partition].append(Record(identity, raw, envelope=parsed))
                unread_bytes[partition] += len(raw)
                identities.append(identity)
        finally:
            self._notify()  # even if cancelled half-way: what was appended is there to read
        return identities

    async def read(
        self, start: Mapping[str, Offset] | None
    ) -> AsyncGenerator[Sequence[Record], None]:
        """Records after ``start``; this bus keeps nothing once read, so ``start`` only skips
        (``None``: the records not read yet, which is everything published from now on)."""
        start = start or {}
        while True:
            batch: list[Record] = []
            taken = 0
            for partition, unread in enumerate(self._unread):
                while unread and len(batch) < MAX_BATCH:
                    record = unread.popleft()
                    self._unread_bytes[partition] -= len(record.raw)
                    taken += 1
                    served = start.get(record.identity.partition)
                    if served is None or record.identity.offset > served:
                        batch.append(record)
            if taken:
                self._notify()  # room for waiting publishers, even if all of it was skipped
            if batch:
                yield batch
            elif not taken:
                await self._changed.wait()
