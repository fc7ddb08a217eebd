"""The concrete events: their payload contracts, priorities and names."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from sse_spec_parser import parse_stream

from router.core.events import (
    EVENT_CLASSES,
    METADATA_FIELDS,
    ContentUpdateEvent,
    DomainEvent,
    ErrorCode,
    SSEErrorEvent,
    SystemNotificationEvent,
    TaskProgressEvent,
    TaskStatusChangeEvent,
)
from router.core.mapping import MAPPING, MAPPING_RULES
from router.core.schema import MAX_ID_LENGTH, MAX_TEXT_LENGTH, PayloadError
from router.core.scope import Scope
from router.core.sse import Priority

VALID: dict[type[DomainEvent], dict[str, Any]] = {
    TaskProgressEvent: {"task_id": "t1", "progress": 40, "message": "halfway"},
    TaskStatusChangeEvent: {
        "task_id": "t1",
        "old_status": "running",
        "new_status": "failed",
        "reason": "out of memory",
    },
    SystemNotificationEvent: {"level": "warning", "title": "Maintenance", "message": "At 2am"},
    ContentUpdateEvent: {
        "novel_id": "n1",
        "chapter_id": "c7",
        "content_version": 12,
        "summary": "typo fixed",
    },
    SSEErrorEvent: {"code": "lagged", "message": "too slow", "retryable": True},
}
OPTIONAL: dict[type[DomainEvent], set[str]] = {
    TaskProgressEvent: {"message"},
    TaskStatusChangeEvent: {"reason"},
    SystemNotificationEvent: set(),
    ContentUpdateEvent: {"chapter_id", "summary"},
    SSEErrorEvent: set(),
}
REQUIRED = [
    (cls, name) for cls, payload in VALID.items() for name in payload if name not in OPTIONAL[cls]
]
IDENTIFIERS = [
    (TaskProgressEvent, "task_id"),
    (TaskStatusChangeEvent, "task_id"),
    (TaskStatusChangeEvent, "old_status"),
    (TaskStatusChangeEvent, "new_status"),
    (ContentUpdateEvent, "novel_id"),
    (ContentUpdateEvent, "chapter_id"),
]
FREE_TEXT = [
    (TaskProgressEvent, "message"),
    (TaskStatusChangeEvent, "reason"),
    (SystemNotificationEvent, "title"),
    (SystemNotificationEvent, "message"),
    (ContentUpdateEvent, "summary"),
    (SSEErrorEvent, "message"),
]


def NAME(value: object) -> str:  # noqa: N802 - reads as a constant in parametrize(ids=NAME)
    return value.__name__ if isinstance(value, type) else str(value)


def with_field(cls: type[DomainEvent], **changes: Any) -> dict[str, Any]:
    return {**VALID[cls], **changes}


def test_the_table_of_valid_payloads_covers_every_event_class() -> None:
    assert set(VALID) == set(EVENT_CLASSES)
    for cls in EVENT_CLASSES:
        assert set(VALID[cls]) == set(cls.SCHEMA.names), cls.__name__


# --- Valid construction ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=NAME)
def test_a_valid_payload_becomes_the_event_data(cls: type[DomainEvent]) -> None:
    scope = Scope(user_id="u1")
    message = cls(VALID[cls], id="kafka@e:0:1", scope=scope)
    assert isinstance(message, cls)
    assert message.event == cls.EVENT
    assert message.data == VALID[cls]
    assert message.id == "kafka@e:0:1"
    assert message.scope == scope
    assert message.version == cls.VERSION == 1
    (parsed,) = parse_stream(message.to_sse_format()).events
    assert parsed.event == cls.EVENT
    assert json.loads(parsed.data) == VALID[cls]


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=NAME)
def test_the_payload_may_be_a_mapping_keywords_or_both(cls: type[DomainEvent]) -> None:
    payload = VALID[cls]
    first, *rest = payload
    as_mapping = cls(payload)
    as_keywords = cls(**payload)
    mixed = cls({first: payload[first]}, **{name: payload[name] for name in rest})
    assert as_mapping.data == as_keywords.data == mixed.data == payload


def test_keywords_override_the_mapping() -> None:
    message = TaskProgressEvent({"task_id": "t1", "progress": 10}, progress=90)
    assert message.data["progress"] == 90


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=NAME)
def test_optional_fields_may_be_left_out_or_given_as_null(cls: type[DomainEvent]) -> None:
    required = {k: v for k, v in VALID[cls].items() if k not in OPTIONAL[cls]}
    assert cls(required).data == required
    as_null = cls({**required, **dict.fromkeys(OPTIONAL[cls])})
    assert as_null.data == required
    assert not OPTIONAL[cls] & set(as_null.data)


def test_a_fractionless_float_content_version_becomes_an_int() -> None:
    message = ContentUpdateEvent(with_field(ContentUpdateEvent, content_version=3.0))
    assert message.data["content_version"] == 3
    assert isinstance(message.data["content_version"], int)
    assert b'"content_version":3,' in message.to_sse_format()


@pytest.mark.parametrize("progress", [0, 0.0, 33.3, 100, 100.0])
def test_progress_bounds_are_inclusive(progress: float) -> None:
    assert TaskProgressEvent(task_id="t1", progress=progress).data["progress"] == progress


@pytest.mark.parametrize(("cls", "name"), [*IDENTIFIERS, *FREE_TEXT], ids=NAME)
def test_strings_at_their_length_limit_are_accepted(cls: type[DomainEvent], name: str) -> None:
    limit = MAX_ID_LENGTH if (cls, name) in IDENTIFIERS else MAX_TEXT_LENGTH
    assert cls(with_field(cls, **{name: "x" * limit})).data[name] == "x" * limit


def test_free_text_may_be_empty() -> None:
    assert SystemNotificationEvent(level="info", title="", message="").data["title"] == ""


# --- Rejections --------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "name"), REQUIRED, ids=NAME)
def test_each_required_field_is_required(cls: type[DomainEvent], name: str) -> None:
    missing = {k: v for k, v in VALID[cls].items() if k != name}
    with pytest.raises(PayloadError, match=rf"^payload field '{name}' is required$"):
        cls(missing)
    with pytest.raises(PayloadError, match=rf"^payload field '{name}' is required$"):
        cls({**missing, name: None})


@pytest.mark.parametrize(("cls", "name"), [*IDENTIFIERS, *FREE_TEXT], ids=NAME)
@pytest.mark.parametrize("value", [5, 1.5, True, ["t1"], {"id": "t1"}], ids=repr)
def test_text_fields_reject_other_types(cls: type[DomainEvent], name: str, value: object) -> None:
    with pytest.raises(PayloadError, match=rf"payload field '{name}' must be a string, got "):
        cls(with_field(cls, **{name: value}))


@pytest.mark.parametrize(("cls", "name"), IDENTIFIERS, ids=NAME)
@pytest.mark.parametrize("value", ["", " ", "\t\n", "\u3000"], ids=repr)
def test_identifiers_must_not_be_blank(cls: type[DomainEvent], name: str, value: str) -> None:
    with pytest.raises(
        PayloadError, match=rf"payload field '{name}' must be a non-blank identifier"
    ):
        cls(with_field(cls, **{name: value}))


@pytest.mark.parametrize(("cls", "name"), [*IDENTIFIERS, *FREE_TEXT], ids=NAME)
def test_strings_over_their_length_limit_are_rejected(cls: type[DomainEvent], name: str) -> None:
    limit = MAX_ID_LENGTH if (cls, name) in IDENTIFIERS else MAX_TEXT_LENGTH
    with pytest.raises(
        PayloadError,
        match=rf"payload field '{name}' is {limit + 1} characters long; the limit is {limit}$",
    ):
        cls(with_field(cls, **{name: "x" * (limit + 1)}))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "a number"),
        (False, "a number"),
        ("40", "a number"),
        ({}, "a number"),
        ([40], "a number"),
        (math.nan, "a finite number"),
        (math.inf, "a finite number"),
        (-math.inf, "a finite number"),
        (-1, "at least 0"),
        (-0.001, "at least 0"),
        (100.001, "at most 100"),
        (101, "at most 100"),
    ],
    ids=repr,
)
def test_progress_rejections(value: object, expected: str) -> None:
    with pytest.raises(PayloadError, match=rf"^payload field 'progress' must be {expected}, got "):
        TaskProgressEvent(task_id="t1", progress=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.5, "an integer"),
        (True, "an integer"),
        ("3", "an integer"),
        (math.nan, "a finite number"),
        (-1, "at least 0"),
        (-1.0, "at least 0"),
    ],
    ids=repr,
)
def test_content_version_rejections(value: object, expected: str) -> None:
    with pytest.raises(
        PayloadError, match=rf"^payload field 'content_version' must be {expected}, got "
    ):
        ContentUpdateEvent(with_field(ContentUpdateEvent, content_version=value))


@pytest.mark.parametrize("level", ["debug", "INFO", "", "info ", 1, True, ["info"]], ids=repr)
def test_level_must_be_one_of_the_set(level: object) -> None:
    with pytest.raises(
        PayloadError, match=r"^payload field 'level' must be one of info, warning, error, got "
    ):
        SystemNotificationEvent(with_field(SystemNotificationEvent, level=level))


@pytest.mark.parametrize("retryable", [1, 0, "true", "false"], ids=repr)
def test_retryable_must_be_a_boolean(retryable: object) -> None:
    with pytest.raises(PayloadError, match=r"^payload field 'retryable' must be true or false"):
        SSEErrorEvent(with_field(SSEErrorEvent, retryable=retryable))


def test_a_payload_error_message_is_bounded() -> None:
    with pytest.raises(PayloadError) as caught:
        TaskProgressEvent(task_id="t1", progress="9" * 100_000)
    assert len(str(caught.value)) <= 300


def test_a_payload_that_is_not_a_mapping_is_rejected() -> None:
    with pytest.raises(PayloadError, match="payload must be a JSON object, got list"):
        TaskProgressEvent.SCHEMA.validate([("task_id", "t1")])  # type: ignore[arg-type]


# --- Allowlist ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=NAME)
def test_fields_the_schema_does_not_name_never_leave(cls: type[DomainEvent]) -> None:
    secrets = {"internal_notes": "fire them", "email": "a@example.com", "api_key": "sk-123"}
    message = cls({**VALID[cls], **secrets})
    assert message.data == VALID[cls]
    wire = message.to_sse_format()
    for key, value in secrets.items():
        assert key.encode() not in wire
        assert value.encode() not in wire


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=NAME)
def test_payload_keys_named_like_parameters_are_dropped(cls: type[DomainEvent]) -> None:
    clashing: dict[str, Any] = {
        "id": "forged",
        "scope": {"broadcast": True},
        "metadata": {"x": 1},
        "retry": 1,
    }
    message = cls({**VALID[cls], **clashing})
    assert message.data == VALID[cls]
    assert message.id is None
    assert message.retry is None
    assert message.scope is None


# --- Metadata ----------------------------------------------------------------------------------


def test_metadata_is_added_to_the_data() -> None:
    metadata = {"event_id": "kafka@e:0:1", "occurred_at": "2026-11-28T10:15:00Z"}
    message = TaskProgressEvent(VALID[TaskProgressEvent], metadata=metadata)
    assert message.data == {**metadata, **VALID[TaskProgressEvent]}


def test_metadata_cannot_be_taken_from_the_payload() -> None:
    message = TaskProgressEvent({**VALID[TaskProgressEvent], "event_id": "forged"})
    assert "event_id" not in message.data


@pytest.mark.parametrize("key", ["task_id", "id", "extra", ""])
def test_metadata_rejects_unknown_keys(key: str) -> None:
    with pytest.raises(ValueError, match=rf"^unknown metadata fields: {key}$"):
        TaskProgressEvent(VALID[TaskProgressEvent], metadata={key: "x"})


# --- Priority and coalescing -------------------------------------------------------------------


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=NAME)
def test_priority(cls: type[DomainEvent]) -> None:
    expected = Priority.LOW if cls is TaskProgressEvent else Priority.HIGH
    assert cls(VALID[cls]).priority is expected


def test_progress_coalesces_per_task() -> None:
    a1 = TaskProgressEvent(task_id="a", progress=1)
    a2 = TaskProgressEvent(task_id="a", progress=2)
    b1 = TaskProgressEvent(task_id="b", progress=1)
    assert a1.coalesce_key == a2.coalesce_key == "task.progress-updated/a"
    assert b1.coalesce_key == "task.progress-updated/b"


@pytest.mark.parametrize("cls", [c for c in EVENT_CLASSES if c is not TaskProgressEvent], ids=NAME)
def test_other_events_never_coalesce(cls: type[DomainEvent]) -> None:
    assert cls(VALID[cls]).coalesce_key is None


# --- Error events ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ErrorCode), ids=NAME)
def test_every_error_code_can_be_sent(code: ErrorCode) -> None:
    message = SSEErrorEvent(code=code.value, message="m", retryable=False)
    assert message.data["code"] == code.value
    assert json.loads(parse_stream(message.to_sse_format()).events[0].data)["code"] == code.value


def test_the_error_codes_are_exactly_the_error_code_values() -> None:
    (code_field,) = [f for f in SSEErrorEvent.SCHEMA.fields if f.name == "code"]
    assert code_field.choices == tuple(code.value for code in ErrorCode)  # type: ignore[attr-defined]
    with pytest.raises(PayloadError, match="payload field 'code' must be one of"):
        SSEErrorEvent(code="oops", message="m", retryable=False)


# --- Naming ------------------------------------------------------------------------------------

SSE_NAME = re.compile(r"^[a-z]+\.[a-z]+(-[a-z]+)*$")
# fmt: off
IRREGULAR_PAST_PARTICIPLES = frozenset({
    "sent", "built", "begun", "done", "made", "paid", "held", "lost", "run", "set", "shut",
    "split", "taken", "written", "broken", "chosen", "frozen", "given", "hidden", "read", "won",
})
# fmt: on
# Events the router sends of its own accord, named in the reserved ``sse`` domain. They report a
# state of the stream rather than something that happened in the domain, so they are not held to
# the past-tense rule.
ROUTER_OWN = {SSEErrorEvent}


def is_past_tense(word: str) -> bool:
    return word.endswith("ed") or word in IRREGULAR_PAST_PARTICIPLES


def test_every_mapped_event_name_is_domain_dot_action_in_the_past_tense() -> None:
    for rule in MAPPING_RULES:
        name = rule.message_class.EVENT
        assert SSE_NAME.fullmatch(name), name
        action = name.split(".", 1)[1]
        assert is_past_tense(action.split("-")[-1]), f"{name}: {action!r} is not in the past tense"


def test_every_event_class_name_follows_the_naming_rule() -> None:
    for cls in EVENT_CLASSES:
        assert SSE_NAME.fullmatch(cls.EVENT), cls.EVENT
        if cls in ROUTER_OWN:
            assert cls.EVENT.startswith("sse."), cls.EVENT
            continue
        action = cls.EVENT.split(".", 1)[1]
        assert is_past_tense(action.split("-")[-1]), f"{cls.EVENT}: not in the past tense"


def test_only_the_router_itself_uses_the_sse_domain() -> None:
    mapped = {rule.message_class for rule in MAPPING_RULES}
    assert mapped | ROUTER_OWN == set(EVENT_CLASSES)
    assert not mapped & ROUTER_OWN
    assert not [rule for rule in MAPPING_RULES if rule.message_class.EVENT.startswith("sse.")]


def test_event_names_and_producer_types_are_unique() -> None:
    assert len({cls.EVENT for cls in EVENT_CLASSES}) == len(EVENT_CLASSES)
    assert len(MAPPING) == len(MAPPING_RULES)


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=NAME)
def test_no_payload_field_is_named_like_a_metadata_field(cls: type[DomainEvent]) -> None:
    assert not set(cls.SCHEMA.names) & set(METADATA_FIELDS)
