"""What the actors report about streams, for metrics: a Protocol, so actors import no exporter.

The router's Prometheus metrics implement it (``router/metrics.py``); tests and embedders that
want nothing pass :data:`NO_OBSERVER`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class StreamObserver(Protocol):
    def opened(self) -> None:
        """A stream started."""

    def sent(self, events: Mapping[str, int], oldest_age: float | None, queued: int) -> None:
        """A write to a client: how many events of each name it carried, how old the oldest of
        them was in seconds (``None`` if unknown, as for a replayed event), and how many events
        were still waiting in the session's inbox."""

    def closed(self, reason: str, seconds: float) -> None:
        """A stream ended after ``seconds``, for ``reason`` (a CloseReason value)."""


class _NoObserver:
    def opened(self) -> None:
        pass

    def sent(self, events: Mapping[str, int], oldest_age: float | None, queued: int) -> None:
        pass

    def closed(self, reason: str, seconds: float) -> None:
        pass


NO_OBSERVER: StreamObserver = _NoObserver()
