"""The ``Origin`` rule of a WebSocket handshake (router.core.origin): pure, so tried directly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.origin import origin_allowed

ALLOWED = ("https://app.example", "http://localhost:5173")


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "router.example", True),  # not a browser: it carries no visitor's cookie
        (None, None, True),
        ("https://app.example", "router.example", True),  # configured
        ("http://localhost:5173", "router.example", True),
        ("https://router.example", "router.example", True),  # the router's own page
        ("http://router.example:8080", "router.example:8080", True),
        ("https://Router.Example", "router.example", True),  # a host is case-insensitive
        ("https://evil.example", "router.example", False),
        ("https://app.example.evil", "router.example", False),  # no prefix match
        ("https://app.example:444", "router.example", False),  # the port is the origin's
        ("http://app.example", "router.example", False),  # so is the scheme
        ("https://router.example:8443", "router.example", False),
        ("null", "router.example", False),  # a sandboxed frame, a file
        ("", "router.example", False),
        ("https://", "", False),
        ("ws://router.example", "router.example", False),  # not a page's origin
        ("https://router.example", None, False),
    ],
)
def test_an_origin_is_let_through_only_when_configured_or_the_router_s_own(
    origin: str | None, host: str | None, allowed: bool
) -> None:
    assert origin_allowed(origin, host, ALLOWED) is allowed


@given(st.sampled_from(["http://", "https://", "ws://", "", "HTTPS://"]), st.text(), st.text())
def test_any_other_origin_is_refused(scheme: str, authority: str, host: str) -> None:
    origin = scheme + authority
    own = scheme in ("http://", "https://") and authority.lower() == host.strip().lower() != ""
    assert origin_allowed(origin, host, ALLOWED) is (origin in ALLOWED or own)
