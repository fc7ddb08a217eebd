"""The front door, asked directly: every transport's admission rules, tested once.

The HTTP tests (test_e2e_stream, test_server) prove only the wiring: that the stream endpoint
hands its request to :class:`Admission` and says the answer the HTTP way.
"""

from __future__ import annotations

import datetime
import time
from collections import Counter
from collections.abc import Iterable, Sequence

import pytest

from router.admission import Admission, AdmissionSettings, Ask
from router.auth import (
    AuthProblem,
    CachedVerifier,
    TokenVerifier,
    Verified,
    Verifies,
    mint_token,
)
from router.core.address_rules import NO_RULES
from router.core.admission import (
    RETRY,
    STATUS,
    UNAUTHORIZED,
    Admitted,
    Credentials,
    OpenStreams,
    Reason,
    Refused,
    StreamCaps,
)
from router.core.control import AccessRules, parse_control
from router.core.cursor import parse_cursor
from router.core.events import ErrorCode
from router.core.observer import NoObserver
from router.core.permissions import Principal, StreamFilter
from router.core.refusal import RETRYABLE, Limit, Refusal

SECRET = "admission-tests-secret-0123456789abcdef"
PROXY = "10.0.0.254"


class RefusalCounter(NoObserver):
    """Counts what the front door reports: token refusals by reason, refusals by limit."""

    def __init__(self) -> None:
        self.tokens: Counter[Reason] = Counter()
        self.limits: Counter[Limit] = Counter()
        self.blocked = 0

    def refused_token(self, reason: Reason) -> None:
        self.tokens[reason] += 1

    def refused_by_limit(self, limit: Limit) -> None:
        self.limits[limit] += 1

    def address_blocked(self) -> None:
        self.blocked += 1


class Door:
    """An :class:`Admission` with a clock, open streams and a shutdown flag the test sets."""

    def __init__(
        self,
        *,
        max_streams: int = 10,
        connects_per_minute: int = 20,
        per_instance: int = 1000,
        per_address: int = 100,
        bad_tokens_per_minute: int = 60,
        verifier: Verifies | None = None,
    ) -> None:
        self.now = 1000.0
        self.open_streams: dict[str, int] = {}
        """Open streams by user."""
        self.open_from: dict[str, int] = {}
        """Open streams by address."""
        self.open_elsewhere = 0
        """Open streams on the instance besides those of ``open_streams``."""
        self.closing = False
        self.spread = 0.0
        self.rules = NO_RULES
        self.observer = RefusalCounter()
        self.access = AccessRules(3600)
        self.admission = Admission(
            verifier or TokenVerifier.from_key(secret=SECRET),
            AdmissionSettings(
                StreamCaps(per_instance, per_address, max_streams),
                connects_per_minute,
                bad_tokens_per_minute,
                trusted_proxies=(PROXY,),
            ),
            self.observer,
            streams_open=lambda user, address: OpenStreams(
                self.open_elsewhere + sum(self.open_streams.values()),
                self.open_from.get(address, 0),
                self.open_streams.get(user, 0),
            ),
            closing=lambda: self.closing,
            clock=lambda: self.now,
            access=self.access,
            spread=lambda: self.spread,
            address_rules=lambda: self.rules,
        )

    def admit(
        self,
        user: str = "u1",
        *,
        novels: Iterable[str] = ("n1",),
        query: Sequence[tuple[str, str]] = (),
        last_event_id: str | None = None,
        credentials: Credentials | None = None,
        peer: str = "192.0.2.1",
        forwarded_for: str | None = None,
        take: bool = True,
    ) -> Admitted | Refused:
        if credentials is None:
            token = mint_token(SECRET, sub=user, novels=novels)
            credentials = Credentials(authorization=f"Bearer {token}")
        ask = Ask(credentials, list(query), last_event_id, peer, forwarded_for)
        return self.admission.admit(ask, take=take)

    def counted(self, metric: str, label: str) -> int:
        if metric == "auth":
            return self.observer.tokens[Reason(label)]
        return self.observer.limits[Limit(label)]


