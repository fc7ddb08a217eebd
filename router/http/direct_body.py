"""A stream's body chunks written straight onto its socket, past hypercorn's per-write path.

For each ASGI body message of an HTTP/1.1 response, hypercorn frames an h11 ``Data`` event as a
chunk, takes the connection's send lock, opens a shielded cancel scope and awaits ``send_all``:
four trips through trio's scheduler per event and stream, most of the router's CPU when one event
goes to thousands of streams. Once the headers are out, a chunk of a chunked body is nothing but
``<size in hex>\\r\\n<bytes>\\r\\n`` on the socket, and h11 keeps no count of chunks, so
:class:`ChunkedSocketWriter` frames the chunk itself and writes it with one non-blocking write.
Only when the socket cannot take it all at once (the client reads slowly), or hypercorn is writing,
does it wait, the way hypercorn does: under the connection's send lock, shielded, with
``send_all``, so a chunk is never cut in two on the wire (nor left cut by a cancellation that
arrives while it waits for the lock with part of the chunk out).

:func:`direct_writer` finds the socket by following hypercorn's own objects from the ASGI send
(``HTTPStream.app_send`` -> ``H11Protocol.stream_send`` -> ``TCPServer.protocol_send``). On any
other shape (TLS, HTTP/2, an HTTP/1.0 client whose body is not chunked, another server) it
returns ``None`` and the caller keeps the ASGI send (:func:`fallback_reason` says why, for the
metric and the log that make such a fallback seen); ``tests/test_direct_body.py`` proves that the
direct path is the one taken, and ``just private-reaches`` runs it on the older versions
``pyproject.toml`` admits.
"""

from __future__ import annotations

import os
from typing import Any

import trio
from h11._writers import ChunkedWriter
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.trio.tcp_server import TCPServer

from router.core.observer import WriteFallback


class SocketWriter:
    """Writes whole, already framed pieces of one connection's output onto its TCP stream.

    :meth:`write` returns without a checkpoint when the socket took all of ``framed``, which is
    the common case; otherwise it waits, shielded like hypercorn's own writes, until the rest is
    out. A client that has gone away is a :class:`trio.BrokenResourceError`. A subclass says in
    :meth:`may_write` when the protocol no longer lets it write (checked in the same step as
    the write).
    """

    __slots__ = ("_send_lock", "_socket", "_stream", "waits")

    def __init__(self, stream: trio.SocketStream, send_lock: trio.Lock) -> None:
        self._stream = stream
        self._socket = stream.socket
        self._send_lock = send_lock
        self.waits = 0
        """How many writes the socket could not take at once and had to wait for the client."""

    @property
    def socket(self) -> trio.socket.SocketType:
        """The connection's socket, to read its send queue (router/http/socket_backlog.py)."""
        return self._socket

    def may_write(self) -> bool:
        return True

    async def write(self, framed: bytes) -> None:
        if not self._send_lock.locked():
            if not self.may_write():
                raise trio.BrokenResourceError("the connection is closing")
            # The descriptor is checked in the same step as the write: once hypercorn has closed
            # the socket its number may already belong to another client's connection.
            descriptor = self._socket.fileno()
            if descriptor < 0:
                raise trio.BrokenResourceError("the connection is closed")
            try:
                written = os.write(descriptor, framed)
            except BlockingIOError:
                written = 0
            except OSError as error:  # reset or broken pipe: the client is gone
                raise trio.BrokenResourceError(str(error)) from error
            if written == len(framed):
                return
            framed, started = framed[written:], written > 0
        else:
            started = False
        self.waits += 1
        # Once part of a piece is on the wire, the rest must follow before anything else, even
        # when the stream is being cancelled (a lagged or shed stream): taking the lock is a
        # checkpoint, and cancelled there the piece would stay cut, and the goodbye written next
        # would land inside it. No deadline either: the socket's TCP_USER_TIMEOUT
        # (--stalled-client-seconds, see router/server.py) is the deadline, the kernel aborting
        # the connection ends this write with it. With nothing written yet, a cancellation
        # while waiting for the lock loses nothing.
        with trio.CancelScope(shield=started):
            async with self._send_lock:
                if not started and not self.may_write():
                    raise trio.BrokenResourceError("the connection is closing")
                try:
                    with trio.CancelScope(shield=True):
                        await self._stream.send_all(framed)
                except trio.ClosedResourceError as error:
                    raise trio.BrokenResourceError("the connection is closed") from error


class ChunkedSocketWriter(SocketWriter):
    """Writes body chunks of one chunked HTTP/1.1 response onto its TCP stream."""

    __slots__ = ()

    async def send(self, chunk: bytes) -> None:
        if not chunk:
            return  # an empty chunk would end the body
        await self.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))


def direct_writer(asgi_send: Any) -> ChunkedSocketWriter | None:
    """The direct writer behind hypercorn's ASGI ``send`` for a response whose headers are out
    and whose body is chunked over plain TCP, else ``None``."""
    found = _follow(asgi_send)
    return found if isinstance(found, ChunkedSocketWriter) else None


def fallback_reason(asgi_send: Any) -> WriteFallback | None:
    """Why :func:`direct_writer` finds no writer behind ``asgi_send``; ``None`` if it does."""
    found = _follow(asgi_send)
    return found if isinstance(found, WriteFallback) else None


def _follow(asgi_send: Any) -> ChunkedSocketWriter | WriteFallback:
    http_stream = getattr(asgi_send, "__self__", None)
    if not isinstance(http_stream, HTTPStream):
        return WriteFallback.NOT_HYPERCORN
    h11_protocol = getattr(http_stream.send, "__self__", None)
    if not isinstance(h11_protocol, H11Protocol):
        return WriteFallback.NOT_HTTP11
    if not isinstance(getattr(h11_protocol.connection, "_writer", None), ChunkedWriter):
        return WriteFallback.NOT_CHUNKED
    tcp_server = getattr(h11_protocol.send, "__self__", None)
    if not isinstance(tcp_server, TCPServer):
        return WriteFallback.NOT_PLAIN_TCP
    if not isinstance(tcp_server.stream, trio.SocketStream):
        return WriteFallback.NOT_PLAIN_TCP
    return ChunkedSocketWriter(tcp_server.stream, tcp_server.send_lock)
