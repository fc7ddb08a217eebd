"""The :class:`ReplayCache` Protocol: what the adapter writes and a resuming session reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from router.core.cursor import Cursor, EventIdentity, Offset
from router.core.history import Entry, Replay


@dataclass(frozen=True, slots=True)
class Window:
    """What a cache holds now: how many events, and when the oldest was appended."""

    events: int
    oldest_appended_at: float | None


class ReplayCache(Protocol):
    async def append(self, entries: Sequence[Entry]) -> None:
        """Keep ``entries`` (in the order the router processed them), trimming to retention."""
        ...

    async def forget(self, identity: EventIdentity) -> None:
        """The bus deleted its partition's records up to ``identity`` before they were read
        (a ``lost`` record): a resume from before it is truncated from now on, as after an
        eviction. Never raises."""
        ...

    async def replay(self, after: Cursor, up_to: Cursor | None) -> Replay:
        """The retained events after ``after`` and up to ``up_to``; see
        :meth:`router.core.history.History.replay`."""
        ...

    async def resume_point(self, epoch: str) -> dict[str, Offset] | None:
        """Where this deployment got to in the bus (the last offset appended per partition), if
        the cache holds history of ``epoch``; a restarted router starts reading there."""
        ...

    async def window(self) -> Window: ...

    @property
    def errors(self) -> int:
        """Failed calls so far, for the metrics."""
        ...

    async def healthy(self) -> bool: ...

    async def run(self) -> None:
        """Background work of the cache (catching up after an outage); runs until cancelled."""
        ...

    async def aclose(self) -> None: ...
