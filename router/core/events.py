"""The SSE events the router emits, each with its payload contract and priority.

Every concrete event is an :class:`SSEMessage` whose ``event`` name is fixed by its class and whose
``data`` is its payload after :class:`~router.core.schema.PayloadSchema` validation, plus the
metadata fields in :data:`METADATA_FIELDS` when the event came from a bus.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import ClassVar

from router.core.schema import Boolean, Choice, Number, PayloadSchema, Text
from router.core.scope import Scope
from router.core.sse import JSONValue, Priority, SSEMessage

# Added by the mapping to the data of every event that came from a bus, never taken from a payload:
# ``event_id`` is the event's identity (see router.core.cursor), ``occurred_at`` when it happened.
METADATA_FIELDS = ("event_id", "occurred_at")
_METADATA = frozenset(METADATA_FIELDS)


class DomainEvent(SSEMessage):
    """An SSE event with a fixed name and a validated payload.

    Subclasses set :attr:`EVENT`, :attr:`SCHEMA` and, where it differs, :attr:`PRIORITY`. The
    payload is given as a mapping, as keyword arguments, or both; fields the
    schema does not name are dropped, and bad values raise
    :class:`~router.core.schema.PayloadError`.
    """

    EVENT: ClassVar[str]
    SCHEMA: ClassVar[PayloadSchema]
    PRIORITY: ClassVar[Priority] = Priority.HIGH
    VERSION: ClassVar[int] = 1

    def __init__(
        self,
        payload: Mapping[str, JSONValue] | None = None,
        /,
        *,
        id: str | None = None,
        retry: int | None = None,
        scope: Scope | None = None,
        metadata: dict[str, str] | None = None,
        **fields: JSONValue,
    ) -> None:
        data: dict[str, JSONValue] = dict(metadata or {})
        if not data.keys() <= _METADATA:
            unknown = set(data) - _METADATA
            raise ValueError(f"unknown metadata fields: {', '.join(sorted(unknown))}")
        given = {**(payload or {}), **fields} if fields else payload or {}
        data.update(self.SCHEMA.validate(given))
        super().__init__(
            event=self.EVENT, data=data, id=id, retry=retry, scope=scope, version=self.VERSION
        )

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        schema = cls.__dict__.get("SCHEMA")
        clashes = set(schema.names if schema else ()) & set(METADATA_FIELDS)
        if clashes:
            raise TypeError(f"{cls.__name__}: payload fields {sorted(clashes)} are reserved")

    @property
    def priority(self) -> Priority:
        return self.PRIORITY


class TaskProgressEvent(DomainEvent):
    """A long-running task moved forward. Only the newest one per task matters."""

    EVENT = "task.progress-updated"
    PRIORITY = Priority.LOW
    SCHEMA = PayloadSchema(
        (
            Text("task_id", identifier=True),
            Number("progress", minimum=0, maximum=100, description="percent done"),
            Text("message", required=False),
        )
    )

    @property
    def coalesce_key(self) -> str:
        return f"{self.EVENT}/{self.data['task_id']}"


class TaskStatusChangeEvent(DomainEvent):
    """A task went from one status to another (e.g. ``running`` to ``failed``)."""

    EVENT = "task.status-changed"
    SCHEMA = PayloadSchema(
        (
            Text("task_id", identifier=True),
            Text("old_status", identifier=True),
            Text("new_status", identifier=True),
            Text("reason", required=False),
        )
    )


class SystemNotificationEvent(DomainEvent):
    """A message for people: maintenance windows, quota warnings, failures."""

    EVENT = "system.notification-sent"
    SCHEMA = PayloadSchema(
        (
            Choice("level", choices=("info", "warning", "error")),
            Text("title"),
            Text("message"),
        )
    )


class ContentUpdateEvent(DomainEvent):
    """A novel, or one of its chapters, has a new version to fetch."""

    EVENT = "content.updated"
    SCHEMA = PayloadSchema(
        (
            Text("novel_id", identifier=True),
            Text("chapter_id", identifier=True, required=False),
            # 2^53 - 1: the largest integer a browser's JSON.parse keeps exactly.
            Number("content_version", minimum=0, maximum=2**53 - 1, integer=True),
            Text("summary", required=False),
        )
    )


class ErrorCode(enum.StrEnum):
    """Why the router tells a client something went wrong with its stream."""

    TOKEN_EXPIRED = "token-expired"
    LAGGED = "lagged"
    SERVER_SHUTDOWN = "server-shutdown"
    HISTORY_TRUNCATED = "history-truncated"
    INTERNAL = "internal"
    # A new stream refused for now (see router.core.refusal): the stream carries only this.
    RATE_LIMITED = "rate-limited"
    TOO_MANY_STREAMS = "too-many-streams"
    SHUTTING_DOWN = "shutting-down"
    REPLAY_UNAVAILABLE = "replay-unavailable"
    # Ended by a back end's control envelope (see router.core.control).
    ACCESS_CHANGED = "access-changed"
    DISCONNECTED = "disconnected"
    OVERLOADED = "overloaded"


class SSEErrorEvent(DomainEvent):
    """Sent by the router itself, never mapped from a producer's event."""

    EVENT = "sse.error"
    SCHEMA = PayloadSchema(
        (
            Choice("code", choices=tuple(code.value for code in ErrorCode)),
            Text("message"),
            Boolean("retryable"),
        )
    )


EVENT_CLASSES: tuple[type[DomainEvent], ...] = (
    TaskProgressEvent,
    TaskStatusChangeEvent,
    SystemNotificationEvent,
    ContentUpdateEvent,
    SSEErrorEvent,
)
