"""The WebSocket wire format: one JSON text frame per thing said (see ``docs/websocket.md``).

An event frame carries exactly what the event-stream carries: its name, its id, its data object
(``{"type": "event", "event": ..., "id": ..., "data": {...}}``, and ``retry`` when the event has
one); the router's own ``sse.error`` events come the same way. A chunk is :class:`Frames`, a
tuple of frames written in order, which keeps its RFC 6455 bytes once they are made: a shared
batch's chunk is made once per broadcast (``SharedBatch.encoded``), and so are its bytes.
Heartbeats are the transport's (WebSocket pings), so :meth:`JSONFrames.heartbeat` says nothing.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence

from router.core.control import Control
from router.core.cursor import Cursor
from router.core.permissions import StreamFilter
from router.core.sse import JSONValue, SSEMessage, encode_json
from router.core.wire import Hello
from router.core.ws_frame import text_frames


class Frames(tuple[str, ...]):
    """Text frames to write in order, and (:attr:`on_the_wire`) the bytes that say them."""

    @functools.cached_property
    def on_the_wire(self) -> bytes:
        """These frames as RFC 6455 server frames, framed on first use and kept."""
        return text_frames(self)


Ref = JSONValue
"""A client's own tag for a message, echoed in the reply (any JSON value, or absent)."""


def _frame(fields: Mapping[str, JSONValue]) -> str:
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def event_frame(message: SSEMessage) -> str:
    """``message`` as an event frame, with ``retry`` (milliseconds) when the event sets the
    client's reconnection delay, as an event stream's ``retry:`` field does. Its data is encoded
    as the event stream encodes it (a lone surrogate escaped, so the frame is valid UTF-8); the
    name and id are fields SSE already checked, so plain JSON strings."""
    retry = "" if message.retry is None else f',"retry":{int(message.retry)}'
    return (
        f'{{"type":"event","event":{json.dumps(message.event)},"id":{json.dumps(message.id)},'
        f'"data":{encode_json(message.data)}{retry}}}'
    )


class JSONFrames:
    name = "websocket-json"

    def __init__(self, version: str) -> None:
        self.version = version

    def hello(self, hello: Hello, /) -> Frames:
        return Frames(
            (
                _frame(
                    {
                        "type": "hello",
                        "replay": hello.replay,
                        "id": None if hello.position is None else str(hello.position),
                        "retry_ms": hello.retry_ms,
                        "version": self.version,
                        "connection_id": hello.connection_id,
                        "expires_at": int(hello.expires_at),
                    }
                ),
            )
        )

    def events(self, messages: Sequence[SSEMessage], /) -> Frames:
        return Frames(event_frame(message) for message in messages)

    def cursor(self, cursor: Cursor, /) -> Frames:
        return Frames((_frame({"type": "cursor", "id": str(cursor)}),))

    def heartbeat(self) -> None:
        return None


def refreshed(ref: Ref, expires_at: float) -> Frames:
    return Frames((_frame({"type": "refreshed", "ref": ref, "expires_at": int(expires_at)}),))


def filtered(ref: Ref, stream_filter: StreamFilter) -> Frames:
    described: dict[str, JSONValue] = {
        "novel_id": sorted(stream_filter.novel_ids),
        "session_id": stream_filter.session_id,
        "types": sorted(stream_filter.event_types),
    }
    return Frames((_frame({"type": "filtered", "ref": ref, "filter": described}),))


def access_changed(control: Control) -> Frames:
    """The stream was narrowed in place: ``control`` revoked the novel or the session grant it
    names (the other is ``null``); nothing of it is written after this frame."""
    fields: dict[str, JSONValue] = {
        "type": "access-changed",
        "novel_id": control.novel_id,
        "session_id": control.session_id,
    }
    return Frames((_frame(fields),))


def error(code: str, message: str, *, ref: Ref = None, retry_ms: int | None = None) -> str:
    """An ``error`` frame: the answer to a bad client message (``ref`` its tag), or, before the
    close, the front door's refusal (``retry_ms`` set when the client is to come back)."""
    fields: dict[str, JSONValue] = {"type": "error", "ref": ref, "code": code, "message": message}
    if retry_ms is not None:
        fields["retry_ms"] = retry_ms
    return _frame(fields)
