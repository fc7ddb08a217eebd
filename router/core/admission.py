"""The rules of the front door: whether a new stream may open, and what it asked for.

Every transport (the event stream now, a WebSocket next) asks the same questions in the same
order, through :class:`router.admission.Admission`: is this instance shutting down; has the
address sent too many bad tokens (:class:`TokenFailures`, asked before any token work); which
token came (``Authorization: Bearer``, else the ``access_token`` cookie, else ``?token=``) and
does it verify; are the query and the cursor well formed; does the token grant the filter; are
the instance, the address and the user under their stream caps; do both connect rates allow it.
The answer is :class:`Admitted` or :class:`Refused`, whose :class:`Reason` is a bounded set a
transport maps to its own form (an HTTP status and JSON body, an in-band ``sse.error``, a
WebSocket close code).

Pure: time is passed in, and verifying a token (a library's business) happens outside, so this
module holds every rule except the signature check.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from router.core.cursor import Cursor
from router.core.events import ErrorCode
from router.core.permissions import Principal, StreamFilter
from router.core.ratelimit import RateLimiter, acquire_all
from router.core.refusal import RETRYABLE, Limit, Refusal
from router.core.stream_request import (
    RequestError,
    StreamRequest,
    check_filter_granted,
    parse_stream_request,
)

RATE_PERIOD_SECONDS = 60.0
"""``--connects-per-minute`` counts new streams in any window of this length."""
SHUTDOWN_WAIT_SECONDS = 1.0
"""A client refused by a stopping instance comes back this soon: to another instance, or to this
one restarted."""
TOO_MANY_STREAMS_WAIT_SECONDS = 10.0
"""A user (or an address) at its stream cap has a slot only when one of its streams ends (a tab
closed), which nothing predicts; this is how often a tab refused for it tries again."""
FULL_INSTANCE_WAIT_SECONDS = 2.0
FULL_INSTANCE_SPREAD_SECONDS = 8.0
"""A client refused by a full instance comes back after the wait plus a random share of the
spread: soon, since its next connection may reach another instance, and not all at once."""


class Reason(enum.StrEnum):
    """Why a request was refused: a bounded set, the ``code`` of the JSON error body.

    The token's problems are :class:`router.auth.AuthProblem`'s, one for one.
    """

    MISSING = "missing"
    MALFORMED = "malformed"
    EXPIRED = "expired"
    BAD_SIGNATURE = "bad-signature"
    BAD_CLAIMS = "bad-claims"
    REVOKED = "revoked"
    """The token's user or session was disconnected after it was issued (router.core.control)."""
    BAD_REQUEST = "bad-request"
    FORBIDDEN = "forbidden"
    ADDRESS_BLOCKED = "address-blocked"
    ORIGIN_NOT_ALLOWED = "origin-not-allowed"
    """A WebSocket handshake from a page of an origin not allowed (router.core.origin)."""
    TOO_MANY_STREAMS = ErrorCode.TOO_MANY_STREAMS.value
    RATE_LIMITED = ErrorCode.RATE_LIMITED.value
    SHUTTING_DOWN = ErrorCode.SHUTTING_DOWN.value
    REPLAY_UNAVAILABLE = ErrorCode.REPLAY_UNAVAILABLE.value
    OVERLOADED = ErrorCode.OVERLOADED.value


RETRY = frozenset(Reason(code.value) for code in RETRYABLE)
"""The reasons a client should retry by itself after a wait (see router.core.refusal)."""
UNAUTHORIZED = frozenset(
    {
        Reason.MISSING,
        Reason.MALFORMED,
        Reason.EXPIRED,
        Reason.BAD_SIGNATURE,
        Reason.BAD_CLAIMS,
        Reason.REVOKED,
    }
)
"""The reasons that are the token's: the client must get a new one before it comes back."""
STATUS: Mapping[Reason, int] = {
    **dict.fromkeys(UNAUTHORIZED, 401),
    Reason.BAD_REQUEST: 400,
    Reason.FORBIDDEN: 403,
    Reason.ADDRESS_BLOCKED: 403,
    Reason.ORIGIN_NOT_ALLOWED: 403,
    **{Reason(code.value): status for code, status in RETRYABLE.items()},
}
"""The HTTP status of each reason; the retryable ones' are those of ``RETRYABLE``."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A request the router will not serve. ``retry_after`` (seconds) is set exactly for the
    reasons a client should retry by itself; ``parameter`` names the culprit of a bad request;
    ``limit`` the limit that refused, when one did."""

    reason: Reason
    message: str
    parameter: str | None = None
    retry_after: float | None = None
    limit: Limit | None = None

    def __post_init__(self) -> None:
        if (self.retry_after is not None) != (self.reason in RETRY):
            raise ValueError(f"a {self.reason.value!r} refusal has a retry-after exactly if it is")

    @property
    def status(self) -> int:
        return STATUS[self.reason]

    def to_retry(self) -> Refusal | None:
        """The refusal to come back from (see :mod:`router.core.refusal`), or ``None`` for one
        not to retry."""
        if self.retry_after is None:
            return None
        return Refusal(ErrorCode(self.reason.value), self.message, self.retry_after, self.limit)


