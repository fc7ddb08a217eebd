"""Property-based fuzzing of the HTTP surface, against a served router (hypercorn, h11, Quart).

Hypothesis writes the requests (query strings, cursors in ``Last-Event-ID`` and
``last_event_id``, headers, publish bodies, and raw request heads for h11) and each goes over a
real socket to a router on a loopback port. Every answer must be a status the request deserves,
never a 5xx; every refusal the app gives is a JSON error document carrying that status; and once
the fuzzing is over, the router has logged no error, has let every stream go, and still delivers.

Hypothesis has no trio runner that keeps one router across its examples, so the router runs in
the test's trio loop and the property runs in a worker thread, with blocking sockets.
"""

from __future__ import annotations

import json
import logging
import socket
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from router.auth import TokenVerifier
from router.core.admission import Refused, stream_request
from router.core.cursor import Cursor, EventIdentity
from router.core.envelope import EnvelopeError, parse_envelope, parse_publish_body
from router.core.mapping import MappingError, to_sse
from tests.e2e_helpers import (
    SECRET,
    STREAM_PATH,
    RouterUnderTest,
    auth,
    content,
    envelope,
    progress,
    running_router,
    signed_token,
    token,
)

FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ALLOWED_ORIGIN = "https://app.example"
READ_TIMEOUT_SECONDS = 10.0
"""A hang guard for one exchange; an answer comes in milliseconds."""
PUBLISH_PATH = "/api/v1/events"
READER = token("u1", novels=["n1", "n2"], sid="s1")
PUBLISHER = token("backend", roles=["publisher"])
VERIFIER = TokenVerifier.from_key(secret=SECRET)
READER_PRINCIPAL = VERIFIER.verify(READER).principal
HOSTILE = signed_token('{"sub": "u1", "exp": 1e400}')
"""Signed with the right key, with an expiry no clock reaches."""
_VALIDATION_IDENTITY = EventIdentity("check", "0", (0,), "check")


# --- One exchange over a blocking socket ------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    """Lower-case names; a repeated header keeps its last value."""
    body: bytes
    """The whole body; for an event stream, its first block (the stream never ends)."""

    @property
    def is_stream(self) -> bool:
        return self.headers.get("content-type", "").startswith("text/event-stream")

    def error(self) -> dict[str, Any]:
        """The JSON error document, checked for its shape and its status."""
        assert self.headers.get("content-type") == "application/json", self
        document = json.loads(self.body)
        error: dict[str, Any] = document["error"]
        assert error["status"] == self.status, self
        assert isinstance(error["code"], str), self
        assert error["code"], self
        assert isinstance(error["message"], str), self
        return error


def exchange(address: tuple[str, int], request: bytes, *, head_only: bool = False) -> Answer | None:
    """Send ``request`` and read the answer; ``None`` when the server closed without one."""
    with socket.create_connection(address, timeout=READ_TIMEOUT_SECONDS) as sock:
        sock.sendall(request)
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = sock.recv(65536)
            if not chunk:
                assert raw == b"", f"the connection closed half-way through a head: {raw!r}"
                return None
            raw += chunk
        head, _, rest = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ")[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        answer = Answer(status, headers, rest)
        if head_only:
            return answer
        if answer.is_stream:
            while b"\n\n" not in answer.body:  # chunked: the first block is enough
                answer.body += _receive(sock)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            while len(answer.body) < length:
                answer.body += _receive(sock)
            answer.body = answer.body[:length]  # what follows answers a later request
        return answer


