"""Who may see what: the least-privilege rule every live and replayed event passes.

An event is visible to a client only if **every** scope field it names is granted by the client's
token: ``user_id`` equals ``sub``; ``novel_id`` is one of ``novels``; ``session_id`` equals ``sid``,
unless the event also names the user and that user is ``sub`` (a user sees all their own sessions).
A broadcast names no field and is visible to everyone. On top of that a client's filter can only
narrow what it receives, never widen it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from router.core.scope import Scope
from router.core.sse import SSEMessage

NO_IDS: frozenset[str] = frozenset()
"""The one empty set of ids every principal and filter that names none shares: an empty
frozenset is 216 bytes, and CPython makes a new one each time (two or three per stream)."""


def id_set(ids: Iterable[str]) -> frozenset[str]:
    """``ids`` as a frozenset, :data:`NO_IDS` when there are none."""
    return frozenset(ids) or NO_IDS


@dataclass(frozen=True, slots=True)
class Principal:
    """What a verified token grants."""

    user_id: str
    novels: frozenset[str] = NO_IDS
    session_id: str | None = None
    roles: frozenset[str] = NO_IDS


@dataclass(frozen=True, slots=True)
class StreamFilter:
    """What a client asked for; ``None`` or empty means "no narrowing" for that dimension.

    Each dimension narrows only the events that name it: asking for novel ``n1`` keeps the events
    of ``n1`` and drops those of other novels, while events that name no novel (the user's own
    task progress, broadcasts) still arrive. ``event_types`` narrows every event.
    """

    novel_ids: frozenset[str] = NO_IDS
    session_id: str | None = None
    event_types: frozenset[str] = NO_IDS


def is_visible(scope: Scope, principal: Principal) -> bool:
    if scope.broadcast:
        return True
    if scope.user_id is not None and scope.user_id != principal.user_id:
        return False
    if scope.novel_id is not None and scope.novel_id not in principal.novels:
        return False
    if scope.session_id is not None and scope.session_id != principal.session_id:
        # A user sees their own sessions' events, but only when the event says whose they are.
        return scope.user_id is not None and scope.user_id == principal.user_id
    return True


def is_wanted(message: SSEMessage, stream_filter: StreamFilter) -> bool:
    """Whether a visible event passes the client's own filter."""
    scope = message.scope
    if stream_filter.event_types and message.event not in stream_filter.event_types:
        return False
    if scope is None or scope.broadcast:
        return True
    if (
        stream_filter.novel_ids
        and scope.novel_id is not None
        and scope.novel_id not in stream_filter.novel_ids
    ):
        return False
    return not (
        stream_filter.session_id is not None
        and scope.session_id is not None
        and scope.session_id != stream_filter.session_id
    )


def admits(message: SSEMessage, principal: Principal, stream_filter: StreamFilter) -> bool:
    """The one check between an event and a client: visible to them, and asked for.

    It looks at nothing of the message but its scope and its event name, so messages alike in
    both are admitted alike: the adapter checks a burst once per kind of event.

    A message without a scope is the router's own (an ``sse.error`` for this stream) and is never
    routed through here; refusing it keeps a bug from broadcasting it.
    """
    scope = message.scope
    if scope is None:
        return False
    if scope.broadcast:
        # The widest fan-out, checked once per stream: the rule above, taken straight to the
        # one part of it that applies (only a filter's event types narrow a broadcast).
        return not stream_filter.event_types or message.event in stream_filter.event_types
    return is_visible(scope, principal) and is_wanted(message, stream_filter)
