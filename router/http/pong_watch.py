"""A WebSocket's pings and pongs, watched on hypercorn's wsproto connection, so a silent peer ends.

hypercorn pings every ``websocket_ping_interval`` (``--heartbeat-seconds``) and answers the
client's pings, but the pongs it receives go nowhere: ASGI has no message for them. Both pass
through the stream's wsproto :class:`~wsproto.connection.Connection`, which hypercorn reaches as
``WSStream.connection`` (the one private name this module relies on): a ping is
``connection.send(Ping())`` from hypercorn's ping task, a pong one of the events
``connection.events()`` yields once hypercorn has fed it the client's bytes. :class:`PongWatch`
shadows those two public wsproto methods on that one connection object (its class is left
alone), tells :class:`~router.core.pong.PongDeadline` of each ping and pong, and calls
``on_silent`` once, from inside hypercorn's ping task, when a ping has gone unanswered too long.
So the watch adds no task and no timer to a connection; ``on_silent`` must return at once (it
stops the session, whose handler then closes the socket ``4008``).

:func:`watch_pongs` follows the ASGI send to hypercorn's stream as
``router/http/direct_websocket.py`` does. On any other shape it installs nothing and answers the
:class:`~router.core.observer.PongWatchFallback` reason: the caller counts and logs it, and the
connection is served as before, pinged by hypercorn and never closed for silence.
``tests/test_pong_watch.py`` runs hypercorn's own ping loop and event handling against the watch,
which proves the hook on the versions installed; ``just private-reaches`` runs it on the older
hypercorn and wsproto versions ``pyproject.toml`` admits.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import trio
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from wsproto.connection import Connection, ConnectionState
from wsproto.events import Event, Ping, Pong

from router.core.observer import PongWatchFallback
from router.core.pong import Liveness, PongDeadline

_SHADOWED = ("events", "send")


class PongWatch:
    """Watches one wsproto connection's pings and pongs until :meth:`remove`.

    Every call happens on the trio thread inside hypercorn's own tasks, and returns without a
    checkpoint, so cancellation never meets it half done.
    """

    __slots__ = ("_connection", "_deadline", "_on_silent", "_silent")

    def __init__(
        self, connection: Connection, timeout: float, on_silent: Callable[[], None]
    ) -> None:
        self._connection = connection
        self._deadline = PongDeadline(timeout)
        self._on_silent = on_silent
        self._silent = False
        connection.events = self._events  # type: ignore[method-assign]
        connection.send = self._send  # type: ignore[method-assign]

    def remove(self) -> None:
        """Give the connection its own methods back (and break the cycle between the two)."""
        for name in _SHADOWED:
            vars(self._connection).pop(name, None)

    def _events(self) -> Generator[Event, None, None]:
        for event in Connection.events(self._connection):
            if isinstance(event, Pong):
                self._deadline.pong_received()
            yield event

    def _send(self, event: Event) -> bytes:
        data = Connection.send(self._connection, event)
        if (
            isinstance(event, Ping)
            and not self._silent
            and self._deadline.ping_sent(trio.current_time()) is Liveness.SILENT
        ):
            self._silent = True
            self._on_silent()
        return data


def watch_pongs(
    asgi_send: Any, timeout: float, on_silent: Callable[[], None]
) -> PongWatch | PongWatchFallback:
    """A watch on the pongs of the accepted hypercorn WebSocket behind the ASGI ``send``, or why
    there is none (then nothing is changed)."""
    ws_stream = getattr(asgi_send, "__self__", None)
    if not isinstance(ws_stream, WSStream):
        return PongWatchFallback.NOT_HYPERCORN
    connection = getattr(ws_stream, "connection", None)
    # Shadowing needs an instance dict (a wsproto with __slots__ would have none), and one that
    # shadows nothing yet (a second watch would count every pong twice, or hide the first).
    shadows = getattr(connection, "__dict__", None)
    if (
        type(connection) is not Connection
        or not isinstance(shadows, dict)
        or any(name in shadows for name in _SHADOWED)
        or ws_stream.state is not ASGIWebsocketState.CONNECTED
        or connection.state is not ConnectionState.OPEN
    ):
        return PongWatchFallback.NOT_WSPROTO
    return PongWatch(connection, timeout, on_silent)
