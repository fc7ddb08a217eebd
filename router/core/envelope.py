"""The envelope: one domain event as producers publish it, on any bus.

::

    {
      "event_type": "Task.ProgressUpdated",          # the producer's name for the event
      "event_id": "9b2f6c1e-...",                    # optional, the producer's id, for idempotency
      "occurred_at": "2026-11-28T10:15:00.123456Z",  # RFC 3339, with an offset or Z
      "scope": {"user_id": "u1"},                    # any of user_id, novel_id, session_id,
                                                     # or {"broadcast": true}
      "payload": {"task_id": "t1", "progress": 40}
    }

:func:`parse_envelope` accepts bytes, text or an already-decoded object and raises
:class:`EnvelopeError` with a reason a caller can count. :func:`parse_publish_body` reads what a
producer posts, and :meth:`Envelope.to_bytes` refuses what the bus could not carry as standard JSON.
"""

from __future__ import annotations

import enum
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Protocol

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
# json.dumps with any option builds an encoder per call: one, built once, is the same encoding.
_COMPACT_UTF8 = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_UTC_OFFSETS = frozenset({"Z", "z", "+00:00", "-00:00"})


class EnvelopeProblem(enum.StrEnum):
    NOT_JSON = "not-json"
    NOT_AN_OBJECT = "not-an-object"
    MISSING_FIELD = "missing-field"
    BAD_FIELD = "bad-field"
    UNROUTABLE = "unroutable"
    UNENCODABLE = "unencodable"
    """A value standard JSON in UTF-8 has no form for: a lone surrogate, NaN, an infinity, an
    integer longer than the interpreter converts."""


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


