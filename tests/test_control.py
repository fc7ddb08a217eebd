"""The pure rules of access control: control envelopes, their routes, and what they take away."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.bus.base import partition_key
from router.core.control import (
    CLOCK_SKEW_SECONDS,
    AccessRules,
    Control,
    ControlAction,
    Effect,
    effect_on,
    is_control,
    parse_control,
)
from router.core.cursor import EventIdentity
from router.core.envelope import EnvelopeError, EnvelopeProblem
from router.core.mapping import convert_batch
from router.core.permissions import Principal, StreamFilter

T = "2026-12-01T12:00:00Z"
T_SECONDS = 1796126400.0  # T as seconds since the epoch
HOUR = 3600.0


def revoke(user: str = "u1", novel: str | None = "n1", session: str | None = None) -> Control:
    fields = {"user_id": user, "novel_id": novel, "session_id": session}
    return parse_control(
        {"control": "revoke", "issued_at": T, **{k: v for k, v in fields.items() if v}}
    )


def disconnect(user: str | None = "u1", session: str | None = None) -> Control:
    fields = {"user_id": user, "session_id": session}
    return parse_control(
        {"control": "disconnect", "issued_at": T, **{k: v for k, v in fields.items() if v}}
    )


def test_the_fixture_time_is_what_it_says() -> None:
    assert revoke().issued_seconds == T_SECONDS


def test_a_control_envelope_round_trips_and_is_told_from_an_event() -> None:
    control = revoke()
    assert parse_control(control.to_bytes()) == control
    assert is_control(json.loads(control.to_bytes()))
    assert not is_control({"event_type": "Content.Updated"})


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("[1]", EnvelopeProblem.NOT_AN_OBJECT),
        ("{", EnvelopeProblem.NOT_JSON),
        ({"control": "grant", "user_id": "u1", "novel_id": "n1", "issued_at": T}, "bad-field"),
        ({"control": "revoke", "user_id": "u1", "issued_at": T}, "missing-field"),
        ({"control": "revoke", "novel_id": "n1", "issued_at": T}, "missing-field"),
        (
            {
                "control": "revoke",
                "user_id": "u1",
                "novel_id": "n",
                "session_id": "s",
                "issued_at": T,
            },
            "missing-field",
        ),
        ({"control": "disconnect", "issued_at": T}, "missing-field"),
        ({"control": "disconnect", "user_id": "u1", "novel_id": "n1", "issued_at": T}, "bad-field"),
        ({"control": "revoke", "user_id": "u1", "novel_id": "n1"}, "missing-field"),
        (
            {"control": "revoke", "user_id": "u1", "novel_id": "n1", "issued_at": "noon"},
            "bad-field",
        ),
        ({"control": "revoke", "user_id": "u 1", "novel_id": "n1", "issued_at": T}, "bad-field"),
        ({"control": "revoke", "user_id": 7, "novel_id": "n1", "issued_at": T}, "bad-field"),
        (
            {"control": "revoke", "user_id": "u1", "novel_id": "n1", "issued_at": T, "novels": []},
            "bad-field",
        ),
    ],
)
def test_a_malformed_control_envelope_is_refused_with_its_reason(
    body: object, problem: str
) -> None:
    raw = body if isinstance(body, str) else json.dumps(body)
    with pytest.raises(EnvelopeError) as refused:
        parse_control(raw)
    assert refused.value.problem == problem


def test_issued_at_defaults_only_when_the_caller_says_now() -> None:
    body = {"control": "disconnect", "user_id": "u1"}
    assert parse_control(body, now=T).issued_at == "2026-12-01T12:00:00.000000Z"


def test_a_revocation_rides_the_partitions_of_the_events_it_stops() -> None:
    """An event of n1 that u1 may see names n1 first or u1 first: both partitions carry it."""
    assert {partition_key(p.scope) for p in revoke().placements()} == {"u1", "n1"}
    assert {partition_key(p.scope) for p in revoke(novel=None, session="s1").placements()} == {
        "u1",
        "s1",
    }
    assert [partition_key(p.scope) for p in disconnect().placements()] == ["u1"]
    assert [partition_key(p.scope) for p in disconnect(None, "s1").placements()] == ["s1"]
    for placed in revoke().placements():
        assert placed.to_bytes() == revoke().to_bytes()


def test_convert_batch_keeps_controls_in_their_place_among_events() -> None:
    event = json.dumps(
        {
            "event_type": "Content.Updated",
            "occurred_at": T,
            "scope": {"novel_id": "n1"},
            "payload": {"novel_id": "n1", "content_version": 1},
        }
    )
    records = [
        (EventIdentity("memory", "0", (offset,), "e"), raw)
        for offset, raw in enumerate(
            [event, revoke().to_bytes(), b'{"control": "revoke"}', event, event]
        )
    ]
    batch = convert_batch(records)
    assert len(batch.events) == 3
    assert [(c.control, c.events_before) for c in batch.controls] == [(revoke(), 1)]
    assert [b.identity.offset for b in batch.bad_controls] == [(2,)]
    assert not batch.rejected  # no event was lost
    assert batch.cursor is not None
    assert batch.cursor.position("0") == (4,)


PRINCIPAL = Principal("u1", novels=frozenset({"n1", "n2"}), session_id="s1")
BEFORE, AFTER = T_SECONDS - 10, T_SECONDS + 1


def test_a_revoked_novel_is_gone_from_tokens_issued_before_it_only() -> None:
    rules = AccessRules(HOUR)
    assert rules.apply(revoke(), now=T_SECONDS)
    assert rules.narrow(PRINCIPAL, BEFORE, T_SECONDS).novels == {"n2"}
    assert rules.narrow(PRINCIPAL, None, T_SECONDS).novels == {"n2"}  # no iat: maybe before
    assert rules.narrow(PRINCIPAL, T_SECONDS - 0.5, T_SECONDS).novels == {"n2"}  # same second
    assert rules.narrow(PRINCIPAL, AFTER, T_SECONDS) is PRINCIPAL
    other = Principal("u2", novels=frozenset({"n1"}))
    assert rules.narrow(other, BEFORE, T_SECONDS) is other
    assert not rules.refuses(PRINCIPAL, BEFORE, T_SECONDS)


def test_a_revoked_session_grant_is_gone() -> None:
    rules = AccessRules(HOUR)
    rules.apply(revoke(novel=None, session="s1"), now=T_SECONDS)
    narrowed = rules.narrow(PRINCIPAL, BEFORE, T_SECONDS)
    assert (narrowed.session_id, narrowed.novels) == (None, PRINCIPAL.novels)


@pytest.mark.parametrize(
    ("control", "refused"),
    [
        (disconnect("u1"), True),
        (disconnect(None, "s1"), True),
        (disconnect("u1", "s1"), True),
        (disconnect("u1", "s2"), False),
        (disconnect("u2"), False),
        (disconnect(None, "s2"), False),
    ],
)
def test_a_disconnect_refuses_the_tokens_it_names_issued_before_it(
    control: Control, refused: bool
) -> None:
    rules = AccessRules(HOUR)
    rules.apply(control, now=T_SECONDS)
    assert rules.refuses(PRINCIPAL, BEFORE, T_SECONDS) is refused
    assert rules.refuses(PRINCIPAL, None, T_SECONDS) is refused
    assert not rules.refuses(PRINCIPAL, AFTER, T_SECONDS)


def test_controls_are_held_exactly_the_longest_token_lifetime() -> None:
    rules = AccessRules(HOUR)
    rules.apply(revoke(), now=T_SECONDS)
    rules.apply(disconnect("u9"), now=T_SECONDS)
    assert rules.held(T_SECONDS + HOUR - 0.001) == 2
    assert rules.narrow(PRINCIPAL, BEFORE, T_SECONDS + HOUR - 0.001).novels == {"n2"}
    assert rules.held(T_SECONDS + HOUR) == 0
    assert rules.narrow(PRINCIPAL, BEFORE, T_SECONDS + HOUR) is PRINCIPAL
    assert not rules.apply(revoke(), now=T_SECONDS + HOUR)  # stale: changes nothing, not kept
    assert rules.held(T_SECONDS + HOUR) == 0


def test_a_later_control_of_the_same_grant_holds_it_longer() -> None:
    rules = AccessRules(HOUR)
    later = parse_control({**revoke().to_json(), "issued_at": "2026-12-01T12:30:00Z"})
    rules.apply(revoke(), now=T_SECONDS)
    rules.apply(later, now=T_SECONDS + 1800)
    rules.apply(revoke(), now=T_SECONDS + 1800)  # an older copy changes nothing
    assert rules.held(T_SECONDS + HOUR) == 1
    assert rules.narrow(PRINCIPAL, T_SECONDS + 60, T_SECONDS + HOUR).novels == {"n2"}
    assert rules.held(T_SECONDS + 1800 + HOUR) == 0


def test_what_a_control_does_to_an_open_stream() -> None:
    everything = StreamFilter()
    assert effect_on(revoke(), PRINCIPAL, everything, BEFORE) is Effect.ACCESS_CHANGED
    assert effect_on(revoke(), PRINCIPAL, everything, AFTER) is None
    # A stream that follows only n2 never receives n1: it flows on.
    assert effect_on(revoke(), PRINCIPAL, StreamFilter(novel_ids=frozenset({"n2"})), BEFORE) is None
    assert effect_on(revoke(novel="n9"), PRINCIPAL, everything, BEFORE) is None
    assert effect_on(revoke(user="u2"), PRINCIPAL, everything, BEFORE) is None
    assert effect_on(revoke(novel=None, session="s1"), PRINCIPAL, everything, BEFORE) is (
        Effect.ACCESS_CHANGED
    )
    assert effect_on(disconnect("u1"), PRINCIPAL, everything, BEFORE) is Effect.DISCONNECTED
    assert effect_on(disconnect(None, "s1"), PRINCIPAL, everything, None) is Effect.DISCONNECTED
    assert effect_on(disconnect(None, "s2"), PRINCIPAL, everything, BEFORE) is None
    assert effect_on(disconnect("u1"), PRINCIPAL, everything, AFTER) is None


ids = st.sampled_from(["u1", "u2", "n1", "n2", "s1", "s2"])
controls = st.builds(
    lambda action, user, novel, session, minute: parse_control(
        {
            "control": action,
            **({"user_id": user} if user or action == "revoke" else {}),
            **(
                ({"novel_id": novel} if novel else {"session_id": session})
                if action == "revoke"
                else ({"session_id": session} if session or not user else {})
            ),
            "issued_at": f"2026-12-01T12:{minute:02d}:00Z",
        }
    ),
    st.sampled_from([a.value for a in ControlAction]),
    ids,
    st.one_of(st.none(), ids),
    ids,
    st.integers(0, 59),
)
principals = st.builds(
    Principal,
    ids,
    st.frozensets(ids),
    st.one_of(st.none(), ids),
)


@given(st.lists(controls, max_size=8), principals, st.one_of(st.none(), st.floats(0, 2e9)))
def test_no_control_ever_widens_a_principal(
    applied: list[Control], principal: Principal, issued_at: float | None
) -> None:
    rules = AccessRules(HOUR)
    for control in applied:
        rules.apply(control, now=T_SECONDS)
    narrowed = rules.narrow(principal, issued_at, T_SECONDS)
    assert narrowed.user_id == principal.user_id
    assert narrowed.roles == principal.roles
    assert narrowed.novels <= principal.novels
    assert narrowed.session_id in (None, principal.session_id)


def test_a_control_dated_ahead_of_the_clock_is_held_no_longer_than_hold_and_skew() -> None:
    rules = AccessRules(HOUR)
    ahead = parse_control({**revoke().to_json(), "issued_at": "2099-01-01T00:00:00Z"})
    rules.apply(ahead, now=T_SECONDS)
    assert rules.until(ahead, T_SECONDS) == T_SECONDS + CLOCK_SKEW_SECONDS + HOUR
    assert rules.held(T_SECONDS + CLOCK_SKEW_SECONDS + HOUR) == 0
