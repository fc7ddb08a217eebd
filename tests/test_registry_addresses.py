"""The registry counts open streams by client address, as the front door's caps count them."""

from __future__ import annotations

from actors.registry import SessionRegistry
from actors.session import Session
from router.core.admission import OpenStreams
from router.core.permissions import Principal, StreamFilter


def session(user: str, address: str) -> Session:
    return Session(
        Principal(user, frozenset({"n1"})), StreamFilter(), expires_at=1e12, address=address
    )


def test_streams_are_counted_per_address_group_and_freed_once_each() -> None:
    registry = SessionRegistry()
    office = [session("u1", "192.0.2.1"), session("u2", "192.0.2.1")]
    hopping = [session("u3", "2001:db8:1:2::1"), session("u3", "2001:db8:1:2::ffff")]
    for each in (*office, *hopping):
        registry.add(each)
    assert registry.open_streams("u1", "192.0.2.1") == OpenStreams(4, 2, 1)
    assert registry.open_streams("u3", "2001:db8:1:2::9") == OpenStreams(4, 2, 2)
    registry.remove(office[0])
    registry.remove(office[0])  # a session removed twice (it failed, then ended) counts once
    assert registry.count_from_address("192.0.2.1") == 1
    for each in (office[1], *hopping):
        registry.remove(each)
    assert registry.open_streams("u1", "192.0.2.1") == OpenStreams(0, 0, 0)
