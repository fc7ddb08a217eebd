"""What a WebSocket client may say (``auth``, ``refresh``, ``filter``), parsed; pure.

A message is a JSON object with a ``type`` and an optional ``ref`` the reply echoes. Anything
else is a :class:`BadMessage` with a bounded code, answered with an ``error`` frame; the
connection stays up. A filter is turned into the stream's own query parameters, so it is
validated by the same rules (:func:`router.core.admission.stream_request`).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from router.core.permissions import Principal
from router.core.sse import JSONValue

MAX_MESSAGE_CHARS = 16_384
"""A client message is small; a longer one is refused before it is parsed."""
MESSAGE_BURST = 10
"""Client messages a WebSocket may send at once, before ``--ws-messages-per-second`` applies."""


class Problem(enum.StrEnum):
    BAD_JSON = "bad-json"
    BAD_MESSAGE = "bad-message"
    UNKNOWN_TYPE = "unknown-type"
    TOO_LARGE = "too-large"


@dataclass(frozen=True, slots=True)
class BadMessage:
    problem: Problem
    message: str
    ref: JSONValue = None


@dataclass(frozen=True, slots=True)
class Auth:
    token: str
    ref: JSONValue = None


@dataclass(frozen=True, slots=True)
class Refresh:
    token: str
    ref: JSONValue = None


@dataclass(frozen=True, slots=True)
class Filter:
    query: tuple[tuple[str, str], ...]
    """The filter as the stream's query parameters (``novel_id``, ``session_id``, ``types``)."""
    ref: JSONValue = None


ClientMessage = Auth | Refresh | Filter


def parse_client_message(text: str | bytes) -> ClientMessage | BadMessage:
    if isinstance(text, bytes):
        return BadMessage(Problem.BAD_MESSAGE, "send JSON text frames, not binary ones")
    if len(text) > MAX_MESSAGE_CHARS:
        return BadMessage(
            Problem.TOO_LARGE, f"a message has at most {MAX_MESSAGE_CHARS} characters"
        )
    try:
        body: Any = json.loads(text)
    except (ValueError, RecursionError):
        return BadMessage(Problem.BAD_JSON, "the message is not JSON")
    if not isinstance(body, dict):
        return BadMessage(Problem.BAD_MESSAGE, "a message is a JSON object with a 'type'")
    ref = body.get("ref")
    kind = body.get("type")
    if kind in ("auth", "refresh"):
        token = body.get("token")
        if not isinstance(token, str) or not token:
            return BadMessage(Problem.BAD_MESSAGE, f"'{kind}' needs a 'token' string", ref)
        return Auth(token, ref) if kind == "auth" else Refresh(token, ref)
    if kind == "filter":
        return _filter(body, ref)
    return BadMessage(Problem.UNKNOWN_TYPE, "'type' is one of 'auth', 'refresh', 'filter'", ref)


def _filter(body: dict[str, Any], ref: JSONValue) -> Filter | BadMessage:
    unknown = sorted(set(body) - {"type", "ref", "novel_id", "session_id", "types"})
    if unknown:
        return BadMessage(Problem.BAD_MESSAGE, f"unknown field {unknown[0]!r}", ref)
    novels = body.get("novel_id", [])
    types = body.get("types", [])
    session_id = body.get("session_id")
    if not _strings(novels) or not _strings(types):
        return BadMessage(Problem.BAD_MESSAGE, "'novel_id' and 'types' are lists of strings", ref)
    if session_id is not None and not isinstance(session_id, str):
        return BadMessage(Problem.BAD_MESSAGE, "'session_id' is a string or null", ref)
    query = [("novel_id", novel) for novel in novels]
    if session_id is not None:
        query.append(("session_id", session_id))
    if types:
        query.append(("types", ",".join(types)))
    return Filter(tuple(query), ref)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def refresh_problem(old: Principal, new: Principal) -> str | None:
    """Why ``new`` (a refreshed token's grants) may not replace ``old`` on an open stream, or
    ``None``: a refresh renews the same user's token for the same session."""
    if new.user_id != old.user_id:
        return "the new token is another user's"
    if new.session_id != old.session_id:
        return "the new token is for another session"
    return None
