"""JWT verification: what is accepted, and every way a token is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from router.auth import AuthError, AuthProblem, TokenVerifier, mint_token
from router.core.permissions import Principal

SECRET = "s" * 64


def hs256() -> TokenVerifier:
    return TokenVerifier.from_key(secret=SECRET)


def pem(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(**extra: object) -> dict[str, object]:
    # An hour: tokens built when the parameters are collected must outlive every test run
    # before theirs (tests/faults alone takes minutes).
    return {"sub": "u1", "exp": int(time.time()) + 3600, **extra}


def test_a_minted_token_grants_its_claims() -> None:
    token = mint_token(SECRET, sub="u1", novels=["n1", "n2"], roles=["publisher"], sid="s1")
    verified = hs256().verify(token)
    assert verified.principal == Principal(
        user_id="u1",
        novels=frozenset({"n1", "n2"}),
        session_id="s1",
        roles=frozenset({"publisher"}),
    )
    assert verified.expires_at > time.time()


@pytest.mark.parametrize(
    ("private_key", "algorithm"),
    [
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        (ec.generate_private_key(ec.SECP256R1()), "ES256"),
    ],
)
def test_public_keys_verify_their_algorithm(
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, algorithm: str
) -> None:
    verifier = TokenVerifier.from_key(public_key_pem=pem(private_key))
    assert verifier.algorithm == algorithm
    token = jwt.encode(claims(novels=["n1"]), private_key, algorithm=algorithm)
    assert verifier.verify(token).principal.novels == {"n1"}


def test_alg_none_is_refused() -> None:
    header = b64(json.dumps({"alg": "none"}).encode())
    token = f"{header}.{b64(json.dumps(claims()).encode())}."
    with pytest.raises(AuthError) as error:
        hs256().verify(token)
    assert error.value.problem is AuthProblem.BAD_SIGNATURE


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_key_confusion_is_refused() -> None:
    """An HS256 token 'signed' with the RSA public key as its HMAC secret must not pass."""
    public_pem = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64(json.dumps(claims()).encode())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    verifier = TokenVerifier.from_key(public_key_pem=public_pem)
    with pytest.raises(AuthError) as error:
        verifier.verify(f"{signing_input}.{b64(signature)}")
    assert error.value.problem is AuthProblem.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("not-a-jwt", AuthProblem.MALFORMED),
        ("a.b.c", AuthProblem.MALFORMED),
        (jwt.encode(claims(exp=int(time.time()) - 10), SECRET), AuthProblem.EXPIRED),
        (jwt.encode(claims(), "x" * 64), AuthProblem.BAD_SIGNATURE),
        (jwt.encode({"sub": "u1"}, SECRET), AuthProblem.BAD_CLAIMS),
        (jwt.encode({"exp": int(time.time()) + 60}, SECRET), AuthProblem.BAD_CLAIMS),
        (jwt.encode(claims(sub="has space"), SECRET), AuthProblem.BAD_CLAIMS),
        (jwt.encode(claims(novels="n1"), SECRET), AuthProblem.BAD_CLAIMS),
        (jwt.encode(claims(roles=[1]), SECRET), AuthProblem.BAD_CLAIMS),
        (jwt.encode(claims(sid=7), SECRET), AuthProblem.BAD_CLAIMS),
        (jwt.encode(claims(), SECRET, algorithm="HS512"), AuthProblem.BAD_SIGNATURE),
    ],
)
def test_refusals(token: str, problem: AuthProblem) -> None:
    with pytest.raises(AuthError) as error:
        hs256().verify(token)
    assert error.value.problem is problem


def signed(claims_json: str) -> str:
    """An HS256 token over claims written as JSON text, so they can hold what json.dumps would
    not write: integers of any length, NaN, infinities, lone surrogates."""
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64(claims_json.encode('utf-8', 'surrogatepass'))}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


SOON = int(time.time()) + 3600
HOSTILE_CLAIMS = [
    (f'{{"sub": "u1", "exp": {10**400}}}', AuthProblem.BAD_CLAIMS),
    (f'{{"sub": "u1", "exp": -{10**400}}}', AuthProblem.EXPIRED),
    ('{"sub": "u1", "exp": 1e400}', AuthProblem.MALFORMED),
    ('{"sub": "u1", "exp": Infinity}', AuthProblem.MALFORMED),
    ('{"sub": "u1", "exp": NaN}', AuthProblem.MALFORMED),
    ('{"sub": "u1", "exp": ' + "9" * 5000 + "}", AuthProblem.MALFORMED),
    ('{"sub": "u1", "exp": "' + "9" * 400 + '"}', AuthProblem.BAD_CLAIMS),
    (f'{{"sub": "u1", "exp": {SOON}, "nbf": {10**400}}}', AuthProblem.BAD_CLAIMS),
    (f'{{"sub": "u1", "exp": {SOON}, "iat": {10**400}}}', AuthProblem.BAD_CLAIMS),
    (f'{{"sub": "u1", "exp": {SOON}, "nbf": 1e400}}', AuthProblem.MALFORMED),
    (f'{{"sub": "u1", "exp": {SOON}, "iat": -1e400}}', AuthProblem.BAD_CLAIMS),
    (f'{{"sub": "u\\ud800", "exp": {SOON}}}', AuthProblem.BAD_CLAIMS),
    (f'{{"sub": "u1", "sid": "\\udfff", "exp": {SOON}}}', AuthProblem.BAD_CLAIMS),
]
HOSTILE_IDS = [
    "exp-10e400",
    "exp-minus-10e400",
    "exp-1e400",
    "exp-infinity",
    "exp-nan",
    "exp-5000-digits",
    "exp-string-of-400-digits",
    "nbf-10e400",
    "iat-10e400",
    "nbf-1e400",
    "iat-minus-1e400",
    "sub-surrogate",
    "sid-surrogate",
]


@pytest.mark.parametrize(("claims_json", "problem"), HOSTILE_CLAIMS, ids=HOSTILE_IDS)
def test_hostile_claims_in_a_validly_signed_token_are_refused(
    claims_json: str, problem: AuthProblem
) -> None:
    with pytest.raises(AuthError) as error:
        hs256().verify(signed(claims_json))
    assert error.value.problem is problem
    json.dumps(error.value.message)  # the message can go into a JSON body as it is


def test_audience_and_issuer_are_checked_when_configured() -> None:
    verifier = TokenVerifier.from_key(secret=SECRET, audience="sse", issuer="https://auth")
    good = mint_token(SECRET, sub="u1", audience="sse", issuer="https://auth")
    assert verifier.verify(good).principal.user_id == "u1"
    for token in (
        mint_token(SECRET, sub="u1", audience="other", issuer="https://auth"),
        mint_token(SECRET, sub="u1", audience="sse", issuer="https://evil"),
        mint_token(SECRET, sub="u1"),
    ):
        with pytest.raises(AuthError) as error:
            verifier.verify(token)
        assert error.value.problem is AuthProblem.BAD_CLAIMS


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"secret": SECRET, "public_key_pem": b"x"}, "exactly one"),
        ({"secret": "short"}, "at least 32 bytes"),
    ],
)
def test_unusable_keys_are_refused_at_start(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenVerifier.from_key(**kwargs)  # type: ignore[arg-type]


def test_a_public_key_of_another_kind_is_refused() -> None:
    ed_pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="RSA key or an EC key"):
        TokenVerifier.from_key(public_key_pem=ed_pem)


def test_max_token_age_bounds_the_lifetime_and_asks_for_iat() -> None:
    verifier = TokenVerifier.from_key(secret=SECRET, max_age_seconds=600)
    now = time.time()
    verified = verifier.verify(mint_token(SECRET, sub="u1", ttl_seconds=600, now=now))
    assert verified.issued_at == int(now)
    for token in (
        mint_token(SECRET, sub="u1", ttl_seconds=601, now=now),
        signed(f'{{"sub": "u1", "exp": {SOON}}}'),  # no iat: its lifetime is unknown
        signed(f'{{"sub": "u1", "exp": {SOON}, "iat": true}}'),
    ):
        with pytest.raises(AuthError) as error:
            verifier.verify(token)
        assert error.value.problem is AuthProblem.BAD_CLAIMS
    # Unset, any lifetime will do, and iat is optional.
    assert hs256().verify(signed(f'{{"sub": "u1", "exp": {SOON}}}')).issued_at is None
