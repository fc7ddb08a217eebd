"""The router's listening socket: bound here, handed to hypercorn (or, with ``--workers``, to
every worker by the supervisor) as a descriptor. Light on purpose: the supervisor imports it, and
nothing of the HTTP stack."""

from __future__ import annotations

import socket

from router.config import ConfigurationError, Settings


def listening_socket(settings: Settings) -> int:
    """A bound TCP socket for hypercorn (``fd://``), returned as a file descriptor it will own.

    Accepted connections inherit ``TCP_USER_TIMEOUT``: the kernel aborts a connection whose data
    has gone unacknowledged, or unsent behind a zero window, for ``stalled_client_seconds``. That
    is the only thing that can end hypercorn's socket writes to a client that stopped reading
    (they are shielded from cancellation), so it is what bounds shutdown with such a client.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(
            socket.IPPROTO_TCP,
            socket.TCP_USER_TIMEOUT,
            round(settings.stalled_client_seconds * 1000),
        )
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise ConfigurationError(
            f"cannot listen on {settings.host}:{settings.port}: {error}"
        ) from None
    return sock.detach()
