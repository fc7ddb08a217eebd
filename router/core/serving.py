"""What a session writes of a replay and of a live batch, decided without I/O.

The session actor (``actors/session.py``) drives these: it writes what they return and
checkpoints between a replay's slices. The client's cursor is the inbox's; ``admitted`` is the
session's check of an event against its principal and filter at the moment of writing, so a
narrowed session never writes what it no longer may see, whenever that event was queued.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from router.core.cursor import Cursor
from router.core.history import Replay
from router.core.inbox import MAX_WRITE_BATCH, Delivery, Inbox
from router.core.sse import SSEMessage

Admitted = Callable[[SSEMessage], bool]

REPLAY_CONCURRENCY = 16
"""Resumes that fetch and write their replay at once; the others wait their turn before they
register. A replay holds what it read of the cache (a copy of every entry, about 1.7 KiB each,
with the Redis cache) until its session has written it, so without a bound a reconnect storm of
N clients holds N copies of the cache at once. The loop serves one replay at a time anyway: in
the bench's storm (300 clients, 340 events each, the Redis cache) 64 turns grew the router by
47-53 MiB, 16 by 23-24 and 8 by 17-19, all in the same time within the noise, and the live
streams' p99 was 2-6 s at 64 and about 1 s at 16 or 8."""


def replay_slices(
    resume: Replay, inbox: Inbox, admitted: Admitted, most: int = MAX_WRITE_BATCH
) -> Iterator[tuple[list[SSEMessage], Cursor | None]]:
    """The replay's events to write, each with the client's cursor once it is served as its id,
    in slices of at most ``most`` entries examined, each with the cursor its last event carries
    (``None`` when it has none to write: the driver checkpoints after each slice all the same).
    Entries the client's cursor covers are skipped, and every entry, written or not, moves that
    cursor by its own place only."""
    messages: list[SSEMessage] = []
    told: Cursor | None = None
    for examined, entry in enumerate(resume.entries, start=1):
        served = inbox.replayed(entry.identity)
        if served is not None and admitted(entry.message):
            messages.append(entry.message.with_id(str(served)))
            told = served
        if examined % most == 0:
            yield messages, told
            messages, told = [], None
    if messages:
        yield messages, told


def serve_each(
    inbox: Inbox, batch: Sequence[Delivery], admitted: Admitted
) -> tuple[list[SSEMessage], list[Delivery]]:
    """The messages to write for ``batch`` one by one (ids from the client's cursor; what it had
    already, or may not see, left out), and the deliveries they came from."""
    messages: list[SSEMessage] = []
    sent: list[Delivery] = []
    for delivery in batch:
        message = inbox.serve(delivery)
        if message is not None and admitted(message):
            messages.append(message)
            sent.append(delivery)
    return messages, sent
