"""The front door's limits against one instance filling up and one address abusing it: the stream
caps per instance and per address, the bad-token flood, the address rules (issue 17)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.auth import mint_token
from router.core.address_rules import parse_address_rules
from router.core.admission import (
    ADDRESS_GROUPS_REMEMBERED,
    FULL_INSTANCE_SPREAD_SECONDS,
    FULL_INSTANCE_WAIT_SECONDS,
    TOO_MANY_STREAMS_WAIT_SECONDS,
    Credentials,
    OpenStreams,
    Reason,
    StreamCaps,
    StreamLimits,
    address_group,
)
from router.core.refusal import Limit
from tests.test_admission import PROXY, SECRET, Door, admitted, refused

# -- the stream caps -------------------------------------------------------------------------------


def test_a_full_instance_refuses_every_new_stream_for_a_spread_retry() -> None:
    door = Door(per_instance=3)
    door.open_elsewhere = 3
    door.spread = 0.5
    answer = refused(door.admit("u-new"))
    assert (answer.reason, answer.status, answer.limit) == (
        Reason.TOO_MANY_STREAMS,
        429,
        Limit.STREAMS_PER_INSTANCE,
    )
    assert answer.retry_after == FULL_INSTANCE_WAIT_SECONDS + 0.5 * FULL_INSTANCE_SPREAD_SECONDS
    assert answer.to_retry() is not None  # a browser is answered in-band and comes back
    assert door.counted("limit", "streams-per-instance") == 1
    door.open_elsewhere = 2
    admitted(door.admit("u-new"))


def test_the_clients_behind_one_address_share_its_cap_and_other_addresses_do_not() -> None:
    door = Door(per_address=2)
    door.open_from["198.51.100.7"] = 2
    answer = refused(door.admit("u1", peer="198.51.100.7"))
    assert (answer.reason, answer.limit, answer.retry_after) == (
        Reason.TOO_MANY_STREAMS,
        Limit.STREAMS_PER_ADDRESS,
        TOO_MANY_STREAMS_WAIT_SECONDS,
    )
    assert answer.message == "at most 2 open streams per address"
    admitted(door.admit("u1", peer="198.51.100.8"))
    # Behind a trusted proxy, the forwarded address is the one counted.
    assert refused(door.admit("u2", peer=PROXY, forwarded_for="198.51.100.7")).limit is (
        Limit.STREAMS_PER_ADDRESS
    )
    assert door.counted("limit", "streams-per-address") == 2


def test_a_refusal_by_a_cap_spends_no_connect_allowance() -> None:
    door = Door(per_address=1, connects_per_minute=1)
    door.open_from["192.0.2.1"] = 1
    for _ in range(3):
        assert refused(door.admit()).limit is Limit.STREAMS_PER_ADDRESS
    door.open_from.clear()
    admitted(door.admit())


CAPS = StreamCaps(per_instance=5, per_address=3, per_user=2)


@given(
    instance=st.integers(0, 8),
    address=st.integers(0, 8),
    user=st.integers(0, 8),
    spread=st.floats(0, 1),
)
def test_a_stream_is_refused_exactly_when_a_cap_is_reached_by_the_widest_reached(
    instance: int, address: int, user: int, spread: float
) -> None:
    limits = StreamLimits(CAPS, connects_per_minute=1000)
    answer = limits.check("u", "a", OpenStreams(instance, address, user), 0.0, spread=spread)
    reached = [
        limit
        for limit, count, cap in (
            (Limit.STREAMS_PER_INSTANCE, instance, CAPS.per_instance),
            (Limit.STREAMS_PER_ADDRESS, address, CAPS.per_address),
            (Limit.STREAMS_PER_USER, user, CAPS.per_user),
        )
        if count >= cap
    ]
    if not reached:
        assert answer is None
        return
    assert answer is not None
    assert answer.limit is reached[0]
    if answer.limit is Limit.STREAMS_PER_INSTANCE:
        assert answer.retry_after == pytest.approx(
            FULL_INSTANCE_WAIT_SECONDS + spread * FULL_INSTANCE_SPREAD_SECONDS
        )
    else:
        assert answer.retry_after == TOO_MANY_STREAMS_WAIT_SECONDS


def test_a_spread_outside_zero_to_one_is_a_bug() -> None:
    with pytest.raises(ValueError, match="spread"):
        StreamLimits(CAPS, 10).check("u", "a", OpenStreams(), 0.0, spread=1.5)


# -- a flood of bad tokens -------------------------------------------------------------------------


def test_an_address_sending_bad_tokens_is_refused_before_its_token_is_read() -> None:
    door = Door(bad_tokens_per_minute=3)
    for _ in range(3):
        assert refused(door.admit(credentials=Credentials(query="junk"))).status == 401
    assert door.counted("auth", "malformed") == 3
    # From now on even a good token from that address is not looked at: no signature checked.
    answer = refused(door.admit())
    assert (answer.reason, answer.limit) == (Reason.RATE_LIMITED, Limit.BAD_TOKENS_PER_ADDRESS)
    assert answer.retry_after == pytest.approx(60.0)
    assert refused(door.admit(credentials=Credentials(query="junk"))).limit is (
        Limit.BAD_TOKENS_PER_ADDRESS
    )
    assert door.counted("auth", "malformed") == 3  # refused unread: not a token failure
    assert door.counted("limit", "bad-tokens-per-address") == 2
    admitted(door.admit(peer="192.0.2.99"))  # another address is not held back
    door.now += 60
    admitted(door.admit())


def test_publishing_with_bad_tokens_counts_against_the_same_address() -> None:
    door = Door(bad_tokens_per_minute=2)
    for _ in range(2):
        assert refused(door.admission.authenticate(Credentials(), "203.0.113.5")).status == 401
    publisher = Credentials(authorization=f"Bearer {mint_token(SECRET, sub='backend')}")
    assert refused(door.admission.authenticate(publisher, "203.0.113.5")).limit is (
        Limit.BAD_TOKENS_PER_ADDRESS
    )
    assert refused(door.admit(peer="203.0.113.5")).limit is Limit.BAD_TOKENS_PER_ADDRESS


# -- the address rules -----------------------------------------------------------------------------


def test_a_blocked_address_is_screened_out_and_counted() -> None:
    door = Door()
    door.rules = parse_address_rules("block 203.0.113.0/24\nblock 2001:db8:bad::/48")
    blocked = door.admission.screen("203.0.113.9")
    assert blocked is not None
    assert (blocked.reason, blocked.status, blocked.to_retry()) == (
        Reason.ADDRESS_BLOCKED,
        403,
        None,
    )
    assert door.admission.screen("2001:db8:bad::1") is not None
    assert door.admission.screen("198.51.100.1") is None
    assert door.observer.blocked == 2


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_one_screened() -> None:
    door = Door()
    door.rules = parse_address_rules(f"block 203.0.113.9\nblock {PROXY}")
    assert door.admission.screen(PROXY, "198.51.100.1, 203.0.113.9") is not None
    assert door.admission.screen(PROXY, "203.0.113.9, 198.51.100.1") is None  # the client's lie
    assert door.admission.screen("198.51.100.2", "203.0.113.9") is None  # not a proxy: unread


# -- what counts as one address --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "group"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("unknown", "unknown"),
    ],
)
def test_an_ipv6_address_counts_by_its_64(address: str, group: str) -> None:
    assert address_group(address) == group


def test_a_host_hopping_addresses_in_its_64_shares_one_allowance() -> None:
    door = Door(connects_per_minute=2, bad_tokens_per_minute=2)
    admitted(door.admit("u1", peer="2001:db8:1:2::1"))
    admitted(door.admit("u2", peer="2001:db8:1:2::2"))
    assert refused(door.admit("u3", peer="2001:db8:1:2::3")).limit is Limit.CONNECTS_PER_ADDRESS
    admitted(door.admit("u3", peer="2001:db8:1:3::3"))  # the next /64 is someone else
    for peer in ("2001:db8:9:9::1", "2001:db8:9:9::2"):
        refused(door.admit(credentials=Credentials(), peer=peer))
    assert refused(door.admit(peer="2001:db8:9:9::3")).limit is Limit.BAD_TOKENS_PER_ADDRESS


def test_the_groups_of_addresses_kept_at_hand_are_bounded() -> None:
    for n in range(ADDRESS_GROUPS_REMEMBERED + 10):
        address_group(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
    assert address_group.cache_info().currsize <= ADDRESS_GROUPS_REMEMBERED
