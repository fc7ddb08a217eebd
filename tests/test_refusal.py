"""How a refused new stream is answered, for an EventSource and for everyone else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.events import ErrorCode
from router.core.refusal import (
    RETRYABLE,
    InBand,
    Limit,
    Refusal,
    WithStatus,
    answer_refusal,
    asks_for_event_stream,
)
from tests.sse_spec_parser import parse_stream


@pytest.mark.parametrize(
    ("accept", "asks"),
    [
        ("text/event-stream", True),  # what every EventSource sends
        ("Text/Event-Stream", True),
        ("application/json, text/event-stream;q=0.5", True),
        (" text/event-stream ; q=1 ", True),
        ("text/event-stream;q=0", False),
        ("text/event-stream;q=zero", False),
        ("*/*", False),
        ("text/*", False),
        ("application/json", False),
        ("text/event-streams", False),
        ("", False),
        (None, False),
    ],
)
def test_only_a_request_naming_the_event_stream_asks_for_one(
    accept: str | None, asks: bool
) -> None:
    assert asks_for_event_stream(accept) is asks


@pytest.mark.parametrize("code", list(RETRYABLE))
def test_an_event_stream_is_told_in_band_to_come_back_after_the_wait(code: ErrorCode) -> None:
    answer = answer_refusal(Refusal(code, "not now", 2.0001), "text/event-stream")
    assert isinstance(answer, InBand)
    stream = parse_stream(answer.body)
    (event,) = stream.events  # as a browser parses it: one event, then the stream ends
    assert event.event == "sse.error"
    assert event.retry == 2001  # never earlier than the wait
    assert event.last_event_id == ""  # no id: the browser keeps the Last-Event-ID it had
    assert b"id:" not in answer.body
    assert json.loads(event.data) == {"code": code.value, "message": "not now", "retryable": True}


@pytest.mark.parametrize("code", list(RETRYABLE))
@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
def test_any_other_client_gets_the_status_with_retry_after(
    code: ErrorCode, accept: str | None
) -> None:
    answer = answer_refusal(Refusal(code, "not now", 0.2, Limit.CONNECTS_PER_USER), accept)
    assert answer == WithStatus(RETRYABLE[code], code.value, "not now", {"Retry-After": "1"})


def test_the_plain_forms_keep_todays_statuses() -> None:
    assert RETRYABLE == {
        ErrorCode.RATE_LIMITED: 429,
        ErrorCode.TOO_MANY_STREAMS: 429,
        ErrorCode.SHUTTING_DOWN: 503,
        ErrorCode.REPLAY_UNAVAILABLE: 503,
        ErrorCode.OVERLOADED: 503,
    }


@given(wait=st.floats(min_value=0.001, max_value=86400.0))
def test_retry_after_is_whole_seconds_never_earlier_than_the_wait(wait: float) -> None:
    answer = answer_refusal(Refusal(ErrorCode.RATE_LIMITED, "later", wait), None)
    assert isinstance(answer, WithStatus)
    assert int(answer.headers["Retry-After"]) >= wait
    assert int(answer.headers["Retry-After"]) < max(wait, 1) + 1


@pytest.mark.parametrize(
    "code", [ErrorCode.LAGGED, ErrorCode.TOKEN_EXPIRED, ErrorCode.HISTORY_TRUNCATED]
)
def test_only_refusals_meant_to_be_retried_are_refusals(code: ErrorCode) -> None:
    with pytest.raises(ValueError, match="not a refusal to retry"):
        Refusal(code, "no", 1.0)


@pytest.mark.parametrize("wait", [0.0, -1.0, float("inf"), float("nan")])
def test_a_refusal_waits_a_positive_time(wait: float) -> None:
    with pytest.raises(ValueError, match="positive number of seconds"):
        Refusal(ErrorCode.RATE_LIMITED, "no", wait)
