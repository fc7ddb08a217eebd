"""The oracle on its own: hand-made histories whose verdict is known."""

from __future__ import annotations

from router.core.permissions import Principal, StreamFilter
from router.core.scope import Scope
from tests.faults.oracle import (
    Client,
    Connection,
    Delivered,
    LostAt,
    Published,
    WindowOfLast,
    figures_by_group,
    judge,
    table,
)

EPOCH = "abc"


def event(key: str, offset: int, at: float, partition: str = "0", **scope: object) -> Published:
    return Published(
        key,
        "content.updated" if "novel_id" in scope else "system.notification-sent",
        Scope.from_json(scope or {"broadcast": True}),
        sent_at=at,
        acked_at=at + 0.01,
        identity=f"memory@{EPOCH}:{partition}:{offset}",
    )


def got(*events: Published) -> list[Delivered]:
    assert all(e.identity for e in events)
    return [Delivered(e.key, e.identity or "") for e in events]


READER = Principal("u1", frozenset({"n1"}))
A = event("a", 0, 1.0, novel_id="n1")
B = event("b", 1, 2.0, novel_id="n1")
C = event("c", 2, 3.0, novel_id="n1")
SECRET_NOVEL = event("s", 3, 2.5, novel_id="n2")
PUBLISHED = [A, B, SECRET_NOVEL, C]


def reader(*connections: Connection, stream_filter: StreamFilter | None = None) -> Client:
    return Client("u1/0", "busy", READER, stream_filter or StreamFilter(), list(connections))


def opened(at: float, *delivered: Delivered, last: str | None = None) -> Connection:
    return Connection(opened_at=at, last_event_id=last, status=200, delivered=list(delivered))


def truncated_resume(at: float, *delivered: Delivered, last: str) -> Connection:
    """A resume answered ``history-truncated``, then ``delivered``."""
    connection = opened(at, last=last)
    connection.truncate()
    connection.delivered += delivered
    return connection


def test_every_permitted_event_once_in_order_is_clean() -> None:
    verdict = judge(reader(opened(0.5, *got(A, B)), opened(2.8, *got(C), last="x")), PUBLISHED)
    assert verdict.clean
    assert (verdict.expected, verdict.received, verdict.reconnects) == (3, 3, 1)


def test_a_missing_event_is_lost_and_a_repeat_is_a_duplicate() -> None:
    verdict = judge(reader(opened(0.5, *got(A, C)), opened(3.5, *got(C))), PUBLISHED)
    assert verdict.lost == ["b"]
    assert verdict.duplicated == ["c"]
    assert not verdict.clean


def test_an_event_the_client_may_not_see_is_a_leak_and_so_is_one_nobody_published() -> None:
    stranger = Delivered("zzz", f"memory@{EPOCH}:0:9")
    verdict = judge(reader(opened(0.5, *got(A, SECRET_NOVEL, B, C), stranger)), PUBLISHED)
    assert verdict.leaked == ["s", "zzz"]


def test_the_filter_narrows_what_is_owed_and_what_may_arrive() -> None:
    only_notifications = StreamFilter(event_types=frozenset({"system.notification-sent"}))
    verdict = judge(reader(opened(0.5, *got(A)), stream_filter=only_notifications), PUBLISHED)
    assert verdict.expected == 0
    assert verdict.leaked == ["a"]


def test_events_before_the_first_stream_are_optional_but_once() -> None:
    assert judge(reader(opened(1.5, *got(B, C))), PUBLISHED).clean  # a: before it connected
    assert judge(reader(opened(1.5, *got(A, B, C))), PUBLISHED).clean  # routed after it did
    assert judge(reader(opened(1.5, *got(A, A, B, C))), PUBLISHED).duplicated == ["a"]


def test_order_is_checked_per_partition_only() -> None:
    other = event("o", 0, 2.2, partition="1", novel_id="n1")
    published = [A, B, other, C]
    assert judge(reader(opened(0.5, *got(A, other, B, C))), published).clean
    verdict = judge(reader(opened(0.5, *got(B, A, other, C))), published)
    assert verdict.out_of_order == ["a"]


def test_a_truncation_with_nothing_gone_is_unjustified() -> None:
    truncated = truncated_resume(2.8, *got(A, B, C), last=f"memory@{EPOCH}:0:1")
    verdict = judge(reader(opened(0.5, *got(A, B)), truncated), PUBLISHED)
    assert verdict.truncations_unjustified == 1
    assert not verdict.duplicated  # after a truncation the client refetched: repeats are fine


