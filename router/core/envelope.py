"""The envelope: one domain event as producers publish it, on any bus.

::

    {
      "event_type": "Task.ProgressUpdated",          # the producer's name for the event
      "event_id": "9b2f6c1e-...",                    # optional, the producer's id, for idempotency
      "occurred_at": "2026-11-28T10:15:00.123Z",     # RFC 3339, with an offset or Z
      "scope": {"user_id": "u1"},                    # any of user_id, novel_id, session_id,
                                                     # or {"broadcast": true}
      "payload": {"task_id": "t1", "progress": 40}
    }

:func:`parse_envelope` accepts bytes, text or an already-decoded object and raises
:class:`EnvelopeError` with a reason a caller can count.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from router.core.scope import Scope, ScopeError
from router.core.sse import JSONObject

MAX_EVENT_TYPE_LENGTH = 128
MAX_EVENT_ID_LENGTH = 256

_EVENT_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")
# RFC 3339 section 5.6: full-date "T" full-time, with a mandatory offset (Z or +hh:mm). The offset's
# ranges are checked here: datetime.fromisoformat would read "+05:99" as 6 hours 39 minutes.
_RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<clock>\d{2}:\d{2}:\d{2})(\.(?P<fraction>\d{1,9}))?"
    r"(?P<offset>[Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
)


class EnvelopeProblem(enum.StrEnum):
    NOT_JSON = "not-json"
    NOT_AN_OBJECT = "not-an-object"
    MISSING_FIELD = "missing-field"
    BAD_FIELD = "bad-field"
    UNROUTABLE = "unroutable"


class RejectionError(ValueError):
    """Something the router will not route: ``problem`` is one of a bounded set of reasons, fit
    for a metric label; ``detail`` is for the log and the publisher."""

    def __init__(self, problem: enum.StrEnum, detail: str) -> None:
        super().__init__(f"{problem.value}: {detail}")
        self.problem = problem
        self.detail = detail


class EnvelopeError(RejectionError):
    """An envelope that cannot be routed."""

    problem: EnvelopeProblem


@dataclass(frozen=True, slots=True)
class Envelope:
    event_type: str
    occurred_at: str
    scope: Scope
    payload: JSONObject
    event_id: str | None = None

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "event_type": self.event_type,
            "occurred_at": self.occurred_at,
            "scope": self.scope.to_json(),
            "payload": self.payload,
        }
        if self.event_id is not None:
            body["event_id"] = self.event_id
        return body

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":")).encode()


def parse_timestamp(value: object) -> str:
    """An RFC 3339 timestamp with an explicit offset, normalised to UTC with milliseconds.

    ``2026-11-28 12:15:00.123456+02:00`` becomes ``2026-11-28T10:15:00.123Z``: the one form every
    browser's ``Date.parse`` reads the same way (the ECMAScript date time string format).
    Raises :class:`ValueError` for anything else, including dates that do not exist.
    """
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"must be an RFC 3339 timestamp with an offset, got {value!r}"[:200])
    date, clock, fraction, offset = match.group("date", "clock", "fraction", "offset")
    try:
        offset_minutes = 0
        if offset.upper() != "Z":
            sign = -1 if offset[0] == "-" else 1
            offset_minutes = sign * (int(offset[1:3]) * 60 + int(offset[4:6]))
        moment = datetime.fromisoformat(f"{date}T{clock}").replace(
            microsecond=int((fraction or "0")[:6].ljust(6, "0")),
            tzinfo=timezone(timedelta(minutes=offset_minutes)),
        )
        utc = moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"is not a real date and time: {value!r}") from None
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
        f"{utc.second:02d}.{utc.microsecond // 1000:03d}Z"
    )


def parse_envelope(raw: bytes | str | Mapping[str, object]) -> Envelope:
    if isinstance(raw, bytes | str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an int over 4300 digits
            raise EnvelopeError(EnvelopeProblem.NOT_JSON, str(exc)) from None
        except RecursionError:
            raise EnvelopeError(EnvelopeProblem.NOT_JSON, "nested too deeply") from None
    if not isinstance(raw, Mapping):
        raise EnvelopeError(
            EnvelopeProblem.NOT_AN_OBJECT, f"expected a JSON object, got {type(raw).__name__}"
        )
    for name in ("event_type", "occurred_at", "scope", "payload"):
        if name not in raw:
            raise EnvelopeError(EnvelopeProblem.MISSING_FIELD, f"{name!r} is required")

    event_type = raw["event_type"]
    if (
        not isinstance(event_type, str)
        or len(event_type) > MAX_EVENT_TYPE_LENGTH
        or not _EVENT_TYPE.fullmatch(event_type)
    ):
        raise EnvelopeError(
            EnvelopeProblem.BAD_FIELD,
            f"'event_type' must be a dotted name such as Task.ProgressUpdated, got {event_type!r}"[
                :200
            ],
        )
    event_id = raw.get("event_id")
    if event_id is not None and (
        not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_EVENT_ID_LENGTH
    ):
        raise EnvelopeError(
            EnvelopeProblem.BAD_FIELD,
            f"'event_id' must be a string of 1 to {MAX_EVENT_ID_LENGTH} characters",
        )
    try:
        occurred_at = parse_timestamp(raw["occurred_at"])
    except ValueError as exc:
        raise EnvelopeError(EnvelopeProblem.BAD_FIELD, f"'occurred_at' {exc}") from None
    payload = raw["payload"]
    if not isinstance(payload, Mapping):
        raise EnvelopeError(EnvelopeProblem.BAD_FIELD, "'payload' must be a JSON object")
    try:
        scope = Scope.from_json(raw["scope"])
    except ScopeError as exc:
        raise EnvelopeError(EnvelopeProblem.UNROUTABLE, str(exc)) from None
    return Envelope(
        event_type=event_type,
        occurred_at=occurred_at,
        scope=scope,
        payload=payload,
        event_id=event_id,
    )
