"""The consumer actor: reads the bus and hands records to the adapter, in bus order."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

import trio

from router.bus.base import EventBus, Record
from router.core.backoff import Backoff
from router.core.cursor import Offset
from router.core.observer import Failure

log = logging.getLogger(__name__)


async def run_consumer(
    bus: EventBus,
    start: Mapping[str, Offset] | None,
    records_out: trio.MemorySendChannel[Sequence[Record]],
    failed: Callable[[Failure], None] | None = None,
) -> None:
    """Forward batches of records from ``bus`` (after ``start``) into ``records_out``.

    When ``records_out`` is full this waits, so a slow adapter slows reading from the bus and
    nothing is dropped. A read that raises (the buses wait out outages themselves, so this is a
    bug) is logged, reported to ``failed`` (the adapter's :meth:`~actors.adapter.Adapter.failed`,
    which counts it and tells the observer) and opened again after a backoff, from ``start`` with
    what was handed over since: a record already handed over is never handed over twice.
    Runs until cancelled; closes ``records_out`` on the way out, which ends the adapter.
    """
    handed_over = _HandedOver()
    backoff = Backoff(0.1, 5.0)
    async with records_out:
        while True:
            reopen_from = handed_over.reopen_from(start)
            # Closing the reader explicitly: cancelled while sending, it would be left suspended
            # and only finalized by the garbage collector.
            async with aclosing(bus.read(reopen_from)) as batches:
                try:
                    await _forward(batches, records_out, handed_over, backoff)
                    return  # the bus ended its history: so does the adapter
                except _ReadFailedError as read_failed:
                    error = read_failed.error
            if failed is not None:
                failed(Failure.BUS_READ)
            log.error(
                "bus read failed",
                extra={"position": {p: list(o) for p, o in handed_over.offsets.items()}},
                exc_info=error,
            )
            await trio.sleep(backoff.next_delay())


@dataclass
class _HandedOver:
    """How far each partition was handed over to the adapter, in the history (epoch) of the
    last record handed over. A new history (a recreated topic, a Redis that lost its data)
    numbers its offsets again, from below those of the one before: what was handed over of
    that one says nothing of it, and filtered by it, the new history's events would be lost."""

    offsets: dict[str, Offset] = field(default_factory=dict)
    epoch: str | None = None
    new_history: bool = False
    """Whether the bus moved on to a new history since the consumer started: ``start`` is then
    of the one before, and a reader opened again starts from ``offsets`` alone."""

    def reopen_from(self, start: Mapping[str, Offset] | None) -> dict[str, Offset] | None:
        if self.new_history:
            return dict(self.offsets)
        return None if start is None else {**start, **self.offsets}


class _ReadFailedError(Exception):
    """The bus reader raised ``error``: told apart from a failure to hand records over."""

    def __init__(self, error: Exception) -> None:
        self.error = error


async def _forward(
    batches: AsyncGenerator[Sequence[Record], None],
    records_out: trio.MemorySendChannel[Sequence[Record]],
    handed_over: _HandedOver,
    backoff: Backoff,
) -> None:
    """Send what ``batches`` yields, minus what was handed over before (a reader opened again
    may start earlier than where the last one got to), and note how far each partition got.
    Only the read's failures are caught: the adapter's end closing is not a bus problem."""
    while True:
        try:
            records = await anext(batches)
        except StopAsyncIteration:
            return
        except Exception as error:
            raise _ReadFailedError(error) from error
        if not records:
            continue
        epoch = records[-1].identity.epoch  # one reader's batch is of one history
        if handed_over.epoch is not None and epoch != handed_over.epoch:
            handed_over.offsets.clear()
            handed_over.new_history = True
        if handed_over.offsets:
            records = [r for r in records if _after(r, handed_over.offsets)]
        if not records:
            continue
        await records_out.send(records)
        backoff.reset()
        handed_over.epoch = epoch
        for record in records:
            handed_over.offsets[record.identity.partition] = record.identity.offset


def _after(record: Record, handed_over: Mapping[str, Offset]) -> bool:
    last = handed_over.get(record.identity.partition)
    return last is None or record.identity.offset > last