def _receive(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    assert chunk, "the connection closed in the middle of a body"
    return chunk


def request_bytes(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    """An HTTP/1.1 request as a client would write it; ``headers`` go out as they are."""
    lines = [f"{method} {target} HTTP/1.1", "Host: fuzz"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --- The router under fuzzing, and what must hold after ----------------------------------------


@dataclass
class Target:
    address: tuple[str, int]
    epoch: str
    published: list[str] = field(default_factory=list)
    """Event ids of every publish the router accepted (the property appends; a thread's own)."""


@pytest.fixture
def router_errors(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The messages the router logged at error level or above so far."""
    caplog.set_level(logging.INFO)
    return lambda: [
        record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR
    ]


async def fuzz(prop: Callable[[Target], None], errors: Callable[[], list[str]]) -> None:
    """Run ``prop`` against one router, then check it is whole: nothing logged as an error,
    every stream gone with its client, nothing it accepted rejected or failed downstream, and a
    new stream still receives what is published."""
    # Limits out of the way: the fuzz reaches the parsing and the hub, not the rate limiter.
    async with running_router(
        memory_partitions=3,
        connects_per_minute=10**9,
        max_streams_per_user=10**9,
        cors_origins=(ALLOWED_ORIGIN,),
        trusted_proxies=("127.0.0.1",),
        # A client that sent bytes after its stream's head (pipelined, or one CRLF too many)
        # and left is noticed by the next write, not at once: hypercorn stops reading a
        # connection while its response runs, so it sees no EOF (docs/security.md, "Known
        # gaps"). Heartbeats every half second bound that here.
        heartbeat_seconds=0.5,
    ) as router:
        hub = router.running.hub
        with trio.fail_after(20):  # a hang guard: the cursors fuzzed need the bus's epoch
            await hub.reading.wait()
        url = urlsplit(router.url)
        assert url.hostname is not None
        assert url.port is not None
        target = Target((url.hostname, url.port), hub.epoch)
        await trio.to_thread.run_sync(prop, target)
        await _check_whole(router, target, errors)


async def _check_whole(
    router: RouterUnderTest, target: Target, errors: Callable[[], list[str]]
) -> None:
    hub = router.running.hub
    with trio.fail_after(20):  # a hang guard: every fuzzing client has gone
        for session in list(hub.registry):
            await session.finished.wait()
        await hub.adapter.wait_consumed(len(target.published))
    assert len(hub.registry) == 0
    assert not hub.adapter.stats.failures
    assert set(hub.adapter.stats.rejected) <= {"duplicate"}  # what publish accepts, routes
    async with router.stream(headers=auth("after", novels=["n1"])) as stream:
        await router.publish(content("n1", 424242))
        await stream.read_until(lambda s: any(d.get("content_version") == 424242 for d in s.data()))
    assert errors() == []


# --- Strategies -------------------------------------------------------------------------------

_offsets = st.one_of(
    st.tuples(st.integers(0, 50)),
    st.tuples(st.integers(0, 2**63 - 1)),
    st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1)),
)
_partitions = st.sampled_from(["0", "1", "2", "3", "1023", "01", "events"])


def cursor_texts(epoch: str) -> st.SearchStrategy[str]:
    """Cursors of this router's history and of others, in both forms, and things near them."""
    heads = st.sampled_from(
        [("memory", epoch), ("memory", None), ("memory", "0ther3poch"), ("kafka", epoch)]
    )
    built = st.builds(
        lambda head, positions, compact: (
            Cursor(head[0], head[1], tuple(positions.items())).compact_form()
            if compact
            else Cursor(head[0], head[1], tuple(positions.items())).text_form()
        ),
        heads,
        st.dictionaries(_partitions, _offsets, max_size=4),
        st.booleans(),
    )
    cursorish = st.text(alphabet=string.ascii_letters + string.digits + "@:,~-_.", max_size=40)
    mutated = st.builds(
        lambda text, at, insert: text[:at] + insert + text[at + 1 :],
        built,
        st.integers(0, 40),
        st.text(max_size=2),
    )
    return st.one_of(built, mutated, cursorish, st.text(max_size=30))


_HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=60,
)
"""What h11 takes as a header value (visible ASCII, spaces, obs-text): the app sees it."""


def _header_safe(text: str) -> bool:
    return all(0x20 <= ord(c) <= 0xFF and c != "\x7f" for c in text)


def _oracle_stream_status(
    query: list[tuple[str, str]], last_event_id: str | None
) -> tuple[int, str | None]:
    """The status and culprit the front door's rules give a reader's request (a valid token,
    so only the query and the cursor are in question)."""
    # The app reads the query through werkzeug's MultiDict, which keeps each name's values
    # together, in the order names first appear: the culprit named is the first in that order.
    grouped: dict[str, list[str]] = {}
    for name, value in query:
        grouped.setdefault(name, []).append(value)
    as_read = [(name, value) for name, values in grouped.items() for value in values]
    asked = stream_request(as_read, last_event_id, READER_PRINCIPAL)
    if isinstance(asked, Refused):
        return asked.status, asked.parameter
    return 200, None


def _check_stream_answer(answer: Answer | None, status: int, parameter: str | None) -> None:
    assert answer is not None
    event(f"status {answer.status}")
    assert answer.status == status, (answer, status, parameter)
    if status == 200:
        assert answer.is_stream
        assert answer.headers["sse-replay"] in {"complete", "truncated"}
        first_chunk = answer.body.partition(b"\r\n")[2]  # after the chunk's size
        assert first_chunk.startswith(b"retry: "), answer
    else:
        assert answer.error().get("parameter") == parameter


# --- The properties ---------------------------------------------------------------------------

_KNOWN_PARAMETERS = st.sampled_from(["novel_id", "novel_id", "session_id", "types"])
_PARAMETER_NAMES = st.one_of(
    # Mostly known names, so that most requests get past the first unknown one.
    _KNOWN_PARAMETERS,
    _KNOWN_PARAMETERS,
    _KNOWN_PARAMETERS,
    st.sampled_from(["last_event_id", "token"]),
    st.text(min_size=1, max_size=12),
)
_GOOD_VALUES = st.sampled_from(
    ["n1", "n2", "s1", "content.updated", "task.progress-updated, content.updated", "sse.error"]
)
_PARAMETER_VALUES = st.one_of(
    _GOOD_VALUES,
    _GOOD_VALUES,
    st.sampled_from(["n3", "s2", "", " ", "content.updated,", "n1 n2", "x" * 257]),
    st.text(max_size=40),
)


def query_property(target: Target) -> None:
    @FUZZ
    @given(
        query=st.lists(st.tuples(_PARAMETER_NAMES, _PARAMETER_VALUES), max_size=4),
        cursor=st.none() | cursor_texts(target.epoch),
    )
    def prop(query: list[tuple[str, str]], cursor: str | None) -> None:
        if cursor is not None:
            query = [*query, ("last_event_id", cursor)]
        encoded = urlencode(query, quote_via=quote)
        path = STREAM_PATH + (f"?{encoded}" if encoded else "")
        answer = exchange(
            target.address, request_bytes("GET", path, [("Authorization", f"Bearer {READER}")])
        )
        _check_stream_answer(answer, *_oracle_stream_status(query, None))

    prop()


async def test_any_query_string_gets_the_status_its_parameters_deserve(
    router_errors: Callable[[], list[str]],
) -> None:
    await fuzz(query_property, router_errors)


def cursor_property(target: Target) -> None:
    @FUZZ
    @given(
        header=st.none() | cursor_texts(target.epoch).filter(_header_safe) | _HEADER_TEXT,
        query=st.none() | cursor_texts(target.epoch),
    )
    def prop(header: str | None, query: str | None) -> None:
        headers = [("Authorization", f"Bearer {READER}")]
        if header is not None:
            headers.append(("Last-Event-ID", header))
        params = [] if query is None else [("last_event_id", query)]
        encoded = urlencode(params, quote_via=quote)
        path = STREAM_PATH + (f"?{encoded}" if encoded else "")
        answer = exchange(target.address, request_bytes("GET", path, headers))
        # h11 strips the spaces and tabs around a header value; the app sees the rest, as text.
        seen = None if header is None else header.strip(" \t")
        _check_stream_answer(answer, *_oracle_stream_status(params, seen))

    prop()


async def test_any_cursor_in_the_header_or_the_query_is_a_stream_or_a_400_naming_it(
    router_errors: Callable[[], list[str]],
) -> None:
    await fuzz(cursor_property, router_errors)


_HEADER_NAMES = st.sampled_from(
    [
        "Authorization",
        "Cookie",
        "Origin",
        "X-Forwarded-For",
        "Accept",
        "Last-Event-ID",
        "Content-Type",
        "Cache-Control",
        "Connection",
        "X-Anything",
    ]
) | st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True).filter(
    # Framing and protocol switches are h11's and hypercorn's, fuzzed apart (raw heads).
    lambda name: (
        name.lower()
        not in {
            "content-length",
            "transfer-encoding",
            "upgrade",
            "expect",
            "host",
            "http2-settings",
        }
    )
)
_HEADER_VALUES = (
    st.sampled_from(
        [
            f"Bearer {READER}",
            f"bearer    {READER}",
            f"Bearer {READER}x",
            "Bearer",
            "Bearer ",
            "Basic dTE6cHc=",
            f"Bearer {HOSTILE}",
            f"access_token={READER}",
            f"access_token={READER}; access_token=x",
            "access_token=%ED%A0%80",
            'access_token="quoted"',
            "text/event-stream",
            "text/event-stream;q=0, application/json",
            ALLOWED_ORIGIN,
            f"{ALLOWED_ORIGIN}.evil",
            "null",
            "10.0.0.1, 192.0.2.1",
            ", ,",
            "close",
            "keep-alive",
        ]
    )
    | _HEADER_TEXT
)


def header_property(target: Target) -> None:
    @FUZZ
    @given(
        method=st.sampled_from(["GET", "GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE"]),
        path=st.sampled_from([STREAM_PATH, PUBLISH_PATH, "/", "/healthz", "/readyz", "/nope"]),
        headers=st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=6),
    )
    def prop(method: str, path: str, headers: list[tuple[str, str]]) -> None:
        head_only = method == "HEAD"
        answer = exchange(target.address, request_bytes(method, path, headers), head_only=head_only)
        assert answer is not None
        event(f"status {answer.status}")
        assert answer.status < 500, answer
        if answer.status >= 400 and not head_only:
            answer.error()
        origins = [value for name, value in headers if name.lower() == "origin"]
        allowed = answer.headers.get("access-control-allow-origin")
        # Credentials go to the configured origin only, and only when it is the one that asked.
        assert allowed is None or (allowed == ALLOWED_ORIGIN and origins[:1] == [ALLOWED_ORIGIN])
        if origins[:1] == [ALLOWED_ORIGIN]:
            assert allowed == ALLOWED_ORIGIN

    prop()


async def test_any_headers_on_any_endpoint_get_a_json_refusal_or_an_answer_never_a_5xx(
    router_errors: Callable[[], list[str]],
) -> None:
    await fuzz(header_property, router_errors)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_EVENT_TYPES = st.sampled_from(
    ["Content.Updated", "Task.ProgressUpdated", "Task.StatusChanged", "System.NotificationSent"]
) | st.text(max_size=20)
_SCOPES = st.one_of(
    st.fixed_dictionaries({"novel_id": st.sampled_from(["n1", "n2"])}),
    st.fixed_dictionaries({"user_id": st.sampled_from(["u1", "u2"])}),
    st.fixed_dictionaries({"broadcast": st.booleans()}),
    st.dictionaries(
        st.sampled_from(["user_id", "novel_id", "session_id", "broadcast", "tenant"]),
        _json_values,
        max_size=3,
    ),
)
_PAYLOADS = st.dictionaries(
    st.sampled_from(
        [
            "novel_id",
            "content_version",
            "summary",
            "task_id",
            "progress",
            "old_status",
            "new_status",
            "level",
            "title",
            "message",
            "internal_notes",
        ]
    ),
    st.sampled_from(["n1", "n2", "t1", "info", "<script>alert(1)</script>", 0, 40, 2**53])
    | _json_values,
    max_size=6,
)
_ENVELOPES = st.fixed_dictionaries(
    {
        "event_type": _EVENT_TYPES,
        "occurred_at": st.sampled_from(["2026-11-28T10:00:00Z", "2026-11-28T10:00:00+25:00"])
        | st.text(max_size=30),
        "scope": _SCOPES,
        "payload": _PAYLOADS,
    },
    optional={"event_id": st.text(max_size=8) | st.integers()},
)
_TEXT = st.text(max_size=200) | st.sampled_from(
    ["<script>alert(1)</script>", "</script><img src=x onerror=alert(1)>", "\r\n\r\ndata: forged"]
)
_VALID_ENVELOPES = st.one_of(
    st.builds(
        content,
        novel_id=st.sampled_from(["n1", "n2"]),
        version=st.integers(0, 2**53 - 1),
        summary=_TEXT,
    ),
    st.builds(
        lambda user, task, percent, message: (
            {
                **progress(user, task, percent),
                "event_id": f"{task}-{percent}",
            }
            | ({"payload": {"task_id": task, "progress": percent, "message": message}})
        ),
        st.sampled_from(["u1", "u2"]),
        st.text(alphabet=string.ascii_letters, min_size=1, max_size=8),
        st.floats(0, 100),
        _TEXT,
    ),
    st.builds(
        lambda title, message: envelope(
            "System.NotificationSent",
            {"broadcast": True},
            level="warning",
            title=title,
            message=message,
        ),
        _TEXT,
        _TEXT,
    ),
)
"""Envelopes the router accepts, with any text where text may go."""
_SOME_ENVELOPES = _VALID_ENVELOPES | _ENVELOPES
_BODIES = st.one_of(
    _VALID_ENVELOPES.map(lambda e: json.dumps(e).encode()),
    st.lists(_VALID_ENVELOPES, min_size=1, max_size=4).map(lambda es: json.dumps(es).encode()),
    _SOME_ENVELOPES.map(lambda e: json.dumps(e).encode()),
    st.lists(_SOME_ENVELOPES, max_size=4).map(lambda es: json.dumps(es).encode()),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.sampled_from([b"NaN", b"[" * 5000, b'{"a": 1e99999}', b"1" * 5000, b"\xef\xbb\xbf{}"]),
)
_CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json",
        "application/json",
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
    ]
)


