"""How the app answers what went wrong: every refusal and failure as a JSON body
(:mod:`router.http.errors`), the router's own refusals logged without the query string."""

from __future__ import annotations

import logging
from collections.abc import Callable

from quart import Quart, Response, has_request_context, has_websocket_context, request, websocket
from werkzeug.exceptions import HTTPException

from router.http.errors import HTTPError

log = logging.getLogger("router.http.app")  # the name these lines were always logged under


def _asked() -> tuple[str, str]:
    """The method and path of what failed: a request, or a WebSocket (whose handler has no
    ``request``: reading it there raised, and the first error's log line said that instead)."""
    if has_request_context():
        return request.method, request.path
    if has_websocket_context():
        return "WEBSOCKET", websocket.path
    return "-", "-"


def register_error_handlers(app: Quart, client_address: Callable[[], str]) -> None:
    """``client_address`` is the request's client as the front door sees it (proxies trusted)."""

    @app.errorhandler(HTTPError)
    async def answer_http_error(error: HTTPError) -> Response:
        method, path = _asked()
        log.info(
            "request refused",
            extra={
                "method": method,
                "path": path,  # never the query string: it may hold a token
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
        log.exception("unexpected error in %s %s", *_asked())
        return HTTPError(500, "internal", "the router failed to answer; see its log").to_response()
