"""Structured logs: one JSON object per line on stdout (or a console format for people).

The router logs through the standard library's ``logging`` everywhere (actors too), with the
fields of an event passed as ``extra``; structlog renders every record, the router's and its
libraries', in one format. Nothing logs a token: the access log is off, the router never logs a
query string, and the one field that could hold a secret is redacted by :func:`redact`.
"""

from __future__ import annotations

import enum
import logging
import sys
from collections.abc import MutableSet
from typing import Any, Literal, TextIO, TypeVar

import structlog

REDACTED_FIELDS = frozenset({"token", "access_token", "authorization", "jwt_secret", "redis_url"})


_Reason = TypeVar("_Reason", bound=enum.StrEnum)


def warn_once(
    logger: logging.Logger, logged: MutableSet[_Reason], reason: _Reason, message: str
) -> None:
    """Log ``message`` with its ``reason`` the first time the process meets that reason
    (``logged``: the reasons met so far). A fallback that every stream of a deployment takes
    (TLS in front, an older server) is counted per stream and said once, not once per stream."""
    if reason not in logged:
        logged.add(reason)
        logger.warning(message, extra={"reason": reason.value})


def redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Replace any field that may hold a credential, wherever a log call came from."""
    for name in REDACTED_FIELDS & event.keys():
        event[name] = "<redacted>"
    return event


def configure_logging(
    level: str,
    format: Literal["json", "console"],
    stream: TextIO | None = None,
) -> None:
    """Route every ``logging`` record through structlog's renderer, at ``level`` and above.

    No defaults: ``--log-level`` and ``--log-format`` hold the only ones (``router/config.py``)."""
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries speak at their own level of detail; warnings and above are what matter from them.
    for noisy in ("aiokafka", "hypercorn", "quart", "redis", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
