"""`python -m bench.event_steps`: the pure steps of a targeted event, without sockets or actors.

A publish of 100 targeted envelopes as the route takes it (the body parsed, each envelope
checked and sealed), each given its place on the embedded bus, converted by the adapter
(``convert_batch``, with the router's cursor moving), and counted as one stream's write of one
event. It prints the CPU (``time.process_time``) per event, the best of ``--repeats``: the part
of the served figure (``python -m bench.run --workloads targeted``) that is the router's own
Python, measured with far less of the machine's load in it. Sessions' wake-ups, writes and the
HTTP server are not in it.
"""

from __future__ import annotations

import argparse
import json
import time

from router.bus.memory import DEFAULT_PARTITIONS
from router.core.cursor import Cursor, EventIdentity
from router.core.envelope import Sealed, parse_envelope, parse_publish_body
from router.core.inbox import Delivery
from router.core.mapping import check_mappable, convert_batch
from router.core.observer import NoObserver
from router.core.sent import Sent

BATCH = 100
PARTITIONS = DEFAULT_PARTITIONS
"""As the embedded bus the served bench runs on: the router's cursor moves in one partition."""


def _body() -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return json.dumps(
        [
            {
                "event_type": "System.NotificationSent",
                "occurred_at": stamp,
                "scope": {"user_id": f"user-{n}"},
                "payload": {"level": "info", "title": f"{n}:{time.time_ns()}", "message": "b"},
            }
            for n in range(BATCH)
        ]
    ).encode()


def _publish_and_convert(body: bytes, start: int, cursor: Cursor | None, sent: Sent) -> Cursor:
    sealed: list[Sealed] = []
    for item in parse_publish_body(body):  # type: ignore[attr-defined]
        envelope = parse_envelope(item)
        check_mappable(envelope)
        sealed.append(envelope.sealed())
    records = [
        (EventIdentity("memory", str(n % PARTITIONS), (start + n,), "bench"), s.envelope)
        for n, s in enumerate(sealed)
    ]
    batch = convert_batch(records, cursor)
    for n, converted in enumerate(batch.events):
        delivery = Delivery(start + n, converted.identity, converted.cursor, converted.message, 1.0)
        sent.count_each([delivery], 0)
    assert batch.cursor is not None
    return batch.cursor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=200, help="publishes of 100 per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    body, sent = _body(), Sent(NoObserver())
    cursor, offset = None, 0
    for _ in range(20):  # warm up: the interpreter's caches, the cursor's partitions
        cursor = _publish_and_convert(body, offset, cursor, sent)
        offset += BATCH
    best = float("inf")
    for _ in range(args.repeats):
        started = time.process_time()
        for _ in range(args.batches):
            cursor = _publish_and_convert(body, offset, cursor, sent)
            offset += BATCH
        best = min(best, (time.process_time() - started) / (args.batches * BATCH))
    print(f"CPU per targeted event, pure steps (best of {args.repeats}): {best * 1e6:.1f} us")


if __name__ == "__main__":
    main()
