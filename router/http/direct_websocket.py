"""A WebSocket's frames written straight onto its socket, past Quart's and hypercorn's send path.

Through ``websocket.send`` each frame is its own trip: Quart's send, hypercorn's ASGI
``app_send``, wsproto framing it, the connection's send lock and a shielded ``send_all``, for
every frame and every socket of a broadcast. A server's frame is nothing but unmasked RFC 6455
bytes (:mod:`router.core.ws_frame`), made once per broadcast (:attr:`Frames.on_the_wire`) and
written here with one non-blocking write per batch and socket, under the same rules as an event
stream's chunks (:class:`~router.http.direct_body.SocketWriter`): never while hypercorn holds the
send lock, so a frame never lands inside one of hypercorn's pings or its close, and, when the
socket cannot take it all, the rest under that lock. wsproto keeps nothing about the frames a
server sends whole (no fragment is ever open between two writes), so skipping it leaves its state
as it was; only its close matters, and a frame is never written once hypercorn's stream or wsproto
has started closing (:meth:`WebSocketSocketWriter.may_write`).

:func:`websocket_writer` follows hypercorn's objects from the ASGI send
(``WSStream.app_send`` -> ``H11Protocol.stream_send`` -> ``TCPServer.protocol_send``). On any
other shape (HTTP/2's WebSocket, TLS, another server) it answers the
:class:`~router.core.observer.WriteFallback` reason and the caller keeps ``websocket.send``;
``tests/test_direct_websocket.py`` proves the direct path is taken, and ``just private-reaches``
runs it on the older versions ``pyproject.toml`` admits.
"""

from __future__ import annotations

from typing import Any

import trio
from hypercorn.protocol.h11 import H11Protocol, H11WSConnection
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from hypercorn.trio.tcp_server import TCPServer
from wsproto.connection import ConnectionState

from router.core.observer import WriteFallback
from router.http.direct_body import SocketWriter


class WebSocketSocketWriter(SocketWriter):
    """Writes whole server frames of one accepted WebSocket onto its TCP stream."""

    __slots__ = ("_ws_stream",)

    def __init__(
        self, ws_stream: WSStream, stream: trio.SocketStream, send_lock: trio.Lock
    ) -> None:
        super().__init__(stream, send_lock)
        self._ws_stream = ws_stream

    def may_write(self) -> bool:
        stream = self._ws_stream
        return (
            not stream.closed
            and stream.state is ASGIWebsocketState.CONNECTED
            and stream.connection.state is ConnectionState.OPEN
        )


def websocket_writer(asgi_send: Any) -> WebSocketSocketWriter | WriteFallback:
    """The direct writer behind hypercorn's ASGI ``send`` of an accepted WebSocket over
    HTTP/1.1 and plain TCP, or why there is none."""
    ws_stream = getattr(asgi_send, "__self__", None)
    if not isinstance(ws_stream, WSStream):
        return WriteFallback.NOT_HYPERCORN
    h11_protocol = getattr(ws_stream.send, "__self__", None)
    if not isinstance(h11_protocol, H11Protocol):
        return WriteFallback.NOT_HTTP11
    if not isinstance(h11_protocol.connection, H11WSConnection):
        return WriteFallback.NOT_UPGRADED
    if ws_stream.state is not ASGIWebsocketState.CONNECTED:
        return WriteFallback.NOT_UPGRADED
    tcp_server = getattr(h11_protocol.send, "__self__", None)
    if not isinstance(tcp_server, TCPServer):
        return WriteFallback.NOT_PLAIN_TCP
    if not isinstance(tcp_server.stream, trio.SocketStream):
        return WriteFallback.NOT_PLAIN_TCP
    return WebSocketSocketWriter(ws_stream, tcp_server.stream, tcp_server.send_lock)
