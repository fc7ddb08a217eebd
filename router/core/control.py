"""Control envelopes: a back end's change of rights, carried on the bus beside the events.

::

    {
      "control": "revoke",                     # or "disconnect"
      "user_id": "u1",                         # revoke: required
      "novel_id": "n1",                        # revoke: exactly one of novel_id and session_id
      "session_id": "s1",                      # disconnect: user_id, session_id, or both
      "issued_at": "2026-12-01T12:00:00Z"      # when the rights changed (RFC 3339)
    }

An object with a ``control`` key is a control envelope, never an event: the adapter applies it in
bus order and no client ever receives it. Both actions only take rights away; there is no way to
say "grant" here, and fields this module does not know are refused, so a control envelope can never
widen anyone's rights (rights come from tokens alone).

- **revoke**: tokens of ``user_id`` issued before ``issued_at`` no longer grant ``novel_id`` (or
  the session ``session_id``). Open streams that could receive it end with ``access-changed``; a
  reconnect with such a token is admitted without the grant (:meth:`AccessRules.narrow`).
- **disconnect**: every stream of the user (or of the token session id, or of that user's session)
  whose token was issued before ``issued_at`` ends with ``disconnected``, and such tokens are
  refused from then on (:meth:`AccessRules.refuses`).

A token's ``iat`` has whole seconds, so a token issued in the same second as the change counts as
issued before it: a back end that changes rights and at once issues a new token must date the new
one a second later. The never-leak side of the tie.

How long a control is remembered: a token issued before ``issued_at`` is expired by
``issued_at + hold`` when no token lives longer than ``hold`` (``--max-token-age``), so a control
is held exactly that long (:class:`AccessRules`), and forgotten after.

Pure: time is passed in.
"""

from __future__ import annotations

import enum
import heapq
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from router.core.envelope import EnvelopeError, EnvelopeProblem, decode_record, parse_timestamp
from router.core.permissions import Principal, StreamFilter
from router.core.scope import Scope, ScopeError

CONTROL_KEY = "control"
"""The key that makes a JSON object a control envelope rather than an event."""
DEFAULT_HOLD_SECONDS = 24 * 3600.0
"""How long a control is held when ``--max-token-age`` is not set and token lifetimes are
therefore unbounded: a guess, said in docs/access-control.md; set the flag for an exact bound."""
CLOCK_SKEW_SECONDS = 60.0
"""How far ahead of this router's clock a control's ``issued_at`` is believed: a later one is held
as if issued this far ahead, so no control outlives ``--max-token-age`` by more than this."""
_FIELDS = frozenset({CONTROL_KEY, "user_id", "novel_id", "session_id", "issued_at"})


class ControlAction(enum.StrEnum):
    REVOKE = "revoke"
    DISCONNECT = "disconnect"


class Effect(enum.StrEnum):
    """What a control does to an open stream it concerns (a bounded set: a metric label)."""

    ACCESS_CHANGED = "access-changed"
    """A grant the stream could use was revoked: an event stream ends (its client reconnects
    and is admitted without it); a transport that can narrow in place narrows instead."""
    DISCONNECTED = "disconnected"
    """The user or session was disconnected: the stream ends, not to come back with its token."""


@dataclass(frozen=True, slots=True)
class Control:
    """One control envelope, checked. ``issued_at`` is normalised RFC 3339 (UTC, microseconds)."""

    action: ControlAction
    issued_at: str
    user_id: str | None = None
    novel_id: str | None = None
    session_id: str | None = None

    @property
    def issued_seconds(self) -> float:
        """``issued_at`` as seconds since the epoch, what a token's ``iat`` is compared with."""
        return datetime.fromisoformat(self.issued_at).timestamp()

    def routes(self) -> tuple[Scope, ...]:
        """The scopes whose partitions this control is published to, one copy each: those of the
        events it stops (see :func:`router.bus.base.partition_key`, which partitions an event by
        the first owner its scope names).

        An event of novel N a user U may see names N first (``{novel_id: N}``) or U first
        (``{user_id: U, novel_id: N}``): a revocation of N for U rides both partitions, so on each
        of them every event after it is stopped. A user's disconnect rides the user's partition,
        a session's that of the session id (and the user's, when it names both).
        """
        if self.action is ControlAction.REVOKE:
            assert self.user_id is not None
            grant = (
                Scope(novel_id=self.novel_id)
                if self.novel_id is not None
                else Scope(session_id=self.session_id)
            )
            return (Scope(user_id=self.user_id), grant)
        routes = []
        if self.user_id is not None:
            routes.append(Scope(user_id=self.user_id))
        if self.session_id is not None:
            routes.append(Scope(session_id=self.session_id))
        return tuple(routes)

    def placements(self) -> list[PlacedControl]:
        """This control once per partition it must reach (:meth:`routes`), ready to publish."""
        return [PlacedControl(self, route) for route in self.routes()]

    def to_json(self) -> dict[str, str]:
        body = {CONTROL_KEY: self.action.value}
        for name in ("user_id", "novel_id", "session_id"):
            if (value := getattr(self, name)) is not None:
                body[name] = value
        body["issued_at"] = self.issued_at
        return body

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class PlacedControl:
    """A control on its way to one partition: ``scope`` only says which (it is not sent)."""

    control: Control
    scope: Scope

    def to_bytes(self) -> bytes:
        return self.control.to_bytes()


