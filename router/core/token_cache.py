"""A bounded memory of tokens already verified, so that a token seen again skips its signature.

After a deploy every tab reconnects at once, most with a token the router verified minutes ago:
checking its signature and decoding its claims again was about an eighth of the CPU of opening a
stream (docs/performance.md, "Opening streams"). :class:`TokenCache` remembers what verifying a
token gave, keyed by a digest of the token (it holds no token, so no credential lingers in it),
until the token expires; past ``capacity`` entries, the least recently used goes first.

Only the verification is remembered. Whatever can change while a token lives (a disconnect or a
revocation sent through the control API) is no part of it: the front door asks the controls in
force on every use, cached or not (router/admission.py). What the verification checked once
holds for the token's life: its signature, audience and issuer, that it was issued in the past
and is not too young (``iat``, ``nbf``), and ``--max-token-age`` (``exp - iat``, fixed in the
token). Only ``exp`` is not, and an entry is forgotten at it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

Value = TypeVar("Value")


@dataclass(frozen=True, slots=True)
class _Entry(Generic[Value]):
    value: Value
    until: float
    """When the entry stops answering (the token's ``exp``, plus any leeway)."""


class TokenCache(Generic[Value]):
    """At most ``capacity`` verified tokens, each until its expiry (``capacity`` 0: none).

    Times are whatever clock the caller passes as ``now`` (the wall clock the tokens' ``exp``
    is read against); nothing here reads a clock.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("a token cache holds zero or more tokens")
        self.capacity = capacity
        self._entries: OrderedDict[bytes, _Entry[Value]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float) -> Value | None:
        """What verifying ``token`` gave, if it is remembered and not expired at ``now``."""
        key = _digest(token)
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if now >= entry.until:
            del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.value

    def put(self, token: str, value: Value, until: float) -> None:
        """Remember ``value`` for ``token`` until ``until``, forgetting the least recently used
        entry if the cache is full."""
        if self.capacity == 0:
            return
        key = _digest(token)
        self._entries[key] = _Entry(value, until)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


def _digest(token: str) -> bytes:
    """A collision-resistant key: two tokens that shared one would share a principal."""
    return hashlib.sha256(token.encode()).digest()
