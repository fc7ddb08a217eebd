"""The :class:`OutboxStore` Protocol: what the relay actor needs of an outbox table.

Every method is blocking (database drivers are); the relay calls them in a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class Claim:
    """Rows taken for publishing, held (locked) until :meth:`OutboxStore.settle` or
    :meth:`OutboxStore.abandon`; ``handle`` is the store's own (a transaction)."""

    rows: Sequence[tuple[int, str]]
    """``(id, envelope JSON)``, in id order."""
    handle: Any = field(default=None, repr=False)


class OutboxStore(Protocol):
    table: str

    def claim(self, part: int, limit: int) -> Claim | None:
        """Take up to ``limit`` unpublished rows of one part (rows of one scope key are always in
        the same part, so they are taken, and published, in id order). ``None`` when another
        relay holds that part."""
        ...

    def settle(self, claim: Claim) -> None:
        """The bus took the claim's rows: delete (or mark) them and commit."""
        ...

    def abandon(self, claim: Claim) -> None:
        """Give the rows back, untouched (the bus did not take them)."""
        ...

    def wait_for_rows(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for a sign of new rows; whether one came."""
        ...

    def close(self) -> None: ...