def refused(answer: Admitted | Refused) -> Refused:
    assert isinstance(answer, Refused), answer
    return answer


def admitted(answer: Admitted | Refused) -> Admitted:
    assert isinstance(answer, Admitted), answer
    return answer


# -- what an admitted stream carries ---------------------------------------------------------------


def test_an_admitted_stream_carries_its_principal_filter_cursor_and_expiry() -> None:
    door = Door()
    cursor = "memory@e1:0:4"
    before = time.time()
    answer = admitted(
        door.admit(
            novels=["n1", "n2"],
            query=[("novel_id", "n2"), ("types", "content.updated")],
            last_event_id=cursor,
        )
    )
    assert answer.principal == Principal("u1", frozenset({"n1", "n2"}))
    assert answer.stream_filter == StreamFilter(frozenset({"n2"}), None, {"content.updated"})
    assert answer.resume_from == parse_cursor(cursor)
    assert before + 3600 - 1 <= answer.expires_at <= before + 3600 + 1


def test_the_header_cursor_wins_over_the_query_one() -> None:
    answer = admitted(
        Door().admit(query=[("last_event_id", "memory@e1:0:1")], last_event_id="memory@e1:0:2")
    )
    assert answer.resume_from == parse_cursor("memory@e1:0:2")


# -- credentials -----------------------------------------------------------------------------------


def test_the_token_comes_from_the_header_then_the_cookie_then_the_query() -> None:
    door = Door()
    good = mint_token(SECRET, sub="u1")
    for credentials in (
        Credentials(authorization=f"Bearer {good}", cookie="junk", query="junk"),
        Credentials(cookie=good, query="junk"),
        Credentials(cookie="", query=good),
        Credentials(query=good),
    ):
        assert admitted(door.admit(credentials=credentials)).principal.user_id == "u1"
    # A header is the one read when present, even when a good token comes beside it.
    answer = refused(door.admit(credentials=Credentials(authorization="Bearer", cookie=good)))
    assert answer.reason is Reason.MALFORMED


@pytest.mark.parametrize(
    ("credentials", "reason"),
    [
        (Credentials(), Reason.MISSING),
        (Credentials(cookie="", query=""), Reason.MISSING),
        (Credentials(authorization="Basic dTE6cHc="), Reason.MALFORMED),
        (Credentials(authorization="Bearer   "), Reason.MALFORMED),
        (Credentials(authorization="Bearer not-a-token"), Reason.MALFORMED),
        (Credentials(query=mint_token(SECRET, sub="u1", ttl_seconds=-10)), Reason.EXPIRED),
        (Credentials(query=mint_token("another-secret-0123456789abcdefgh", sub="u1")), None),
    ],
    ids=["none", "empty", "basic", "blank-bearer", "not-a-jwt", "expired", "other-key"],
)
def test_a_missing_or_bad_token_is_refused_for_its_reason_and_counted(
    credentials: Credentials, reason: Reason | None
) -> None:
    door = Door()
    answer = refused(door.admit(credentials=credentials))
    assert answer.reason is (reason or Reason.BAD_SIGNATURE)
    assert (answer.status, answer.retry_after, answer.to_retry()) == (401, None, None)
    assert door.counted("auth", answer.reason.value) == 1


def test_authenticating_alone_answers_the_verified_token_or_the_same_refusal() -> None:
    door = Door()
    token = mint_token(SECRET, sub="backend", roles=["publisher"])
    verified = door.admission.authenticate(
        Credentials(authorization=f"Bearer {token}"), "192.0.2.1"
    )
    assert not isinstance(verified, Refused)
    assert verified.principal.roles == {"publisher"}
    assert refused(door.admission.authenticate(Credentials(), "192.0.2.1")).reason is Reason.MISSING
    assert door.counted("auth", "missing") == 1


