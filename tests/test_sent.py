"""What a session counts of its writes, its first words and its last, on their own: plain calls,
the observer, the random draw and the clock given (router/core/sent.py, serving.hello,
goodbye.last_words)."""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given
from hypothesis import strategies as st

from router.core.cursor import Cursor, EventIdentity
from router.core.events import ContentUpdateEvent
from router.core.goodbye import last_words
from router.core.history import Replay
from router.core.inbox import Delivery, SharedBatch
from router.core.observer import CloseReason, NoObserver, Transport
from router.core.scope import Scope
from router.core.sent import Sent
from router.core.serving import hello


class Writes(NoObserver):
    def __init__(self) -> None:
        self.writes: list[tuple[dict[str, int], float | None, int]] = []
        self.transports: set[Transport] = set()

    def sent(
        self,
        events: Mapping[str, int],
        oldest_age: float | None,
        queued: int,
        transport: Transport,
    ) -> None:
        self.writes.append((dict(events), oldest_age, queued))
        self.transports.add(transport)


def delivery(offset: int, occurred_at: float | None) -> Delivery:
    where = EventIdentity("memory", "0", (offset,), "e1")
    message = ContentUpdateEvent(novel_id="n1", content_version=offset, scope=Scope(novel_id="n1"))
    return Delivery(offset, where, Cursor.of(where), message, occurred_at)


def test_a_live_write_is_counted_with_the_age_of_its_oldest_event() -> None:
    observer = Writes()
    sent = Sent(observer, wall_clock=lambda: 100.0)
    assert (
        sent.count_each([delivery(0, 97.5), delivery(1, None), delivery(2, 99.0)], queued=4) is None
    )
    assert sent.count_shared(SharedBatch([delivery(3, None)]), queued=0) is None
    assert observer.writes == [({"content.updated": 3}, 2.5, 4), ({"content.updated": 1}, None, 0)]
    assert sent.events_sent == 4


def test_a_write_of_one_event_is_counted_as_any_write_is() -> None:
    """A targeted event is a write of one (counted without building a Counter): the same report,
    its age or none, as the write of several."""
    observer = Writes()
    sent = Sent(observer, wall_clock=lambda: 100.0)
    assert sent.count_each([delivery(0, 97.5)], queued=2) is None
    assert sent.count_each([delivery(1, None)], queued=0) is None
    assert observer.writes == [({"content.updated": 1}, 2.5, 2), ({"content.updated": 1}, None, 0)]
    assert sent.events_sent == 2


def test_a_replayed_slice_and_the_router_s_own_words_are_counted_without_an_age() -> None:
    observer = Writes()
    sent = Sent(observer)
    sent.count_replayed([delivery(0, 1.0).message, delivery(1, 1.0).message])
    error = last_words(CloseReason.LAGGED, 1000)
    assert error is not None
    sent.count_own(error, queued=7)
    assert observer.writes == [({"content.updated": 2}, None, 0), ({"sse.error": 1}, None, 7)]
    assert sent.events_sent == 2  # the router's own words are not the client's events


@given(draws=st.lists(st.floats(0.0, 0.999), min_size=1, max_size=50), rate=st.floats(0.0, 1.0))
def test_a_write_is_sampled_for_the_log_exactly_when_its_draw_falls_under_the_rate(
    draws: list[float], rate: float
) -> None:
    pending = iter(draws)
    sent = Sent(NoObserver(), sample_rate=rate, draw=lambda: next(pending))
    sampled = [sent.count_each([delivery(n, None)], queued=0) for n in range(len(draws))]
    assert [fields is not None for fields in sampled] == [
        bool(rate) and draw < rate for draw in draws
    ]
    for fields in sampled:
        assert fields in (None, {"sse_event": "content.updated", "id": None, "in_write": 1})


def test_the_hello_says_what_the_resume_gave() -> None:
    at = Cursor.of(EventIdentity("memory", "0", (1,), "e1"))
    assert hello(2000, at, None, "c", 0.0).replay == "none"
    assert hello(2000, at, Replay([], truncated=False), "c", 0.0).replay == "complete"
    truncated = hello(2000, None, Replay([], truncated=True), "c", 9.0)
    assert (truncated.replay, truncated.position, truncated.expires_at) == ("truncated", None, 9.0)


@given(spread=st.integers(0, 5000), drawn=st.integers(0, 5000))
def test_a_shutdown_s_retry_is_the_hint_plus_the_drawn_share_of_its_spread(
    spread: int, drawn: int
) -> None:
    share = min(drawn, spread)
    event = last_words(CloseReason.SERVER_SHUTDOWN, 1000, spread, lambda low, high: share)
    assert event is not None
    assert event.retry == 1000 + (share if spread else 0)


def test_only_the_reasons_a_client_should_hear_have_last_words() -> None:
    assert last_words(None, 1000) is None
    assert last_words(CloseReason.CLIENT, 1000) is None
    assert last_words(CloseReason.ERROR, 1000) is None
    lagged = last_words(CloseReason.LAGGED, 1000, 500, lambda low, high: high)
    assert lagged is not None
    assert lagged.retry is None  # the spread is a shutdown's only


def test_every_report_says_the_stream_s_transport() -> None:
    observer = Writes()
    sent = Sent(observer, Transport.WEBSOCKET)
    sent.count_each([delivery(0, None)], queued=0)
    sent.count_replayed([delivery(1, None).message])
    error = last_words(CloseReason.LAGGED, 1000)
    assert error is not None
    sent.count_own(error, queued=0)
    assert observer.transports == {Transport.WEBSOCKET}
