"""JWT verification: from a token to the :class:`~router.core.permissions.Principal` it grants.

The accepted algorithms follow from the configured key, never from the token: an HMAC secret
accepts HS256 only, an RSA public key RS256 only, an EC public key ES256 only. So ``alg: none`` and
key confusion (an HS256 token signed with the RSA public key as its secret) are refused.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from router.core.permissions import Principal, id_set
from router.core.scope import Scope, ScopeError
from router.core.token_cache import TokenCache

MIN_SECRET_BYTES = 32


class AuthProblem(enum.StrEnum):
    """Why a request was refused: a bounded set, fit for a metric label."""

    MISSING = "missing"
    MALFORMED = "malformed"
    EXPIRED = "expired"
    BAD_SIGNATURE = "bad-signature"
    BAD_CLAIMS = "bad-claims"
    REVOKED = "revoked"
    """Its user or session was disconnected after it was issued (see router.core.control)."""


class AuthError(Exception):
    def __init__(self, problem: AuthProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message


@dataclass(frozen=True, slots=True)
class Verified:
    principal: Principal
    expires_at: float
    """The token's ``exp``, in seconds since the epoch."""
    issued_at: float | None = None
    """The token's ``iat``, in seconds since the epoch, if it has one."""


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    key: str | rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    algorithm: str
    audience: str | None = None
    issuer: str | None = None
    leeway_seconds: float = 0.0
    max_age_seconds: float | None = None
    """``--max-token-age``: a token must say when it was issued (``iat``), and live no longer
    than this (``exp - iat``); ``None``: any lifetime, ``iat`` optional."""

    @classmethod
    def from_key(
        cls,
        *,
        secret: str | None = None,
        public_key_pem: bytes | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_seconds: float = 0.0,
        max_age_seconds: float | None = None,
    ) -> TokenVerifier:
        """A verifier for exactly one of an HMAC ``secret`` or a PEM public key.

        Raises :class:`ValueError` with a message for the operator when the key is unusable.
        """
        if (secret is None) == (public_key_pem is None):
            raise ValueError("configure exactly one of a JWT secret and a JWT public key")
        key: str | rsa.RSAPublicKey | ec.EllipticCurvePublicKey
        if secret is not None:
            if len(secret.encode()) < MIN_SECRET_BYTES:
                raise ValueError(f"the JWT secret must be at least {MIN_SECRET_BYTES} bytes long")
            key, algorithm = secret, "HS256"
        else:
            assert public_key_pem is not None
            public_key = load_pem_public_key(public_key_pem)
            if isinstance(public_key, rsa.RSAPublicKey):
                key, algorithm = public_key, "RS256"
            elif isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
                public_key.curve, ec.SECP256R1
            ):
                key, algorithm = public_key, "ES256"
            else:
                raise ValueError("the JWT public key must be an RSA key or an EC key on P-256")
        return cls(key, algorithm, audience, issuer, leeway_seconds, max_age_seconds)

    def verify(self, token: str) -> Verified:
        """Raises :class:`AuthError`; its message is safe to return to the client."""
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(AuthProblem.EXPIRED, "the token has expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError(AuthProblem.BAD_SIGNATURE, "the token's signature is invalid") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError(
                AuthProblem.BAD_SIGNATURE, f"the token must be signed with {self.algorithm}"
            ) from None
        except jwt.DecodeError as exc:
            # pyjwt's reason (bad base64, a claim that is not a number...) names no secret.
            raise AuthError(AuthProblem.MALFORMED, f"the token is not a valid JWT: {exc}") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(AuthProblem.BAD_CLAIMS, f"the token was refused: {exc}") from None
        except (TypeError, ValueError, OverflowError) as exc:
            # Older pyjwt releases let int() of a time claim such as [1] or 1e400 escape (#1186).
            raise AuthError(
                AuthProblem.BAD_CLAIMS, f"the token's time claims are unusable: {exc}"
            ) from None
        expires_at = _expiry(claims["exp"])
        issued_at = self._issued_at(claims.get("iat"), expires_at)
        return Verified(principal_from_claims(claims), expires_at, issued_at)

    def _issued_at(self, iat: object, expires_at: float) -> float | None:
        """The ``iat`` claim (pyjwt has checked it is a number not in the future), held to
        ``max_age_seconds``: what bounds how long a revocation must be remembered."""
        if iat is None:
            if self.max_age_seconds is not None:
                raise AuthError(
                    AuthProblem.BAD_CLAIMS, "the token must say when it was issued ('iat')"
                )
            return None
        issued_at = _numeric_date("iat", iat)
        if self.max_age_seconds is not None and expires_at - issued_at > self.max_age_seconds:
            raise AuthError(
                AuthProblem.BAD_CLAIMS,
                f"the token lives longer than the {self.max_age_seconds:g} s this router accepts"
                " (exp - iat)",
            )
        return issued_at