# -- the request -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "last_event_id", "parameter"),
    [
        ([("colour", "red")], None, "colour"),
        ([("types", "content.nope")], None, "types"),
        ([("session_id", "a"), ("session_id", "b")], None, "session_id"),
        ([("last_event_id", "not a cursor")], None, "last_event_id"),
        ([], "not a cursor", "Last-Event-ID"),
    ],
)
def test_a_bad_request_is_refused_naming_its_parameter(
    query: list[tuple[str, str]], last_event_id: str | None, parameter: str
) -> None:
    answer = refused(Door().admit(query=query, last_event_id=last_event_id))
    assert (answer.reason, answer.status, answer.parameter) == (Reason.BAD_REQUEST, 400, parameter)


def test_a_filter_beyond_the_tokens_grants_is_forbidden() -> None:
    door = Door()
    answer = refused(door.admit(novels=["n1"], query=[("novel_id", "n2")]))
    assert (answer.reason, answer.status, answer.parameter) == (Reason.FORBIDDEN, 403, "novel_id")
    token = mint_token(SECRET, sub="u1", sid="s1")
    other_session = door.admit(
        credentials=Credentials(query=token), query=[("token", token), ("session_id", "s2")]
    )
    assert refused(other_session).parameter == "session_id"


def test_the_token_is_checked_before_the_request_and_the_request_before_the_limits() -> None:
    door = Door(max_streams=1)
    door.open_streams["u1"] = 1
    bad_query = [("novel_id", "n9")]
    assert refused(door.admit(credentials=Credentials(), query=bad_query)).status == 401
    assert refused(door.admit(query=bad_query)).status == 403
    assert refused(door.admit()).status == 429
    assert door.counted("limit", "streams-per-user") == 1  # once: only the last reached it


# -- shutting down ---------------------------------------------------------------------------------


def test_a_stopping_instance_refuses_before_anything_else_and_asks_for_a_retry() -> None:
    door = Door()
    door.closing = True
    answer = refused(door.admit(credentials=Credentials()))
    assert (answer.reason, answer.status, answer.retry_after) == (Reason.SHUTTING_DOWN, 503, 1.0)
    assert answer.to_retry() == Refusal(ErrorCode.SHUTTING_DOWN, answer.message, 1.0)
    assert door.counted("auth", "missing") == 0


# -- the limits ------------------------------------------------------------------------------------


def test_a_user_at_the_stream_cap_is_refused_and_others_are_not() -> None:
    door = Door(max_streams=2)
    door.open_streams["u1"] = 2
    answer = refused(door.admit("u1"))
    assert (answer.reason, answer.status, answer.retry_after, answer.limit) == (
        Reason.TOO_MANY_STREAMS,
        429,
        10.0,
        Limit.STREAMS_PER_USER,
    )
    assert answer.message == "at most 2 open streams per user"
    assert door.counted("limit", "streams-per-user") == 1
    admitted(door.admit("u2"))
    door.open_streams["u1"] = 1
    admitted(door.admit("u1"))


def test_new_streams_are_rate_limited_per_user_until_the_window_frees() -> None:
    door = Door(connects_per_minute=2)
    admitted(door.admit(peer="192.0.2.1"))
    door.now += 20
    admitted(door.admit(peer="192.0.2.2"))
    answer = refused(door.admit(peer="192.0.2.3"))
    assert (answer.reason, answer.status, answer.limit) == (
        Reason.RATE_LIMITED,
        429,
        Limit.CONNECTS_PER_USER,
    )
    assert answer.retry_after == pytest.approx(40.0)  # until the first leaves the window
    assert door.counted("limit", "connects-per-user") == 1
    door.now += 40
    admitted(door.admit(peer="192.0.2.3"))


def test_a_user_refused_for_one_address_keeps_their_allowance_elsewhere() -> None:
    door = Door(connects_per_minute=2)
    for user in ("u1", "u1"):
        admitted(door.admit(user, peer="10.0.0.1"))
    assert refused(door.admit("u2", peer="10.0.0.1")).limit is Limit.CONNECTS_PER_ADDRESS
    for _ in range(2):  # u2, from home: the refusal above spent none of u2's allowance
        admitted(door.admit("u2", peer="10.0.0.2"))
    assert door.counted("limit", "connects-per-address") == 1
    assert door.counted("limit", "connects-per-user") == 0


