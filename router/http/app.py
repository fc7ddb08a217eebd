"""The Quart-Trio application: the HTTP face of the :class:`~actors.hub.Hub`.

- ``GET /api/v1/events/stream``: a client's event stream (one session actor each)
- ``GET /api/v1/events/ws``: the same as WebSocket JSON frames (router/http/websocket.py)
- ``POST /api/v1/events``: publish one envelope or a JSON array of them (role ``publisher``)
- ``GET /healthz``: the process is alive; ``GET /readyz``: the bus and the replay cache answer
"""

from __future__ import annotations

import logging
import math
import secrets
from typing import Any

from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from actors.hub import Hub, ReplayUnavailableError
from actors.overload import OverloadMonitor
from actors.publisher import CircuitOpenError
from router import __version__
from router.admission import Admission, Ask
from router.auth import Verified
from router.bus.base import BusUnavailableError
from router.config import Settings
from router.core.admission import Admitted, Credentials, Refused
from router.core.envelope import EnvelopeError, Sealed, parse_envelope, parse_publish_body
from router.core.events import ErrorCode
from router.core.mapping import MappingError, check_mappable
from router.core.overload import Level
from router.core.refusal import Refusal
from router.core.stream_request import FILTERABLE_EVENTS
from router.http.admission import STREAM_HEADERS, http_error, refusal_response
from router.http.asgi import ResponseBodyWriter, remember_session
from router.http.control import register_control_api
from router.http.cors import apply_cors
from router.http.errors import HTTPError
from router.http.websocket import WS_PATH, add_websocket_route
from router.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from router.metrics import Metrics

PUBLISHER_ROLE = "publisher"
log = logging.getLogger(__name__)
_PROBES = frozenset({"/healthz", "/readyz"})
_ENDPOINTS = {
    "stream": "GET /api/v1/events/stream",
    "websocket": f"GET {WS_PATH}",
    "publish": "POST /api/v1/events",
    "control": "POST /api/v1/control",
    "connections": "GET /api/v1/connections",
    "health": "GET /healthz",
    "ready": "GET /readyz",
}


def create_app(
    hub: Hub,
    admission: Admission,
    settings: Settings,
    metrics: Metrics,
    overload: OverloadMonitor | None = None,
) -> QuartTrio:
    """The app: it translates requests for :class:`~router.admission.Admission` and the hub,
    and their answers back; the rules are theirs."""
    app = QuartTrio("sse-router")
    app.config["MAX_CONTENT_LENGTH"] = settings.publish_max_bytes

    def client_address() -> str:
        return admission.address(request.remote_addr, request.headers.get("X-Forwarded-For"))

    def refused(refusal: Refused) -> Response:
        """In-band or with its status when to be retried; else raised, for the error handler."""
        retry = refusal.to_retry()
        if retry is None:
            raise http_error(refusal)
        return refused_for_now(retry)

    def refused_for_now(refusal: Refusal) -> Response:
        accept, method, path = request.headers.get("Accept"), request.method, request.path
        return refusal_response(
            refusal, accept=accept, method=method, path=path, remote=client_address()
        )

    @app.errorhandler(HTTPError)
    async def answer_http_error(error: HTTPError) -> Response:
        log.info(
            "request refused",
            extra={
                "method": request.method,
                "path": request.path,  # never the query string: it may hold a token
                "status": error.status,
                "code": error.code,
                "parameter": error.parameter,
                "remote": client_address(),
            },
        )
        return error.to_response()

    @app.errorhandler(HTTPException)
    async def answer_werkzeug_error(error: HTTPException) -> Response:
        code = (error.name or "error").lower().replace(" ", "-")
        status = error.code or 500
        return HTTPError(status, code, error.description or code).to_response()

    @app.errorhandler(Exception)
    async def answer_unexpected_error(error: Exception) -> Response:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return HTTPError(500, "internal", "the router failed to answer; see its log").to_response()

    @app.before_request
    async def screen_address() -> None:
        """Every request but the probes is judged by its address before anything else is read:
        a load balancer's health checks come from wherever it runs."""
        if request.path in _PROBES:
            return
        blocked = admission.screen(request.remote_addr, request.headers.get("X-Forwarded-For"))
        if blocked is not None:
            raise http_error(blocked)

    @app.after_request
    async def add_cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        preflight = request.method == "OPTIONS"
        return apply_cors(response, origin, settings.cors_origins, preflight=preflight)

    @app.get("/")
    async def index() -> Response:
        return jsonify(
            {
                "service": "sse-router",
                "version": __version__,
                "endpoints": _ENDPOINTS,
                "events": sorted(FILTERABLE_EVENTS),
            }
        )

    @app.get("/metrics")
    async def metrics_page() -> Response:
        return Response(metrics.exposition(), content_type=METRICS_CONTENT_TYPE)

    @app.get("/healthz")
    async def healthz() -> Response:
        return jsonify({"status": "ok", "version": __version__})

    @app.get("/readyz")
    async def readyz() -> Response:
        """Ready while the bus answers. Without the replay cache the router still delivers live
        events, so that is ``degraded`` (200), not unready: taking every instance out of a load
        balancer because Redis blinked would cut every stream. While the overload ladder refuses
        new streams it is ``degraded`` with ``503``: a load balancer sends new clients elsewhere
        (it does not cut the streams open here), and sends them again once the ladder is down."""
        bus, cache = await hub.bus.healthy(), await hub.cache.healthy()
        level = Level.NORMAL if overload is None else overload.level
        refusing = level >= Level.REFUSE
        checks: dict[str, object] = {"bus": bus, "cache": cache, "overload": level.label}
        ready = bus and not refusing
        status = "unavailable" if not bus else "ok" if cache and not refusing else "degraded"
        response = jsonify({"ready": ready, "status": status, "checks": checks})
        response.status_code = 200 if ready else 503
        return response

    @app.get("/api/v1/events/stream")
    async def stream() -> Response:
        head = request.method == "HEAD"  # the answer's headers, and no session: it has no body
        admitted = admission.admit(_stream_ask(), take=not head)
        if isinstance(admitted, Refused):
            return refused(admitted)
        if head:
            return Response(b"", status=200, headers=STREAM_HEADERS)
        connection_id, address = secrets.token_hex(8), client_address()
        _log_stream_opened(connection_id, admitted, address)
        writer = ResponseBodyWriter(request.scope)
        try:
            opened = await hub.open(
                admitted.principal,
                admitted.stream_filter,
                expires_at=admitted.expires_at,
                resume_from=admitted.resume_from,
                output=writer,
                connection_id=connection_id,
                issued_at=admitted.issued_at,
                address=address,
            )
        except ReplayUnavailableError as error:
            return refused_for_now(Refusal(ErrorCode.REPLAY_UNAVAILABLE, str(error), error.wait))
        remember_session(request.scope, opened.session)  # stopped when the request ends
        truncated = opened.replay is not None and opened.replay.truncated
        headers = {**STREAM_HEADERS, "SSE-Replay": "truncated" if truncated else "complete"}
        response = Response(writer.body(), status=200, headers=headers)
        response.timeout = None  # a stream lasts as long as the client wants it
        return response

    add_websocket_route(app, hub, admission, settings)

    @app.post("/api/v1/events")
    async def publish() -> tuple[Response, int]:
        verified = admission.authenticate(_credentials(), client_address())
        if isinstance(verified, Refused):
            raise http_error(verified)
        return await _publish(hub, verified, settings.publish_max_batch)

    register_control_api(app, hub, admission, settings.publish_max_batch)
    return app