def _oracle_publish_status(body: bytes, content_type: str, publisher: bool) -> int:
    """What the publish endpoint's rules make of a request by a valid token."""
    if not publisher:
        return 403
    if content_type.split(";")[0].strip().lower() != "application/json":
        return 415
    try:
        decoded = parse_publish_body(body)
    except EnvelopeError:
        return 400
    items = decoded if isinstance(decoded, list) else [decoded]
    if not items:
        return 400
    for item in items:
        try:
            envelope = parse_envelope(item)  # type: ignore[arg-type]
            to_sse(envelope, _VALIDATION_IDENTITY)
            envelope.to_bytes()
        except (EnvelopeError, MappingError):
            return 400
    return 202


def publish_property(target: Target) -> None:
    @FUZZ
    @given(
        body=_BODIES,
        content_type=_CONTENT_TYPES,
        publisher=st.sampled_from([True, True, True, False]),
    )
    def prop(body: bytes, content_type: str, publisher: bool) -> None:
        headers = [("Authorization", f"Bearer {PUBLISHER if publisher else READER}")]
        if content_type:
            headers.append(("Content-Type", content_type))
        answer = exchange(target.address, request_bytes("POST", PUBLISH_PATH, headers, body))
        assert answer is not None
        event(f"status {answer.status}")
        assert answer.status == _oracle_publish_status(body, content_type, publisher), answer
        if answer.status == 202:
            event_ids = json.loads(answer.body)["event_ids"]
            decoded = json.loads(body)
            assert len(event_ids) == (len(decoded) if isinstance(decoded, list) else 1)
            target.published += event_ids
        else:
            answer.error()

    prop()


