"""Who an event is for: the routing part of an envelope.

A scope names any of a user, a novel and a session, or is an explicit broadcast. The permission
rules that read it live with the session logic; this module only makes sure a scope is well formed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SCOPE_FIELDS = ("user_id", "novel_id", "session_id")
MAX_SCOPE_ID_LENGTH = 256
# Printable, no whitespace: ids end up in logs, metrics indexes and query strings.
_SCOPE_ID = re.compile(r"[!-~]+")
_KEYS = frozenset({*SCOPE_FIELDS, "broadcast"})


class ScopeError(ValueError):
    """A scope that cannot be routed."""


def _check_id(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ScopeError(f"scope.{name} must be a string, got {type(value).__name__}")
    if not 0 < len(value) <= MAX_SCOPE_ID_LENGTH or not _SCOPE_ID.fullmatch(value):
        raise ScopeError(
            f"scope.{name} must be 1 to {MAX_SCOPE_ID_LENGTH} printable ASCII characters "
            f"without spaces, got {value!r}"
        )
    return value


@dataclass(frozen=True, slots=True)
class Scope:
    """Every field named here must be granted for a client to see the event.

    ``broadcast`` stands alone: an event for everyone names no user, novel or session, and an event
    that names none of them without saying ``broadcast`` is unroutable. Both are checked here.
    """

    user_id: str | None = None
    novel_id: str | None = None
    session_id: str | None = None
    broadcast: bool = False

    def __post_init__(self) -> None:
        named = [name for name in SCOPE_FIELDS if getattr(self, name) is not None]
        for name in named:
            _check_id(name, getattr(self, name))
        if not isinstance(self.broadcast, bool):
            raise ScopeError(f"scope.broadcast must be true or false, got {self.broadcast!r}")
        if self.broadcast and named:
            raise ScopeError(
                f"scope.broadcast cannot be combined with {', '.join(named)}: "
                "an event is either for everyone or for the scopes it names"
            )
        if not self.broadcast and not named:
            raise ScopeError(
                "scope names no user_id, novel_id or session_id and is not a broadcast: unroutable"
            )

    @classmethod
    def from_json(cls, raw: object) -> Scope:
        """Build a scope from its JSON object form, rejecting unknown keys."""
        if type(raw) is not dict and not isinstance(raw, Mapping):
            raise ScopeError(f"scope must be a JSON object, got {type(raw).__name__}")
        if not raw.keys() <= _KEYS:
            unknown = sorted(map(str, set(raw) - _KEYS))
            raise ScopeError(f"scope has unknown fields: {', '.join(unknown)}")
        fields: dict[str, Any] = {name: raw.get(name) for name in SCOPE_FIELDS}
        return cls(**fields, broadcast=raw.get("broadcast", False))

    def to_json(self) -> dict[str, str | bool]:
        if self.broadcast:
            return {"broadcast": True}
        return {name: value for name in SCOPE_FIELDS if (value := getattr(self, name)) is not None}