class Verifies(Protocol):
    def verify(self, token: str) -> Verified:
        """The token's grants; raises :class:`AuthError`, whose message the client may see."""
        ...


class CachedVerifier:
    """A :class:`TokenVerifier` that remembers the tokens it verified, each until its ``exp``
    (:class:`~router.core.token_cache.TokenCache`, at most ``capacity``): a token seen again
    skips its signature and claims. What controls took from a token since it was issued is no
    part of this; the front door asks on every use (router/admission.py)."""

    def __init__(
        self,
        verifier: TokenVerifier,
        capacity: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock``: the wall clock, the one pyjwt reads ``exp`` against."""
        self.verifier = verifier
        self.cache: TokenCache[Verified] = TokenCache(capacity)
        self._clock = clock

    def verify(self, token: str) -> Verified:
        cached = self.cache.get(token, self._clock())
        if cached is not None:
            return cached
        verified = self.verifier.verify(token)
        # pyjwt refuses a token once ``exp <= now - leeway``: remembered until just then.
        self.cache.put(token, verified, verified.expires_at + self.verifier.leeway_seconds)
        return verified


def _expiry(exp: object) -> float:
    """The ``exp`` claim as seconds since the epoch (see :func:`_numeric_date`)."""
    return _numeric_date("exp", exp)


def _numeric_date(claim: str, value: object) -> float:
    """A time claim as seconds since the epoch. pyjwt accepts any value ``int()`` takes, so a
    signed ``10**400`` (a Python int compares with any time) or ``"999..."`` passes it; only a
    JSON number the router can hold as a finite time is one (RFC 7519's NumericDate)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError(AuthProblem.BAD_CLAIMS, f"the {claim!r} claim must be a number of seconds")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise AuthError(AuthProblem.BAD_CLAIMS, f"the {claim!r} claim is too large to be a time")
    return seconds


def _string_list(claims: Mapping[str, object], name: str) -> frozenset[str]:
    value = claims.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise AuthError(AuthProblem.BAD_CLAIMS, f"the {name!r} claim must be a list of strings")
    return id_set(value)


def principal_from_claims(claims: Mapping[str, object]) -> Principal:
    sub, sid = claims.get("sub"), claims.get("sid")
    if not isinstance(sub, str) or not (sid is None or isinstance(sid, str)):
        raise AuthError(AuthProblem.BAD_CLAIMS, "the 'sub' and 'sid' claims must be strings")
    try:
        Scope(user_id=sub, session_id=sid)
    except ScopeError as exc:
        raise AuthError(AuthProblem.BAD_CLAIMS, f"unusable claims: {exc}") from None
    return Principal(
        user_id=sub,
        novels=_string_list(claims, "novels"),
        session_id=sid,
        roles=_string_list(claims, "roles"),
    )


def mint_token(
    secret: str,
    *,
    sub: str,
    novels: Iterable[str] = (),
    roles: Iterable[str] = (),
    sid: str | None = None,
    ttl_seconds: int = 3600,
    audience: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
) -> str:
    """An HS256 token for development and tests (``sse-router token``)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "sub": sub,
        "novels": list(novels),
        "roles": list(roles),
        "iat": issued,
        "exp": issued + ttl_seconds,
    }
    if sid is not None:
        claims["sid"] = sid
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