def _credentials() -> Credentials:
    """Where the request may carry its token (a browser ``EventSource`` cannot set headers)."""
    return Credentials(
        authorization=request.headers.get("Authorization"),
        cookie=request.cookies.get("access_token"),
        query=request.args.get("token"),
    )


def _stream_ask() -> Ask:
    return Ask(
        _credentials(),
        list(request.args.items(multi=True)),
        request.headers.get("Last-Event-ID"),
        request.remote_addr,
        request.headers.get("X-Forwarded-For"),
    )


def _log_stream_opened(connection_id: str, admitted: Admitted, remote: str) -> None:
    asked = admitted.stream_filter
    log.info(
        "stream opened",
        extra={
            "connection_id": connection_id,
            "user_id": admitted.principal.user_id,
            "novel_ids": sorted(asked.novel_ids),
            "session_id": asked.session_id,
            "types": sorted(asked.event_types),
            "resuming": admitted.resume_from is not None,
            "remote": remote,
        },
    )


async def _publish(hub: Hub, verified: Verified, max_batch: int) -> tuple[Response, int]:
    """``POST /api/v1/events`` once its token verified: every envelope checked, then all are
    published, or none."""
    if PUBLISHER_ROLE not in verified.principal.roles:
        raise HTTPError(403, "forbidden", f"publishing needs the {PUBLISHER_ROLE!r} role")
    if request.mimetype != "application/json":
        raise HTTPError(415, "unsupported-media-type", "send application/json")
    raw = await request.get_data(as_text=False)
    try:
        body: Any = parse_publish_body(raw)
    except EnvelopeError as error:
        raise HTTPError(400, "bad-json", f"the body is not JSON: {error.detail}") from None
    items = body if isinstance(body, list) else [body]
    if not items:
        raise HTTPError(400, "empty-batch", "the array holds no envelope")
    if len(items) > max_batch:
        raise HTTPError(413, "batch-too-large", f"at most {max_batch} envelopes at once")
    # Every envelope is checked, encoding included, before any is published: all or nothing.
    envelopes = [_checked_envelope(item, index) for index, item in enumerate(items)]
    try:
        identities = await hub.publish(envelopes)
    except CircuitOpenError as error:  # the bus has been failing: said at once, not waited for
        retry_after = str(max(1, math.ceil(error.wait)))
        raise HTTPError(
            503, "bus-unavailable", str(error), headers={"Retry-After": retry_after}
        ) from None
    except BusUnavailableError as error:
        raise HTTPError(503, "bus-unavailable", str(error), headers={"Retry-After": "5"}) from None
    return jsonify({"event_ids": [str(identity) for identity in identities]}), 202


def _checked_envelope(item: object, index: int) -> Sealed:
    """An envelope the router will be able to route, with the bytes the bus carries of it, or a
    400 naming which one is wrong (its ``code`` one of
    :data:`~router.core.mapping.PUBLISH_PROBLEMS`)."""
    try:
        envelope = parse_envelope(item)  # type: ignore[arg-type]
        check_mappable(envelope)
        return envelope.sealed()  # encoded once, here: proves the bus can carry it
    except (EnvelopeError, MappingError) as error:
        raise HTTPError(400, error.problem.value, error.detail, parameter=f"[{index}]") from None
