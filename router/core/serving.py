"""What a session writes of a replay and of a live batch, decided without I/O.

The session actor (``actors/session.py``) drives these: it writes what they return and
checkpoints between a replay's slices. The client's cursor is the inbox's; ``admitted`` is the
session's check of an event against its principal and filter at the moment of writing, so a
narrowed session never writes what it no longer may see, whenever that event was queued.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from router.core.cursor import Cursor
from router.core.history import Entry, Replay
from router.core.inbox import MAX_WRITE_BATCH, Delivery, Inbox
from router.core.sse import SSEMessage
from router.core.wire import Hello, ReplayState

Admitted = Callable[[SSEMessage], bool]


def replay_slices(
    entries: Sequence[Entry],
    inbox: Inbox,
    admitted: Admitted,
    most: int = MAX_WRITE_BATCH,
    *,
    first: int = 0,
) -> Iterator[tuple[list[SSEMessage], Cursor | None]]:
    """A replay's events to write (``entries`` from ``first``), each with the client's cursor
    once it is served as its id, in slices of at most ``most`` entries examined, each with the
    cursor its last event carries (``None`` when it has none to write: the driver checkpoints
    after each slice all the same). Entries the client's cursor covers are skipped, and every
    entry, written or not, moves that cursor by its own place only. Slices are cut every
    ``most`` entries counted from the replay's start, ``first`` among them
    (``router/core/replay_share.py`` cuts them at the same places)."""
    messages: list[SSEMessage] = []
    told: Cursor | None = None
    for examined in range(first + 1, len(entries) + 1):
        entry = entries[examined - 1]
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


def hello(
    retry_ms: int,
    position: Cursor | None,
    resume: Replay | None,
    connection_id: str,
    expires_at: float,
) -> Hello:
    """What a stream says first: the retry hint, where the client stands (``position``), and
    what its resume gave (``none`` when it did not ask for one)."""
    replay: ReplayState = "none"
    if resume is not None:
        replay = "truncated" if resume.truncated else "complete"
    return Hello(retry_ms, position, replay, connection_id, expires_at)
