"""Where the controls in force are kept beyond this process: the :class:`ControlStore` Protocol,
and the in-memory store of the embedded default (which keeps nothing beyond the process).

Every instance applies every control it reads from the bus, and holds it in its
:class:`~router.core.control.AccessRules`; the store is for what the bus no longer brings: a
restarted instance, or a new one, reads its position on past the controls published before it,
so it loads them from here first. It lives with the replay cache (Redis when ``--cache redis``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from router.core.control import Control


class ControlStore(Protocol):
    async def keep(self, controls: Sequence[tuple[Control, float]], now: float) -> None:
        """Keep each control until its time (seconds since the epoch), and not after (what ran
        out by ``now`` goes). Never
        raises: a store that cannot be reached is logged and counted (the bus still carries the
        control to every instance reading it)."""
        ...

    async def in_force(self, now: float) -> list[Control]:
        """Every control kept whose time is after ``now`` (an empty list when the store cannot
        be read: logged and counted)."""
        ...

    @property
    def errors(self) -> int:
        """Failed calls so far, for the metrics."""
        ...

    async def aclose(self) -> None: ...


class ProcessControls:
    """The embedded default: the instance's own :class:`~router.core.control.AccessRules` are
    all there is, so nothing is kept, and a restarted instance starts with no control (as it
    starts with no history)."""

    errors = 0

    async def keep(self, controls: Sequence[tuple[Control, float]], now: float) -> None:
        pass

    async def in_force(self, now: float) -> list[Control]:
        return []

    async def aclose(self) -> None:
        pass
