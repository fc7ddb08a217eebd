"""The visibility rule, over every combination of scope fields, and the client filter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.events import SSEErrorEvent, SystemNotificationEvent, TaskProgressEvent
from router.core.permissions import Principal, StreamFilter, admits, is_visible, is_wanted
from router.core.scope import Scope

ME = Principal(user_id="u1", novels=frozenset({"n1"}), session_id="s1")

# user, novel, session named by the event ("-" = not named) -> visible to ME (u1, novels {n1}, s1)
VISIBILITY = """
-  -  s1  yes
-  -  s2  no
-  n1 -   yes
-  n1 s1  yes
-  n1 s2  no
-  n2 -   no
-  n2 s1  no
-  n2 s2  no
u1 -  -   yes
u1 -  s1  yes
u1 -  s2  yes
u1 n1 -   yes
u1 n1 s1  yes
u1 n1 s2  yes
u1 n2 -   no
u1 n2 s1  no
u1 n2 s2  no
u2 -  -   no
u2 -  s1  no
u2 -  s2  no
u2 n1 -   no
u2 n1 s1  no
u2 n1 s2  no
u2 n2 -   no
u2 n2 s1  no
u2 n2 s2  no
"""


def rows() -> list[tuple[Scope, bool]]:
    table = []
    for line in VISIBILITY.strip().splitlines():
        user, novel, session, verdict = line.split()
        scope = Scope(
            user_id=None if user == "-" else user,
            novel_id=None if novel == "-" else novel,
            session_id=None if session == "-" else session,
        )
        table.append((scope, verdict == "yes"))
    return table


def test_the_table_covers_every_routable_combination() -> None:
    assert len({scope for scope, _ in rows()}) == 3 * 3 * 3 - 1


@pytest.mark.parametrize(("scope", "visible"), rows(), ids=str)
def test_every_named_scope_field_must_be_granted(scope: Scope, visible: bool) -> None:
    assert is_visible(scope, ME) is visible


def test_a_broadcast_is_visible_to_everyone() -> None:
    assert is_visible(Scope(broadcast=True), ME)
    assert is_visible(Scope(broadcast=True), Principal(user_id="anyone"))


@pytest.mark.parametrize(
    ("scope", "visible"),
    [
        (Scope(session_id="s1"), False),
        (Scope(user_id="u1", session_id="s1"), True),
        (Scope(user_id="u1"), True),
    ],
)
def test_a_token_without_sid_sees_session_events_only_of_its_own_user(
    scope: Scope, visible: bool
) -> None:
    assert is_visible(scope, Principal(user_id="u1")) is visible


def test_a_token_without_novels_sees_no_novel_event() -> None:
    assert not is_visible(Scope(novel_id="n1"), Principal(user_id="u1"))
    assert not is_visible(Scope(user_id="u1", novel_id="n1"), Principal(user_id="u1"))


def progress(scope: Scope) -> TaskProgressEvent:
    return TaskProgressEvent(task_id="t1", progress=5, scope=scope)


@pytest.mark.parametrize(
    ("stream_filter", "scope", "wanted"),
    [
        (StreamFilter(), Scope(user_id="u1"), True),
        (StreamFilter(novel_ids=frozenset({"n1"})), Scope(novel_id="n1"), True),
        (StreamFilter(novel_ids=frozenset({"n1"})), Scope(novel_id="n2"), False),
        (StreamFilter(novel_ids=frozenset({"n1"})), Scope(user_id="u1"), True),
        (StreamFilter(session_id="s1"), Scope(user_id="u1", session_id="s1"), True),
        (StreamFilter(session_id="s1"), Scope(user_id="u1", session_id="s2"), False),
        (StreamFilter(session_id="s1"), Scope(user_id="u1"), True),
        (StreamFilter(event_types=frozenset({"task.progress-updated"})), Scope(user_id="u1"), True),
        (StreamFilter(event_types=frozenset({"content.updated"})), Scope(user_id="u1"), False),
    ],
)
def test_a_filter_narrows_only_the_events_that_name_its_dimension(
    stream_filter: StreamFilter, scope: Scope, wanted: bool
) -> None:
    assert is_wanted(progress(scope), stream_filter) is wanted


def test_event_types_narrow_broadcasts_too() -> None:
    notice = SystemNotificationEvent(
        level="info", title="t", message="m", scope=Scope(broadcast=True)
    )
    assert is_wanted(notice, StreamFilter())
    assert not is_wanted(notice, StreamFilter(event_types=frozenset({"content.updated"})))


def test_admits_needs_both_visibility_and_the_filter() -> None:
    mine = progress(Scope(user_id="u1", novel_id="n1"))
    assert admits(mine, ME, StreamFilter())
    assert not admits(mine, ME, StreamFilter(novel_ids=frozenset({"n9"})))
    assert not admits(progress(Scope(user_id="u2")), ME, StreamFilter())


def test_a_filter_cannot_widen_visibility() -> None:
    other_novel = progress(Scope(novel_id="n2"))
    assert not admits(other_novel, ME, StreamFilter(novel_ids=frozenset({"n2"})))


def test_an_unscoped_message_is_never_routed() -> None:
    error = SSEErrorEvent(code="lagged", message="too slow", retryable=True)
    assert not admits(error, ME, StreamFilter())


def maybe(*values: str) -> st.SearchStrategy[str | None]:
    return st.sampled_from([None, *values])


named_scopes = st.tuples(maybe("u1", "u2"), maybe("n1", "n2"), maybe("s1", "s2")).filter(any)
scopes = st.just(Scope(broadcast=True)) | named_scopes.map(lambda fields: Scope(*fields))
names = st.frozensets(st.sampled_from(["n1", "n2", "n3"]), max_size=2)
principals = st.builds(
    Principal, user_id=st.sampled_from(["u1", "u2"]), novels=names, session_id=maybe("s1", "s2")
)
filters = st.builds(
    StreamFilter,
    novel_ids=names,
    session_id=maybe("s1", "s2"),
    event_types=st.frozensets(st.sampled_from(["task.progress-updated", "system.notification"])),
)


@given(scope=scopes, principal=principals, stream_filter=filters)
def test_admits_decides_exactly_as_visible_and_wanted_do(
    scope: Scope, principal: Principal, stream_filter: StreamFilter
) -> None:
    """Whatever shortcut ``admits`` takes, it decides as the rule's two halves do."""
    message: TaskProgressEvent | SystemNotificationEvent = (
        SystemNotificationEvent(level="info", title="t", message="m", scope=scope)
        if scope.broadcast
        else progress(scope)
    )
    expected = is_visible(scope, principal) and is_wanted(message, stream_filter)
    assert admits(message, principal, stream_filter) is expected


@given(
    scope=scopes,
    principal=principals,
    stream_filter=filters,
    payloads=st.tuples(*[st.tuples(st.sampled_from(["t1", "t2", "x-9"]), st.integers(0, 100))] * 2),
)
def test_messages_alike_in_scope_and_name_are_admitted_alike(
    scope: Scope,
    principal: Principal,
    stream_filter: StreamFilter,
    payloads: tuple[tuple[str, int], tuple[str, int]],
) -> None:
    """What lets the adapter check a burst once per kind of event."""
    first, second = (
        SystemNotificationEvent(level="info", title=name, message=str(number), scope=scope)
        if scope.broadcast
        else TaskProgressEvent(task_id=name, progress=number, scope=scope)
        for name, number in payloads
    )
    assert admits(first, principal, stream_filter) is admits(second, principal, stream_filter)
