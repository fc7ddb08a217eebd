"""What every session is built with: one frozen value, made once in ``serve()`` from the
command line (``--session-buffer``, ``--session-buffer-bytes``, ``--retry-ms``, ...) and handed by
the hub to each session it makes (:attr:`actors.hub.HubSettings.session`).

The defaults here are the flags' defaults: ``router/config.py`` reads them, so a test that builds
a session alone runs with what production runs with (``shutdown_retry_spread_ms`` aside: 0 is no
spread, and ``--shutdown-retry-spread-ms`` gives the deployment's)."""

from __future__ import annotations

from dataclasses import dataclass

from router.core.inbox import DEFAULT_INBOX_MAX_BYTES

__all__ = ["DEFAULT_SESSION_SETTINGS", "SessionSettings"]


@dataclass(frozen=True, slots=True)
class SessionSettings:
    session_buffer: int = 256
    session_buffer_bytes: int | None = DEFAULT_INBOX_MAX_BYTES
    """The encoded size of the events that may wait in the inbox, or ``None`` for no byte bound."""
    retry_ms: int = 2000
    shutdown_retry_ms: int = 1000
    shutdown_retry_spread_ms: int = 0
    """A shutdown's retry hint gets a random share of this (router.core.goodbye.last_words)."""
    goodbye_timeout_seconds: float = 1.0
    log_sample_rate: float = 0.0


DEFAULT_SESSION_SETTINGS = SessionSettings()
