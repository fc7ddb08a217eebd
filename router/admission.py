"""The front door: the one place a transport asks whether a new stream may open.

A transport translates its request into an :class:`Ask` (credentials, query, cursor, peer) and
calls :meth:`Admission.admit`; the answer is :class:`~router.core.admission.Admitted` or
:class:`~router.core.admission.Refused` (rules in :mod:`router.core.admission`). What is stateful
lives here: the token verifier, the connect-rate limiters and the clock; refusals are reported to
the :class:`~router.core.observer.Observer`. The transport only turns the answer into its own form
and, when admitted, asks the hub to open the session (:meth:`actors.hub.Hub.open`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace

import trio

from router.auth import AuthError, AuthProblem, Verified, Verifies
from router.core.address_rules import NO_RULES, AddressRules
from router.core.admission import (
    ADDRESS_BLOCKED,
    ORIGIN_NOT_ALLOWED,
    SHUTTING_DOWN,
    Admitted,
    Credentials,
    OpenStreams,
    Reason,
    Refused,
    StreamCaps,
    StreamLimits,
    TokenFailures,
    bearer_token,
    client_address,
    stream_request,
)
from router.core.control import AccessRules
from router.core.observer import Observer
from router.core.origin import origin_allowed
from router.core.overload import overload_refusal
from router.core.refusal import Limit


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    caps: StreamCaps
    """``--max-streams``, ``--max-streams-per-address``, ``--max-streams-per-user``."""
    connects_per_minute: int
    """``--connects-per-minute``, per user and per address alike."""
    bad_tokens_per_minute: int
    """``--bad-tokens-per-minute``, per address."""
    trusted_proxies: Collection[str]
    """``--trusted-proxies``: peers whose ``X-Forwarded-For`` names the client."""


@dataclass(frozen=True, slots=True)
class Ask:
    """A request for a new stream, as a transport received it."""

    credentials: Credentials
    query: Sequence[tuple[str, str]]
    """Every query parameter, repeated ones included, in order."""
    last_event_id: str | None
    """The ``Last-Event-ID`` header (it wins over ``last_event_id`` in the query)."""
    peer: str | None
    """The address the connection came from."""
    forwarded_for: str | None = None
    """The ``X-Forwarded-For`` header, read only when ``peer`` is a trusted proxy."""


class Admission:
    """Admits or refuses new streams; ``streams_open(user_id, address)`` counts the streams open
    on the instance, from the address and of the user, ``closing()`` says the instance is shutting
    down (both the hub's), ``overloaded()`` that the overload ladder refuses new streams (the
    health monitor's). ``spread()`` draws where in a full instance's retry spread a refused
    client comes back (0 to 1); ``address_rules()`` are the rules in force (they change on
    reload).

    A transport asks :meth:`screen` first, for every request, before reading anything else of it;
    then :meth:`admit` for a new stream, or :meth:`authenticate` for any other request.
    """

    def __init__(
        self,
        verifier: Verifies,
        settings: AdmissionSettings,
        observer: Observer,
        *,
        streams_open: Callable[[str, str], OpenStreams],
        closing: Callable[[], bool],
        overloaded: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = trio.current_time,
        access: AccessRules | None = None,
        wall_clock: Callable[[], float] = time.time,
        spread: Callable[[], float] = random.random,
        address_rules: Callable[[], AddressRules] = lambda: NO_RULES,
    ) -> None:
        """``access``: the controls in force (the hub's), which refuse disconnected tokens and
        narrow revoked grants; ``wall_clock`` is what they and token times are read against."""
        self._verifier = verifier
        self._access = access
        self._wall_clock = wall_clock
        self._trusted_proxies = frozenset(settings.trusted_proxies)
        self._limits = StreamLimits(settings.caps, settings.connects_per_minute)
        self._token_failures = TokenFailures(settings.bad_tokens_per_minute)
        self._observer = observer
        self._streams_open = streams_open
        self._closing = closing
        self._overloaded = overloaded
        self._clock = clock
        self._spread = spread
        self._address_rules = address_rules

    def address(self, peer: str | None, forwarded_for: str | None = None) -> str:
        """The client's address (see :func:`router.core.admission.client_address`)."""
        return client_address(peer, forwarded_for, self._trusted_proxies)

    def screen(self, peer: str | None, forwarded_for: str | None = None) -> Refused | None:
        """``address-blocked`` (``403``) when the rules keep the client's address out (counted),
        else ``None``. Behind a trusted proxy, the address judged is the one it forwarded."""
        if self._address_rules().permits(self.address(peer, forwarded_for)):
            return None
        self._observer.address_blocked()
        return ADDRESS_BLOCKED

    def screen_origin(
        self, origin: str | None, host: str | None, allowed: Collection[str]
    ) -> Refused | None:
        """``origin-not-allowed`` (``403``) for a WebSocket handshake from a page whose origin is
        neither one of ``allowed`` nor the router's own (counted), else ``None``; the rule is
        :func:`router.core.origin.origin_allowed`'s."""
        if origin_allowed(origin, host, allowed):
            return None
        self._observer.origin_refused()
        return ORIGIN_NOT_ALLOWED

    def authenticate(self, credentials: Credentials, address: str) -> Verified | Refused:
        """The verified token of ``credentials`` sent from ``address``, or why not (counted by
        reason). An address that sent too many bad tokens lately is refused before its token is
        looked at (counted by that limit)."""
        now = self._clock()
        flooding = self._token_failures.check(address, now)
        if flooding is not None:
            self._refused_by_limit(flooding)
            return flooding
        token = bearer_token(credentials)
        if isinstance(token, Refused):
            return self._bad_token(token, address, now)
        try:
            verified = self._verifier.verify(token)
            return verified if self._access is None else self._in_force(verified)
        except AuthError as error:
            refused = Refused(Reason(error.problem.value), error.message)
            return self._bad_token(refused, address, now)

    def _bad_token(self, refused: Refused, address: str, now: float) -> Refused:
        self._observer.refused_token(refused.reason)
        self._token_failures.failed(address, now)
        return refused

    def _refused_by_limit(self, refused: Refused) -> None:
        if refused.limit is not None:
            self._observer.refused_by_limit(refused.limit)

    def _in_force(self, verified: Verified) -> Verified:
        """``verified`` less what controls took from it since it was issued; raises
        :class:`AuthError` (``revoked``) for a token of a disconnected user or session."""
        assert self._access is not None
        now = self._wall_clock()
        principal = verified.principal
        if self._access.refuses(principal, verified.issued_at, now):
            raise AuthError(
                AuthProblem.REVOKED,
                "this token's user or session was signed out after it was issued; get a new one",
            )
        narrowed = self._access.narrow(principal, verified.issued_at, now)
        return verified if narrowed is principal else replace(verified, principal=narrowed)

    def admit(self, ask: Ask, *, take: bool = True) -> Admitted | Refused:
        """Whether the stream ``ask`` asks for may open now. In order: the instance is not
        shutting down nor overloaded (the ladder's ``refuse`` rung), the address has not sent too
        many bad tokens, the token verifies (and was not disconnected since: its grants are those
        no control revoked since it was issued),
        the query and cursor are well formed, the token grants the filter, the instance, the
        address and the user are under their stream caps, both connect rates allow it. An
        admitted stream is counted against both rates, unless ``take`` is false (a ``HEAD``
        only asks). A refusal by a limit is reported to the observer by that limit."""
        if self._closing():
            return SHUTTING_DOWN
        if self._overloaded():  # before any token work: that is what an overload cannot afford
            self._observer.refused_by_limit(Limit.OVERLOAD)
            return overload_refusal(self._spread())
        address = self.address(ask.peer, ask.forwarded_for)
        verified = self.authenticate(ask.credentials, address)
        if isinstance(verified, Refused):
            return verified
        principal = verified.principal
        asked = stream_request(ask.query, ask.last_event_id, principal)
        if isinstance(asked, Refused):
            return asked
        refused = self._limits.check(
            principal.user_id,
            address,
            self._streams_open(principal.user_id, address),
            self._clock(),
            take=take,
            spread=self._spread(),
        )
        if refused is not None:
            self._refused_by_limit(refused)
            return refused
        return Admitted(
            principal,
            asked.stream_filter,
            asked.resume_from,
            verified.expires_at,
            verified.issued_at,
        )