@dataclass(frozen=True, slots=True)
class Admitted:
    """A stream that may open: who it is for, what it follows, from where, until when."""

    principal: Principal
    stream_filter: StreamFilter
    resume_from: Cursor | None
    expires_at: float
    """When the token expires, in seconds since the epoch."""
    issued_at: float | None = None
    """When the token was issued (its ``iat``), if it says: what a control is compared with."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """Where a token may come from, as the request carried them (``None``: absent)."""

    authorization: str | None = None
    """The ``Authorization`` header."""
    cookie: str | None = None
    """The ``access_token`` cookie."""
    query: str | None = None
    """The ``token`` query parameter (a browser ``EventSource`` cannot set headers)."""


SHUTTING_DOWN = Refused(
    Reason.SHUTTING_DOWN,
    "this instance is shutting down; reconnect",
    retry_after=SHUTDOWN_WAIT_SECONDS,
)
ADDRESS_BLOCKED = Refused(
    Reason.ADDRESS_BLOCKED, "requests from this address are not accepted here"
)
ORIGIN_NOT_ALLOWED = Refused(
    Reason.ORIGIN_NOT_ALLOWED,
    "a page of this origin may not open a stream here (see --cors-origins)",
)


def bearer_token(credentials: Credentials) -> str | Refused:
    """The token from the header, the cookie, or the query, in that order."""
    if credentials.authorization is not None:
        scheme, _, token = credentials.authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Refused(Reason.MALFORMED, "the Authorization header must be 'Bearer <token>'")
        return token.strip()
    cookie_or_query = credentials.cookie or credentials.query
    if not cookie_or_query:
        return Refused(
            Reason.MISSING,
            "no token: send 'Authorization: Bearer', the access_token cookie, or ?token=",
        )
    return cookie_or_query


def client_address(
    peer: str | None, forwarded_for: str | None, trusted_proxies: Collection[str]
) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the last address
    it added to ``X-Forwarded-For`` (earlier ones came from the client, and can lie)."""
    peer = peer or "unknown"
    if peer in trusted_proxies:
        hops = [hop.strip() for hop in (forwarded_for or "").split(",")]
        if hops[-1]:
            return hops[-1]
    return peer


IPV6_GROUP_PREFIX = 64
ADDRESS_GROUPS_REMEMBERED = 4096
"""Addresses whose group :func:`address_group` keeps at hand: a profile of a connect storm found
about seven address parses per new stream (the limits and the registry each ask), ``ipaddress``
in pure Python each time."""


@functools.lru_cache(maxsize=ADDRESS_GROUPS_REMEMBERED)
def address_group(address: str) -> str:
    """What the per-address limits count as one address: an IPv4 address itself, an IPv6 address
    by the /64 it lies in. A host given a /64 (the usual subscriber's, and a cloud machine's) may
    send from any address in it at will, so counting each address alone would give it 2**64
    allowances, and the limiters a key for each. Anything else (``unknown``) is itself."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, IPV6_GROUP_PREFIX), strict=False))
    return address


def stream_request(
    query: Iterable[tuple[str, str]], last_event_id: str | None, principal: Principal
) -> StreamRequest | Refused:
    """What the client asked for, refused as a bad request or as beyond the token's grants."""
    try:
        asked = parse_stream_request(query, last_event_id)
    except RequestError as error:
        return Refused(Reason.BAD_REQUEST, error.message, parameter=error.parameter)
    try:
        check_filter_granted(asked.stream_filter, principal)
    except RequestError as error:
        return Refused(Reason.FORBIDDEN, error.message, parameter=error.parameter)
    return asked


@dataclass(frozen=True, slots=True)
class StreamCaps:
    """How many streams may be open at once: on this instance, from one address, of one user."""

    per_instance: int
    """``--max-streams``."""
    per_address: int
    """``--max-streams-per-address``."""
    per_user: int
    """``--max-streams-per-user``."""


