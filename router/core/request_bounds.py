"""How much of a request the router reads before it refuses to spend more on it.

A request head (request line and headers) is bounded twice. Up to :data:`REQUEST_HEAD_LIMIT` it
is an ordinary request; past it, up to :data:`HARD_HEAD_LIMIT`, it is read whole and answered
``431`` with a JSON body saying so (:func:`oversized`); past that the HTTP server stops reading and
answers a bare ``431`` without ever handing the request on (hypercorn's
``h11_max_incomplete_size``), so no head costs more memory than that. A query string is bounded
on its own, ``414`` past :data:`MAX_QUERY_BYTES`. A cursor has its own bound
(:data:`router.core.cursor.MAX_CURSOR_LENGTH`, ``400`` naming the parameter).

Pure: the caller passes the parts of the head as the server parsed them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from router.core.cursor import MAX_CURSOR_LENGTH

ORDINARY_HEAD_BYTES = 16 * 1024
"""What a request head holds besides a resume cursor: request line, headers, cookies, a token
(hypercorn's own default for the whole head)."""
REQUEST_HEAD_LIMIT = 2 * MAX_CURSOR_LENGTH + ORDINARY_HEAD_BYTES
"""The longest request head served: a maximal cursor in ``Last-Event-ID`` and again in
``last_event_id`` (a client may send both), and the ordinary rest."""
HARD_HEAD_LIMIT = REQUEST_HEAD_LIMIT + ORDINARY_HEAD_BYTES
"""The most of a head the server reads: beyond it, a bare ``431`` and the connection closed."""
MAX_QUERY_BYTES = 2 * MAX_CURSOR_LENGTH
"""The longest query string served: a maximal cursor with its ``:`` and ``,`` percent-encoded, a
token, and the filters."""

HEADERS_TOO_LARGE = "headers-too-large"
URI_TOO_LONG = "uri-too-long"


@dataclass(frozen=True, slots=True)
class Oversized:
    """A request refused for its size before it is read any further."""

    status: int
    code: str
    message: str


def head_size(
    method: str, path: bytes, query: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> int:
    """The bytes of an HTTP/1.1 request head of these parts: ``METHOD path?query HTTP/1.1``,
    each ``name: value``, each line with its CRLF, and the blank line."""
    request_line = len(method) + 1 + len(path) + (1 + len(query) if query else 0) + 11
    return request_line + sum(len(name) + 2 + len(value) + 2 for name, value in headers) + 2


def oversized(
    method: str, path: bytes, query: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> Oversized | None:
    """Why a request with this head is too large to serve, or ``None``."""
    if len(query) > MAX_QUERY_BYTES:
        return Oversized(
            414, URI_TOO_LONG, f"the query string is longer than {MAX_QUERY_BYTES} bytes"
        )
    if head_size(method, path, query, headers) > REQUEST_HEAD_LIMIT:
        return Oversized(
            431,
            HEADERS_TOO_LARGE,
            f"the request line and headers are larger than {REQUEST_HEAD_LIMIT} bytes",
        )
    return None
