"""A minimal HTTP/1.1 client for event streams, on trio sockets and h11.

httpx would do, except that a test stops reading a stream that never ends, and httpx's nested
async generators then warn when trio finalises them. This client owns its socket and closes it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import h11
import trio


@dataclass
class StreamResponse:
    status_code: int
    headers: dict[str, str]
    _connection: h11.Connection
    _stream: trio.SocketStream

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; ends when the server ends the response."""
        while True:
            event = self._connection.next_event()
            if event is h11.NEED_DATA:
                self._connection.receive_data(await self._stream.receive_some(65536))
            elif isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return

    async def json(self) -> Any:
        body = b""
        async for chunk in self.chunks():
            body += chunk
        return json.loads(body)


@asynccontextmanager
async def open_stream(
    base_url: str,
    path: str,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | list[tuple[str, str]] | None = None,
) -> AsyncIterator[StreamResponse]:
    address = urlsplit(base_url)
    assert address.hostname is not None
    assert address.port is not None
    target = path + (f"?{urlencode(params, doseq=True)}" if params else "")
    stream = await trio.open_tcp_stream(address.hostname, address.port)
    async with stream:
        connection = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET",
            target=target,
            headers=[("Host", address.netloc), *(headers or {}).items()],
        )
        await stream.send_all(connection.send(request) + connection.send(h11.EndOfMessage()))
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                break
        response_headers = {k.decode().lower(): v.decode() for k, v in event.headers}
        yield StreamResponse(event.status_code, response_headers, connection, stream)
