"""The outbox relay actor: rows of an outbox table, published to the bus, then deleted.

At least once: rows are deleted (or marked) only after the bus took them, in the same
transaction that held them. A relay that dies in between leaves them to be published again; the
adapter drops the second copy by its ``event_id`` (a row without one is given
``outbox:{table}:{id}``). Database calls run in worker threads, so the trio loop never blocks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from actors.publisher import CircuitOpenError, Publisher
from actors.settings import RelaySettings as RelaySettings
from router.bus.base import BusUnavailableError
from router.core.backoff import Backoff
from router.core.control import is_control, parse_control
from router.core.envelope import EnvelopeError, Publishable, parse_envelope
from router.core.observer import NO_OBSERVER, Observer
from router.outbox.base import Claim, OutboxStore

log = logging.getLogger(__name__)
WAIT_SLICE_SECONDS = 1.0
CLOSE_TIMEOUT_SECONDS = 5.0
"""How long closing the store may take on the way out, shielded; then its thread is left to it."""


@dataclass
class RelayStats:
    """What the relay has counted, for tests and waits; the counts also go to its observer."""

    published: int = 0
    rejected: int = 0
    failures: int = 0
    rounds: int = 0
    round_done: trio.Event = field(default_factory=trio.Event, repr=False)


class Relay:
    def __init__(
        self,
        open_store: Callable[[], OutboxStore],
        bus: Publisher,
        settings: RelaySettings = RelaySettings(),
        observer: Observer = NO_OBSERVER,
    ) -> None:
        self.open_store = open_store
        self.bus = bus
        self.settings = settings
        self.stats = RelayStats()
        self.observer = observer

    async def run(self) -> None:
        """Relay until cancelled; a failing database or bus is retried with backoff.

        While the bus's breaker is open (``bus`` is a :class:`~actors.publisher.GuardedPublisher`)
        the relay waits as long as the breaker says, the rows it held given back.

        Cancellation waits for the database call in progress (at most a second when waiting for
        new rows), then the store is closed.
        """
        backoff = Backoff(0.2, 10.0)
        while True:
            try:
                store = await trio.to_thread.run_sync(self.open_store)
            except Exception as error:
                self._failed()
                log.warning("outbox unavailable", extra={"error": str(error)})
                await trio.sleep(backoff.next_delay())
                continue
            try:
                backoff.reset()
                await self._relay_with(store)
            except Exception as error:
                self._failed()
                log.warning("outbox relay failed", extra={"error": repr(error)})
                await trio.sleep(backoff.next_delay())
            finally:
                with trio.move_on_after(CLOSE_TIMEOUT_SECONDS, shield=True):
                    await trio.to_thread.run_sync(store.close, abandon_on_cancel=True)

    def _failed(self) -> None:
        self.stats.failures += 1
        self.observer.relay_failed()

    async def _relay_with(self, store: OutboxStore) -> None:
        while True:
            moved = 0
            try:
                for part in range(self.settings.parts):
                    moved += await self.relay_part(store, part)
            except CircuitOpenError as error:
                # The bus has been failing: the rows went back to the outbox, and the breaker
                # says when a publish may try again (the store stays open meanwhile).
                self._failed()
                await trio.sleep(error.wait)
                continue
            self.stats.rounds += 1
            self.stats.round_done.set()
            self.stats.round_done = trio.Event()
            if not moved:
                await self._wait_for_rows(store)

    async def _wait_for_rows(self, store: OutboxStore) -> None:
        """Until a notification, or ``poll_seconds``; in waits of at most a second each, so a
        cancelled relay is not held by a worker thread for a whole poll interval."""
        deadline = trio.current_time() + self.settings.poll_seconds
        while (left := deadline - trio.current_time()) > 0:
            if await trio.to_thread.run_sync(store.wait_for_rows, min(left, WAIT_SLICE_SECONDS)):
                return

    async def relay_part(self, store: OutboxStore, part: int) -> int:
        """Publish one batch of one part; the number of rows it took.

        The publish is shielded from cancellation, so a stopping relay does not leave it
        half-known, but for ``publish_timeout_seconds`` at most: a bus that takes no more (a
        full memory bus) cannot hold shutdown. A publish that does not finish in time raises
        :class:`BusUnavailableError` (the relay backs off and tries again), or, when the relay
        was cancelled meanwhile, ``Cancelled``; either way the rows are given back.
        """
        claim = await trio.to_thread.run_sync(store.claim, part, self.settings.batch)
        if claim is None or not claim.rows:
            return 0
        envelopes, rejected = self._envelopes(store.table, claim)
        try:
            if envelopes:
                timeout = self.settings.publish_timeout_seconds
                with trio.move_on_after(timeout, shield=True) as publishing:
                    await self.bus.publish(envelopes)
                if publishing.cancelled_caught:
                    raise BusUnavailableError(f"the bus took no publish within {timeout} s")
        except BaseException:
            await trio.to_thread.run_sync(store.abandon, claim)
            raise
        await trio.to_thread.run_sync(store.settle, claim)
        published = len(claim.rows) - rejected
        self.stats.published += published
        self.observer.relay_published(published)
        if rejected:
            self.stats.rejected += rejected
            self.observer.relay_rejected(rejected)
        return len(claim.rows)

    def _envelopes(self, table: str, claim: Claim) -> tuple[list[Publishable], int]:
        """What the rows of ``claim`` publish: each event once, each control envelope once per
        partition it must reach (a back end writes a change of rights in the transaction that
        made it, and the relay carries it in the rows' order), and how many rows were rejected."""
        envelopes: list[Publishable] = []
        rejected = 0
        for row_id, text in claim.rows:
            try:
                body = json.loads(text)
                if is_control(body):
                    envelopes += parse_control(body).placements()
                    continue
                if isinstance(body, dict) and body.get("event_id") is None:
                    body["event_id"] = f"outbox:{table}:{row_id}"
                # Sealed: NaN or a lone surrogate is refused here (the bus could never carry it),
                # and the bus does not encode it again.
                envelopes.append(parse_envelope(body).sealed())
            except (ValueError, EnvelopeError) as error:
                # Published, it would only be rejected downstream; settled with the rest (and
                # counted once they are), logged.
                rejected += 1
                log.warning(
                    "outbox row rejected",
                    extra={"table": table, "id": row_id, "reason": str(error)},
                )
        return envelopes, rejected
