"""Envelopes in, SSE events out: parsing, every rejection, the mapping rules, batches."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sse_spec_parser import parse_stream

from router.core.cursor import Cursor, EventIdentity, parse_cursor
from router.core.envelope import (
    MAX_EVENT_ID_LENGTH,
    MAX_EVENT_TYPE_LENGTH,
    Envelope,
    EnvelopeError,
    EnvelopeProblem,
    parse_envelope,
    parse_publish_body,
    parse_timestamp,
)
from router.core.events import (
    ContentUpdateEvent,
    SystemNotificationEvent,
    TaskProgressEvent,
    TaskStatusChangeEvent,
)
from router.core.mapping import (
    MAPPING,
    MAPPING_RULES,
    Batch,
    MappingError,
    Problem,
    check_mappable,
    convert_batch,
    to_sse,
)
from router.core.scope import MAX_SCOPE_ID_LENGTH, Scope

QUICK = settings(deadline=None, database=None)

OCCURRED_AT = "2026-11-28T10:15:00.123456Z"
PAYLOADS: dict[str, dict[str, Any]] = {
    "Task.ProgressUpdated": {"task_id": "t1", "progress": 40},
    "Task.StatusChanged": {"task_id": "t1", "old_status": "running", "new_status": "done"},
    "System.NotificationSent": {"level": "info", "title": "Hello", "message": "World"},
    "Content.Updated": {"novel_id": "n1", "chapter_id": "c1", "content_version": 3},
}
SCOPES: dict[str, dict[str, Any]] = {
    "Task.ProgressUpdated": {"user_id": "u1"},
    "Task.StatusChanged": {"user_id": "u1", "session_id": "s1"},
    "System.NotificationSent": {"user_id": "u1"},
    "Content.Updated": {"novel_id": "n1"},
}
CLASSES = {
    "Task.ProgressUpdated": TaskProgressEvent,
    "Task.StatusChanged": TaskStatusChangeEvent,
    "System.NotificationSent": SystemNotificationEvent,
    "Content.Updated": ContentUpdateEvent,
}
IDENTITY = EventIdentity("kafka", "3", (105,), "Tq3x")


def raw(kind: str = "Task.ProgressUpdated", **changes: Any) -> dict[str, Any]:
    """A valid envelope of type ``kind`` as a JSON object, with ``changes`` applied."""
    body: dict[str, Any] = {
        "event_type": kind,
        "event_id": "9b2f6c1e",
        "occurred_at": OCCURRED_AT,
        "scope": SCOPES[kind],
        "payload": PAYLOADS[kind],
    }
    body.update(changes)
    return body


def without(name: str) -> dict[str, Any]:
    body = raw()
    del body[name]
    return body


def identity(offset: int, partition: str = "0", epoch: str | None = "e1") -> EventIdentity:
    return EventIdentity("kafka", partition, (offset,), epoch)


# --- parse_envelope: accepted forms ------------------------------------------------------------


@pytest.mark.parametrize(
    "encode",
    [lambda body: body, json.dumps, lambda body: json.dumps(body).encode()],
    ids=["dict", "str", "bytes"],
)
def test_an_envelope_parses_from_a_dict_text_or_bytes(encode: Callable[[Any], Any]) -> None:
    envelope = parse_envelope(encode(raw()))
    assert envelope == Envelope(
        event_type="Task.ProgressUpdated",
        occurred_at=OCCURRED_AT,
        scope=Scope(user_id="u1"),
        payload=PAYLOADS["Task.ProgressUpdated"],
        event_id="9b2f6c1e",
    )


def test_event_id_is_optional() -> None:
    assert parse_envelope(without("event_id")).event_id is None
    assert parse_envelope(raw(event_id=None)).event_id is None
    assert parse_envelope(raw(event_id="x" * MAX_EVENT_ID_LENGTH)).event_id == "x" * 256


def test_an_envelope_round_trips_through_its_bytes() -> None:
    for event_type in PAYLOADS:
        envelope = parse_envelope(raw(event_type))
        assert parse_envelope(envelope.to_bytes()) == envelope
    broadcast = parse_envelope(raw("System.NotificationSent", scope={"broadcast": True}))
    assert parse_envelope(broadcast.to_bytes()) == broadcast
    assert broadcast.to_json()["scope"] == {"broadcast": True}


def test_non_ascii_bytes_parse_as_utf8() -> None:
    body = raw(
        "System.NotificationSent", payload={"level": "info", "title": "Grüße 😀", "message": ""}
    )
    envelope = parse_envelope(json.dumps(body, ensure_ascii=False).encode())
    assert envelope.payload["title"] == "Grüße 😀"


# --- parse_envelope: rejections ----------------------------------------------------------------

NOT_JSON: list[bytes | str] = [
    b"",
    "",
    b"not json",
    "{",
    '{"a": 1} trailing',
    b'{"event_type": "\xff"}',  # invalid UTF-8
    b"\xc3\x28",  # invalid UTF-8
    b'{"a": 1' + b"1" * 5000 + b"}",  # an integer Python refuses to parse
    "[" * 100_000,
]


@pytest.mark.parametrize("body", NOT_JSON, ids=lambda b: repr(b)[:40])
def test_text_that_is_not_json_is_rejected(body: bytes | str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        parse_envelope(body)
    assert caught.value.problem is EnvelopeProblem.NOT_JSON
    assert str(caught.value).startswith("not-json: ")


@pytest.mark.parametrize("body", ["[]", "5", '"text"', "null", "true", b"[1, 2]"], ids=repr)
def test_json_that_is_not_an_object_is_rejected(body: bytes | str) -> None:
    with pytest.raises(EnvelopeError, match="expected a JSON object") as caught:
        parse_envelope(body)
    assert caught.value.problem is EnvelopeProblem.NOT_AN_OBJECT


def test_a_python_value_that_is_not_a_mapping_is_rejected() -> None:
    with pytest.raises(EnvelopeError, match="got list") as caught:
        parse_envelope([raw()])  # type: ignore[arg-type]
    assert caught.value.problem is EnvelopeProblem.NOT_AN_OBJECT


@pytest.mark.parametrize("name", ["event_type", "occurred_at", "scope", "payload"])
def test_each_required_field_is_required(name: str) -> None:
    with pytest.raises(EnvelopeError, match=f"'{name}' is required") as caught:
        parse_envelope(without(name))
    assert caught.value.problem is EnvelopeProblem.MISSING_FIELD
    assert caught.value.detail == f"{name!r} is required"


BAD_FIELDS: list[tuple[str, object, str]] = [
    ("event_type", "", "'event_type' must be a dotted name"),
    ("event_type", "Task", "'event_type' must be a dotted name"),
    ("event_type", "Task.", "'event_type' must be a dotted name"),
    ("event_type", ".Task", "'event_type' must be a dotted name"),
    ("event_type", "Task..Updated", "'event_type' must be a dotted name"),
    ("event_type", "1Task.Updated", "'event_type' must be a dotted name"),
    ("event_type", "Task.Progress-Updated", "'event_type' must be a dotted name"),
    ("event_type", "Task.Updated ", "'event_type' must be a dotted name"),
    ("event_type", "Täsk.Updated", "'event_type' must be a dotted name"),
    ("event_type", "A." + "b" * (MAX_EVENT_TYPE_LENGTH - 1), "'event_type' must be a dotted name"),
    ("event_type", None, "'event_type' must be a dotted name"),
    ("event_type", 5, "'event_type' must be a dotted name"),
    ("event_type", ["Task.Updated"], "'event_type' must be a dotted name"),
    ("event_id", "", "'event_id' must be a string of 1 to 256 characters"),
    ("event_id", "x" * (MAX_EVENT_ID_LENGTH + 1), "'event_id' must be a string of 1 to 256"),
    ("event_id", 5, "'event_id' must be a string of 1 to 256 characters"),
    ("event_id", {"id": "x"}, "'event_id' must be a string of 1 to 256 characters"),
    ("payload", [], "'payload' must be a JSON object"),
    ("payload", "x", "'payload' must be a JSON object"),
    ("payload", None, "'payload' must be a JSON object"),
    ("payload", 5, "'payload' must be a JSON object"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_FIELDS, ids=lambda v: repr(v)[:30])
def test_bad_fields_are_rejected(name: str, value: object, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message) as caught:
        parse_envelope({**raw(), name: value})
    assert caught.value.problem is EnvelopeProblem.BAD_FIELD


def test_the_longest_event_type_is_accepted() -> None:
    longest = "A." + "b" * (MAX_EVENT_TYPE_LENGTH - 2)
    assert parse_envelope(raw(event_type=longest)).event_type == longest


BAD_TIMESTAMPS: list[object] = [
    "2026-11-28T10:15:00",  # no offset
    "2026-11-28T10:15:00.123",  # no offset
    "2026-11-28",
    "10:15:00Z",
    "2026-02-30T10:15:00Z",  # no such day
    "2025-02-29T10:15:00Z",  # not a leap year
    "2026-13-01T10:15:00Z",
    "2026-00-01T10:15:00Z",
    "2026-11-28T25:00:00Z",  # hour 25
    "2026-11-28T24:00:00Z",
    "2026-11-28T10:60:00Z",
    "2026-11-28T10:15:61Z",
    "2026-11-28T10:15:00+24:00",
    "2026-11-28T10:15:00+05:60",
    "2026-11-28T10:15:00+05:99",
    "2026-11-28T10:15:00-23:60",
    "2026-11-28T10:15:00+0100",  # RFC 3339 offsets have a colon
    "2026-11-28T10:15:00+01",
    "2026-11-28T10:15:00.Z",
    "2026-11-28T10:15:00.1234567890Z",  # ten fractional digits
    "2026-11-28T10:15Z",
    "2026-11-28T10:15:00 Z",
    "2026-11-28T10:15:00Z ",
    " 2026-11-28T10:15:00Z",
    "2026/11/28T10:15:00Z",
    "\uff12\uff10\uff12\uff16-11-28T10:15:00Z",  # full-width digits
    "2026-11-28T10:15:00GMT",
    "",
    1764324900,
    None,
]


@pytest.mark.parametrize("value", BAD_TIMESTAMPS, ids=repr)
def test_bad_timestamps_are_rejected(value: object) -> None:
    with pytest.raises(EnvelopeError, match="'occurred_at' ") as caught:
        parse_envelope(raw(occurred_at=value))
    assert caught.value.problem is EnvelopeProblem.BAD_FIELD
    with pytest.raises(ValueError, match=r"RFC 3339|real date"):
        parse_timestamp(value)


# Accepted, and normalised to UTC with six fractional digits: the producer's microseconds kept.
GOOD_TIMESTAMPS = [
    ("2026-11-28T10:15:00Z", "2026-11-28T10:15:00.000000Z"),
    ("2026-11-28T10:15:00.1Z", "2026-11-28T10:15:00.100000Z"),
    ("2026-11-28T10:15:00.123Z", "2026-11-28T10:15:00.123000Z"),
    ("2026-11-28T10:15:00.123456Z", "2026-11-28T10:15:00.123456Z"),
    ("2026-11-28T10:15:00.000001Z", "2026-11-28T10:15:00.000001Z"),
    ("2026-11-28T10:15:00.123456789Z", "2026-11-28T10:15:00.123456Z"),  # nanoseconds, cut
    ("2026-11-28T10:15:00.999999999-12:00", "2026-11-28T22:15:00.999999Z"),
    ("2026-11-28T10:15:00+05:30", "2026-11-28T04:45:00.000000Z"),
    ("2026-11-28T10:15:00+23:59", "2026-11-27T10:16:00.000000Z"),
    ("2026-11-28T10:15:00.5+14:00", "2026-11-27T20:15:00.500000Z"),
    ("2026-11-28T10:15:00-00:00", "2026-11-28T10:15:00.000000Z"),
    ("2026-11-28t10:15:00z", "2026-11-28T10:15:00.000000Z"),
    ("2026-11-28 10:15:00Z", "2026-11-28T10:15:00.000000Z"),
    ("2024-02-29T23:59:59Z", "2024-02-29T23:59:59.000000Z"),
    ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000Z"),
]


@pytest.mark.parametrize(("value", "normalised"), GOOD_TIMESTAMPS)
def test_good_timestamps_are_accepted_and_normalised_to_utc(value: str, normalised: str) -> None:
    assert parse_timestamp(value) == normalised
    assert parse_envelope(raw(occurred_at=value)).occurred_at == normalised


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-11, minutes=-30))]),
    )
)
def test_occurred_at_keeps_microseconds_and_sorts_as_text_in_time_order(moment: datetime) -> None:
    normalised = parse_timestamp(moment.isoformat())
    assert datetime.fromisoformat(normalised) == moment
    later = parse_timestamp((moment + timedelta(microseconds=1)).isoformat())
    assert normalised < later


@pytest.mark.parametrize(
    ("payload_extra", "named"),
    [
        ({"internal_notes": "a\ud800b"}, "payload.internal_notes holds a lone surrogate (U+D800)"),
        ({"deep": [{"x": ["ok", "\udfff"]}]}, "payload.deep[0].x[1] holds a lone surrogate"),
        ({"\udbff": 1}, "payload has a key holding a lone surrogate (U+DBFF)"),
        ({"ratio": float("inf")}, "payload.ratio is a number out of range"),
        ({"ratio": float("nan")}, "payload.ratio is NaN"),
        ({"count": 10**5000}, "payload.count is an integer of more than"),
    ],
)
def test_an_envelope_the_bus_cannot_carry_as_json_is_refused_naming_the_value(
    payload_extra: dict[str, Any], named: str
) -> None:
    envelope = parse_envelope(raw(payload={**PAYLOADS["Task.ProgressUpdated"], **payload_extra}))
    with pytest.raises(EnvelopeError) as caught:
        envelope.to_bytes()
    assert caught.value.problem is EnvelopeProblem.UNENCODABLE
    assert named in caught.value.detail


def test_an_envelope_with_paired_surrogates_and_any_unicode_encodes() -> None:
    payload = {**PAYLOADS["Task.ProgressUpdated"], "message": "\U0001f600 \u2028 \x00"}
    encoded = parse_envelope(raw(payload=payload)).to_bytes()
    assert json.loads(encoded)["payload"]["message"] == payload["message"]


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"a": NaN}', "NaN is not JSON"),
        (b'{"a": [Infinity]}', "Infinity is not JSON"),
        (b'{"a": ' + b"1" * 4301 + b"}", "an integer of 4301 digits; at most 4300"),
        (b'{"a": -' + b"1" * 4301 + b"}", "an integer of 4301 digits"),
        (b"\xff", "can't decode"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_a_publish_body_the_router_would_misread_is_not_json(body: bytes, said: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        parse_publish_body(body)
    assert caught.value.problem is EnvelopeProblem.NOT_JSON
    assert said in caught.value.detail


def test_a_publish_body_reads_integers_up_to_the_limit_and_any_float() -> None:
    assert parse_publish_body(b'{"a": ' + b"7" * 4300 + b', "b": 1e308}') == {
        "a": int("7" * 4300),
        "b": 1e308,
    }


def test_a_timestamp_that_leaves_the_calendar_in_utc_is_refused() -> None:
    with pytest.raises(ValueError, match="not a real date"):
        parse_timestamp("0001-01-01T00:30:00+01:00")


BAD_SCOPES: list[tuple[object, str]] = [
    (None, "scope must be a JSON object, got NoneType"),
    ([], "scope must be a JSON object, got list"),
    ("u1", "scope must be a JSON object, got str"),
    ({"user_id": "u1", "team_id": "t1"}, "scope has unknown fields: team_id"),
    ({"user_id": "u1", "b": 1, "a": 2}, "scope has unknown fields: a, b"),
    ({}, "names no user_id, novel_id or session_id and is not a broadcast: unroutable"),
    ({"broadcast": False}, "is not a broadcast: unroutable"),
    ({"user_id": None}, "is not a broadcast: unroutable"),
    ({"broadcast": True, "user_id": "u1"}, "broadcast cannot be combined with user_id"),
    ({"broadcast": True, "novel_id": "n", "session_id": "s"}, "combined with novel_id, session_id"),
    ({"broadcast": "true"}, "scope.broadcast must be true or false"),
    ({"broadcast": 1}, "scope.broadcast must be true or false"),
    ({"broadcast": None}, "scope.broadcast must be true or false"),
    ({"user_id": 5}, "scope.user_id must be a string, got int"),
    ({"user_id": ["u1"]}, "scope.user_id must be a string, got list"),
    ({"user_id": ""}, "scope.user_id must be 1 to 256 printable ASCII characters"),
    ({"user_id": "u 1"}, "scope.user_id must be 1 to 256 printable ASCII characters"),
    ({"novel_id": "n\t1"}, "scope.novel_id must be 1 to 256 printable ASCII characters"),
    ({"session_id": "s\n"}, "scope.session_id must be 1 to 256 printable ASCII characters"),
    ({"user_id": "ü"}, "scope.user_id must be 1 to 256 printable ASCII characters"),
    ({"user_id": "u\x7f"}, "scope.user_id must be 1 to 256 printable ASCII characters"),
    ({"user_id": "u" * (MAX_SCOPE_ID_LENGTH + 1)}, "scope.user_id must be 1 to 256 printable"),
]


@pytest.mark.parametrize(("scope", "message"), BAD_SCOPES, ids=lambda v: repr(v)[:40])
def test_bad_scopes_are_unroutable(scope: object, message: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        parse_envelope(raw(scope=scope))
    assert caught.value.problem is EnvelopeProblem.UNROUTABLE
    assert message in caught.value.detail


def test_a_scope_with_keys_of_mixed_types_is_rejected_not_crashed() -> None:
    with pytest.raises(EnvelopeError, match="scope has unknown fields: 1, x") as caught:
        parse_envelope(raw(scope={"user_id": "u1", 1: "a", "x": "b"}))
    assert caught.value.problem is EnvelopeProblem.UNROUTABLE


@pytest.mark.parametrize(
    "scope",
    [
        {"user_id": "u1"},
        {"novel_id": "n1", "session_id": "s1"},
        {"user_id": "u1", "novel_id": "n1", "session_id": "s1", "broadcast": False},
        {"broadcast": True},
        {"user_id": "!~" + "x" * (MAX_SCOPE_ID_LENGTH - 2)},
    ],
    ids=lambda v: repr(v)[:40],
)
def test_good_scopes_are_accepted(scope: dict[str, Any]) -> None:
    envelope = parse_envelope(raw("System.NotificationSent", scope=scope))
    assert envelope.scope == Scope(**scope)
    assert Scope.from_json(envelope.scope.to_json()) == envelope.scope


# --- to_sse ------------------------------------------------------------------------------------


def test_every_rule_has_a_test_payload() -> None:
    assert set(PAYLOADS) == set(MAPPING) == {rule.event_type for rule in MAPPING_RULES}


@pytest.mark.parametrize("event_type", list(PAYLOADS))
def test_each_rule_maps_its_envelope(event_type: str) -> None:
    envelope = parse_envelope(raw(event_type))
    message = to_sse(envelope, IDENTITY, id="kafka@Tq3x:3:105")
    assert type(message) is CLASSES[event_type] is MAPPING[event_type].message_class
    assert message.scope == envelope.scope
    assert message.id == "kafka@Tq3x:3:105"
    assert message.data == {
        "event_id": str(IDENTITY),
        "occurred_at": OCCURRED_AT,
        **PAYLOADS[event_type],
    }
    (parsed,) = parse_stream(message.to_sse_format()).events
    assert parsed.event == message.event
    assert parsed.last_event_id == "kafka@Tq3x:3:105"
    assert json.loads(parsed.data) == message.data


def test_metadata_comes_from_the_bus_not_the_producer() -> None:
    payload = {**PAYLOADS["Task.ProgressUpdated"], "event_id": "forged", "occurred_at": "forged"}
    message = to_sse(
        parse_envelope(raw(payload=payload, occurred_at="2026-01-01T00:00:00+01:00")), IDENTITY
    )
    assert message.data["event_id"] == str(IDENTITY) == "kafka@Tq3x:3:105"
    assert message.data["occurred_at"] == "2025-12-31T23:00:00.000000Z"
    assert message.id is None
    assert "9b2f6c1e" not in message.to_sse_format().decode()  # the producer's id stays inside


def test_fields_outside_the_schema_are_dropped() -> None:
    payload = {**PAYLOADS["Task.ProgressUpdated"], "internal_notes": "n", "api_key": "k"}
    message = to_sse(parse_envelope(raw(payload=payload)), IDENTITY)
    assert set(message.data) == {"event_id", "occurred_at", "task_id", "progress"}


def test_an_unknown_type_is_rejected() -> None:
    envelope = parse_envelope(raw(event_type="Task.Deleted"))
    with pytest.raises(
        MappingError, match=r"^unknown-type: no mapping for 'Task\.Deleted'$"
    ) as caught:
        to_sse(envelope, IDENTITY)
    assert caught.value.problem is Problem.UNKNOWN_TYPE


@pytest.mark.parametrize(
    "event_type", ["Task.ProgressUpdated", "Task.StatusChanged", "Content.Updated"]
)
def test_task_and_content_events_may_not_be_broadcast(event_type: str) -> None:
    envelope = parse_envelope(raw(event_type, scope={"broadcast": True}))
    with pytest.raises(MappingError, match=f"{event_type} may not be broadcast") as caught:
        to_sse(envelope, IDENTITY)
    assert caught.value.problem is Problem.UNROUTABLE


def test_a_system_notification_may_be_broadcast() -> None:
    envelope = parse_envelope(raw("System.NotificationSent", scope={"broadcast": True}))
    message = to_sse(envelope, IDENTITY)
    assert message.scope == Scope(broadcast=True)


@pytest.mark.parametrize(
    "scope",
    [{"novel_id": "n2"}, {"user_id": "u1"}, {"user_id": "u1", "novel_id": "N1"}],
    ids=repr,
)
def test_content_for_one_novel_cannot_be_addressed_to_another(scope: dict[str, str]) -> None:
    envelope = parse_envelope(raw("Content.Updated", scope=scope))
    with pytest.raises(MappingError, match="payload novel_id 'n1' differs from scope") as caught:
        to_sse(envelope, IDENTITY)
    assert caught.value.problem is Problem.UNROUTABLE


def test_content_scoped_to_its_novel_and_more_is_routable() -> None:
    scope = {"novel_id": "n1", "user_id": "u1"}
    message = to_sse(parse_envelope(raw("Content.Updated", scope=scope)), IDENTITY)
    assert message.scope == Scope(novel_id="n1", user_id="u1")


@pytest.mark.parametrize(
    ("event_type", "payload", "message"),
    [
        ("Task.ProgressUpdated", {"task_id": "t1"}, "payload field 'progress' is required"),
        ("Task.ProgressUpdated", {"task_id": "t1", "progress": 101}, "'progress' must be at most"),
        ("Task.ProgressUpdated", {"task_id": "t1", "progress": 1e400}, "must be a finite number"),
        ("System.NotificationSent", {"level": "x", "title": "", "message": ""}, "'level' must be"),
        ("Content.Updated", {"novel_id": "n1", "content_version": 1.5}, "must be an integer"),
        ("Content.Updated", {"novel_id": "n1", "content_version": 10**5000}, "bits$"),
        ("Task.ProgressUpdated", {"task_id": "t1", "progress": -(10**5000)}, "^invalid-payload: "),
    ],
    ids=["missing", "too-much", "infinite", "level", "fraction", "huge-int", "huge-negative"],
)
def test_an_invalid_payload_is_rejected(
    event_type: str, payload: dict[str, Any], message: str
) -> None:
    envelope = parse_envelope(raw(event_type, payload=payload))
    with pytest.raises(MappingError, match=message) as caught:
        to_sse(envelope, IDENTITY)
    assert caught.value.problem is Problem.INVALID_PAYLOAD
    assert str(caught.value).startswith("invalid-payload: ")


# --- convert_batch -----------------------------------------------------------------------------


def encoded(kind: str = "Task.ProgressUpdated", **changes: Any) -> bytes:
    return json.dumps(raw(kind, **changes)).encode()


def expected_cursors(identities: list[EventIdentity], start: Cursor | None = None) -> list[str]:
    """The cursor after each identity, computed from the cursor API alone."""
    cursors = []
    cursor = start
    for ident in identities:
        if cursor is None or (cursor.source, cursor.epoch) != (ident.source, ident.epoch):
            cursor = Cursor.of(ident)
        else:
            cursor = cursor.advance(ident)
        cursors.append(str(cursor))
    return cursors


def test_a_batch_keeps_bus_order_and_records_rejections() -> None:
    records = [
        (identity(1, "0"), encoded("Task.ProgressUpdated")),
        (identity(1, "1"), b"garbage"),
        (identity(2, "0"), encoded("Content.Updated")),
        (identity(5, "2"), encoded(event_type="Task.Deleted")),
        (identity(2, "1"), encoded("System.NotificationSent", scope={"broadcast": True})),
        (identity(3, "0"), encoded("Content.Updated", scope={"broadcast": True})),
        (identity(6, "2"), encoded(payload={"task_id": "t1"})),
        (identity(4, "0"), encoded(scope={})),
    ]
    batch = convert_batch(records)
    assert [c.identity for c in batch.events] == [records[i][0] for i in (0, 2, 4)]
    assert [c.message.event for c in batch.events] == [
        "task.progress-updated",
        "content.updated",
        "system.notification-sent",
    ]
    assert [(r.identity, r.problem) for r in batch.rejected] == [
        (records[1][0], Problem.MALFORMED),
        (records[3][0], Problem.UNKNOWN_TYPE),
        (records[5][0], Problem.UNROUTABLE),
        (records[6][0], Problem.INVALID_PAYLOAD),
        (records[7][0], Problem.UNROUTABLE),
    ]
    # Each event's id is the cursor just after it; rejected records advance the cursor too.
    after = expected_cursors([ident for ident, _ in records])
    assert [c.message.id for c in batch.events] == [after[0], after[2], after[4]]
    assert str(batch.cursor) == after[-1] == "kafka@e1:0:4,1:2,2:6"
    for converted in batch.events:
        assert converted.message.data["event_id"] == str(converted.identity)
        assert parse_cursor(converted.message.id or "").covers(converted.identity)


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (b"\xff\xfe", Problem.MALFORMED),
        ("[]", Problem.MALFORMED),
        ({"event_type": "Task.ProgressUpdated"}, Problem.MALFORMED),
        ({**raw(), "occurred_at": "yesterday"}, Problem.MALFORMED),
        ({**raw(), "scope": {"team_id": "x"}}, Problem.UNROUTABLE),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_envelope_problems_become_batch_problems(record: Any, problem: Problem) -> None:
    batch = convert_batch([(identity(7), record)])
    assert batch.events == []
    assert [(r.identity, r.problem) for r in batch.rejected] == [(identity(7), problem)]
    assert batch.rejected[0].detail
    assert str(batch.cursor) == "kafka@e1:0:7"


def test_a_batch_of_rejections_still_advances_the_cursor() -> None:
    batch = convert_batch([(identity(i, str(i % 3)), b"{}") for i in range(10)])
    assert len(batch.rejected) == 10
    assert not batch.events
    assert str(batch.cursor) == "kafka@e1:0:9,1:7,2:8"


def test_a_batch_continues_from_the_cursor_it_is_given() -> None:
    start = parse_cursor("kafka@e1:0:10,1:20")
    batch = convert_batch([(identity(11, "0"), encoded()), (identity(3, "2"), encoded())], start)
    assert [c.message.id for c in batch.events] == ["kafka@e1:0:11,1:20", "kafka@e1:0:11,1:20,2:3"]
    assert batch.cursor == parse_cursor("kafka@e1:0:11,1:20,2:3")


def test_an_old_record_leaves_the_cursor_where_it_was() -> None:
    start = parse_cursor("kafka@e1:0:10")
    batch = convert_batch([(identity(4, "0"), encoded())], start)
    assert batch.cursor is start
    assert batch.events[0].message.id == "kafka@e1:0:10"


def test_an_empty_batch_keeps_its_cursor() -> None:
    assert convert_batch([]) == Batch()
    start = parse_cursor("kafka@e1:0:10")
    assert convert_batch([], start).cursor is start


def test_a_new_epoch_mid_batch_starts_a_fresh_cursor() -> None:
    records = [
        (identity(5, "0", "old"), encoded()),
        (identity(6, "1", "old"), encoded()),
        (identity(0, "0", "new"), encoded()),
        (identity(1, "1", "new"), encoded()),
    ]
    batch = convert_batch(records, parse_cursor("kafka@old:0:4,2:9"))
    assert [c.message.id for c in batch.events] == [
        "kafka@old:0:5,2:9",
        "kafka@old:0:5,1:6,2:9",
        "kafka@new:0:0",
        "kafka@new:0:0,1:1",
    ]
    assert str(batch.cursor) == "kafka@new:0:0,1:1"


def test_another_source_or_a_missing_epoch_also_starts_a_fresh_cursor() -> None:
    redis = EventIdentity("redis", "events", (1700000000000, 0), "e1")
    batch = convert_batch(
        [(identity(5), encoded()), (redis, encoded()), (identity(6, epoch=None), encoded())]
    )
    assert [c.message.id for c in batch.events] == [
        "kafka@e1:0:5",
        "redis@e1:events:1700000000000-0",
        "kafka:0:6",
    ]


def test_a_payload_too_big_for_json_is_rejected_not_raised() -> None:
    payload = {"novel_id": "n1", "content_version": 10**5000}
    batch = convert_batch([(identity(1), raw("Content.Updated", payload=payload))])
    assert [r.problem for r in batch.rejected] == [Problem.INVALID_PAYLOAD]


# --- convert_batch never raises ----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
scope_values = st.fixed_dictionaries(
    {},
    optional={
        "user_id": st.sampled_from(["u1", "", "u 1"]) | json_values,
        "novel_id": st.sampled_from(["n1", "n2"]) | json_values,
        "session_id": st.just("s1") | json_values,
        "broadcast": st.booleans() | json_values,
        "other": json_values,
    },
)
payload_values = st.dictionaries(
    st.sampled_from(
        sorted({name for cls in CLASSES.values() for name in cls.SCHEMA.names} | {"event_id", "id"})
    ),
    st.sampled_from(["t1", "n1", "info", "", " "]) | st.integers(-5, 200) | json_values,
    max_size=6,
)
# Envelope-shaped objects, so the fuzzing reaches the mapping and not only the first check.
envelope_like = st.fixed_dictionaries(
    {},
    optional={
        "event_type": st.sampled_from([*PAYLOADS, "Task.Deleted", "bad"]) | json_values,
        "event_id": st.text(max_size=3) | json_values,
        "occurred_at": st.sampled_from([OCCURRED_AT, "2026-02-30T00:00:00Z"]) | json_values,
        "scope": scope_values | json_values,
        "payload": payload_values | json_values,
    },
)
records = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    json_values,
    envelope_like,
    envelope_like.map(json.dumps),
    envelope_like.map(lambda body: json.dumps(body).encode()),
)
identities = st.builds(
    EventIdentity,
    source=st.sampled_from(["kafka", "redis"]),
    partition=st.sampled_from(["0", "1", "12", "events"]),
    offset=st.tuples(st.integers(0, 50)) | st.tuples(st.integers(0, 5), st.integers(0, 5)),
    epoch=st.sampled_from([None, "a", "b"]),
)


@QUICK
@given(st.lists(st.tuples(identities, records), max_size=8))
def test_convert_batch_never_raises(batch_records: list[tuple[EventIdentity, Any]]) -> None:
    batch = convert_batch(batch_records)
    assert len(batch.events) + len(batch.rejected) == len(batch_records)
    handled = [c.identity for c in batch.events] + [r.identity for r in batch.rejected]
    assert sorted(map(str, handled)) == sorted(str(ident) for ident, _ in batch_records)
    if batch_records:
        assert str(batch.cursor) == expected_cursors([i for i, _ in batch_records])[-1]
    for converted in batch.events:
        converted.message.to_sse_format().decode("utf-8")


@QUICK
@given(st.binary())
def test_convert_batch_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    batch = convert_batch([(identity(1), data)])
    assert len(batch.events) + len(batch.rejected) == 1


@QUICK
@given(envelope_like)
def test_a_publish_checks_exactly_what_the_mapping_would_refuse(body: dict[str, Any]) -> None:
    """``check_mappable`` (the publish route's check) skips building the event: it must refuse
    what ``to_sse`` refuses, for the same reason, and nothing else, for any envelope whose
    bytes the bus can carry."""
    try:
        envelope = parse_envelope(body).sealed()
    except EnvelopeError:
        return

    def outcome(check: Callable[[], object]) -> tuple[Problem, str] | None:
        try:
            check()
        except MappingError as error:
            return error.problem, error.detail
        return None

    mapped = outcome(lambda: to_sse(envelope.envelope, IDENTITY, id=str(Cursor.of(IDENTITY))))
    assert outcome(lambda: check_mappable(envelope.envelope)) == mapped


@pytest.mark.parametrize("event_type", list(PAYLOADS))
def test_an_envelope_handed_over_parsed_maps_to_the_same_bytes_as_its_record(
    event_type: str,
) -> None:
    sealed = parse_envelope(raw(event_type, event_id="e-1")).sealed()
    from_bytes = convert_batch([(identity(1), sealed.raw), (identity(2), sealed.raw)])
    parsed = convert_batch([(identity(1), sealed.envelope), (identity(2), sealed.envelope)])
    assert [c.message.to_sse_format() for c in parsed.events] == [
        c.message.to_sse_format() for c in from_bytes.events
    ]
    assert [c.envelope for c in parsed.events] == [c.envelope for c in from_bytes.events]
    assert parsed.cursor == from_bytes.cursor


def test_a_sealed_envelope_carries_its_bytes_and_refuses_what_the_bus_cannot_carry() -> None:
    envelope = parse_envelope(raw())
    sealed = envelope.sealed()
    assert (sealed.raw, sealed.to_bytes(), sealed.scope) == (
        envelope.to_bytes(),
        envelope.to_bytes(),
        envelope.scope,
    )
    unencodable = parse_envelope(raw(payload={"task_id": "t1", "progress": 1, "x": "\ud800"}))
    with pytest.raises(EnvelopeError) as refused:
        unencodable.sealed()
    assert refused.value.problem is EnvelopeProblem.UNENCODABLE


def test_rejection_problems_are_a_small_fixed_set() -> None:
    assert {problem.value for problem in Problem} == {
        "malformed",
        "unknown-type",
        "invalid-payload",
        "unroutable",
    }
