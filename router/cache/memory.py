"""The embedded default replay cache: a :class:`~router.core.history.History` in this process.

Entries carry the trio clock's time of their append (``appended_at``); ``clock`` must be the same
clock, so age retention follows trio's (mock) time in tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from router.cache.base import Window
from router.core.cursor import Cursor, EventIdentity, Offset
from router.core.history import Entry, History, Replay


class MemoryReplayCache:
    def __init__(
        self,
        *,
        max_events: int,
        max_bytes: int | None = None,
        max_age: float | None = None,
        source: str | None = None,
        epoch: str | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._clock = clock
        self.errors = 0  # nothing can fail here
        self._history = History(
            max_events=max_events, max_bytes=max_bytes, max_age=max_age, source=source, epoch=epoch
        )

    async def append(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            self._history.append(entry)

    async def forget(self, identity: EventIdentity) -> None:
        self._history.forget(identity)

    async def replay(self, after: Cursor, up_to: Cursor | None) -> Replay:
        self._history.expire(self._clock())
        return self._history.replay(after, up_to)

    async def window(self) -> Window:
        self._history.expire(self._clock())
        oldest = next(iter(self._history), None)
        return Window(len(self._history), None if oldest is None else oldest.appended_at)

    async def resume_point(self, epoch: str) -> dict[str, Offset] | None:
        return None  # nothing outlives the process: a new router starts from the bus's end

    async def healthy(self) -> bool:
        return True

    async def run(self) -> None:
        await trio.sleep_forever()  # nothing to do in the background

    async def aclose(self) -> None:
        pass
