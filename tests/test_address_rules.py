"""The address rules (router/core/address_rules.py): the file's format, and who they let in."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.address_rules import (
    NO_RULES,
    Action,
    AddressRules,
    AddressRulesError,
    Network,
    Rule,
    parse_address_rules,
)


def test_without_rules_everyone_is_let_in() -> None:
    assert NO_RULES.permits("192.0.2.1")
    assert NO_RULES.permits("::1")
    assert NO_RULES.permits("unknown")
    assert parse_address_rules("# nothing yet\n\n   \n").rules == ()


def test_a_blocklist_keeps_out_what_it_names_and_lets_in_the_rest() -> None:
    rules = parse_address_rules(
        "block 203.0.113.0/24   # a scraper\nBLOCK 2001:db8:bad::/48\nblock 198.51.100.7\n"
    )
    assert not rules.is_allowlist
    assert not rules.permits("203.0.113.255")
    assert not rules.permits("2001:db8:bad:1::9")
    assert not rules.permits("198.51.100.7")
    assert rules.permits("198.51.100.8")
    assert rules.permits("2001:db8:600d::1")
    assert rules.permits("unknown")


def test_an_allowlist_lets_in_only_what_it_names_the_most_specific_rule_deciding() -> None:
    rules = parse_address_rules("allow 10.0.0.0/8\nblock 10.6.0.0/16\nallow 10.6.6.6/32\n")
    assert rules.is_allowlist
    assert rules.permits("10.1.2.3")
    assert not rules.permits("10.6.1.1")
    assert rules.permits("10.6.6.6")
    assert not rules.permits("192.0.2.1")
    assert not rules.permits("unknown")  # an allowlist lets in only what it can name


def test_block_wins_over_allow_for_the_same_range() -> None:
    for text in (
        "allow 192.0.2.0/24\nblock 192.0.2.0/24",
        "block 192.0.2.0/24\nallow 192.0.2.0/24",
    ):
        assert not parse_address_rules(text).permits("192.0.2.1")


def test_an_ipv4_address_written_as_ipv6_is_judged_as_ipv4() -> None:
    rules = parse_address_rules("block 192.0.2.0/24\nblock ::ffff:198.51.100.0/120")
    assert not rules.permits("::ffff:192.0.2.1")
    assert not rules.permits("198.51.100.3")
    assert not rules.permits("[::ffff:198.51.100.3]")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("deny 192.0.2.0/24", "line 1: a rule starts with 'allow' or 'block'"),
        ("allow", "line 1: a rule is 'allow RANGE' or 'block RANGE'"),
        ("# fine\nblock 192.0.2.0/24 extra", "line 2: a rule is"),
        ("block 192.0.2.1/24", "line 1: not an address range"),  # host bits set: a typo?
        ("block 300.0.0.0/8", "line 1: not an address range"),
        ("allow 2001:db8::/129", "line 1: not an address range"),
    ],
)
def test_a_bad_line_is_named(text: str, named: str) -> None:
    with pytest.raises(AddressRulesError, match=named):
        parse_address_rules(text)


# -- against a reference: every rule checked one by one --------------------------------------------


def reference_permits(rules: AddressRules, address: str) -> bool:
    """The documented meaning, the slow way: of the rules holding the address, the longest
    prefix decides, block winning a tie; none holds it: let in unless there is an allow rule."""
    parsed = ipaddress.ip_address(address)
    holding = [rule for rule in rules.rules if parsed in rule.network]
    if not holding:
        return not any(rule.action is Action.ALLOW for rule in rules.rules)
    longest = max(rule.network.prefixlen for rule in holding)
    deciding = {rule.action for rule in holding if rule.network.prefixlen == longest}
    return deciding == {Action.ALLOW}


ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ipv6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


@st.composite
def networks(draw: st.DrawFn) -> Network:
    # Near a few shared bases, so that rules overlap and addresses fall inside them.
    if draw(st.booleans()):
        base = draw(st.sampled_from([0x0A000000, 0xC0000200, 0xCB007100]))
        prefix = draw(st.integers(0, 32))
        noise = draw(st.integers(0, 2**16 - 1))
        return ipaddress.IPv4Network((base + noise, prefix), strict=False)
    base6 = 0x20010DB8 << 96
    prefix = draw(st.integers(0, 128))
    return ipaddress.IPv6Network((base6 + draw(st.integers(0, 2**20)), prefix), strict=False)


rules_strategy = st.lists(
    st.builds(Rule, st.sampled_from(list(Action)), networks()), max_size=12
).map(lambda rules: AddressRules(tuple(rules)))


@st.composite
def addresses(draw: st.DrawFn) -> str:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return str(draw(ipv4))
    if choice == 1:
        return str(draw(ipv6))
    if choice == 2:
        return str(
            ipaddress.IPv4Address(
                draw(st.sampled_from([0x0A000000, 0xC0000200])) + draw(st.integers(0, 2**16))
            )
        )
    return str(ipaddress.IPv6Address((0x20010DB8 << 96) + draw(st.integers(0, 2**20))))


@given(rules_strategy, addresses())
def test_the_compiled_rules_judge_as_the_rules_read_one_by_one(
    rules: AddressRules, address: str
) -> None:
    assert rules.permits(address) == reference_permits(rules, address)


@given(rules_strategy)
def test_the_written_form_of_rules_reads_back_as_the_same_rules(rules: AddressRules) -> None:
    text = "\n".join(f"{rule.action.value} {rule.network}" for rule in rules.rules)
    assert parse_address_rules(text) == rules


@given(st.text(max_size=200))
def test_any_text_is_rules_or_a_named_error(text: str) -> None:
    try:
        parse_address_rules(text)
    except AddressRulesError as error:
        problem = str(error)
    else:
        return
    assert problem.startswith("line ")
