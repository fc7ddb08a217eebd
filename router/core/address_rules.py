"""Which client addresses may reach the router: allow and block rules over CIDR ranges.

The rules are text, one rule a line::

    # office and VPN only, except one machine
    allow 10.0.0.0/8
    allow 2001:db8::/32
    block 10.6.6.6
    block 203.0.113.0/24

A line is ``allow`` or ``block`` and one IPv4 or IPv6 range (``/32`` or ``/128`` when no prefix is
given); blank lines and everything after ``#`` are ignored. An address is judged by the most
specific range that holds it (the longest prefix); ``block`` wins over ``allow`` for the same
range. An address that no range holds is allowed, unless the rules hold any ``allow`` line: then
they are an allowlist, and it is blocked. An address that is not an IP address at all (a peer the
server could not name) is held by no range. IPv4 addresses written as IPv6 (``::ffff:192.0.2.1``)
are judged as IPv4.

Pure: parsing a text and judging a string; reading the file, and reloading it, is
``router/address_gate.py``'s.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Action(enum.StrEnum):
    ALLOW = "allow"
    BLOCK = "block"


@dataclass(frozen=True, slots=True)
class Rule:
    action: Action
    network: Network


class AddressRulesError(ValueError):
    """A rules text that cannot be read; the message names the line."""


@dataclass(frozen=True, slots=True)
class AddressRules:
    """Rules, compiled for a lookup per prefix length rather than a scan of every rule."""

    rules: tuple[Rule, ...] = ()
    _by_version: Mapping[int, Mapping[int, Mapping[int, Action]]] = field(
        init=False, repr=False, compare=False
    )
    """IP version -> prefix length -> the network's address as an integer -> its action, longest
    prefixes first."""

    def __post_init__(self) -> None:
        by_version: dict[int, dict[int, dict[int, Action]]] = {4: {}, 6: {}}
        for rule in self.rules:
            prefixes = by_version[rule.network.version]
            networks = prefixes.setdefault(rule.network.prefixlen, {})
            key = int(rule.network.network_address)
            if networks.get(key) is not Action.BLOCK:  # block wins over allow for one range
                networks[key] = rule.action
        compiled = {
            version: dict(sorted(prefixes.items(), reverse=True))
            for version, prefixes in by_version.items()
        }
        object.__setattr__(self, "_by_version", compiled)

    @property
    def is_allowlist(self) -> bool:
        return any(rule.action is Action.ALLOW for rule in self.rules)

    def permits(self, address: str) -> bool:
        """Whether a client at ``address`` may reach the router."""
        action = self.deciding_action(address)
        if action is None:
            return not self.is_allowlist
        return action is Action.ALLOW

    def deciding_action(self, address: str) -> Action | None:
        """The action of the most specific range holding ``address``, or ``None``."""
        parsed = _parse_address(address)
        if parsed is None:
            return None
        width = parsed.max_prefixlen
        value = int(parsed)
        for prefix, networks in self._by_version[parsed.version].items():
            mask = ((1 << prefix) - 1) << (width - prefix)
            action = networks.get(value & mask)
            if action is not None:
                return action
        return None


NO_RULES = AddressRules()
"""Everyone may reach the router: no ``--address-rules`` file."""


def parse_address_rules(text: str) -> AddressRules:
    """The rules of ``text`` (see the module's docstring), or :class:`AddressRulesError`."""
    return AddressRules(tuple(_rules(text.splitlines())))


def _rules(lines: Iterable[str]) -> Iterable[Rule]:
    for number, line in enumerate(lines, start=1):
        words = line.partition("#")[0].split()
        if not words:
            continue
        if len(words) != 2:
            raise AddressRulesError(
                f"line {number}: a rule is 'allow RANGE' or 'block RANGE', got {line.strip()!r}"
            )
        verb, text = words
        try:
            action = Action(verb.lower())
        except ValueError:
            raise AddressRulesError(
                f"line {number}: a rule starts with 'allow' or 'block', got {verb!r}"
            ) from None
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as error:
            raise AddressRulesError(f"line {number}: not an address range: {error}") from None
        yield Rule(action, _unmapped_network(network))


def _parse_address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _unmapped_network(network: Network) -> Network:
    """An IPv6 range inside ``::ffff:0:0/96`` as the IPv4 range it stands for."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network
