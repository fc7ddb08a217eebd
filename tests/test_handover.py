"""A session's hand-over to a new scope on its own, the way h11 tests its connection.

No trio, no event loop, no private fields: :class:`router.core.handover.Handover` is driven through
the calls the hub (begin, finish, narrow) and the writer (take) make, over any interleaving the hub
allows (a change begins only once the one before it finished: ``Hub.rescope`` is awaited).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.cursor import Cursor, EventIdentity
from router.core.handover import Handover
from router.core.history import Replay


def at(offset: int) -> Cursor:
    return Cursor.of(EventIdentity("memory", "0", (offset,), "e1"))


def test_nothing_to_write_until_a_change_is_made() -> None:
    handover = Handover()
    assert not handover.holding
    assert handover.take() is None


def test_a_change_is_held_back_until_its_replay_is_given_then_taken_once() -> None:
    handover = Handover()
    handover.begin()
    assert handover.holding
    assert handover.take() is None
    replay = Replay([], truncated=False)
    handover.finish(replay, at(3), "answer")
    assert not handover.holding
    change = handover.take()
    assert change is not None
    assert (change.replay, change.position, change.answers) == (replay, at(3), ("answer",))
    assert handover.take() is None


def test_a_narrowing_with_nothing_under_way_is_a_notice_with_nothing_to_replay() -> None:
    handover = Handover()
    handover.narrow("narrowed")
    change = handover.take()
    assert change is not None
    assert (change.replay, change.position, change.answers) == (None, None, ("narrowed",))


def test_a_narrowing_while_a_replay_is_fetched_comes_with_that_change_s_answer() -> None:
    handover = Handover()
    handover.begin()
    handover.narrow("narrowed")
    assert handover.take() is None
    handover.finish(None, at(1), "answer")
    change = handover.take()
    assert change is not None
    assert change.answers == ("narrowed", "answer")


def test_a_change_begun_before_the_one_before_was_taken_holds_both_back() -> None:
    """The earlier change's replay would move the client's cursor past what the new scope
    admits and the old did not: only the later replay is written, with both answers."""
    handover = Handover()
    handover.begin()
    handover.finish(Replay([], truncated=False), at(1), "first")
    handover.begin()
    assert handover.holding
    assert handover.take() is None
    later = Replay([], truncated=True)
    handover.finish(later, at(2), "second")
    change = handover.take()
    assert change is not None
    assert (change.replay, change.position, change.answers) == (later, at(2), ("first", "second"))


Step = tuple[str, int]
steps = st.lists(
    st.tuples(st.sampled_from(["begin", "finish", "narrow", "take"]), st.integers(0, 1_000)),
    max_size=40,
)


@settings(max_examples=500, deadline=None)
@given(steps=steps)
def test_every_answer_and_notice_is_taken_once_in_call_order_and_never_while_held(
    steps: list[Step],
) -> None:
    handover = Handover()
    fetching = False
    given_order: list[object] = []
    taken: list[object] = []
    latest_replay: Replay | None = None
    untaken_finish = False

    def take() -> None:
        nonlocal untaken_finish
        change = handover.take()
        if fetching:
            assert change is None, "taken while a replay is fetched"
        if change is None:
            return
        if untaken_finish:  # the replay is the one of the last finish since the last take
            assert change.replay is latest_replay
        else:
            assert change.replay is None  # a narrowing alone replays nothing
        untaken_finish = False
        taken.extend(change.answers)

    for index, (action, value) in enumerate(steps):
        assert handover.holding == fetching
        if action == "begin" and not fetching:
            handover.begin()
            fetching = True
        elif action == "finish" and fetching:
            latest_replay = Replay([], truncated=bool(value % 2))
            answer = ("answer", index)
            handover.finish(latest_replay, at(value), answer)
            given_order.append(answer)
            fetching, untaken_finish = False, True
        elif action == "narrow":
            notice = ("notice", index)
            handover.narrow(notice)
            given_order.append(notice)
        elif action == "take":
            take()
    if fetching:
        handover.finish(None, at(0))
        fetching, latest_replay, untaken_finish = False, None, True
    take()
    assert handover.take() is None
    assert taken == given_order
