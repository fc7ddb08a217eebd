"""What a client asks of ``GET /api/v1/events/stream``, parsed and checked before anything starts.

Query parameters: ``novel_id`` (repeatable), ``session_id``, ``types`` (comma-separated SSE event
names), ``last_event_id`` (for a first connection; the ``Last-Event-ID`` header wins when both are
present) and ``token`` (read by authentication, accepted here so it is not "unknown").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from router.core.cursor import Cursor, CursorError, parse_cursor
from router.core.events import EVENT_CLASSES, SSEErrorEvent
from router.core.permissions import Principal, StreamFilter, id_set
from router.core.scope import MAX_SCOPE_ID_LENGTH, Scope, ScopeError

# sse.error is the stream's own control channel: a client cannot filter it away, so naming it in
# ``types`` is accepted and changes nothing for it.
FILTERABLE_EVENTS = frozenset(c.EVENT for c in EVENT_CLASSES if c is not SSEErrorEvent)
NAMEABLE_EVENTS = FILTERABLE_EVENTS | {SSEErrorEvent.EVENT}
KNOWN_PARAMETERS = frozenset({"novel_id", "session_id", "types", "last_event_id", "token"})
MAX_NOVEL_FILTERS = 100


class RequestError(ValueError):
    """A bad request; ``parameter`` names the culprit for the JSON error body."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


@dataclass(frozen=True, slots=True)
class StreamRequest:
    stream_filter: StreamFilter
    resume_from: Cursor | None


def _scope_id(parameter: str, value: str) -> str:
    try:
        Scope(session_id=value)  # the same rule holds for every scope id
    except ScopeError:
        raise RequestError(
            parameter, f"must be 1 to {MAX_SCOPE_ID_LENGTH} printable characters without spaces"
        ) from None
    return value


def parse_stream_request(
    query: Iterable[tuple[str, str]], last_event_id_header: str | None = None
) -> StreamRequest:
    """Raises :class:`RequestError` naming the first bad parameter."""
    novel_ids: set[str] = set()
    session_id: str | None = None
    event_types: set[str] = set()
    last_event_id: str | None = None
    seen: set[str] = set()
    for name, value in query:
        if name not in KNOWN_PARAMETERS:
            raise RequestError(name, "unknown parameter")
        if name != "novel_id" and name in seen:
            raise RequestError(name, "given more than once")
        seen.add(name)
        if name == "novel_id":
            novel_ids.add(_scope_id(name, value))
            if len(novel_ids) > MAX_NOVEL_FILTERS:
                raise RequestError(name, f"at most {MAX_NOVEL_FILTERS} novels per stream")
        elif name == "session_id":
            session_id = _scope_id(name, value)
        elif name == "types":
            event_types = {t.strip() for t in value.split(",")}
            unknown = sorted(event_types - NAMEABLE_EVENTS)
            if unknown:
                raise RequestError(
                    name,
                    f"unknown event types {', '.join(map(repr, unknown))}; "
                    f"known: {', '.join(sorted(NAMEABLE_EVENTS))}",
                )
        elif name == "last_event_id":
            last_event_id = value
    resume_from = None
    parameter, text = (
        ("Last-Event-ID", last_event_id_header)
        if last_event_id_header
        else ("last_event_id", last_event_id)
    )
    if text:
        try:
            resume_from = parse_cursor(text)
        except CursorError as exc:
            raise RequestError(parameter, str(exc)) from None
    return StreamRequest(
        StreamFilter(id_set(novel_ids), session_id, id_set(event_types)), resume_from
    )


def check_filter_granted(stream_filter: StreamFilter, principal: Principal) -> None:
    """A filter may only narrow what the token grants; raises :class:`RequestError` otherwise.

    The HTTP layer answers this one with 403, the others with 400.
    """
    denied = sorted(stream_filter.novel_ids - principal.novels)
    if denied:
        raise RequestError("novel_id", f"the token does not grant novel {denied[0]!r}")
    if (
        stream_filter.session_id is not None
        and principal.session_id is not None
        and stream_filter.session_id != principal.session_id
    ):
        raise RequestError("session_id", "the token is for another session")
