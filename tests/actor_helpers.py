"""Shared pieces for actor tests: events, deliveries, and a reader of a session's output."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

import trio

from actors.session import Delivery, Offer, Session
from router.core.cursor import Cursor, EventIdentity
from router.core.events import ContentUpdateEvent, TaskProgressEvent
from router.core.scope import Scope
from router.core.sse import SSEMessage
from tests.sse_spec_parser import ReceivedStream

EPOCH = "e1"


def identity(offset: int, partition: str = "0") -> EventIdentity:
    return EventIdentity("memory", partition, (offset,), EPOCH)


class Feed:
    """Deliveries the way the adapter makes them: one router cursor, advancing."""

    def __init__(self) -> None:
        self.cursor: Cursor | None = None
        self.seq = 0
        self.offsets: dict[str, int] = {}

    def next(self, message: SSEMessage, partition: str = "0") -> Delivery:
        offset = self.offsets.get(partition, -1) + 1
        self.offsets[partition] = offset
        where = identity(offset, partition)
        self.cursor = Cursor.of(where) if self.cursor is None else self.cursor.advance(where)
        self.seq += 1
        return Delivery(self.seq, where, self.cursor, message.with_id(str(self.cursor)))


def offer_batch(session: Session, deliveries: Sequence[Delivery]) -> Counter[Offer]:
    """Offer ``deliveries`` as the adapter does, and count what became of each."""
    outcomes: Counter[Offer] = Counter()
    session.offer(deliveries, outcomes)
    return outcomes


def offer(session: Session, delivery: Delivery) -> Offer:
    """Offer ``delivery`` alone, and say what became of it."""
    (outcome,) = offer_batch(session, [delivery])
    return outcome


def content(novel_id: str = "n1", version: int = 1, user_id: str | None = None) -> SSEMessage:
    return ContentUpdateEvent(
        novel_id=novel_id, content_version=version, scope=Scope(novel_id=novel_id, user_id=user_id)
    )


def progress(task_id: str, percent: float, user_id: str = "u1") -> SSEMessage:
    return TaskProgressEvent(task_id=task_id, progress=percent, scope=Scope(user_id=user_id))


def in_an_hour() -> float:
    return time.time() + 3600


class Reader(ReceivedStream):
    """Collects a session's output; ``events`` parses it like a browser would."""

    def __init__(self, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        super().__init__()
        self.receive = receive
        self.closed = trio.Event()

    async def run(self) -> None:
        async with self.receive:
            async for chunk in self.receive:
                self.raw += chunk
        self.closed.set()
