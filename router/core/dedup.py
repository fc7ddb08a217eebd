"""Recently seen producer event ids, to drop an event published twice (an outbox relay that died
between publishing and deleting its rows publishes them again)."""

from __future__ import annotations

from collections import deque


class RecentIds:
    """The last ``capacity`` ids seen; remembering one more forgets the oldest."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("remember at least one id")
        self.capacity = capacity
        self._order: deque[str] = deque()
        self._ids: set[str] = set()

    def __len__(self) -> int:
        return len(self._ids)

    def seen_before(self, event_id: str) -> bool:
        """Whether ``event_id`` was seen within the window; remembers it either way."""
        if event_id in self._ids:
            return True
        self._ids.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self.capacity:
            self._ids.discard(self._order.popleft())
        return False
