"""Parsing what a client asks of the stream endpoint; every rejection names its parameter."""

from __future__ import annotations

import pytest

from router.core.cursor import MAX_CURSOR_LENGTH
from router.core.permissions import Principal, StreamFilter
from router.core.stream_request import (
    RequestError,
    check_filter_granted,
    parse_stream_request,
)


def test_an_empty_query_asks_for_everything_granted_and_no_resume() -> None:
    request = parse_stream_request([])
    assert request.stream_filter == StreamFilter()
    assert request.resume_from is None


def test_filters_and_resume_are_parsed() -> None:
    request = parse_stream_request(
        [
            ("novel_id", "n1"),
            ("novel_id", "n2"),
            ("session_id", "s1"),
            ("types", "content.updated, task.progress-updated"),
            ("last_event_id", "memory@e1:0:4"),
            ("token", "whatever"),
        ]
    )
    assert request.stream_filter == StreamFilter(
        novel_ids=frozenset({"n1", "n2"}),
        session_id="s1",
        event_types=frozenset({"content.updated", "task.progress-updated"}),
    )
    assert str(request.resume_from) == "memory@e1:0:4"


def test_the_header_wins_over_the_query() -> None:
    request = parse_stream_request([("last_event_id", "garbage")], "memory@e1:0:9")
    assert str(request.resume_from) == "memory@e1:0:9"


@pytest.mark.parametrize(
    ("query", "header", "parameter", "message"),
    [
        ([("novels", "n1")], None, "novels", "unknown parameter"),
        ([("session_id", "a"), ("session_id", "b")], None, "session_id", "more than once"),
        ([("novel_id", "has space")], None, "novel_id", "printable"),
        ([("novel_id", "")], None, "novel_id", "printable"),
        ([("session_id", "x" * 300)], None, "session_id", "1 to 256"),
        ([("types", "content.updated,nope")], None, "types", "'nope'"),
        ([("types", "")], None, "types", "unknown event types"),
        ([("last_event_id", "kafka:0:-1")], None, "last_event_id", "offset"),
        ([], "memory:0:01", "Last-Event-ID", "leading zeros"),
        ([], "x" * (MAX_CURSOR_LENGTH + 1), "Last-Event-ID", f"at most {MAX_CURSOR_LENGTH} bytes"),
    ],
)
def test_bad_requests_name_the_parameter(
    query: list[tuple[str, str]], header: str | None, parameter: str, message: str
) -> None:
    with pytest.raises(RequestError) as error:
        parse_stream_request(query, header)
    assert error.value.parameter == parameter
    assert message in error.value.message


def test_types_may_name_sse_error_which_arrives_whatever_the_filter() -> None:
    request = parse_stream_request([("types", "sse.error,content.updated")])
    assert request.stream_filter.event_types == {"sse.error", "content.updated"}
    assert parse_stream_request([("types", "sse.error")]).stream_filter.event_types == {"sse.error"}


def test_too_many_novels() -> None:
    with pytest.raises(RequestError, match="at most 100"):
        parse_stream_request([("novel_id", f"n{i}") for i in range(101)])


PRINCIPAL = Principal(user_id="u1", novels=frozenset({"n1", "n2"}), session_id="s1")


def test_a_filter_within_the_grant_is_accepted() -> None:
    check_filter_granted(StreamFilter(novel_ids=frozenset({"n1"}), session_id="s1"), PRINCIPAL)
    check_filter_granted(StreamFilter(session_id="s9"), Principal(user_id="u1"))


@pytest.mark.parametrize(
    ("stream_filter", "parameter"),
    [
        (StreamFilter(novel_ids=frozenset({"n1", "n3"})), "novel_id"),
        (StreamFilter(session_id="s2"), "session_id"),
    ],
)
def test_a_filter_beyond_the_grant_is_refused(stream_filter: StreamFilter, parameter: str) -> None:
    with pytest.raises(RequestError) as error:
        check_filter_granted(stream_filter, PRINCIPAL)
    assert error.value.parameter == parameter
