"""Domain events in, SSE events out.

:data:`MAPPING_RULES` is the single source of truth for what the router emits: which producer
``event_type`` becomes which SSE event, which payload fields may leave (the event class's schema is
the allowlist), and which scopes an event of that type may be addressed to. The mapping document
and the TypeScript types are generated from it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from router.core.control import Control, is_control, parse_control
from router.core.cursor import Cursor, CursorError, EventIdentity, advance
from router.core.envelope import (
    Envelope,
    EnvelopeError,
    EnvelopeProblem,
    RejectionError,
    decode_record,
    parse_envelope,
)
from router.core.events import (
    ContentUpdateEvent,
    DomainEvent,
    SystemNotificationEvent,
    TaskProgressEvent,
    TaskStatusChangeEvent,
)
from router.core.scope import Scope


@dataclass(frozen=True, slots=True)
class MappingRule:
    """How one producer event type becomes an SSE event.

    ``broadcast_allowed``: whether the type may be sent to everyone; a task's progress or a novel's
    content addressed to everyone is a producer bug that would leak, so those must name a scope.
    ``scope_from_payload``: payload fields that must equal the scope field of the same name, so a
    payload about one novel cannot be addressed to the readers of another.
    """

    event_type: str
    message_class: type[DomainEvent]
    broadcast_allowed: bool = False
    scope_from_payload: tuple[str, ...] = ()


MAPPING_RULES: tuple[MappingRule, ...] = (
    MappingRule("Task.ProgressUpdated", TaskProgressEvent),
    MappingRule("Task.StatusChanged", TaskStatusChangeEvent),
    MappingRule("System.NotificationSent", SystemNotificationEvent, broadcast_allowed=True),
    MappingRule("Content.Updated", ContentUpdateEvent, scope_from_payload=("novel_id",)),
)
MAPPING: Mapping[str, MappingRule] = {rule.event_type: rule for rule in MAPPING_RULES}


class Problem(enum.StrEnum):
    """Why an event was rejected: a bounded set, fit for a metric label."""

    MALFORMED = "malformed"
    UNKNOWN_TYPE = "unknown-type"
    INVALID_PAYLOAD = "invalid-payload"
    UNROUTABLE = "unroutable"


class MappingError(RejectionError):
    """An envelope whose type, payload or scope the mapping refuses."""

    problem: Problem


def to_sse(envelope: Envelope, identity: EventIdentity, *, id: str | None = None) -> DomainEvent:
    """The SSE event for ``envelope``, found at ``identity`` on its bus.

    Raises :class:`MappingError` for an unknown type, a payload its schema rejects, or a scope the
    type may not be addressed to.
    """
    rule = _rule_for(envelope)
    try:
        message = rule.message_class(
            envelope.payload,
            id=id,
            scope=envelope.scope,
            metadata={"event_id": str(identity), "occurred_at": envelope.occurred_at},
        )
    except ValueError as exc:  # a PayloadError, or a value the SSE encoder cannot carry
        raise MappingError(Problem.INVALID_PAYLOAD, str(exc)) from None
    _check_scope_from_payload(rule, envelope.scope, message.data)
    return message


def check_mappable(envelope: Envelope) -> None:
    """Raise the :class:`MappingError` that :func:`to_sse` would raise for ``envelope``, if any,
    without building the event: what a publish checks before anything goes on the bus (the
    consumer maps it again, with the identity the bus gave it).

    Building the event costs its encoding, more than half of :func:`to_sse` (about 17 us of an
    envelope's 40 in the publish request). What the encoding itself could refuse cannot reach
    it: a checked payload holds only strings, numbers and booleans under its schema's names, and
    one whose bytes the bus can carry (:meth:`Envelope.sealed`) has no value JSON cannot say.
    ``tests/test_envelope_and_mapping.py`` checks that the two agree on every envelope.
    """
    rule = _rule_for(envelope)
    try:
        data = rule.message_class.SCHEMA.validate(envelope.payload)
    except ValueError as exc:
        raise MappingError(Problem.INVALID_PAYLOAD, str(exc)) from None
    _check_scope_from_payload(rule, envelope.scope, data)


def _rule_for(envelope: Envelope) -> MappingRule:
    rule = MAPPING.get(envelope.event_type)
    if rule is None:
        raise MappingError(Problem.UNKNOWN_TYPE, f"no mapping for {envelope.event_type!r}")
    if envelope.scope.broadcast and not rule.broadcast_allowed:
        raise MappingError(
            Problem.UNROUTABLE, f"{envelope.event_type} may not be broadcast; name its scope"
        )
    return rule


def _check_scope_from_payload(rule: MappingRule, scope: Scope, data: Mapping[str, object]) -> None:
    for name in rule.scope_from_payload:
        if getattr(scope, name) != data.get(name):
            raise MappingError(
                Problem.UNROUTABLE,
                f"payload {name} {data.get(name)!r} differs from scope {name} "
                f"{getattr(scope, name)!r}",
            )


@dataclass(frozen=True, slots=True)
class Converted:
    """An event ready to route; ``cursor`` is the router's cursor just after it (its ``id:``)."""

    identity: EventIdentity
    cursor: Cursor
    envelope: Envelope
    message: DomainEvent


@dataclass(frozen=True, slots=True)
class Rejected:
    identity: EventIdentity
    problem: Problem
    detail: str


@dataclass(frozen=True, slots=True)
class Failed:
    """A record whose conversion raised what no rule foresaw (a bug, or a position the cursor
    cannot take): skipped like a rejection, with the error kept for the log."""

    identity: EventIdentity
    error: Exception


@dataclass(frozen=True, slots=True)
class ControlRead:
    """A control envelope read from a bus: to apply after the first ``events_before`` events of
    its batch and before the rest (bus order), never to deliver."""

    identity: EventIdentity
    control: Control
    events_before: int


@dataclass(slots=True)
class Batch:
    """The outcome of :func:`convert_batch`: events, control envelopes, rejections and failures
    in bus order, and the cursor after the last record (control envelopes, rejected and failed
    records advance it too: they are consumed, not retried; only a record whose position the
    cursor cannot take leaves it). A malformed control envelope is ``bad_controls``, not
    ``rejected``: no event was lost, but a change of rights was."""

    events: list[Converted] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    cursor: Cursor | None = None
    controls: list[ControlRead] = field(default_factory=list)
    bad_controls: list[Rejected] = field(default_factory=list)


_ENVELOPE_PROBLEMS = {
    EnvelopeProblem.NOT_JSON: Problem.MALFORMED,
    EnvelopeProblem.NOT_AN_OBJECT: Problem.MALFORMED,
    EnvelopeProblem.MISSING_FIELD: Problem.MALFORMED,
    EnvelopeProblem.BAD_FIELD: Problem.MALFORMED,
    EnvelopeProblem.UNROUTABLE: Problem.UNROUTABLE,
    EnvelopeProblem.UNENCODABLE: Problem.MALFORMED,
}

PUBLISH_PROBLEMS: frozenset[str] = frozenset(
    {problem.value for problem in EnvelopeProblem if problem is not EnvelopeProblem.NOT_JSON}
    | {problem.value for problem in Problem if problem is not Problem.MALFORMED}
)
"""The ``code`` of a publish refusal that names one envelope: the envelope's own problem (a
decoded item is never ``not-json``) or the mapping's (which says ``malformed`` only of records
read from a bus)."""


def convert_batch(
    records: Iterable[tuple[EventIdentity, bytes | str | Mapping[str, object] | Envelope]],
    cursor: Cursor | None = None,
) -> Batch:
    """Convert records read from a bus, in order, starting from ``cursor``.

    A record is its raw form, or an :class:`Envelope` already parsed in this process (the
    embedded bus hands over what it was published), which is only mapped.

    Each event's ``id`` is the cursor just after it, so a client that last saw it resumes exactly
    behind it. Nothing raises: bad input becomes a :class:`Rejected`, and anything else one
    record raises a :class:`Failed`, so one record never costs the others.
    """
    batch = Batch(cursor=cursor)
    for identity, raw in records:
        try:
            batch.cursor = advance(batch.cursor, identity)
        except CursorError as exc:
            batch.failed.append(Failed(identity, exc))
            continue
        try:
            if isinstance(raw, Envelope):
                message = to_sse(raw, identity, id=str(batch.cursor))
                batch.events.append(Converted(identity, batch.cursor, raw, message))
                continue
            decoded = decode_record(raw)
            if is_control(decoded):
                control = _read_control(decoded, identity, batch)  # type: ignore[arg-type]
                if control is not None:
                    batch.controls.append(ControlRead(identity, control, len(batch.events)))
                continue
            envelope = parse_envelope(decoded)  # type: ignore[arg-type]
            message = to_sse(envelope, identity, id=str(batch.cursor))
        except EnvelopeError as exc:
            batch.rejected.append(Rejected(identity, _ENVELOPE_PROBLEMS[exc.problem], exc.detail))
        except MappingError as exc:
            batch.rejected.append(Rejected(identity, exc.problem, exc.detail))
        except Exception as exc:  # a bug this record met: this record only is skipped
            batch.failed.append(Failed(identity, exc))
        else:
            batch.events.append(Converted(identity, batch.cursor, envelope, message))
    return batch


def _read_control(
    decoded: Mapping[str, object], identity: EventIdentity, batch: Batch
) -> Control | None:
    try:
        return parse_control(decoded)
    except EnvelopeError as exc:
        batch.bad_controls.append(Rejected(identity, _ENVELOPE_PROBLEMS[exc.problem], exc.detail))
        return None
