"""The WebSocket's pure parts: client messages, the JSON frames, close codes, the token bucket."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.session import SharedBatch
from router.core.admission import Reason, stream_request
from router.core.control import Control, ControlAction
from router.core.cursor import parse_cursor
from router.core.observer import CloseReason
from router.core.permissions import Principal, StreamFilter
from router.core.sse import SSEMessage
from router.core.stream_request import parse_stream_request
from router.core.token_bucket import TokenBucket
from router.core.wire import SSE, Hello
from router.core.ws_client import (
    MAX_MESSAGE_CHARS,
    Auth,
    BadMessage,
    Filter,
    Problem,
    Refresh,
    parse_client_message,
    refresh_problem,
)
from router.core.ws_close import CloseCode, ending_close, refusal_close
from router.core.ws_wire import (
    JSONFrames,
    access_changed,
    error,
    event_frame,
    filtered,
    refreshed,
)
from tests.actor_helpers import Feed, content

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
FRAMES = JSONFrames("9.9.9")


# -- client messages -----------------------------------------------------------------------------


@given(st.text(max_size=200) | st.binary(max_size=50))
def test_any_frame_parses_to_a_message_or_a_bad_message_never_an_exception(raw: Any) -> None:
    assert isinstance(parse_client_message(raw), Auth | Refresh | Filter | BadMessage)


@given(st.dictionaries(st.sampled_from(["type", "token", "ref", "novel_id", "types"]), JSON_VALUES))
def test_any_json_object_parses_and_keeps_its_ref(body: dict[str, Any]) -> None:
    parsed = parse_client_message(json.dumps(body))
    assert parsed.ref == body.get("ref")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type":"auth","token":"t"}', Auth("t")),
        ('{"type":"refresh","token":"t","ref":3}', Refresh("t", 3)),
        ('{"type":"filter"}', Filter(())),
        (
            '{"type":"filter","novel_id":["a","b"],"session_id":"s","types":["x","y"],"ref":"r"}',
            Filter(
                (("novel_id", "a"), ("novel_id", "b"), ("session_id", "s"), ("types", "x,y")), "r"
            ),
        ),
        ("{", BadMessage(Problem.BAD_JSON, "the message is not JSON")),
        ('{"type":"auth"}', BadMessage(Problem.BAD_MESSAGE, "'auth' needs a 'token' string")),
        (
            '{"type":"auth","token":""}',
            BadMessage(Problem.BAD_MESSAGE, "'auth' needs a 'token' string"),
        ),
    ],
)
def test_client_messages(text: str, expected: object) -> None:
    assert parse_client_message(text) == expected


@pytest.mark.parametrize(
    "body",
    [
        {"type": "filter", "novel_id": "n1"},
        {"type": "filter", "types": [1]},
        {"type": "filter", "session_id": 5},
        {"type": "filter", "last_event_id": "x"},
        {"type": "nope"},
        [1],
    ],
)
def test_malformed_messages_are_bad_messages(body: object) -> None:
    assert isinstance(parse_client_message(json.dumps(body)), BadMessage)


def test_a_message_too_long_is_refused_before_it_is_parsed() -> None:
    parsed = parse_client_message(" " * (MAX_MESSAGE_CHARS + 1))
    assert isinstance(parsed, BadMessage)
    assert parsed.problem is Problem.TOO_LARGE


@given(
    st.lists(st.sampled_from(["n1", "n2", "", "bad id"]), max_size=3),
    st.none() | st.sampled_from(["s1", "s2"]),
    st.lists(st.sampled_from(["content.updated", "sse.error", "no.such"]), max_size=2),
)
def test_a_filter_is_checked_by_the_query_s_own_rules(
    novels: list[str], session_id: str | None, types: list[str]
) -> None:
    principal = Principal("u1", frozenset({"n1"}), session_id="s1")
    parsed = parse_client_message(
        json.dumps({"type": "filter", "novel_id": novels, "session_id": session_id, "types": types})
    )
    assert isinstance(parsed, Filter)
    answer = stream_request(parsed.query, None, principal)
    query = [("novel_id", n) for n in novels]
    query += [("session_id", session_id)] if session_id is not None else []
    query += [("types", ",".join(types))] if types else []
    assert answer == stream_request(query, None, principal)
    if not isinstance(answer, type(stream_request([], None, principal))):
        return
    assert answer.stream_filter == parse_stream_request(query).stream_filter


def test_a_refresh_keeps_the_user_and_the_session() -> None:
    old = Principal("u1", frozenset({"n1"}), session_id="s1")
    assert refresh_problem(old, Principal("u1", frozenset(), session_id="s1")) is None
    assert refresh_problem(old, Principal("u2", frozenset({"n1"}), session_id="s1"))
    assert refresh_problem(old, Principal("u1", frozenset({"n1"}), session_id="s2"))


# -- server frames -------------------------------------------------------------------------------


@given(st.dictionaries(st.text(), JSON_VALUES, max_size=5), st.none() | st.just("memory@e:0:1"))
def test_an_event_frame_carries_the_event_s_name_id_and_data_exactly(
    data: dict[str, Any], event_id: str | None
) -> None:
    message = SSEMessage(event="content.updated", data=data, id=event_id)
    frame = event_frame(message)
    frame.encode("utf-8")  # a text frame is valid UTF-8, lone surrogates included (escaped)
    assert json.loads(frame) == {
        "type": "event",
        "event": "content.updated",
        "id": event_id,
        "data": json.loads(json.dumps(data)),
    }


def test_an_event_that_sets_the_retry_carries_it() -> None:
    frame = json.loads(event_frame(SSEMessage(event="sse.error", data={}, retry=1500)))
    assert frame["retry"] == 1500
    assert "retry" not in json.loads(event_frame(SSEMessage(event="x", data={})))


def test_hello_cursor_and_heartbeat_frames() -> None:
    cursor = parse_cursor("memory@e1:0:4")
    (hello,) = FRAMES.hello(Hello(2500, cursor, "truncated", "c1", 1_700_000_000.9))
    assert json.loads(hello) == {
        "type": "hello",
        "replay": "truncated",
        "id": "memory@e1:0:4",
        "retry_ms": 2500,
        "version": "9.9.9",
        "connection_id": "c1",
        "expires_at": 1_700_000_000,
    }
    assert json.loads(FRAMES.hello(Hello(1, None, "none", "", 0))[0])["id"] is None
    assert FRAMES.cursor(cursor) == ('{"type":"cursor","id":"memory@e1:0:4"}',)
    assert FRAMES.heartbeat() is None


def test_replies_echo_the_ref() -> None:
    assert json.loads(refreshed("r", 12.5)[0]) == {
        "type": "refreshed",
        "ref": "r",
        "expires_at": 12,
    }
    described = json.loads(filtered(1, StreamFilter(frozenset({"b", "a"}), None, frozenset()))[0])
    assert described["filter"] == {"novel_id": ["a", "b"], "session_id": None, "types": []}
    assert json.loads(error("bad-json", "no", ref=[1])) == {
        "type": "error",
        "ref": [1],
        "code": "bad-json",
        "message": "no",
    }
    assert json.loads(error("rate-limited", "wait", retry_ms=5))["retry_ms"] == 5


def test_access_changed_names_the_grant_revoked() -> None:
    novel = Control(ControlAction.REVOKE, "2026-12-01T12:00:00.000000Z", "u1", novel_id="n1")
    session = Control(ControlAction.REVOKE, "2026-12-01T12:00:00.000000Z", "u1", session_id="s1")
    assert [json.loads(frame) for frame in access_changed(novel)] == [
        {"type": "access-changed", "novel_id": "n1", "session_id": None}
    ]
    assert [json.loads(frame) for frame in access_changed(session)] == [
        {"type": "access-changed", "novel_id": None, "session_id": "s1"}
    ]


def test_the_sse_hello_is_the_stream_s_first_bytes_as_before() -> None:
    cursor = parse_cursor("memory@e1:0:4")
    assert SSE.hello(Hello(2000, cursor, "complete", "c", 0)) == (
        b"retry: 2000\n\n: ok\n\nid: memory@e1:0:4\n\n"
    )
    assert SSE.hello(Hello(2000, None, "none", "c", 0)) == b"retry: 2000\n\n: ok\n\n"
    assert SSE.heartbeat() == b": \n\n"


class _CountingWire(JSONFrames):
    def __init__(self, name: str) -> None:
        super().__init__("x")
        self.name = name  # type: ignore[misc]
        self.encoded = 0

    def events(self, messages: Sequence[SSEMessage], /) -> tuple[str, ...]:
        self.encoded += 1
        return super().events(messages)


def test_a_shared_batch_is_encoded_once_per_wire_format() -> None:
    feed = Feed()
    batch = SharedBatch([feed.next(content(version=n)) for n in range(3)])
    one, other = _CountingWire("one"), _CountingWire("other")
    first = batch.encoded(one)
    assert batch.encoded(one) is first
    assert batch.encoded(other) == first
    assert (one.encoded, other.encoded) == (1, 1)
    assert batch.encoded(SSE) == b"".join(d.message.to_sse_format() for d in batch)


# -- close codes ---------------------------------------------------------------------------------


def test_every_refusal_and_every_ending_has_a_close_code() -> None:
    assert {refusal_close(reason) for reason in Reason} <= set(CloseCode)
    assert {ending_close(reason) for reason in CloseReason} <= set(CloseCode)
    assert ending_close(CloseReason.ACCESS_CHANGED) is CloseCode.ACCESS_CHANGED
    assert ending_close(CloseReason.DISCONNECTED) is CloseCode.DISCONNECTED
    assert ending_close(CloseReason.LAGGED) is CloseCode.LAGGED
    assert ending_close(CloseReason.TOKEN_EXPIRED) is CloseCode.TOKEN_EXPIRED
    assert ending_close(CloseReason.SERVER_SHUTDOWN) is CloseCode.GOING_AWAY
    assert ending_close(None) is CloseCode.GOING_AWAY
    assert ending_close(CloseReason.ERROR) is CloseCode.INTERNAL
    assert ending_close(CloseReason.CLIENT) is CloseCode.NORMAL
    assert refusal_close(Reason.MISSING) is CloseCode.UNAUTHORIZED
    assert refusal_close(Reason.REPLAY_UNAVAILABLE) is CloseCode.UNAVAILABLE


def test_docs_list_every_close_code() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "websocket.md").read_text()
    for code in CloseCode:
        assert f"| {int(code)} |" in doc, code


# -- the token bucket ----------------------------------------------------------------------------


@given(
    st.floats(1, 20),
    st.floats(0.1, 50),
    st.lists(st.floats(0, 1000, allow_nan=False), min_size=1, max_size=60),
)
def test_a_token_bucket_never_gives_more_than_its_burst_and_its_rate(
    capacity: float, rate: float, times: list[float]
) -> None:
    bucket = TokenBucket(capacity, rate)
    times.sort()
    taken = sum(bucket.take(now) for now in times)
    # The burst is fractional: a bucket of 1.9 gives one at once and a second 0.1 s later.
    assert taken <= math.floor(capacity + rate * (times[-1] - times[0]) + 1e-6)


def test_a_refused_take_costs_nothing_and_the_wait_is_right() -> None:
    bucket = TokenBucket(2, 1)
    assert bucket.take(0)
    assert bucket.take(0)
    assert not bucket.take(0.5)
    assert bucket.wait(0.5) == pytest.approx(0.5)
    assert bucket.take(1.0)
    with pytest.raises(ValueError, match="capacity >= 1"):
        TokenBucket(0, 1)
