"""The Server-Sent Events wire format (WHATWG HTML, "Server-sent events").

An :class:`SSEMessage` is one event as it leaves the router. Its bytes are computed once, on
construction, so an event fanned out to ten thousand streams is encoded once, and a message that
cannot be encoded faithfully fails where it is made, never half-way through a stream.
"""

from __future__ import annotations

import copy
import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self, TypeAlias

if TYPE_CHECKING:
    from router.core.scope import Scope

JSONValue: TypeAlias = (
    "bool | int | float | str | Sequence[JSONValue] | Mapping[str, JSONValue] | None"
)
JSONObject = Mapping[str, JSONValue]

# Only these three end a line in an event stream. str.splitlines() also splits on U+2028, U+0085,
# form feeds and more, which would cut a data line where a browser would not.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")


class Priority(enum.IntEnum):
    """How much a slow stream may lose of an event before it must be cut off.

    ``LOW`` events may be coalesced or dropped in favour of a newer one with the same
    :attr:`SSEMessage.coalesce_key`; a ``HIGH`` event that cannot be queued ends the stream so the
    client resumes from the replay cache instead.
    """

    LOW = 0
    HIGH = 1


def _check_field(name: str, value: str) -> None:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"SSE {name!r} is not valid Unicode text: {value!r}") from None
    bad = _FORBIDDEN_IN_FIELD.search(value)
    if bad is not None:
        raise ValueError(
            f"SSE {name!r} must not contain CR, LF or NUL (found {bad.group()!r} at index "
            f"{bad.start()}): it would end the field early and let the rest forge another field"
        )


def encode_json(data: JSONObject) -> str:
    """Compact JSON for a ``data`` field, UTF-8 text where possible.

    Raises :class:`ValueError` for anything that is not faithful JSON: NaN or infinities, values
    JSON cannot carry, or nesting too deep to encode.
    """
    try:
        text = _COMPACT_UTF8.encode(data)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"SSE data is not encodable as JSON: {exc}") from exc
    _check_keys(data)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate has no UTF-8 form; JSON's \uXXXX escape carries it exactly.
        text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text


# json.dumps with any option builds an encoder per call: one, built once, is the same encoding.
_COMPACT_UTF8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_SCALARS = frozenset({str, int, float, bool, type(None)})
"""Types that hold no keys: an event's data is almost always a flat object of these, so the walk
below looks no further into them (checked by ``type``, which is exact and cheaper than an ABC)."""


def _check_keys(data: JSONObject) -> None:
    """json.dumps turns int, float, bool and None keys into strings, so ``{1: x}`` would come back
    as ``{"1": x}`` (and ``{1: x, "1": y}`` as an object with a duplicate key): reject them.
    Called after json.dumps succeeded, so the data holds no cycles."""
    stack: list[object] = [data]
    while stack:
        value = stack.pop()
        if type(value) is dict or isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ValueError(
                        f"SSE data is not encodable as JSON: key {key!r} is not a string"
                    )
                if type(item) not in _SCALARS:
                    stack.append(item)
        elif isinstance(value, list | tuple):
            stack.extend(value)


def encode_event(
    *, event: str | None = None, data: str = "", id: str | None = None, retry: int | None = None
) -> bytes:
    """The bytes of one event, with ``data`` as text split into one ``data:`` line per line.

    Fields are validated here, whatever the caller, so no path can put a forged field on the wire.
    """
    lines: list[str] = []
    if event is not None:
        _check_field("event", event)
        lines.append(f"event: {event}")
    if id is not None:
        _check_field("id", id)
        lines.append(f"id: {id}")
    if retry is not None:
        _check_retry(retry)
        lines.append(f"retry: {retry}")
    if "\n" in data or "\r" in data:
        lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    else:  # one line, as compact JSON always is
        lines.append(f"data: {data}")
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def _head_fields(event: str | None, id: str | None, retry: int | None) -> bytes:
    """The bytes :func:`encode_event` writes before an event's ``data:`` lines (there is always
    at least one), checked as it checks them."""
    head = b""
    if event is not None:
        _check_field("event", event)
        head += f"event: {event}\n".encode()
    if id is not None:
        _check_field("id", id)
        head += f"id: {id}\n".encode()
    if retry is not None:
        _check_retry(retry)
        head += f"retry: {retry}\n".encode()
    return head


def encode_retry(milliseconds: int) -> bytes:
    """A block that only sets the client's reconnection delay; it dispatches no event."""
    _check_retry(milliseconds)
    return f"retry: {milliseconds}\n\n".encode()


def encode_id(id: str) -> bytes:
    """A block that only sets the client's last event id; it dispatches no event.

    A browser sets its last event id at the blank line that ends any block (before it checks
    whether there is data to dispatch), so this moves the ``Last-Event-ID`` it will reconnect
    with, and no handler runs.
    """
    _check_field("id", id)
    return f"id: {id}\n\n".encode()


def encode_comment(text: str = "") -> bytes:
    """A comment line (``: text``), which clients ignore; used as a heartbeat."""
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text)).encode("utf-8") + b"\n"


def _check_retry(retry: int) -> None:
    if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
        raise ValueError(
            f"SSE 'retry' must be a non-negative integer of milliseconds, got {retry!r}"
        )


@dataclass(frozen=True, kw_only=True)
class SSEMessage:
    """One server-sent event: what the client sees, plus what the router needs to route it.

    ``event``, ``id``, ``retry`` and ``data`` go on the wire; ``scope`` says who may see the event
    and never leaves the router; ``version`` is the version of the event's payload contract.
    """

    event: str
    data: JSONObject
    id: str | None = None
    retry: int | None = None
    scope: Scope | None = None
    version: int = 1
    _wire: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.event:
            raise ValueError("SSE 'event' must not be empty")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"'version' must be a positive integer, got {self.version!r}")
        if type(self.data) is not dict and not isinstance(self.data, Mapping):
            raise ValueError(f"SSE data must be a JSON object, got {type(self.data).__name__}")
        wire = encode_event(
            event=self.event, data=encode_json(self.data), id=self.id, retry=self.retry
        )
        object.__setattr__(self, "_wire", wire)

    @property
    def priority(self) -> Priority:
        return Priority.HIGH

    @property
    def coalesce_key(self) -> str | None:
        """Events with the same non-None key supersede each other under backpressure."""
        return None

    def with_id(self, id: str) -> Self:
        """This event with another ``id:`` (the original is unchanged): its encoded ``data:``
        lines kept, the fields before them written again. A replay gives every event the
        stream's own id, and encoding the JSON again was about half a replayed event's cost
        (``python -m bench.replay_round --profile``)."""
        clone = copy.copy(self)
        object.__setattr__(clone, "id", id)
        old_head = _head_fields(self.event, self.id, self.retry)
        wire = _head_fields(self.event, id, self.retry) + self._wire[len(old_head) :]
        object.__setattr__(clone, "_wire", wire)
        return clone

    def to_sse_format(self) -> bytes:
        """The exact bytes of this event on an ``text/event-stream``, blank line included."""
        return self._wire
