"""router/http/error_handlers.py: what failed is logged as itself, in a request or a WebSocket."""

from __future__ import annotations

import logging

import pytest
from quart import websocket
from quart_trio import QuartTrio

from router.http.error_handlers import register_error_handlers


def _app() -> QuartTrio:
    app = QuartTrio("error-handlers-test")
    register_error_handlers(app, lambda: "127.0.0.1")

    @app.get("/fails")
    async def fails() -> str:
        raise RuntimeError("the route's own failure")

    @app.websocket("/fails-ws")
    async def fails_ws() -> None:
        await websocket.accept()
        raise RuntimeError("the socket's own failure")

    return app


async def test_an_unexpected_error_in_a_request_is_logged_and_answered_as_json(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = _app().test_client()
    response = await client.get("/fails")
    assert response.status_code == 500
    assert (await response.get_json())["error"]["code"] == "internal"
    (record,) = [r for r in caplog.records if r.getMessage().startswith("unexpected error")]
    assert record.getMessage() == "unexpected error in GET /fails"
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "the route's own failure"


async def test_an_unexpected_error_in_a_websocket_is_logged_as_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Reading ``request`` in a WebSocket's handler raised "Not within a request context", and
    # that second error, not the socket's own, was what the log said.
    caplog.set_level(logging.INFO)
    client = _app().test_client()
    try:
        async with client.websocket("/fails-ws") as socket:
            await socket.receive()
    except Exception:  # the test client reports the socket's end in its own way
        pass
    records = [r for r in caplog.records if r.getMessage().startswith("unexpected error")]
    assert [r.getMessage() for r in records] == ["unexpected error in WEBSOCKET /fails-ws"]
    assert records[0].exc_info is not None
    assert str(records[0].exc_info[1]) == "the socket's own failure"