def test_one_users_retries_do_not_spend_their_addresss_allowance() -> None:
    door = Door(connects_per_minute=3)
    for peer in ("10.0.0.1", "10.0.0.1", "10.0.0.2"):
        admitted(door.admit("u1", peer=peer))
    for _ in range(5):  # u1 is out of allowance, and keeps trying behind the office's NAT
        assert refused(door.admit("u1", peer="10.0.0.1")).limit is Limit.CONNECTS_PER_USER
    admitted(door.admit("u2", peer="10.0.0.1"))


def test_asking_without_taking_is_checked_alike_and_spends_no_allowance() -> None:
    door = Door(connects_per_minute=1)
    for _ in range(3):
        admitted(door.admit(take=False))
    admitted(door.admit())
    assert refused(door.admit(take=False)).reason is Reason.RATE_LIMITED


def test_behind_a_trusted_proxy_the_client_is_the_last_address_it_added() -> None:
    door = Door(connects_per_minute=1)
    admitted(door.admit("u1", peer=PROXY, forwarded_for="10.9.9.9, 192.0.2.1"))
    admitted(door.admit("u2", peer=PROXY, forwarded_for="10.9.9.9, 192.0.2.2"))
    same = refused(door.admit("u3", peer=PROXY, forwarded_for="192.0.2.2, 192.0.2.1"))
    assert same.limit is Limit.CONNECTS_PER_ADDRESS
    address = door.admission.address
    assert address(PROXY, " 10.9.9.9 ,192.0.2.7 ") == "192.0.2.7"
    assert address(PROXY, "192.0.2.7, ") == PROXY  # no address added: the proxy's own
    assert address(PROXY, None) == PROXY
    assert address("192.0.2.8", "192.0.2.7") == "192.0.2.8"  # not a proxy: not believed
    assert address(None) == "unknown"


# -- the bounded reasons ---------------------------------------------------------------------------


def test_every_reason_has_a_status_and_the_tokens_reasons_are_auths_problems() -> None:
    assert set(STATUS) == set(Reason)
    assert {r.value for r in UNAUTHORIZED} == {p.value for p in AuthProblem}
    assert {r.value for r in RETRY} == {c.value for c in RETRYABLE}
    assert {STATUS[r] for r in RETRY} == set(RETRYABLE.values())


@pytest.mark.parametrize("reason", list(Reason))
def test_a_refusal_has_a_retry_after_exactly_when_it_is_to_be_retried(reason: Reason) -> None:
    if reason in RETRY:
        Refused(reason, "later", retry_after=2.5)
        with pytest.raises(ValueError, match="retry-after"):
            Refused(reason, "later")
    else:
        assert Refused(reason, "no").to_retry() is None
        with pytest.raises(ValueError, match="retry-after"):
            Refused(reason, "no", retry_after=1.0)


def _a_second_from_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))


def _revoke_n1_for_u1(door: Door) -> None:
    """Put in force a revocation of n1 for u1, issued after every token the tests mint."""
    control = {
        "control": "revoke",
        "user_id": "u1",
        "novel_id": "n1",
        "issued_at": _a_second_from_now(),
    }
    door.access.apply(parse_control(control), now=time.time())


# -- controls in force -----------------------------------------------------------------------------


def test_a_revoked_grant_is_left_out_and_a_filter_asking_for_it_is_forbidden() -> None:
    door = Door()
    an_hour_ago = time.time() - 3600
    _revoke_n1_for_u1(door)
    old = Credentials(
        authorization="Bearer "
        + mint_token(SECRET, sub="u1", novels=["n1", "n2"], now=an_hour_ago, ttl_seconds=7200)
    )
    answer = admitted(door.admit(credentials=old))
    assert answer.principal.novels == {"n2"}
    assert answer.issued_at == int(an_hour_ago)
    asking = refused(door.admit(credentials=old, query=[("novel_id", "n1")]))
    assert (asking.reason, asking.status) == (Reason.FORBIDDEN, 403)