def is_control(raw: object) -> bool:
    """Whether a decoded envelope is a control envelope (by its ``control`` key)."""
    return isinstance(raw, Mapping) and CONTROL_KEY in raw


def parse_control(raw: bytes | str | Mapping[str, object], *, now: str | None = None) -> Control:
    """A control envelope, checked; :class:`EnvelopeError` says why not. ``now`` (RFC 3339) is
    taken for a missing ``issued_at`` (the HTTP API's "as of now"); on the bus it is required."""
    raw = decode_record(raw)  # type: ignore[assignment]
    if not isinstance(raw, Mapping):
        raise EnvelopeError(
            EnvelopeProblem.NOT_AN_OBJECT, f"expected a JSON object, got {type(raw).__name__}"
        )
    unknown = sorted(map(str, set(raw) - _FIELDS))
    if unknown:
        raise EnvelopeError(
            EnvelopeProblem.BAD_FIELD, f"a control envelope has no field {', '.join(unknown)}"[:200]
        )
    try:
        action = ControlAction(str(raw.get(CONTROL_KEY)))
    except ValueError:
        raise EnvelopeError(
            EnvelopeProblem.BAD_FIELD,
            f"'control' must be one of {', '.join(a.value for a in ControlAction)}, "
            f"got {raw.get(CONTROL_KEY)!r}"[:200],
        ) from None
    ids = {}
    for name in ("user_id", "novel_id", "session_id"):
        value = raw.get(name)
        if value is not None:
            try:
                Scope(**{name: value})  # type: ignore[arg-type]
            except ScopeError as exc:
                raise EnvelopeError(EnvelopeProblem.BAD_FIELD, str(exc)[:200]) from None
            ids[name] = value
    if action is ControlAction.REVOKE:
        if "user_id" not in ids or ("novel_id" in ids) == ("session_id" in ids):
            raise EnvelopeError(
                EnvelopeProblem.MISSING_FIELD,
                "a revoke names a user_id and exactly one of novel_id and session_id",
            )
    elif "novel_id" in ids or not ids:
        raise EnvelopeError(
            EnvelopeProblem.MISSING_FIELD if not ids else EnvelopeProblem.BAD_FIELD,
            "a disconnect names a user_id, a session_id or both, and no novel_id",
        )
    issued = raw.get("issued_at", now)
    if issued is None:
        raise EnvelopeError(EnvelopeProblem.MISSING_FIELD, "'issued_at' is required")
    try:
        issued_at = parse_timestamp(issued)
    except ValueError as exc:
        raise EnvelopeError(EnvelopeProblem.BAD_FIELD, f"'issued_at' {exc}") from None
    return Control(action, issued_at, **ids)  # type: ignore[arg-type]


def _believed(control: Control, now: float) -> float:
    """``control``'s time, but no later than :data:`CLOCK_SKEW_SECONDS` ahead of ``now``."""
    return min(control.issued_seconds, now + CLOCK_SKEW_SECONDS)


def _before(issued_at: float | None, moment: float) -> bool:
    """Whether a token issued at ``issued_at`` (``None``: unknown, so possibly any time) was
    issued before ``moment``."""
    return issued_at is None or issued_at < moment


_Key = tuple[str, str | None, str | None, str | None]
"""(action, user_id, novel_id, session_id): one control in force, by what it names."""