@dataclass(frozen=True, slots=True)
class OpenStreams:
    """How many streams are open now: on this instance, from the asking address, of the asking
    user."""

    instance: int = 0
    address: int = 0
    """From the asking address's group (see :func:`address_group`)."""
    user: int = 0


class StreamLimits:
    """The stream caps (per instance, per address, per user) and both connect rates, per user and
    per address.

    Rates are taken together: from both when both allow, from neither when one refuses, so a user
    refused for their address keeps their own allowance elsewhere, and one user's retry loop does
    not spend the address's allowance for everyone behind it.
    """

    def __init__(self, caps: StreamCaps, connects_per_minute: int) -> None:
        self.caps = caps
        self._per_user = RateLimiter(connects_per_minute, RATE_PERIOD_SECONDS)
        self._per_address = RateLimiter(connects_per_minute, RATE_PERIOD_SECONDS)

    def check(
        self,
        user_id: str,
        address: str,
        open_streams: OpenStreams,
        now: float,
        *,
        take: bool = True,
        spread: float = 0.0,
    ) -> Refused | None:
        """A refusal when a limit holds back a new stream of ``user_id`` from ``address`` at
        ``now``, with ``open_streams`` open; ``None`` when it may open, and then, with ``take``,
        it is counted against both connect rates (``take=False`` only asks). ``spread``, from 0
        to 1 (drawn by the caller), sets where in the spread of a full instance's wait this client
        comes back, so that refused clients do not all return at once."""
        if not 0 <= spread <= 1:
            raise ValueError(f"spread is from 0 to 1, got {spread}")
        full = self._full(open_streams, spread)
        if full is not None:
            return full
        claims = {
            Limit.CONNECTS_PER_USER: (self._per_user, user_id),
            Limit.CONNECTS_PER_ADDRESS: (self._per_address, address_group(address)),
        }
        refused = acquire_all(claims, now, take=take)
        if refused is None:
            return None
        return Refused(
            Reason.RATE_LIMITED,
            "too many new streams; try again later",
            retry_after=refused.wait,
            limit=refused.limit,
        )

    def _full(self, open_streams: OpenStreams, spread: float) -> Refused | None:
        """The cap a new stream would exceed, widest first: the instance's (a load balancer or
        the client's next try may find another instance with room), the address's, the
        user's."""
        caps = self.caps
        if open_streams.instance >= caps.per_instance:
            return Refused(
                Reason.TOO_MANY_STREAMS,
                f"this instance holds its most streams ({caps.per_instance}); try another",
                retry_after=FULL_INSTANCE_WAIT_SECONDS + spread * FULL_INSTANCE_SPREAD_SECONDS,
                limit=Limit.STREAMS_PER_INSTANCE,
            )
        if open_streams.address >= caps.per_address:
            return Refused(
                Reason.TOO_MANY_STREAMS,
                f"at most {caps.per_address} open streams per address",
                retry_after=TOO_MANY_STREAMS_WAIT_SECONDS,
                limit=Limit.STREAMS_PER_ADDRESS,
            )
        if open_streams.user >= caps.per_user:
            return Refused(
                Reason.TOO_MANY_STREAMS,
                f"at most {caps.per_user} open streams per user",
                retry_after=TOO_MANY_STREAMS_WAIT_SECONDS,
                limit=Limit.STREAMS_PER_USER,
            )
        return None


class TokenFailures:
    """Failed tokens per address: past ``per_minute`` of them in any minute, an address's
    requests are refused before their token is looked at, so a flood of bad tokens costs no
    signature checks. Every failure counts (missing, malformed, expired, a bad signature or
    claims); a refusal by this limit does not, so the address is let through again as its counted
    failures leave the one-minute window, and a flood costs at most ``per_minute`` signature
    checks a minute."""

    def __init__(self, per_minute: int) -> None:
        self._failures = RateLimiter(per_minute, RATE_PERIOD_SECONDS)

    def check(self, address: str, now: float) -> Refused | None:
        """A refusal when ``address`` has used up its failures at ``now``, else ``None``."""
        wait = self._failures.wait(address_group(address), now)
        if wait == 0.0:
            return None
        return Refused(
            Reason.RATE_LIMITED,
            "too many requests with a bad token from this address; try again later",
            retry_after=wait,
            limit=Limit.BAD_TOKENS_PER_ADDRESS,
        )

    def failed(self, address: str, now: float) -> None:
        """A request from ``address`` had a bad token at ``now``."""
        self._failures.acquire(address_group(address), now)
