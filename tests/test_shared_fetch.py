"""One fetch answering every caller of the same key while it is under way
(``actors/shared_fetch.py``), under trio's mock clock."""

from __future__ import annotations

import trio
import trio.testing

from actors.shared_fetch import SharedFetches


class Source:
    """A fetch that takes a second, counting its calls; ``fail`` makes the next one raise."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def fetch(self, key: str) -> list[str]:
        self.calls += 1
        failing, self.fail = self.fail, False
        await trio.sleep(1)
        if failing:
            raise OSError("the cache went away")
        return [key, str(self.calls)]


async def test_callers_of_one_key_under_way_share_one_fetch(
    autojump_clock: trio.abc.Clock,
) -> None:
    fetches = SharedFetches[str, list[str]]()
    source = Source()
    got: list[list[str]] = []

    async def ask(key: str) -> None:
        got.append(await fetches.get(key, lambda: source.fetch(key)))

    async with trio.open_nursery() as nursery:
        for key in ("a", "a", "a", "b"):
            nursery.start_soon(ask, key)
    assert source.calls == 2
    assert fetches.shared == 2
    answers_a = [answer for answer in got if answer[0] == "a"]
    assert len(answers_a) == 3
    assert all(answer is answers_a[0] for answer in answers_a)  # the very same answer
    await ask("a")  # answered already: a later caller fetches anew
    assert source.calls == 3
    assert got[-1] == ["a", "3"]


async def test_callers_waiting_on_a_fetch_cut_short_fetch_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The caller fetching is cancelled: one of those waiting fetches for the rest."""
    fetches = SharedFetches[str, list[str]]()
    source = Source()
    got: list[list[str]] = []

    async def ask() -> None:
        got.append(await fetches.get("a", lambda: source.fetch("a")))

    first = trio.CancelScope()

    async def ask_first() -> None:
        with first:
            await ask()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask_first)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(3):
            nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        first.cancel()
    assert source.calls == 2
    assert got == [["a", "2"]] * 3


async def test_a_fetch_that_fails_is_tried_again_by_each_waiting_caller_in_turn(
    autojump_clock: trio.abc.Clock,
) -> None:
    fetches = SharedFetches[str, list[str]]()
    source = Source()
    source.fail = True
    got: list[list[str]] = []
    errors: list[OSError] = []

    async def ask() -> None:
        try:
            got.append(await fetches.get("a", lambda: source.fetch("a")))
        except OSError as error:
            errors.append(error)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(ask)
    assert len(errors) == 1  # the caller whose own fetch failed
    assert source.calls == 2
    assert got == [["a", "2"]] * 2


async def test_a_waiting_caller_cancelled_leaves_the_fetch_to_the_others(
    autojump_clock: trio.abc.Clock,
) -> None:
    fetches = SharedFetches[str, list[str]]()
    source = Source()
    got: list[list[str]] = []

    async def ask() -> None:
        got.append(await fetches.get("a", lambda: source.fetch("a")))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.5):
            await ask()
    assert source.calls == 1
    assert got == [["a", "1"]]
    await ask()  # nothing is kept once answered
    assert source.calls == 2
