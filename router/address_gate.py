"""The ``--address-rules`` file: read at start, and again on SIGHUP.

What the rules mean is :mod:`router.core.address_rules`.

A file that cannot be used at start stops the router (``serve()`` raises it as a configuration
error). Read again on SIGHUP, it replaces the rules at once for every request from then on; open
streams are not touched (a stream admitted before a rule blocked its address keeps running until it
ends, and its reconnection is judged by the new rules). A file that cannot be used on reload is
logged and counted, and the rules before it stay: a typo must not open the door, nor shut it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from router.core.address_rules import NO_RULES, AddressRules, AddressRulesError, parse_address_rules
from router.core.observer import NO_OBSERVER, Observer

log = logging.getLogger(__name__)


def read_address_rules(path: Path) -> AddressRules:
    """The rules in the file at ``path``; :class:`AddressRulesError` says why not, with the path."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AddressRulesError(f"cannot read address rules {path}: {error}") from None
    try:
        return parse_address_rules(text)
    except AddressRulesError as error:
        raise AddressRulesError(f"{path}: {error}") from None


class AddressGate:
    """The address rules in force, and the file they came from (``None``: no file, no rules)."""

    def __init__(self, path: Path | None, observer: Observer = NO_OBSERVER) -> None:
        self.path = path
        self.observer = observer
        """Told of each reload (set once the router's metrics exist)."""
        self.rules = NO_RULES if path is None else read_address_rules(path)
        if path is not None:
            self._log_loaded("address rules loaded")

    def reload(self) -> bool:
        """Read the file again: the new rules, or, if it cannot be used, the old ones (logged and
        counted). Without a file there is nothing to read."""
        if self.path is None:
            log.info("SIGHUP: no --address-rules file to read again")
            return True
        try:
            rules = read_address_rules(self.path)
        except AddressRulesError as error:
            log.error(
                "address rules not reloaded: the rules before stay",
                extra={"path": str(self.path), "error": str(error)},
            )
            self.observer.address_rules_loaded(ok=False)
            return False
        self.rules = rules
        self._log_loaded("address rules reloaded")
        self.observer.address_rules_loaded(ok=True)
        return True

    def _log_loaded(self, message: str) -> None:
        log.info(
            message,
            extra={
                "path": str(self.path),
                "rules": len(self.rules.rules),
                "allowlist": self.rules.is_allowlist,
            },
        )
