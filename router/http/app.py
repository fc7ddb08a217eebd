"""The Quart-Trio application: the HTTP face of the :class:`~actors.hub.Hub`.

- ``GET /api/v1/events/stream``: a client's event stream (one session actor each)
- ``POST /api/v1/events``: publish one envelope or a JSON array of them (role ``publisher``)
- ``GET /healthz``: the process is alive; ``GET /readyz``: the bus and the replay cache answer
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from actors.hub import Hub
from actors.session import Session, SessionSettings
from router import __version__
from router.auth import AuthError, TokenVerifier, Verified
from router.bus.base import BusUnavailableError
from router.config import Settings
from router.core.cursor import EventIdentity
from router.core.envelope import Envelope, EnvelopeError, parse_envelope, parse_publish_body
from router.core.mapping import MappingError, to_sse
from router.core.refusal import Refusal
from router.core.stream_request import (
    FILTERABLE_EVENTS,
    RequestError,
    check_filter_granted,
    parse_stream_request,
)
from router.http.admission import STREAM_HEADERS, StreamAdmission, refusal_response
from router.http.asgi import ResponseBodyWriter, remember_session
from router.http.cors import apply_cors
from router.http.errors import HTTPError
from router.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from router.metrics import Metrics

PUBLISHER_ROLE = "publisher"
log = logging.getLogger(__name__)
_VALIDATION_IDENTITY = EventIdentity("check", "0", (0,), "check")


def create_app(
    hub: Hub, settings: Settings, verifier: TokenVerifier, metrics: Metrics
) -> QuartTrio:
    app = QuartTrio("sse-router")
    app.config["MAX_CONTENT_LENGTH"] = settings.publish_max_bytes
    session_settings = SessionSettings(
        inbox_capacity=settings.session_buffer,
        retry_ms=settings.retry_ms,
        shutdown_retry_spread_ms=settings.shutdown_retry_spread_ms,
        log_sample_rate=settings.log_sample_rate,
    )
    admission = StreamAdmission(hub, settings, metrics)

    def client_address() -> str:
        """The client's address: the peer's, or, when the peer is a trusted proxy, the last
        address it added to X-Forwarded-For (earlier ones came from the client, and can lie)."""
        peer = request.remote_addr or "unknown"
        if peer in settings.trusted_proxies:
            hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")]
            if hops[-1]:
                return hops[-1]
        return peer

    def authenticate() -> Verified:
        try:
            token = _token_from_request()
        except HTTPError as error:
            metrics.auth_failures.labels(error.code).inc()
            raise
        try:
            return verifier.verify(token)
        except AuthError as error:
            metrics.auth_failures.labels(error.problem.value).inc()
            raise HTTPError(
                401, error.problem.value, error.message, headers={"WWW-Authenticate": "Bearer"}
            ) from None

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
                "endpoints": {
                    "stream": "GET /api/v1/events/stream",
                    "publish": "POST /api/v1/events",
                    "health": "GET /healthz",
                    "ready": "GET /readyz",
                },
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
        balancer because Redis blinked would cut every stream."""
        checks = {"bus": await hub.bus.healthy(), "cache": await hub.cache.healthy()}
        status = "unavailable" if not checks["bus"] else "ok" if checks["cache"] else "degraded"
        response = jsonify({"ready": checks["bus"], "status": status, "checks": checks})
        response.status_code = 200 if checks["bus"] else 503
        return response

    def refused(refusal: Refusal) -> Response:
        return refusal_response(
            refusal,
            accept=request.headers.get("Accept"),
            method=request.method,
            path=request.path,
            remote=client_address(),
        )

    @app.get("/api/v1/events/stream")
    async def stream() -> Response:
        refusal = admission.closing()
        if refusal is not None:
            return refused(refusal)
        verified = authenticate()
        principal = verified.principal
        try:
            asked = parse_stream_request(
                request.args.items(multi=True), request.headers.get("Last-Event-ID")
            )
        except RequestError as error:
            raise HTTPError(400, "bad-request", error.message, parameter=error.parameter) from None
        try:
            check_filter_granted(asked.stream_filter, principal)
        except RequestError as error:
            raise HTTPError(403, "forbidden", error.message, parameter=error.parameter) from None
        head = request.method == "HEAD"  # the answer's headers, and no session: it has no body
        refusal = admission.limits(principal.user_id, client_address(), take=not head)
        if refusal is not None:
            return refused(refusal)
        if head:
            return Response(b"", status=200, headers=STREAM_HEADERS)

        session = Session(
            principal,
            asked.stream_filter,
            expires_at=verified.expires_at,
            settings=session_settings,
            connection_id=secrets.token_hex(8),
        )
        remember_session(request.scope, session)  # stopped when the request ends, however it ends
        log.info(
            "stream opened",
            extra={
                "connection_id": session.connection_id,
                "user_id": principal.user_id,
                "novel_ids": sorted(asked.stream_filter.novel_ids),
                "session_id": asked.stream_filter.session_id,
                "types": sorted(asked.stream_filter.event_types),
                "resuming": asked.resume_from is not None,
                "remote": client_address(),
            },
        )
        writer = ResponseBodyWriter(request.scope)
        _, resume = await hub.open(session, asked.resume_from, writer)

        truncated = resume is not None and resume.truncated
        headers = {**STREAM_HEADERS, "SSE-Replay": "truncated" if truncated else "complete"}
        response = Response(writer.body(), status=200, headers=headers)
        response.timeout = None  # a stream lasts as long as the client wants it
        return response

    @app.post("/api/v1/events")
    async def publish() -> tuple[Response, int]:
        verified = authenticate()
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
        if len(items) > settings.publish_max_batch:
            raise HTTPError(
                413, "batch-too-large", f"at most {settings.publish_max_batch} envelopes at once"
            )
        # Every envelope is checked, encoding included, before any is published: all or nothing.
        envelopes = [_checked_envelope(item, index) for index, item in enumerate(items)]
        try:
            identities = await hub.publish(envelopes)
        except BusUnavailableError as error:
            raise HTTPError(
                503, "bus-unavailable", str(error), headers={"Retry-After": "5"}
            ) from None
        return jsonify({"event_ids": [str(identity) for identity in identities]}), 202

    return app


def _token_from_request() -> str:
    """The bearer token from the header, the ``access_token`` cookie, or ``?token=``, in that
    order (a browser ``EventSource`` cannot set headers)."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPError(
                401,
                "malformed",
                "the Authorization header must be 'Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return token.strip()
    cookie_or_query = request.cookies.get("access_token") or request.args.get("token")
    if not cookie_or_query:
        raise HTTPError(
            401,
            "missing",
            "no token: send 'Authorization: Bearer', the access_token cookie, or ?token=",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return cookie_or_query


def _checked_envelope(item: object, index: int) -> Envelope:
    """An envelope the router will be able to route and the bus to carry, or a 400 naming which
    one is wrong (its ``code`` one of :data:`~router.core.mapping.PUBLISH_PROBLEMS`)."""
    try:
        envelope = parse_envelope(item)  # type: ignore[arg-type]
        to_sse(envelope, _VALIDATION_IDENTITY)
        envelope.to_bytes()  # proves the bus can carry it (the bus encodes it again)
    except (EnvelopeError, MappingError) as error:
        raise HTTPError(400, error.problem.value, error.detail, parameter=f"[{index}]") from None
    return envelope
