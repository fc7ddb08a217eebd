"""An independent reader of ``text/event-stream``, written from the WHATWG HTML standard.

Section "Server-sent events", subsection "Interpreting an event stream"
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).
It deliberately imports nothing from ``router``: the tests check the router's encoder against what a
browser would see, not against the encoder's own idea of the format.

Two liberties, both for the tests' convenience: ``retry`` is reported on the event whose block set
it (in a browser it only changes the stream's reconnection time), and comments are collected instead
of being thrown away.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# The standard's only line terminators. str.splitlines() would also split on U+2028, U+2029,
# U+0085, \x0b, \x0c, \x1c-\x1e, which a browser treats as ordinary characters.
MARKER_PREFIX = "test-marker:"

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ParsedEvent:
    event: str
    data: str
    last_event_id: str
    retry: int | None = None


@dataclass
class ParsedStream:
    events: list[ParsedEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    reconnection_time: int | None = None
    last_event_id: str = ""
    """The event source's "last event ID string": what a browser sends as ``Last-Event-ID`` when
    it reconnects. Set at every blank line, whether or not an event is dispatched, so a block
    with an ``id:`` and no data moves it without dispatching anything."""


def parse_stream(raw: bytes) -> ParsedStream:
    """Every event a browser would dispatch for ``raw``, in order, with the comments it skipped."""
    text = raw.decode("utf-8", errors="replace")  # the standard's "UTF-8 decode"
    if text.startswith("\ufeff"):
        text = text[1:]  # one leading BOM, and only one
    # The text after the last line terminator is an unfinished line: it is never processed.
    lines = _LINE_END.split(text)[:-1]

    stream = ParsedStream()
    data = ""
    event_type = ""
    last_event_id = ""
    retry: int | None = None
    for line in lines:
        if line == "":  # a blank line dispatches the event
            # "Set the last event ID string of the event source to the value of the last event
            # ID buffer", before the check for an empty data buffer.
            stream.last_event_id = last_event_id
            if data == "":
                event_type = ""
            else:
                stream.events.append(
                    ParsedEvent(
                        event_type or "message", data.removesuffix("\n"), last_event_id, retry
                    )
                )
            data, event_type, retry = "", "", None
            continue
        if line.startswith(":"):
            stream.comments.append(line[1:].removeprefix(" "))
            continue
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "event":
            event_type = value
        elif name == "data":
            data += value + "\n"
        elif name == "id":
            if "\x00" not in value:
                last_event_id = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            retry = stream.reconnection_time = int(value)
        # any other field name is ignored
    # At the end of the stream, a pending event (no blank line after it) is discarded.
    return stream


@dataclass
class ReceivedStream:
    """Bytes received so far on one stream, read as a browser would read them."""

    raw: bytes = b""

    @property
    def events(self) -> list[ParsedEvent]:
        return parse_stream(self.raw).events

    @property
    def comments(self) -> list[str]:
        return parse_stream(self.raw).comments

    @property
    def last_event_id(self) -> str:
        """What a browser would send as ``Last-Event-ID`` if the stream were cut now."""
        return parse_stream(self.raw).last_event_id

    def data(self) -> list[dict[str, Any]]:
        """The events' data, without the markers tests send to know a stream is read through."""
        parsed = [json.loads(e.data) for e in self.events]
        return [d for d in parsed if not str(d.get("title", "")).startswith(MARKER_PREFIX)]