def test_a_truncation_after_lost_history_is_justified_and_excuses_what_was_gone() -> None:
    lost = LostAt()
    lost.lose(2.7, epochs=[EPOCH])
    truncated = truncated_resume(3.5, last=f"memory@{EPOCH}:0:0")
    verdict = judge(reader(opened(0.5, *got(A)), truncated), PUBLISHED, lost)
    assert verdict.truncations_justified == 1
    assert verdict.excused == 1  # b was gone when it came back
    assert verdict.lost == ["c"]  # c was published after the loss: still owed


def test_a_loss_without_a_truncation_is_never_excused() -> None:
    lost = LostAt()
    lost.lose(2.7, epochs=[EPOCH])
    verdict = judge(reader(opened(0.5, *got(A)), opened(3.5, *got(C))), PUBLISHED, lost)
    assert verdict.lost == ["b"]  # gone, and the client was not told: a silent loss


def test_a_truncation_is_justified_only_by_what_the_client_was_owed() -> None:
    """A quiet client's cursor lags behind events it may not see; if only those were gone, the
    truncation cost it a refetch for nothing (issue 13, item 7)."""
    lost = LostAt()
    lost.lose(2.7)  # no epoch named: a window that moved, not a reset
    truncated = truncated_resume(3.5, *got(C), last=f"memory@{EPOCH}:0:1")
    caught_up = reader(opened(0.5, *got(A, B)), truncated)
    assert judge(caught_up, PUBLISHED, lost).truncations_unjustified == 1
    behind = reader(opened(0.5, *got(A)), truncated)
    assert judge(behind, PUBLISHED, lost).truncations_justified == 1


def test_an_unanswered_publish_may_arrive_but_is_not_owed() -> None:
    maybe = Published("m", "content.updated", Scope(novel_id="n1"), 2.1, 9.0, uncertain=True)
    published = [*PUBLISHED, maybe]
    assert judge(reader(opened(0.5, *got(A, B, C))), published).clean
    arrived = Delivered("m", f"memory@{EPOCH}:0:7")
    assert judge(reader(opened(0.5, *got(A, B, C), arrived)), published).clean


def test_a_refused_stream_is_no_start() -> None:
    refused = Connection(opened_at=0.5, last_event_id=None, status=200, refused=True)
    verdict = judge(reader(refused, opened(2.5, *got(C))), PUBLISHED)
    assert verdict.clean  # owed from 2.5 on, not from the refused attempt at 0.5


def test_figures_sum_per_group_and_print_as_a_table() -> None:
    clean = judge(reader(opened(0.5, *got(A, B, C))), PUBLISHED)
    lossy = judge(reader(opened(0.5, *got(A, C))), PUBLISHED)
    lossy.group = "quiet"
    lines = figures_by_group("drops", [clean, lossy], published=len(PUBLISHED))
    assert [line.label for line in lines] == ["drops / busy", "drops / quiet", "drops / all"]
    assert (lines[-1].expected, lines[-1].received, lines[-1].lost) == (6, 5, 1)
    printed = table(lines)
    assert printed.splitlines()[0].startswith("| fault / group")
    assert "drops / all" in printed


def test_a_window_of_the_last_events_drops_the_older_ones() -> None:
    window = WindowOfLast(2, PUBLISHED)
    assert window.gone(A, at=9.0)  # b, s and c came after it
    assert not window.gone(C, at=9.0)
    assert not window.gone(A, at=2.2)  # only b had been published after it then


def test_a_truncation_in_the_middle_of_a_live_stream_splits_it_where_it_came() -> None:
    """A Redis that lost its history under a live stream: the router says so in the stream."""
    lost = LostAt()
    lost.lose(2.7, epochs=[EPOCH])
    live = opened(0.5, *got(A, B))
    live.truncate(at=2.8, cursor=f"memory@{EPOCH}:0:1")
    live.delivered += got(B, C)  # replayed after it: no duplicate
    verdict = judge(reader(live), PUBLISHED, lost)
    assert verdict.clean
    assert verdict.truncations_justified == 1
    nothing_lost = opened(0.5, *got(A, B))
    nothing_lost.truncate(at=2.8, cursor=f"memory@{EPOCH}:0:1")
    assert judge(reader(nothing_lost), PUBLISHED).truncations_unjustified == 1
