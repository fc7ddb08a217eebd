"""The SSE wire format, checked byte for byte and against an independent reader of the standard."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sse_spec_parser import ParsedEvent, parse_stream

from router.core.sse import (
    JSONObject,
    JSONValue,
    Priority,
    SSEMessage,
    encode_comment,
    encode_event,
    encode_id,
    encode_json,
)

# No deadline (a deadline is a wall-clock assertion) and no example database written to disk.
QUICK = settings(deadline=None, database=None)
MAIN = settings(QUICK, max_examples=200)

# Characters a browser does not treat as line ends, though str.splitlines() would.
NOT_LINE_ENDS = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]


def only_event(raw: bytes) -> ParsedEvent:
    events = parse_stream(raw).events
    assert len(events) == 1, events
    return events[0]


# --- Known bytes -------------------------------------------------------------------------------


def test_exact_bytes_of_an_event_with_every_field() -> None:
    message = SSEMessage(
        event="task.progress-updated",
        data={"task_id": "t1", "progress": 40},
        id="kafka@e1:0:5",
        retry=3000,
    )
    assert message.to_sse_format() == (
        b"event: task.progress-updated\n"
        b"id: kafka@e1:0:5\n"
        b"retry: 3000\n"
        b'data: {"task_id":"t1","progress":40}\n'
        b"\n"
    )


def test_exact_bytes_of_non_ascii_data_are_utf8_not_escapes() -> None:
    message = SSEMessage(event="system.notification-sent", data={"title": "Grüße 😀"})
    assert message.to_sse_format() == (
        b"event: system.notification-sent\n" + 'data: {"title":"Grüße 😀"}\n'.encode() + b"\n"
    )


def test_encode_event_splits_data_on_cr_lf_and_crlf_only() -> None:
    assert encode_event(data="a\nb\r\nc\rd\u2028e") == (
        b"data: a\ndata: b\ndata: c\n" + "data: d\u2028e\n\n".encode()
    )
    assert only_event(encode_event(data="a\nb\r\nc")).data == "a\nb\nc"


def test_encode_event_with_nothing_is_one_empty_data_line() -> None:
    assert encode_event() == b"data: \n\n"
    assert only_event(encode_event()) == ParsedEvent("message", "", "")


def test_to_sse_format_returns_the_same_bytes_object_every_time() -> None:
    message = SSEMessage(event="content.updated", data={"novel_id": "n1"})
    assert message.to_sse_format() is message.to_sse_format()


def test_a_plain_message_is_high_priority_and_never_coalesced() -> None:
    message = SSEMessage(event="x", data={})
    assert message.priority is Priority.HIGH
    assert message.coalesce_key is None
    assert Priority.LOW < Priority.HIGH


def test_messages_compare_by_their_fields() -> None:
    one = SSEMessage(event="x", data={"a": 1}, id="1")
    assert one == SSEMessage(event="x", data={"a": 1}, id="1")
    assert one != SSEMessage(event="x", data={"a": 1}, id="2")


# --- Comments ----------------------------------------------------------------------------------


def test_encode_comment() -> None:
    assert encode_comment("ping") == b": ping\n\n"
    assert encode_comment() == b": \n\n"
    assert encode_comment("a\nb\r\nc") == b": a\n: b\n: c\n\n"


def test_comments_dispatch_nothing_and_do_not_disturb_events() -> None:
    event = SSEMessage(event="x", data={"a": 1}, id="7").to_sse_format()
    stream = parse_stream(encode_comment("hi") + event + encode_comment("a\rb") + event)
    assert stream.comments == ["hi", "a", "b"]
    assert stream.events == [ParsedEvent("x", '{"a":1}', "7")] * 2


# --- Id-only blocks -----------------------------------------------------------------------------


def test_exact_bytes_of_an_id_only_block() -> None:
    assert encode_id("memory@e1:0:5,1:7") == b"id: memory@e1:0:5,1:7\n\n"


def test_an_id_only_block_sets_the_last_event_id_and_dispatches_nothing() -> None:
    event = SSEMessage(event="x", data={"a": 1}, id="7").to_sse_format()
    anonymous = SSEMessage(event="x", data={"a": 2}).to_sse_format()
    assert parse_stream(encode_id("memory@e1:")).events == []
    assert parse_stream(encode_id("memory@e1:")).last_event_id == "memory@e1:"
    stream = parse_stream(event + encode_id("8") + anonymous + encode_id("9"))
    assert stream.events == [ParsedEvent("x", '{"a":1}', "7"), ParsedEvent("x", '{"a":2}', "8")]
    assert stream.last_event_id == "9"


def test_an_id_only_block_cut_before_its_blank_line_moves_nothing() -> None:
    """The last event id changes when the block ends: a stream cut inside one keeps the old."""
    event = SSEMessage(event="x", data={}, id="7").to_sse_format()
    assert parse_stream(event + encode_id("8")[:-1]).last_event_id == "7"


@pytest.mark.parametrize("char", ["\r", "\n", "\x00"])
def test_an_id_only_block_refuses_what_would_forge_a_field(char: str) -> None:
    with pytest.raises(ValueError, match="must not contain CR, LF or NUL"):
        encode_id(f"a{char}data: forged")


# --- Fields that could forge others ------------------------------------------------------------


@pytest.mark.parametrize("field", ["event", "id"])
@pytest.mark.parametrize(
    ("char", "shown"), [("\r", r"'\\r'"), ("\n", r"'\\n'"), ("\x00", r"'\\x00'")]
)
def test_cr_lf_nul_in_event_or_id_is_rejected_with_a_clear_message(
    field: str, char: str, shown: str
) -> None:
    fields: dict[str, Any] = {"event": "ok", "id": "ok", field: f"ab{char}event: forged"}
    with pytest.raises(
        ValueError,
        match=rf"SSE '{field}' must not contain CR, LF or NUL \(found {shown} at index 2\)",
    ):
        SSEMessage(event=fields["event"], id=fields["id"], data={})
    with pytest.raises(ValueError, match="must not contain CR, LF or NUL"):
        encode_event(**{field: fields[field]})


def test_an_empty_event_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="SSE 'event' must not be empty"):
        SSEMessage(event="", data={})


def test_an_empty_id_is_allowed_and_resets_the_last_event_id() -> None:
    first = SSEMessage(event="x", data={}, id="5").to_sse_format()
    reset = SSEMessage(event="x", data={}, id="").to_sse_format()
    assert reset == b"event: x\nid: \ndata: {}\n\n"
    assert [e.last_event_id for e in parse_stream(first + reset).events] == ["5", ""]


def test_a_lone_surrogate_in_event_or_id_is_rejected() -> None:
    with pytest.raises(ValueError, match="not valid Unicode"):
        SSEMessage(event="x\ud800", data={})
    with pytest.raises(ValueError, match="not valid Unicode"):
        SSEMessage(event="x", id="\udfff", data={})


# --- retry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("retry", [-1, True, False, 1.5, 1000.0, "1000"])
def test_retry_must_be_a_non_negative_int(retry: object) -> None:
    with pytest.raises(ValueError, match="SSE 'retry' must be a non-negative integer"):
        SSEMessage(event="x", data={}, retry=retry)  # type: ignore[arg-type]


def test_retry_zero_is_accepted() -> None:
    message = SSEMessage(event="x", data={}, retry=0)
    assert b"\nretry: 0\n" in message.to_sse_format()
    assert only_event(message.to_sse_format()).retry == 0


# --- version and data --------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, -1, True, 1.0, "1"])
def test_version_must_be_a_positive_int(version: object) -> None:
    with pytest.raises(ValueError, match="'version' must be a positive integer"):
        SSEMessage(event="x", data={}, version=version)  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [[], "text", 1, None])
def test_data_must_be_an_object(data: object) -> None:
    with pytest.raises(ValueError, match="SSE data must be a JSON object"):
        SSEMessage(event="x", data=data)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, [1, {"deep": math.nan}]], ids=repr
)
def test_nan_and_infinities_are_rejected(value: JSONValue) -> None:
    with pytest.raises(ValueError, match="SSE data is not encodable as JSON"):
        SSEMessage(event="x", data={"value": value})


@pytest.mark.parametrize(
    "data",
    [
        {"v": {1, 2}},
        {"v": b"bytes"},
        {"v": object()},
        {"v": 1j},
        {"v": Decimal("1.5")},
        {1: "int key"},
        {"nested": {None: "null key"}},
        {"list": [{True: "bool key"}]},
        {1: "a", "1": "b"},
    ],
    ids=repr,
)
def test_values_json_cannot_carry_faithfully_are_rejected(data: JSONObject) -> None:
    with pytest.raises(ValueError, match="SSE data is not encodable as JSON"):
        SSEMessage(event="x", data=data)


def test_circular_and_absurdly_deep_data_are_rejected() -> None:
    loop: dict[str, JSONValue] = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="not encodable as JSON"):
        encode_json(loop)
    deep: JSONValue = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ValueError, match="not encodable as JSON"):
        encode_json({"deep": deep})


def test_a_lone_surrogate_in_data_round_trips_as_a_json_escape() -> None:
    data = {"text": "a\ud800b", "key\udfff": "😀"}
    wire = SSEMessage(event="x", data=data).to_sse_format()
    wire.decode("utf-8")  # strict: valid UTF-8
    assert b"\\ud800" in wire
    assert json.loads(only_event(wire).data) == data


@pytest.mark.parametrize("char", NOT_LINE_ENDS)
def test_unicode_line_separators_in_data_stay_on_one_data_line(char: str) -> None:
    wire = SSEMessage(event="x", data={"text": f"a{char}b"}).to_sse_format()
    assert wire.count(b"data:") == 1
    assert wire.count(b"\n") == 3
    assert b"\r" not in wire
    assert json.loads(only_event(wire).data) == {"text": f"a{char}b"}


def test_cr_lf_and_nul_in_data_are_escaped_not_sent() -> None:
    wire = SSEMessage(event="x", data={"t": "a\r\nb\rc\nd\x00e"}).to_sse_format()
    assert wire.count(b"data:") == 1
    assert wire.count(b"\n") == 3
    assert b"\r" not in wire
    assert b"\x00" not in wire
    assert json.loads(only_event(wire).data) == {"t": "a\r\nb\rc\nd\x00e"}


# --- Properties --------------------------------------------------------------------------------

SPECIAL = [
    "\r",
    "\n",
    "\r\n",
    "\x00",
    "😀",
    "👩‍👩‍👧",
    "é",
    " ",
    ":",
    "\ufeff",
    "\\",
    '"',
    *NOT_LINE_ENDS,
]

field_text = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n\x00")
    | st.sampled_from([c for c in SPECIAL if len(c) == 1 and c not in "\r\n\x00"]),
    min_size=1,
)
# Event names and ids: anything without CR, LF or NUL, leading spaces included.
event_names = field_text | st.builds(
    lambda pad, name: pad + name, st.text(" ", min_size=1), field_text
)
ids = st.none() | st.just("") | event_names
retries = st.none() | st.integers(min_value=0, max_value=2**53)

# Text for JSON data: anything, lone surrogates, line ends and NUL included. Only high surrogates:
# a high one followed by a low one is, in JSON as in JavaScript, the one character they encode.
data_text = st.lists(
    st.text(st.characters(codec="utf-8"), max_size=5)
    | st.sampled_from([*SPECIAL, "\ud800", "\udbff", ""]),
    max_size=6,
).map("".join)
json_values: st.SearchStrategy[JSONValue] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | data_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(data_text, children, max_size=4)
    ),
    max_leaves=25,
)
json_objects = st.dictionaries(data_text, json_values, max_size=5)


@MAIN
@given(event=event_names, id=ids, retry=retries, data=json_objects)
def test_every_message_reads_back_the_same_through_the_standard(
    event: str, id: str | None, retry: int | None, data: JSONObject
) -> None:
    wire = SSEMessage(event=event, id=id, retry=retry, data=data).to_sse_format()
    wire.decode("utf-8")  # strict: the bytes are valid UTF-8
    parsed = only_event(wire)
    assert parsed.event == event
    assert parsed.last_event_id == (id or "")
    assert parsed.retry == retry
    assert json.loads(parsed.data) == data


@QUICK
@given(st.lists(st.tuples(event_names, ids, retries, json_objects, st.booleans()), max_size=6))
def test_a_stream_of_messages_reads_back_as_the_same_list(
    items: list[tuple[str, str | None, int | None, JSONObject, bool]],
) -> None:
    wire = b""
    expected: list[ParsedEvent] = []
    last_id = ""
    for event, id, retry, data, heartbeat in items:
        message = SSEMessage(event=event, id=id, retry=retry, data=data)
        wire += message.to_sse_format() + (encode_comment("keep-alive") if heartbeat else b"")
        last_id = last_id if id is None else id  # the last event id outlives the event
        expected.append(ParsedEvent(event, encode_json(data), last_id, retry))
    stream = parse_stream(wire)
    assert stream.events == expected
    assert [json.loads(e.data) for e in stream.events] == [item[3] for item in items]


forbidden = st.sampled_from(["\r", "\n", "\x00", "\r\n"])


@QUICK
@given(
    field=st.sampled_from(["event", "id"]),
    before=st.text(),
    bad=forbidden,
    after=st.text(),
)
def test_any_event_or_id_with_cr_lf_or_nul_is_rejected(
    field: str, before: str, bad: str, after: str
) -> None:
    fields = {"event": "x", "id": None, field: before + bad + after}
    with pytest.raises(ValueError, match="must not contain CR, LF or NUL"):
        SSEMessage(event=fields["event"] or "", id=fields["id"], data={})


@QUICK
@given(
    st.text(
        st.characters(codec="utf-8", exclude_characters="\r\n") | st.sampled_from(NOT_LINE_ENDS)
    )
)
def test_a_comment_of_any_single_line_reads_back(text: str) -> None:
    stream = parse_stream(encode_comment(text))
    assert stream.comments == [text]
    assert stream.events == []


@QUICK
@given(st.lists(st.tuples(st.booleans(), ids.filter(lambda i: i is not None)), max_size=8))
def test_id_only_blocks_among_events_read_back_through_the_standard(
    items: list[tuple[bool, str]],
) -> None:
    """Each block leaves the browser's last event id at its own id; only the events dispatch."""
    wire = b""
    expected: list[ParsedEvent] = []
    for is_event, id in items:
        if is_event:
            wire += SSEMessage(event="x", id=id, data={}).to_sse_format()
            expected.append(ParsedEvent("x", "{}", id))
        else:
            wire += encode_id(id)
        stream = parse_stream(wire)
        assert stream.events == expected
        assert stream.last_event_id == id


@MAIN
@given(
    event=event_names, id=ids, new_id=st.just("") | event_names, retry=retries, data=json_objects
)
def test_with_id_writes_the_bytes_a_message_made_with_that_id_has(
    event: str, id: str | None, new_id: str, retry: int | None, data: JSONObject
) -> None:
    """``with_id`` keeps the encoded data and writes the fields before it again: byte for byte
    what encoding the whole event with the new id gives, and the original unchanged."""
    original = SSEMessage(event=event, id=id, retry=retry, data=data)
    before = original.to_sse_format()
    moved = original.with_id(new_id)
    expected = SSEMessage(event=event, id=new_id, retry=retry, data=data)
    assert moved.to_sse_format() == expected.to_sse_format()
    assert moved.id == new_id
    assert moved.data == data
    assert original.to_sse_format() == before


def test_with_id_checks_the_new_id_as_encoding_does() -> None:
    message = SSEMessage(event="x", data={"a": 1}, id="1")
    with pytest.raises(ValueError, match="must not contain CR, LF or NUL"):
        message.with_id("2\ndata: forged")
    with pytest.raises(ValueError, match="not valid Unicode"):
        message.with_id("\udfff")
