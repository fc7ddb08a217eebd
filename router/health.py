"""Whether a backend (a bus, a cache, an outbox) answers: one flag, one counter, one event.

Every change is logged once, at the change, not at every failed call; ``errors`` counts every
failed call, for the metrics; ``changed`` is set (and replaced) on every change, so a task or a
test can wait for the next one.
"""

from __future__ import annotations

import logging

import trio

log = logging.getLogger(__name__)


class Health:
    def __init__(self, name: str, *, healthy: bool) -> None:
        self.name = name
        self.healthy = healthy
        self.errors = 0
        self.changed = trio.Event()

    def failed(self, error: BaseException) -> None:
        self.errors += 1
        if self.healthy:
            log.warning(f"{self.name} unavailable", extra={"error": repr(error)})
            self._set(False)

    def recovered(self) -> None:
        if not self.healthy:
            log.info(f"{self.name} available")
            self._set(True)

    def _set(self, healthy: bool) -> None:
        self.healthy = healthy
        self.changed.set()
        self.changed = trio.Event()


class ReportsHealth:
    """For a backend that keeps a :class:`Health` in ``self.health``: the Protocols' ``errors``
    and ``healthy()``, and ``health_changed`` to wait for the next change."""

    health: Health

    @property
    def errors(self) -> int:
        return self.health.errors

    @property
    def health_changed(self) -> trio.Event:
        return self.health.changed

    async def healthy(self) -> bool:
        return self.health.healthy
