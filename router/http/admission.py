"""Whether a new stream may open now, and how a refusal is answered (see router.core.refusal).

The stream endpoint asks :class:`StreamAdmission` after authenticating the request and checking
its filter: the instance is not shutting down, the user holds fewer streams than the cap, and
neither connect rate (per user, per address) is spent. Rates are taken together: from both when
both allow, from neither when one refuses, so a user refused for their address keeps their own
allowance elsewhere, and one user's retry loop does not spend the address's allowance for everyone
behind it.
"""

from __future__ import annotations

import logging

import trio
from quart import Response

from actors.hub import Hub
from router import __version__
from router.config import Settings
from router.core.events import ErrorCode
from router.core.ratelimit import RateLimiter, acquire_all
from router.core.refusal import InBand, Limit, Refusal, answer_refusal
from router.http.errors import HTTPError
from router.metrics import Metrics

STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "X-Server-Version": __version__,
}
RATE_PERIOD_SECONDS = 60.0
"""``--connects-per-minute`` counts new streams in any window of this length."""
SHUTDOWN_WAIT_SECONDS = 1.0
"""A client refused by a stopping instance comes back this soon: to another instance, or to this
one restarted."""
TOO_MANY_STREAMS_WAIT_SECONDS = 10.0
"""A user at the stream cap has a slot only when one of their streams ends (a tab closed), which
nothing predicts; this is how often a tab refused for it tries again."""

log = logging.getLogger(__name__)


class StreamAdmission:
    def __init__(self, hub: Hub, settings: Settings, metrics: Metrics) -> None:
        self._hub = hub
        self._max_streams_per_user = settings.max_streams_per_user
        self._metrics = metrics
        self._per_user = RateLimiter(settings.connects_per_minute, RATE_PERIOD_SECONDS)
        self._per_address = RateLimiter(settings.connects_per_minute, RATE_PERIOD_SECONDS)

    def closing(self) -> Refusal | None:
        """A refusal while this instance is shutting down (asked before anything else)."""
        if not self._hub.closing:
            return None
        return Refusal(
            ErrorCode.SHUTTING_DOWN,
            "this instance is shutting down; reconnect",
            SHUTDOWN_WAIT_SECONDS,
        )

    def limits(self, user_id: str, address: str, *, take: bool = True) -> Refusal | None:
        """A refusal when a limit holds this new stream back, counted in the metric; ``None`` when
        it may open, and then, with ``take``, it is counted against both connect rates (a ``HEAD``
        only asks)."""
        if self._hub.registry.count_for_user(user_id) >= self._max_streams_per_user:
            return self._counted(
                Refusal(
                    ErrorCode.TOO_MANY_STREAMS,
                    f"at most {self._max_streams_per_user} open streams per user",
                    TOO_MANY_STREAMS_WAIT_SECONDS,
                    Limit.STREAMS_PER_USER,
                )
            )
        claims = {
            Limit.CONNECTS_PER_USER: (self._per_user, user_id),
            Limit.CONNECTS_PER_ADDRESS: (self._per_address, address),
        }
        refused = acquire_all(claims, trio.current_time(), take=take)
        if refused is None:
            return None
        return self._counted(
            Refusal(
                ErrorCode.RATE_LIMITED,
                "too many new streams; try again later",
                refused.wait,
                refused.limit,
            )
        )

    def _counted(self, refusal: Refusal) -> Refusal:
        if refusal.limit is not None:
            self._metrics.rate_limited.labels(refusal.limit.value).inc()
        return refusal


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