async def test_any_publish_body_is_accepted_whole_or_refused_with_json_and_nothing_breaks(
    router_errors: Callable[[], list[str]],
) -> None:
    await fuzz(publish_property, router_errors)


_RAW_HEAD_BYTES = st.binary(max_size=40) | st.text(
    alphabet=st.sampled_from(list("aZ09 :;,\t\r\n\x00\x7f/?%=\x80\xff")), max_size=40
).map(lambda text: text.encode("latin-1"))


def raw_head_property(target: Target) -> None:
    @FUZZ
    @given(
        request_line=st.sampled_from(
            [f"GET {STREAM_PATH} HTTP/1.1", f"GET {STREAM_PATH}?token={READER} HTTP/1.1"]
        ).map(str.encode)
        | _RAW_HEAD_BYTES,
        header_lines=st.lists(_RAW_HEAD_BYTES, max_size=4),
    )
    def prop(request_line: bytes, header_lines: list[bytes]) -> None:
        # Whatever the lines hold, the head ends: a server may wait for a body it was
        # promised (a Content-Length), but never for the end of a head that came.
        lines = [request_line, b"Host: fuzz", *header_lines]
        if any(
            b"content-length" in line.lower() or b"transfer-encoding" in line.lower()
            for line in lines
        ):
            return
        answer = exchange(target.address, b"\r\n".join(lines) + b"\r\n\r\n")
        # hypercorn answers what h11 cannot parse with a bare 400 (no body) and closes; what
        # reaches the app is answered as any request is. Nothing is a 5xx.
        event("closed unanswered" if answer is None else f"status {answer.status}")
        if answer is None:
            return
        assert answer.status < 500, answer
        if answer.status >= 400 and answer.body:
            answer.error()

    prop()


async def test_any_raw_request_head_is_answered_below_500_and_the_router_stands(
    router_errors: Callable[[], list[str]],
) -> None:
    await fuzz(raw_head_property, router_errors)
