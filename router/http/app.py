"""The Quart-Trio application: the HTTP face of the :class:`~actors.hub.Hub`.

- ``GET /api/v1/events/stream``: a client's event stream (one session actor each)
- ``GET /api/v1/events/ws``: the same as WebSocket JSON frames (router/http/websocket.py)
- ``POST /api/v1/events``: publish one envelope or a JSON array of them (role ``publisher``)
- ``POST /api/v1/control``, ``GET /api/v1/connections``: controls (router/http/control.py)
- ``GET /healthz``, ``GET /readyz``, ``GET /metrics``, ``GET /`` (router/http/probes.py)

Built from :class:`~router.http.settings.HTTPSettings` (only what the routes use), made in
``serve()``; errors are answered by router/http/error_handlers.py, publishing by
router/http/publish.py. The stream route is here: it is the app's reason to be.
"""

from __future__ import annotations

import logging
import secrets

from quart import Response, request
from quart_trio import QuartTrio

from actors.hub import Hub, ReplayUnavailableError
from actors.overload import OverloadMonitor
from router.admission import Admission, Ask
from router.core.admission import Admitted, Credentials, Refused
from router.core.events import ErrorCode
from router.core.refusal import Refusal
from router.http.admission import STREAM_HEADERS, STREAM_PATH, http_error, refusal_response
from router.http.asgi import ResponseBodyWriter, remember_session
from router.http.control import register_control_api
from router.http.cors import apply_cors
from router.http.error_handlers import register_error_handlers
from router.http.probes import PROBES, register_probes
from router.http.publish import PUBLISH_PATH, register_publish_route
from router.http.settings import HTTPSettings
from router.http.websocket import WS_PATH, add_websocket_route
from router.metrics import Metrics

log = logging.getLogger(__name__)
_ENDPOINTS = {
    "stream": f"GET {STREAM_PATH}",
    "websocket": f"GET {WS_PATH}",
    "publish": f"POST {PUBLISH_PATH}",
    "control": "POST /api/v1/control",
    "connections": "GET /api/v1/connections",
    "health": "GET /healthz",
    "ready": "GET /readyz",
}


def create_app(
    hub: Hub,
    admission: Admission,
    settings: HTTPSettings,
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

    register_error_handlers(app, client_address)

    @app.before_request
    async def screen_address() -> None:
        """Every request but the probes is judged by its address before anything else is read:
        a load balancer's health checks come from wherever it runs."""
        if request.path in PROBES:
            return
        blocked = admission.screen(request.remote_addr, request.headers.get("X-Forwarded-For"))
        if blocked is not None:
            raise http_error(blocked)

    @app.after_request
    async def add_cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        preflight = request.method == "OPTIONS"
        return apply_cors(response, origin, settings.cors_origins, preflight=preflight)

    register_probes(app, hub, metrics, overload, _ENDPOINTS)

    @app.get(STREAM_PATH)
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

    add_websocket_route(
        app,
        hub,
        admission,
        cors_origins=settings.cors_origins,
        auth_timeout_seconds=settings.ws_auth_timeout_seconds,
        messages_per_second=settings.ws_messages_per_second,
        pong_timeout_seconds=settings.ws_pong_timeout_seconds,
    )
    max_batch = settings.publish_max_batch
    register_publish_route(app, hub, admission, max_batch, _credentials, client_address)
    register_control_api(app, hub, admission, max_batch)
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
