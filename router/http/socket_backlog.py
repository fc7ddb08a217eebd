"""How many bytes a stream's socket holds that the kernel has not sent yet (its send queue).

The direct writers (:mod:`router.http.direct_body`, :mod:`router.http.direct_websocket`) hand a
client's bytes to the kernel and return; a client that reads slowly leaves them queued there, up
to the socket's send buffer (megabytes once Linux has grown it), out of the inbox's sight. Linux
answers the ``SIOCOUTQ`` ioctl (``TIOCOUTQ`` in :mod:`termios`, the same number) with the bytes
of a TCP socket not yet acknowledged by the peer, the way ``ss`` shows ``Send-Q``: one system
call, no copy, read by the health monitor for the streams that hold bytes, not at every write.

Elsewhere (another platform, a socket the ioctl refuses) :func:`unsent_bytes` answers the
:class:`~router.core.observer.BacklogUnknown` reason instead, and the stream's output reports it
once (``sse_socket_backlog_unknown_total``); the monitor then counts what the router holds only.
"""

from __future__ import annotations

import array
import fcntl
import logging
import termios
from typing import Final

import trio

from router.core.observer import BacklogUnknown, Observer, Transport
from router.http.direct_body import SocketWriter
from router.logs import warn_once

_SIOCOUTQ: Final[int | None] = getattr(termios, "TIOCOUTQ", None)
"""Linux's ``SIOCOUTQ`` (it shares ``TIOCOUTQ``'s number); ``None`` where termios has neither."""


def unsent_bytes(socket: trio.socket.SocketType) -> int | BacklogUnknown:
    """The bytes ``socket``'s send queue holds, 0 once it is closed, or why it cannot be told.

    The descriptor is read in the same step as the ioctl (no checkpoint between): once the
    server has closed the socket its number may already be another client's."""
    if _SIOCOUTQ is None:
        return BacklogUnknown.UNSUPPORTED
    descriptor = socket.fileno()
    if descriptor < 0:
        return 0
    answer = array.array("i", [0])
    try:
        fcntl.ioctl(descriptor, _SIOCOUTQ, answer, True)
    except OSError:
        return BacklogUnknown.REFUSED
    return max(0, answer[0])


log = logging.getLogger(__name__)
_unknown_logged: set[BacklogUnknown] = set()
"""The reasons logged so far in this process: each once, however many streams meet it."""


class SocketBacklog:
    """One stream output's reading of its socket's send queue, for the health monitor; the
    stream is carried by ``transport`` (the label its unknown reading is counted under).

    Asked only between writes (the monitor's round), never checkpoints. Once it could not be
    read it is not asked again (it will not change for that socket): reported to the observer
    once for the stream, logged once for the process."""

    __slots__ = ("_observer", "_transport", "known")

    def __init__(self, observer: Observer, transport: Transport) -> None:
        self._observer, self._transport = observer, transport
        self.known = True
        """Whether the socket's send queue can still be read."""

    def read(self, writer: SocketWriter | None) -> int | None:
        """The bytes ``writer``'s socket has not sent, or ``None`` when that cannot be told
        (``writer`` is ``None``: the stream goes through the server's send)."""
        if not self.known:
            return None
        found = BacklogUnknown.NO_SOCKET if writer is None else unsent_bytes(writer.socket)
        if isinstance(found, int):
            return found
        self.known = False
        self._observer.socket_backlog_unknown(found, self._transport)
        warn_once(
            log,
            _unknown_logged,
            found,
            "the bytes waiting on a stream's socket cannot be read: the overload monitor"
            " counts what the router holds for it only",
        )
        return None
