"""The request bounds (router/core/request_bounds.py): a head is weighed as the server read it."""

from __future__ import annotations

import h11
from hypothesis import given
from hypothesis import strategies as st

from router.core.request_bounds import (
    HARD_HEAD_LIMIT,
    MAX_QUERY_BYTES,
    REQUEST_HEAD_LIMIT,
    head_size,
    oversized,
)

token_chars = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
names = st.text(token_chars, min_size=1, max_size=20).filter(
    # h11 refuses a second Host (the head has its own) and validates the framing headers' values
    lambda name: name.lower() not in {"host", "content-length", "transfer-encoding"}
)
values = st.text(st.sampled_from("abc XYZ=;,/:0123456789"), max_size=200).map(str.strip)
paths = st.text(st.sampled_from("abc/-_.0123456789"), max_size=100).map(lambda p: "/" + p)
queries = st.text(st.sampled_from("abc=&%0123456789"), max_size=200)


def as_server_reads(raw: bytes) -> h11.Request:
    server = h11.Connection(h11.SERVER, max_incomplete_event_size=HARD_HEAD_LIMIT * 2)
    server.receive_data(raw)
    event = server.next_event()
    assert isinstance(event, h11.Request)
    return event


@given(
    method=st.sampled_from(["GET", "POST", "HEAD", "OPTIONS"]),
    path=paths,
    query=queries,
    headers=st.lists(st.tuples(names, values), max_size=10),
)
def test_the_weight_of_a_head_is_its_bytes_on_the_wire(
    method: str, path: str, query: str, headers: list[tuple[str, str]]
) -> None:
    target = path + (f"?{query}" if query else "")
    lines = [f"{method} {target} HTTP/1.1", "Host: x", *(f"{n}: {v}" for n, v in headers)]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    request = as_server_reads(raw)
    read_path, _, read_query = request.target.partition(b"?")
    read_headers = [(name, value) for name, value in request.headers]
    assert head_size(request.method.decode(), read_path, read_query, read_headers) == len(raw)


def test_a_head_is_served_up_to_its_limit_and_refused_past_it() -> None:
    def head(filler: int) -> list[tuple[bytes, bytes]]:
        return [(b"host", b"x"), (b"x-filler", b"f" * filler)]

    base = head_size("GET", b"/healthz", b"", head(0))
    fits = REQUEST_HEAD_LIMIT - base
    assert oversized("GET", b"/healthz", b"", head(fits)) is None
    refused = oversized("GET", b"/healthz", b"", head(fits + 1))
    assert refused is not None
    assert (refused.status, refused.code) == (431, "headers-too-large")
    assert REQUEST_HEAD_LIMIT < HARD_HEAD_LIMIT  # the band between is answered with a body


def test_a_query_string_is_served_up_to_its_limit_and_414_past_it() -> None:
    assert oversized("GET", b"/s", b"q" * MAX_QUERY_BYTES, []) is None
    refused = oversized("GET", b"/s", b"q" * (MAX_QUERY_BYTES + 1), [])
    assert refused is not None
    assert (refused.status, refused.code) == (414, "uri-too-long")
    assert MAX_QUERY_BYTES < REQUEST_HEAD_LIMIT  # a long query meets its own bound first
