"""One fetch answering every caller that asks the same while it is under way.

A reconnect storm's resumes mostly ask the replay cache the same question (the same cursor,
the same router position); with the Redis cache each answer is read from Redis again, tens of
microseconds of CPU per entry. :class:`SharedFetches` lets the first caller of a key fetch, and
hands its answer to every caller of that key that came while it was under way; once it is
answered the key is forgotten, so a later caller fetches anew (nothing is kept: the memory is
what the callers hold).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import trio

__all__ = ["SharedFetches"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Fetch(Generic[V]):
    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.answer: tuple[V] | None = None
        """The answer, once the fetch gave one (in a tuple: it may be ``None`` itself)."""


class SharedFetches(Generic[K, V]):
    """The fetches under way, by key. :attr:`shared` counts the callers answered by another's
    fetch."""

    def __init__(self) -> None:
        self._under_way: dict[K, _Fetch[V]] = {}
        self.shared = 0

    async def get(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        """``fetch()``'s answer for ``key``: another caller's, if one is fetching it now, else
        this caller's own. When the caller fetching is cancelled, or its fetch raises, the
        callers waiting on it fetch again (the first of them for the others), so none of them
        waits for an answer that will not come, and each sees its own error, if any.

        Cancelled while waiting on another's fetch, a caller leaves that fetch to the others."""
        while (under_way := self._under_way.get(key)) is not None:
            await under_way.done.wait()
            if under_way.answer is not None:
                self.shared += 1
                return under_way.answer[0]
        mine = self._under_way[key] = _Fetch[V]()
        try:
            answer = await fetch()
            mine.answer = (answer,)
            return answer
        finally:
            del self._under_way[key]
            mine.done.set()
