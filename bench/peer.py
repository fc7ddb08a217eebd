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


async def stream(request: Request) -> EventSourceResponse:
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    subscribers.add(queue)

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            while True:
                yield await queue.get()
        finally:
            subscribers.discard(queue)

    return EventSourceResponse(events())


async def publish(request: Request) -> JSONResponse:
    body = await request.json()
    items = body if isinstance(body, list) else [body]
    for item in items:
        event = {"event": "system.notification-sent", "data": json.dumps(item["payload"])}
        for queue in subscribers:
            queue.put_nowait(event)
    return JSONResponse({"accepted": len(items)}, status_code=202)


app = Starlette(routes=[Route("/stream", stream), Route("/publish", publish, methods=["POST"])])
