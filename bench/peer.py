"""The peer the router is measured against: what a team would write with sse-starlette.

A POST fans the event out to one asyncio queue per subscriber; each subscriber's response sends
what its queue holds. Run with: uvicorn bench.peer:app --loop uvloop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

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


async def publish(request: Request) -> JSONResponse:
    body = await request.json()
    items = body if isinstance(body, list) else [body]
    for item in items:
        event = {"event": "system.notification-sent", "data": json.dumps(item["payload"])}
        user = item["scope"].get("user_id")
        for queue in by_user.get(user, set()) if user else subscribers:
            queue.put_nowait(event)
    return JSONResponse({"accepted": len(items)}, status_code=202)


app = Starlette(routes=[Route("/stream", stream), Route("/publish", publish, methods=["POST"])])
