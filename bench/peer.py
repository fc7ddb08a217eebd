"""The peer the router is measured against: what a team would write with sse-starlette.

A POST fans the event out to one asyncio queue per subscriber; each subscriber's response sends
what its queue holds, as an event stream or as WebSocket text frames (``/ws``: a hello, then one
``{"type": "event", ...}`` frame per event, as the router's). Run with: uvicorn bench.peer:app
--loop uvloop (its WebSockets are uvicorn's, on the ``websockets`` package).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

subscribers: set[asyncio.Queue[dict[str, str]]] = set()
by_user: dict[str, set[asyncio.Queue[dict[str, str]]]] = {}


async def stream(request: Request) -> EventSourceResponse:
    """A subscriber; ``?user=`` also subscribes it to that user's events."""
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    user = request.query_params.get("user")
    subscribers.add(queue)
    if user:
        by_user.setdefault(user, set()).add(queue)

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            while True:
                yield await queue.get()
        finally:
            subscribers.discard(queue)
            if user:
                by_user.get(user, set()).discard(queue)

    return EventSourceResponse(events())


async def stream_ws(websocket: WebSocket) -> None:
    """The same subscriber over a WebSocket."""
    await websocket.accept()
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    subscribers.add(queue)
    try:
        await websocket.send_text('{"type":"hello"}')
        while True:
            event = await queue.get()
            # The data is JSON already: framed as text, as the router frames it, not re-parsed.
            frame = f'{{"type":"event","event":"{event["event"]}","data":{event["data"]}}}'
            await websocket.send_text(frame)
    except WebSocketDisconnect:
        pass  # the client left
    finally:
        subscribers.discard(queue)


async def publish(request: Request) -> JSONResponse:
    body = await request.json()
    items = body if isinstance(body, list) else [body]
    for item in items:
        event = {"event": "system.notification-sent", "data": json.dumps(item["payload"])}
        user = item["scope"].get("user_id")
        for queue in by_user.get(user, set()) if user else subscribers:
            queue.put_nowait(event)
    return JSONResponse({"accepted": len(items)}, status_code=202)


app = Starlette(
    routes=[
        Route("/stream", stream),
        WebSocketRoute("/ws", stream_ws),
        Route("/publish", publish, methods=["POST"]),
    ]
)
