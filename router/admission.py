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
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import trio

from router.auth import AuthError, TokenVerifier, Verified
from router.core.admission import (
    SHUTTING_DOWN,
    Admitted,
    Credentials,
    Reason,
    Refused,
    StreamLimits,
    bearer_token,
    client_address,
    stream_request,
)
from router.core.observer import Observer
from router.core.overload import overload_refusal
from router.core.refusal import Limit


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    max_streams_per_user: int
    """``--max-streams-per-user``."""
    connects_per_minute: int
    """``--connects-per-minute``, per user and per address alike."""
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
    """Admits or refuses new streams; ``streams_open(user_id)`` counts a user's open streams,
    ``closing()`` says the instance is shutting down (both the hub's), ``overloaded()`` that
    the overload ladder refuses new streams (the health monitor's)."""

    def __init__(
        self,
        verifier: TokenVerifier,
        settings: AdmissionSettings,
        observer: Observer,
        *,
        streams_open: Callable[[str], int],
        closing: Callable[[], bool],
        overloaded: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._verifier = verifier
        self._trusted_proxies = frozenset(settings.trusted_proxies)
        self._limits = StreamLimits(settings.max_streams_per_user, settings.connects_per_minute)
        self._observer = observer
        self._streams_open = streams_open
        self._closing = closing
        self._overloaded = overloaded
        self._clock = clock

    def address(self, peer: str | None, forwarded_for: str | None = None) -> str:
        """The client's address (see :func:`router.core.admission.client_address`)."""
        return client_address(peer, forwarded_for, self._trusted_proxies)

    def authenticate(self, credentials: Credentials) -> Verified | Refused:
        """The verified token of ``credentials``, or why not (counted by reason)."""
        token = bearer_token(credentials)
        if isinstance(token, Refused):
            self._observer.refused_token(token.reason)
            return token
        try:
            return self._verifier.verify(token)
        except AuthError as error:
            reason = Reason(error.problem.value)
            self._observer.refused_token(reason)
            return Refused(reason, error.message)

    def admit(self, ask: Ask, *, take: bool = True) -> Admitted | Refused:
        """Whether the stream ``ask`` asks for may open now. In order: the instance is not
        shutting down, nor overloaded (the ladder's ``refuse`` rung), the token verifies, the
        query and cursor are well formed, the token grants the filter, the user is under the
        stream cap, both connect rates allow it. An
        admitted stream is counted against both rates, unless ``take`` is false (a ``HEAD``
        only asks). A refusal by a limit is reported to the observer by that limit."""
        if self._closing():
            return SHUTTING_DOWN
        if self._overloaded():  # before any token work: that is what an overload cannot afford
            self._observer.refused_by_limit(Limit.OVERLOAD)
            return overload_refusal(random.random())
        verified = self.authenticate(ask.credentials)
        if isinstance(verified, Refused):
            return verified
        principal = verified.principal
        asked = stream_request(ask.query, ask.last_event_id, principal)
        if isinstance(asked, Refused):
            return asked
        refused = self._limits.check(
            principal.user_id,
            self.address(ask.peer, ask.forwarded_for),
            self._streams_open(principal.user_id),
            self._clock(),
            take=take,
        )
        if refused is not None:
            if refused.limit is not None:
                self._observer.refused_by_limit(refused.limit)
            return refused
        return Admitted(principal, asked.stream_filter, asked.resume_from, verified.expires_at)
