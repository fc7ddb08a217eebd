"""The Quart-Trio application.

For now it serves health and a page that says what the router is; the event stream and the publish
endpoint are added by the end-to-end issue (see the README).
"""

from __future__ import annotations

from quart import Response, jsonify
from quart_trio import QuartTrio

from router import __version__
from router.core.mapping import MAPPING_RULES


def create_app() -> QuartTrio:
    app = QuartTrio("sse-router")

    @app.get("/healthz")
    async def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/")
    async def index() -> Response:
        return jsonify(
            {
                "service": "sse-router",
                "version": __version__,
                "events": [rule.message_class.EVENT for rule in MAPPING_RULES],
                "endpoints": {"health": "/healthz"},
                "note": "skeleton: the event stream arrives with the end-to-end issue",
            }
        )

    return app
