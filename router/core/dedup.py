"""Recently seen producer events, to drop an event published twice (an outbox relay that died
between publishing and deleting its rows publishes them again).

Producers share one ``event_id`` space, across types and producers, so an id alone does not make
a repeat: an event is a duplicate only if an event with its id *and* its content (type, scope,
payload; see :func:`event_digest`) was seen within the window. A different event under an id seen
before is delivered, and reported as a reuse.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections import Counter, deque

from router.core.envelope import Envelope

DIGEST_BYTES = 16


class Sighting(enum.Enum):
    """What an event is, given the events seen within the window."""

    NEW = "new"
    DUPLICATE = "duplicate"
    """Its id and its content were seen: a retry of the same event."""
    REUSED_ID = "reused-id"
    """Its id was seen with other content: another event under the same id."""


def event_digest(envelope: Envelope) -> bytes:
    """A digest of what makes an event the same event: its type, scope and payload (not its id,
    nor its ``occurred_at``, which a retry may set anew). Keys are sorted, so the order a producer
    wrote them in does not matter; ``1`` and ``1.0`` differ, as they do for a client."""
    canonical = json.dumps(
        [envelope.event_type, envelope.scope.to_json(), envelope.payload],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,  # escapes a lone surrogate instead of failing to encode it
    )
    return hashlib.blake2b(canonical.encode("ascii"), digest_size=DIGEST_BYTES).digest()


class RecentIds:
    """The last ``capacity`` distinct events seen, as (id, digest) pairs; remembering one more
    forgets the oldest. Memory is bounded by ``capacity`` pairs of an id and a 16-byte digest."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("remember at least one id")
        self.capacity = capacity
        self._order: deque[tuple[str, bytes]] = deque()
        self._events: set[tuple[str, bytes]] = set()
        self._ids: Counter[str] = Counter()
        """How many remembered events carry each id (usually one)."""

    def __len__(self) -> int:
        return len(self._events)

    def sight(self, event_id: str, digest: bytes) -> Sighting:
        """What the event of ``event_id`` and ``digest`` is. A new one (or a reuse) is remembered;
        a duplicate is not remembered again: the window holds each event once, from its first
        sighting."""
        event = (event_id, digest)
        if event in self._events:
            return Sighting.DUPLICATE
        sighting = Sighting.REUSED_ID if event_id in self._ids else Sighting.NEW
        self._events.add(event)
        self._order.append(event)
        self._ids[event_id] += 1
        if len(self._order) > self.capacity:
            forgotten = self._order.popleft()
            self._events.discard(forgotten)
            self._ids[forgotten[0]] -= 1
            if not self._ids[forgotten[0]]:
                del self._ids[forgotten[0]]
        return sighting
