"""How the front door's answer is said over HTTP (its rules: router.admission and its core).

A refusal to retry (see router.core.refusal) is answered in-band to an event stream, else with its
status and ``Retry-After``; any other refusal is an :class:`~router.http.errors.HTTPError`, with a
``WWW-Authenticate`` challenge when it is the token's.
"""

from __future__ import annotations

import logging

from quart import Response

from router import __version__
from router.core.admission import UNAUTHORIZED, Refused
from router.core.refusal import InBand, Refusal, answer_refusal
from router.http.errors import HTTPError

STREAM_PATH = "/api/v1/events/stream"
"""A client's event stream: the route of router/http/app.py."""

STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "X-Server-Version": __version__,
}

log = logging.getLogger(__name__)


def http_error(refused: Refused) -> HTTPError:
    """``refused`` as the JSON error the app's error handler answers (and logs)."""
    challenge = {"WWW-Authenticate": "Bearer"} if refused.reason in UNAUTHORIZED else None
    return HTTPError(
        refused.status,
        refused.reason.value,
        refused.message,
        parameter=refused.parameter,
        headers=challenge,
    )


def refusal_response(
    refusal: Refusal, *, accept: str | None, method: str, path: str, remote: str
) -> Response:
    """The answer to ``refusal``: in-band to an event stream, else its status; logged as every
    refusal is (``request refused``), with the limit that refused and the form of the answer."""
    answer = answer_refusal(refusal, accept)
    in_band = isinstance(answer, InBand)
    log.info(
        "request refused",
        extra={
            "method": method,
            "path": path,  # never the query string: it may hold a token
            "status": refusal.status,
            "code": refusal.code.value,
            "parameter": None,
            "remote": remote,
            "limit": refusal.limit.value if refusal.limit is not None else None,
            "answered": "in-band" if in_band else "status",
        },
    )
    if isinstance(answer, InBand):
        body = b"" if method == "HEAD" else answer.body
        return Response(body, status=200, headers=STREAM_HEADERS)
    error = HTTPError(answer.status, answer.code, answer.message, headers=dict(answer.headers))
    return error.to_response()