class AccessRules:
    """The controls in force on this instance, and what they do to a token.

    For each thing a control names only the latest ``issued_at`` matters (a token issued before
    it is before every earlier one too); each is forgotten ``hold_seconds`` after it, when every
    token it could concern has expired. Every call takes ``now`` (seconds since the epoch) and
    forgets what has run out by then.
    """

    def __init__(self, hold_seconds: float = DEFAULT_HOLD_SECONDS) -> None:
        if not hold_seconds > 0:
            raise ValueError("controls are held for a positive time")
        self.hold_seconds = hold_seconds
        self._in_force: dict[_Key, float] = {}
        self._by_user: dict[str, set[_Key]] = {}
        self._by_session: dict[str, set[_Key]] = {}
        self._expiry: list[tuple[float, int, _Key]] = []
        self._pushed = 0  # a tie-break: keys hold None, which does not compare

    def held(self, now: float) -> int:
        """How many controls are held at ``now``."""
        self.expire(now)
        return len(self._in_force)

    def until(self, control: Control, now: float) -> float:
        """When ``control`` is forgotten: every token issued before it has expired by then."""
        return _believed(control, now) + self.hold_seconds

    def apply(self, control: Control, now: float) -> bool:
        """Hold ``control``; ``False`` when it has already run out (every token it could concern
        has expired: it changes nothing, and is not kept)."""
        self.expire(now)
        until = self.until(control, now)
        if until <= now:
            return False
        key: _Key = (control.action.value, control.user_id, control.novel_id, control.session_id)
        issued = _believed(control, now)
        if self._in_force.get(key, -1.0) >= issued:
            return True  # already held, as late or later: another copy, or an older change
        self._in_force[key] = issued
        if control.user_id is not None:
            self._by_user.setdefault(control.user_id, set()).add(key)
        elif control.session_id is not None:
            self._by_session.setdefault(control.session_id, set()).add(key)
        self._pushed += 1
        heapq.heappush(self._expiry, (until, self._pushed, key))
        return True

    def expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            until, _, key = heapq.heappop(self._expiry)
            issued = self._in_force.get(key)
            if issued is None or issued + self.hold_seconds != until:
                continue  # superseded by a later control of the same key, which expires later
            del self._in_force[key]
            owner, index = (
                (key[1], self._by_user) if key[1] is not None else (key[3], self._by_session)
            )
            assert owner is not None
            keys = index.get(owner)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[owner]

    def _concerning(self, principal: Principal) -> Iterable[tuple[_Key, float]]:
        keys = set(self._by_user.get(principal.user_id, ()))
        if principal.session_id is not None:
            keys |= self._by_session.get(principal.session_id, set())
        return ((key, self._in_force[key]) for key in keys)

    def refuses(self, principal: Principal, issued_at: float | None, now: float) -> bool:
        """Whether a token of ``principal`` issued at ``issued_at`` was disconnected."""
        self.expire(now)
        return any(
            key[0] == ControlAction.DISCONNECT
            and _before(issued_at, moment)
            and (key[3] is None or key[3] == principal.session_id)
            for key, moment in self._concerning(principal)
        )

    def narrow(self, principal: Principal, issued_at: float | None, now: float) -> Principal:
        """``principal`` without the grants revoked since ``issued_at``: never wider than it."""
        self.expire(now)
        novels, session_id = set(principal.novels), principal.session_id
        for key, moment in self._concerning(principal):
            if key[0] != ControlAction.REVOKE or not _before(issued_at, moment):
                continue
            if key[2] is not None:
                novels.discard(key[2])
            if key[3] is not None and key[3] == session_id:
                session_id = None
        if len(novels) == len(principal.novels) and session_id == principal.session_id:
            return principal
        return replace(principal, novels=frozenset(novels), session_id=session_id)


def effect_on(
    control: Control,
    principal: Principal,
    stream_filter: StreamFilter,
    issued_at: float | None,
) -> Effect | None:
    """What ``control`` does to an open stream of ``principal`` (its token issued at
    ``issued_at``) following ``stream_filter``: ``None`` when nothing it may receive changes."""
    if not _before(issued_at, control.issued_seconds):
        return None  # its token came after the change: the back end granted it knowingly
    if control.action is ControlAction.DISCONNECT:
        if control.user_id is not None and control.user_id != principal.user_id:
            return None
        if control.session_id is not None and control.session_id != principal.session_id:
            return None
        return Effect.DISCONNECTED
    if control.user_id != principal.user_id:
        return None
    if control.novel_id is not None:
        granted = control.novel_id in principal.novels
        asked = not stream_filter.novel_ids or control.novel_id in stream_filter.novel_ids
        return Effect.ACCESS_CHANGED if granted and asked else None
    return Effect.ACCESS_CHANGED if control.session_id == principal.session_id else None
