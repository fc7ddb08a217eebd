"""CORS for the configured origins only: they get credentials, everyone else gets no header."""

from __future__ import annotations

from collections.abc import Collection

from quart import Response

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, Last-Event-ID"
EXPOSED_HEADERS = "SSE-Replay, Retry-After"
PREFLIGHT_MAX_AGE = "600"


def apply_cors(
    response: Response, origin: str | None, allowed: Collection[str], *, preflight: bool
) -> Response:
    response.vary.add("Origin")
    if origin is None or origin not in allowed:
        return response
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Credentials"] = "true"
    if preflight:
        response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
    else:
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    return response
