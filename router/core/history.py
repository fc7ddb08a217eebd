"""The replay window: the most recent events, kept so a client that reconnects gets what it missed.

:class:`History` is the in-memory form (the embedded default's replay cache wraps it); it is also
the reference the other caches are tested against. It knows what it no longer holds: for every
partition, the newest offset it has evicted. A resume from a cursor that has not been served up to
that offset would miss events, so the replay says it is truncated instead of pretending.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from router.core.cursor import Cursor, EventIdentity, Offset
from router.core.sse import SSEMessage


@dataclass(frozen=True, slots=True)
class Entry:
    """One retained event, found at ``identity`` on its bus."""

    identity: EventIdentity
    message: SSEMessage
    appended_at: float


@dataclass(frozen=True, slots=True)
class Replay:
    """What a resume gets: ``truncated`` when events the client did not see were evicted, or the
    cursor belongs to another history; ``entries`` then holds everything retained.

    ``unavailable``: the cache could not be read, so it cannot say whether anything is missing
    (``truncated`` is then true, and ``entries`` is what it still holds in memory).
    """

    entries: list[Entry]
    truncated: bool
    unavailable: bool = False


def entry_size(entry: Entry) -> int:
    """What an entry weighs against ``max_bytes``: its event's bytes on the wire (the encoded
    form the history holds; the rest of an entry is small and of fixed size)."""
    return len(entry.message.to_sse_format())


@dataclass(slots=True)
class History:
    """At most ``max_events`` events of at most ``max_bytes`` bytes together (``None``: no size
    limit; see :func:`entry_size`), none older than ``max_age`` seconds (``None``: no age limit).
    Past any of them the oldest go first, and are recorded as evicted.

    Entries are kept in the order the router processed them, which is the order a client gets them.
    Time is passed in, never read.
    """

    max_events: int
    max_age: float | None = None
    source: str | None = None
    epoch: str | None = None
    max_bytes: int | None = None
    _entries: deque[Entry] = field(default_factory=deque, repr=False)
    _evicted_up_to: dict[str, Offset] = field(default_factory=dict, repr=False)
    _bytes: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.max_events < 1:
            raise ValueError("a history keeps at least one event")
        if self.max_age is not None and not self.max_age > 0:
            raise ValueError("max_age must be positive, or None for no age limit")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError("max_bytes must be positive, or None for no size limit")

    @property
    def size(self) -> int:
        """The bytes held, as :func:`entry_size` weighs them."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    def append(self, entry: Entry) -> None:
        """Keep ``entry``; an entry of a new source or epoch starts a new history."""
        self._join(entry.identity)
        self._entries.append(entry)
        self._bytes += entry_size(entry)
        while len(self._entries) > self.max_events or (
            self.max_bytes is not None and self._bytes > self.max_bytes
        ):
            self._evict_oldest()
        self.expire(entry.appended_at)

    def forget(self, identity: EventIdentity) -> None:
        """The bus deleted its partition's records up to ``identity`` before the router read
        them, so they were never kept: a resume from before it is truncated, as after an
        eviction."""
        self._join(identity)
        self._note_evicted(identity)

    def _join(self, identity: EventIdentity) -> None:
        """Start a new history if ``identity`` is of another source or epoch."""
        if (identity.source, identity.epoch) != (self.source, self.epoch):
            self._entries.clear()
            self._bytes = 0
            self._evicted_up_to.clear()
            self.source, self.epoch = identity.source, identity.epoch

    def expire(self, now: float) -> None:
        """Evict what has outlived ``max_age`` at ``now``."""
        if self.max_age is None:
            return
        horizon = now - self.max_age
        while self._entries and self._entries[0].appended_at < horizon:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        oldest = self._entries.popleft()
        self._bytes -= entry_size(oldest)
        self._note_evicted(oldest.identity)

    def _note_evicted(self, identity: EventIdentity) -> None:
        evicted = self._evicted_up_to.get(identity.partition)
        if evicted is None or identity.offset > evicted:
            self._evicted_up_to[identity.partition] = identity.offset

    def replay(self, after: Cursor, up_to: Cursor | None) -> Replay:
        """The retained events a client at ``after`` has not been served, up to ``up_to``.

        ``up_to`` is the router's cursor when the client registered for live events (``None``:
        the router had routed nothing yet). What lies beyond it reaches the client live, so it is
        left out here.
        """
        if self.source is None or self.epoch is None or not after.is_from(self.source, self.epoch):
            return Replay(self._between(None, up_to), truncated=True)
        truncated = any(
            (served := after.position(partition)) is None or served < evicted
            for partition, evicted in self._evicted_up_to.items()
        )
        return Replay(self._between(after, up_to), truncated)

    def _between(self, after: Cursor | None, up_to: Cursor | None) -> list[Entry]:
        """The entries ``up_to`` covers and ``after`` (of this history, or ``None``: covers
        none) does not.

        Every entry is of this history (:meth:`_join`), so ``Cursor.covers`` comes down to a
        partition's offset against the cursor's: compared here from each cursor's positions,
        once, rather than through two calls per entry (a reconnect storm asks this of the whole
        window once per resume)."""
        if up_to is None or (up_to.source, up_to.epoch) != (self.source, self.epoch):
            return []
        limits = dict(up_to.positions)
        served = {} if after is None else dict(after.positions)
        kept = []
        for entry in self._entries:
            identity = entry.identity
            limit = limits.get(identity.partition)
            if limit is None or identity.offset > limit:
                continue
            seen = served.get(identity.partition)
            if seen is None or identity.offset > seen:
                kept.append(entry)
        return kept
