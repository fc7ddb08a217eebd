"""The heartbeat clock: one timer for every stream, not one per stream and event.

A stream that has carried nothing for a heartbeat period gets a comment line, so that proxies and
browsers keep it open. The clock ticks :data:`~actors.session.TICKS_PER_HEARTBEAT` times per
period; each session counts the ticks since its last write and writes a comment once a whole
period's worth went by, so a quiet stream hears from the router after between three quarters of a
period and a full one of silence. A per-session timer re-armed on every write cost more CPU than
the write itself when one event went to thousands of streams.

The same tick carries the router's cursor to every session, so a quiet stream's heartbeat can be
its cursor moved up to the router's (an id-only block) instead of a comment: a client that sees
none of the events passing still resumes from where the router is (docs/cursor.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import trio

from actors.session import TICKS_PER_HEARTBEAT, Session
from router.core.cursor import Cursor


async def run_heartbeat_clock(
    sessions: Iterable[Session],
    heartbeat_seconds: float,
    progress: Callable[[], Cursor | None] | None = None,
) -> None:
    """Tick every session in ``sessions`` (read anew at each tick) until cancelled.

    ``progress`` gives the router's cursor, read once per tick and handed to every session in
    the same step (no checkpoint between), so that for each of them every event up to it has
    been offered: a quiet session's heartbeat then carries its cursor moved up to it.
    """
    while True:
        await trio.sleep(heartbeat_seconds / TICKS_PER_HEARTBEAT)
        position = None if progress is None else progress()
        for session in sessions:
            session.tick(position)
