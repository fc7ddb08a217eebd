"""The consumer actor: reads the bus and hands records to the adapter, in bus order."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import aclosing

import trio

from router.bus.base import EventBus, Record
from router.core.cursor import Offset

log = logging.getLogger(__name__)


async def run_consumer(
    bus: EventBus,
    start: Mapping[str, Offset] | None,
    records_out: trio.MemorySendChannel[Sequence[Record]],
) -> None:
    """Forward batches of records from ``bus`` (after ``start``) into ``records_out``.

    When ``records_out`` is full this waits, so a slow adapter slows reading from the bus and
    nothing is dropped. Runs until cancelled; closes ``records_out`` on the way out, which ends
    the adapter.
    """
    # Closing the reader explicitly: cancelled while sending, it would be left suspended and
    # only finalized by the garbage collector.
    async with records_out, aclosing(bus.read(start)) as batches:
        async for records in batches:
            await records_out.send(records)