def test_a_disconnected_token_is_refused_as_revoked_and_counted() -> None:
    door = Door()
    door.access.apply(
        parse_control(
            {"control": "disconnect", "session_id": "s1", "issued_at": _a_second_from_now()}
        ),
        now=time.time(),
    )
    token = mint_token(SECRET, sub="u1", sid="s1")
    answer = refused(door.admit(credentials=Credentials(authorization=f"Bearer {token}")))
    assert (answer.reason, answer.status) == (Reason.REVOKED, 401)
    assert door.counted("auth", "revoked") == 1
    other = mint_token(SECRET, sub="u1", sid="s2")
    admitted(door.admit(credentials=Credentials(authorization=f"Bearer {other}")))


# -- the cache of verified tokens: it skips the signature, never the controls ----------------------


class CountingVerifier(TokenVerifier):
    """The real verifier, counting the tokens it was asked to check."""

    checked: list[str]

    def verify(self, token: str) -> Verified:
        self.checked.append(token)
        return super().verify(token)


def counting_verifier() -> CountingVerifier:
    real = TokenVerifier.from_key(secret=SECRET)
    counting = CountingVerifier(real.key, real.algorithm)
    object.__setattr__(counting, "checked", [])
    return counting


def test_a_token_admitted_again_is_not_verified_again() -> None:
    signatures = counting_verifier()
    door = Door(verifier=CachedVerifier(signatures, 100))
    token = mint_token(SECRET, sub="u1", novels=["n1"])
    credentials = Credentials(authorization=f"Bearer {token}")
    first = admitted(door.admit(credentials=credentials))
    again = admitted(door.admit(credentials=credentials))
    assert again.principal == first.principal
    assert again.expires_at == first.expires_at
    assert signatures.checked == [token]


def test_a_cached_token_is_refused_once_its_user_is_disconnected() -> None:
    signatures = counting_verifier()
    door = Door(verifier=CachedVerifier(signatures, 100))
    token = mint_token(SECRET, sub="u1", sid="s1")
    credentials = Credentials(authorization=f"Bearer {token}")
    admitted(door.admit(credentials=credentials))
    door.access.apply(
        parse_control(
            {"control": "disconnect", "session_id": "s1", "issued_at": _a_second_from_now()}
        ),
        now=time.time(),
    )
    answer = refused(door.admit(credentials=credentials))
    assert (answer.reason, answer.status) == (Reason.REVOKED, 401)
    assert signatures.checked == [token]  # refused from the cache: the control was asked anyway


def test_a_cached_token_loses_a_grant_revoked_after_it_was_cached() -> None:
    door = Door(verifier=CachedVerifier(TokenVerifier.from_key(secret=SECRET), 100))
    token = mint_token(SECRET, sub="u1", novels=["n1", "n2"], now=time.time() - 60)
    credentials = Credentials(authorization=f"Bearer {token}")
    assert admitted(door.admit(credentials=credentials)).principal.novels == {"n1", "n2"}
    _revoke_n1_for_u1(door)
    assert admitted(door.admit(credentials=credentials)).principal.novels == {"n2"}


def test_a_cached_token_past_its_expiry_is_verified_again_and_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [time.time()]
    signatures = counting_verifier()
    door = Door(verifier=CachedVerifier(signatures, 100, clock=lambda: now[0]))
    token = mint_token(SECRET, sub="u1", ttl_seconds=60)
    credentials = Credentials(authorization=f"Bearer {token}")
    admitted(door.admit(credentials=credentials))
    now[0] += 61  # past its exp, by the cache's clock and by pyjwt's

    class Later(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> Later:
            return cls.fromtimestamp(now[0], tz)

    monkeypatch.setattr("jwt.api_jwt.datetime", Later)
    answer = refused(door.admit(credentials=credentials))
    assert (answer.reason, answer.status) == (Reason.EXPIRED, 401)
    assert signatures.checked == [token, token]