class Publishable(Protocol):
    """What a bus publishes: bytes, and the scope whose partition they go to (an
    :class:`Envelope`, or a control envelope placed on one partition, see router.core.control)."""

    @property
    def scope(self) -> Scope: ...

    def to_bytes(self) -> bytes: ...


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
        """The envelope as the bus carries it: standard JSON in UTF-8, which any consumer reads.

        Raises :class:`EnvelopeError` (``unencodable``) naming the first value that has no such
        form: a lone surrogate (no UTF-8 form), NaN or an infinity (not JSON), an integer longer
        than the interpreter converts. Nothing is half-written: the check is the encoding itself.
        """
        body = self.to_json()
        try:
            return _COMPACT_UTF8.encode(body).encode()
        except (ValueError, TypeError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
            raise EnvelopeError(EnvelopeProblem.UNENCODABLE, _unencodable(body, exc)) from None

    def sealed(self) -> Sealed:
        """This envelope with its bytes (:meth:`to_bytes`, which may raise), encoded once for
        whoever publishes it: the check that the bus can carry it is then the bus's bytes."""
        return Sealed(self, self.to_bytes())


@dataclass(frozen=True, slots=True)
class Sealed:
    """An envelope and the bytes the bus carries of it (:meth:`Envelope.sealed`).

    A :class:`Publishable` whose bytes are not encoded again by the bus; the embedded bus also
    hands ``envelope`` itself to the consumer, which then does not parse the bytes back into the
    envelope they came from.
    """

    envelope: Envelope
    raw: bytes

    @property
    def scope(self) -> Scope:
        return self.envelope.scope

    def to_bytes(self) -> bytes:
        return self.raw


def _unencodable(body: Mapping[str, object], error: Exception) -> str:
    """What in ``body`` standard JSON in UTF-8 cannot carry, named by its path (``payload.a[2]``).

    Walks with a stack, not recursion, so a deeply nested body cannot overflow it.
    """
    stack: list[tuple[str, object]] = [
        (name, value) for name, value in reversed(list(body.items()))
    ]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            surrogate = _lone_surrogate(value)
            if surrogate is not None:
                return f"{path} holds a lone surrogate (U+{ord(surrogate):04X}), not Unicode text"
        elif isinstance(value, float) and not math.isfinite(value):
            shown = "NaN" if math.isnan(value) else f"a number out of range (read as {value})"
            return f"{path} is {shown}, which JSON has no form for"
        elif isinstance(value, int) and not isinstance(value, bool) and _too_long(value):
            return f"{path} is an integer of more than {sys.get_int_max_str_digits()} digits"
        elif isinstance(value, Mapping):
            for key, item in reversed(list(value.items())):
                surrogate = _lone_surrogate(key) if isinstance(key, str) else None
                if surrogate is not None:
                    return (
                        f"{path} has a key holding a lone surrogate "
                        f"(U+{ord(surrogate):04X}), not Unicode text"
                    )
                stack.append((f"{path}.{key}", item))
        elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return f"not encodable as JSON: {error}"[:200]


def _lone_surrogate(text: str) -> str | None:
    """The first code point of ``text`` that has no UTF-8 form, if any."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return text[exc.start]
    return None


def _too_long(value: int) -> bool:
    limit = sys.get_int_max_str_digits()
    # 3.33 bits a digit: anything under limit * 3 bits is certainly short enough.
    if limit == 0 or value.bit_length() < limit * 3:
        return False
    try:
        str(value)
    except ValueError:
        return True
    return False


def parse_publish_body(raw: bytes | str) -> object:
    """A publish request's body as JSON, or :class:`EnvelopeError` (``not-json``) saying why not.

    Stricter than :func:`json.loads` where a producer would be misread: ``NaN`` and
    ``Infinity`` are not JSON, and an integer longer than the interpreter converts is named as
    such rather than as "use sys.set_int_max_str_digits()".
    """
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_int=_bounded_int)
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError, the two above
        raise EnvelopeError(EnvelopeProblem.NOT_JSON, str(exc)[:300]) from None
    except RecursionError:
        raise EnvelopeError(EnvelopeProblem.NOT_JSON, "nested too deeply") from None


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON: a number must be finite")


def _bounded_int(text: str) -> int:
    limit = sys.get_int_max_str_digits()
    digits = len(text) - text.startswith("-")
    if limit and digits > limit:
        raise ValueError(f"an integer of {digits} digits; at most {limit} are read")
    return int(text)


def parse_timestamp(value: object) -> str:
    """An RFC 3339 timestamp with an explicit offset, normalised to UTC with microseconds.

    ``2026-11-28 12:15:00.123456+02:00`` becomes ``2026-11-28T10:15:00.123456Z``: always six
    fractional digits, so the producer's precision is kept to the microsecond (what Python,
    PostgreSQL and most clocks give; digits beyond are cut), and two normalised timestamps compare
    as strings in the order of time. JavaScript's ``Date.parse`` reads the form (V8 checked), to
    the millisecond a ``Date`` holds.
    Raises :class:`ValueError` for anything else, including dates that do not exist.
    """
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"must be an RFC 3339 timestamp with an offset, got {value!r}"[:200])
    date, clock, fraction, offset = match.group("date", "clock", "fraction", "offset")
    if offset in _UTC_OFFSETS:  # most producers stamp UTC: nothing to shift, only to check
        try:
            datetime.fromisoformat(f"{date}T{clock}")
        except ValueError:
            raise ValueError(f"is not a real date and time: {value!r}") from None
        return f"{date}T{clock}.{(fraction or '0')[:6].ljust(6, '0')}Z"
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
        f"{utc.second:02d}.{utc.microsecond:06d}Z"
    )


def decode_record(raw: bytes | str | Mapping[str, object]) -> object:
    """A record read from a bus, as JSON: an event's envelope, or a control envelope."""
    if not isinstance(raw, bytes | str):
        return raw
    try:
        return json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an int over 4300 digits
        raise EnvelopeError(EnvelopeProblem.NOT_JSON, str(exc)) from None
    except RecursionError:
        raise EnvelopeError(EnvelopeProblem.NOT_JSON, "nested too deeply") from None


def parse_envelope(raw: bytes | str | Mapping[str, object]) -> Envelope:
    raw = decode_record(raw)  # type: ignore[assignment]
    if type(raw) is not dict and not isinstance(raw, Mapping):  # the exact type first: no ABC
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
    if type(payload) is not dict and not isinstance(payload, Mapping):
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
