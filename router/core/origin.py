"""Whose page may open a WebSocket: the ``Origin`` rule against cross-site WebSocket hijacking.

CORS does not apply to a WebSocket handshake: a page of any site can open a socket to the router,
and the browser sends the router's ``access_token`` cookie with it. Were the socket let through,
that page would read its visitor's events. A browser always sends ``Origin`` on a WebSocket
handshake, and a page cannot change it, so the origin decides:

- no ``Origin``: not a browser. Such a client carries no visitor's cookie, only credentials it
  holds itself, so the origin says nothing about it, and it is let through;
- an origin of ``--cors-origins`` (the same exact ``scheme://host[:port]`` the HTTP side gives
  CORS headers to), or the router's own (its host and port are the handshake's ``Host``): let
  through;
- any other (``null`` included: a sandboxed frame, a file): refused, whatever the credentials.

The last rule is stricter than the attack needs: a token sent explicitly (header, query, ``auth``
message) cannot be taken from a visitor by another site. It is refused all the same because it is
what the event stream does (a page of an unlisted origin gets no CORS header, so it cannot read a
stream with any credentials), because a foreign page holding a token has most likely found one
that leaked, and because the rule is then decided before any credential is read: there is no
credential-dependent path to get wrong.

Pure: the transport passes the headers in.
"""

from __future__ import annotations

from collections.abc import Collection

SCHEMES = ("http://", "https://")


def origin_allowed(origin: str | None, host: str | None, allowed: Collection[str]) -> bool:
    """Whether a WebSocket handshake with ``Origin: origin`` and ``Host: host`` may go on, with
    ``allowed`` the configured origins (see the module's docstring)."""
    if origin is None:
        return True
    if origin in allowed:
        return True
    return host is not None and _own(origin, host)


def _own(origin: str, host: str) -> bool:
    """Whether ``origin`` names the host the handshake was sent to (either scheme: behind a
    proxy that ends TLS the router cannot tell which one its page was served over)."""
    for scheme in SCHEMES:
        if origin.startswith(scheme):
            authority = origin.removeprefix(scheme)
            return bool(authority) and authority.lower() == host.strip().lower()
    return False
