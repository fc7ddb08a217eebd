"""`just bench --workloads overload`: one router offered well past what it can serve, and how it
degrades and recovers: admitted, refused, shed, lost.

The load, every stream a browser tab played by the C load client (``bench/sseclient.c
--browser``, on one epoll loop per role, so the clients take little of the cores the router
runs on): ``keepers`` streams that read everything; ``laggards`` that read nothing for the first
``stall`` seconds through a small receive window (their sockets fill, then their inboxes: the
write backlog, by bytes); a connect storm of ``storm`` new streams arriving during the burst; and
a publisher sending high-priority broadcasts (``System.NotificationSent``, padded to ``payload``
bytes) at ``rate`` a second for ``seconds``. Every tab behaves as a browser's ``EventSource``:
when its stream ends (refused as ``overloaded``, shed or cut as ``lagged``) it waits the
``retry:`` it was given and reconnects with its ``Last-Event-ID``. At the end every tab must have
every event published after its first one: what it misses is *lost*, and for high-priority
events that must be 0.

A measurement, not a test: it prints figures and asserts nothing. The router runs with a small
``--session-buffer`` and short ladder periods so that it climbs within the run; the publisher
and the rung watcher are Python (a few requests a second).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import trio

from router.auth import mint_token

if TYPE_CHECKING:
    from bench.run import Server

SECRET = "benchmark-only-secret-0123456789abcdef"
ROUTER_OPTIONS = (
    "--session-buffer", "64", "--overload-rise-seconds", "0.5", "--overload-calm-seconds", "3",
    "--overload-loop-lag-ms", "100",
)  # fmt: skip
"""What the overload run adds to the router's command line (bench/run.py ``start_router``)."""
LAGGARD_WINDOW = 4096
"""The laggards' socket receive buffer, in bytes (the kernel doubles it)."""
PUBLISH_TICK_SECONDS = 0.05
CATCH_UP_SECONDS = 120.0
"""After the last event, how long the clients get to have it (a refused one waits up to 15 s,
and is refused again until the ladder is down to ``coalesce``); one still short of it then is
counted in ``not_caught_up``, not as lost."""


@dataclass
class OverloadLoad:
    keepers: int = 1000
    laggards: int = 500
    storm: int = 2000
    rate: float = 50.0
    seconds: float = 20.0
    stall: float = 8.0
    payload: int = 4096

    @property
    def events(self) -> int:
        """Events published: ``rate`` a second for ``seconds``, and a last one."""
        return int(self.rate * self.seconds) + 1


@dataclass
class Run:
    port: int
    load: OverloadLoad
    published: int = -1
    """The highest sequence number published."""
    final: int | None = None
    """Set when the last event is published."""
    levels: list[tuple[float, int]] = field(default_factory=list)
    load_ended: float = math.nan
    """When the publisher's burst ended (``time.monotonic``); the last event comes later."""
    socket_bytes_max: float = 0.0
    """The most bytes seen waiting on one stream's socket (``sse_stream_bytes_waiting_max``)."""
    router_bytes_max: float = 0.0
    """The most bytes seen waiting in the router for all streams together."""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Tabs:
    """One role's tabs: a C load client process in ``--browser`` mode."""

    def __init__(
        self, client: Path, server: Server, count: int, load: OverloadLoad, options: Sequence[str]
    ) -> None:
        command = [
            str(client), "--browser", *options, "127.0.0.1", str(server.port),
            server.stream_path, str(count), str(load.events),
            str(load.seconds + CATCH_UP_SECONDS), server.auth_header,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    async def opened(self) -> None:
        """Once every tab had its first answer (admitted or refused)."""
        assert self.process.stderr is not None
        line = await trio.to_thread.run_sync(self.process.stderr.readline)
        if line.strip() != "open":
            self.process.kill()
            raise RuntimeError(f"the load client did not open its streams: {line!r}")

    async def report(self) -> dict[str, float]:
        """What its tabs lived through, once each has the last event or the time is up."""
        out, _ = await trio.to_thread.run_sync(self.process.communicate)
        figures: dict[str, float] = json.loads(out)
        return figures


async def publish(run: Run, http: httpx.AsyncClient, tabs: int) -> Counter[int]:
    """Broadcast at ``rate`` for ``seconds`` (a batch every 50 ms, as a busy back end would),
    then, once all ``tabs`` have a stream open (a tab keeps one open until it has the last
    event), a last event, so that every tab's run ends with it; a refused publish is sent again
    after its ``Retry-After``."""
    token = mint_token(SECRET, sub="bench-publisher", roles=["publisher"])
    headers = {"Authorization": f"Bearer {token}"}
    padding = "x" * run.load.payload
    statuses: Counter[int] = Counter()

    async def send(seqs: range) -> None:
        body = [
            {
                "event_type": "System.NotificationSent",
                "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "scope": {"broadcast": True},
                "payload": {
                    "level": "info",
                    "title": f"{seq}:{time.time_ns()}",
                    "message": padding,
                },
            }
            for seq in seqs
        ]
        while True:
            answer = await http.post("/api/v1/events", json=body, headers=headers)
            statuses[answer.status_code] += 1
            if answer.status_code == 202:
                run.published = max(run.published, seqs[-1])
                return
            await trio.sleep(float(answer.headers.get("Retry-After", "1")))

    start = trio.current_time()
    seq = tick = 0
    last = run.load.events - 1
    while seq < last:
        elapsed = trio.current_time() - start
        due = min(last, int(elapsed * run.load.rate) + 1)  # events that should be out by now
        if due > seq:
            await send(range(seq, due))
            seq = due
        tick += 1
        await trio.sleep_until(start + tick * PUBLISH_TICK_SECONDS)
    run.load_ended = time.monotonic()
    with trio.move_on_after(CATCH_UP_SECONDS / 2):
        while scraped((await http.get("/metrics")).text, "sse_current_connections") < tabs:
            await trio.sleep(0.25)
    await send(range(last, last + 1))
    run.final = last
    return statuses


async def watch_levels(run: Run, http: httpx.AsyncClient, started: float) -> None:
    """Poll the ladder's rung and the bytes waiting, and say how the run goes on stderr every
    few seconds."""
    polls = 0
    while True:
        text = (await http.get("/metrics")).text
        level = int(scraped(text, "sse_overload_level"))
        run.levels.append((time.monotonic() - started, level))
        run.socket_bytes_max = max(
            run.socket_bytes_max, scraped(text, 'sse_stream_bytes_waiting_max{where="socket"}')
        )
        run.router_bytes_max = max(
            run.router_bytes_max, scraped(text, 'sse_stream_bytes_waiting{where="router"}')
        )
        polls += 1
        if polls % 12 == 0:
            print(
                f"overload: {time.monotonic() - started:5.1f} s, rung {level},"
                f" published {run.published},"
                f" streams {scraped(text, 'sse_current_connections'):.0f},"
                f" behind {scraped(text, 'sse_streams_behind'):.0f}",
                file=sys.stderr,
            )
        await trio.sleep(0.25)


def scraped(text: str, name: str) -> float:
    """The sum of the samples of ``name`` (with any labels), or of the one sample ``name``
    names with its labels."""
    if "{" in name:
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


async def overload_run(client: Path, server: Server, load: OverloadLoad) -> dict[str, float]:
    run = Run(server.port, load)
    started = time.monotonic()
    cpu_before = server.cpu_seconds()
    async with (
        httpx.AsyncClient(base_url=run.base, timeout=30) as control,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(watch_levels, run, control, started)
        keepers = Tabs(client, server, load.keepers, load, ())
        await keepers.opened()
        # The laggards' sockets take little before they stop the router's writes, as a phone's
        # on a bad network would; the others' are the system's.
        laggards = Tabs(
            client, server, load.laggards, load,
            ("--stall", str(load.stall), "--window", str(LAGGARD_WINDOW)),
        )  # fmt: skip
        await laggards.opened()
        publishing = trio.Event()
        statuses: Counter[int] = Counter()

        async def publish_all() -> None:
            tabs = load.keepers + load.laggards + load.storm
            statuses.update(await publish(run, control, tabs))
            publishing.set()

        nursery.start_soon(publish_all)
        await trio.sleep(load.stall / 2)  # the storm comes while the laggards back up
        storm = Tabs(client, server, load.storm, load, ("--spread", str(load.stall / 2)))
        with trio.move_on_after(load.seconds + CATCH_UP_SECONDS):
            await publishing.wait()
        reports = [await tabs.report() for tabs in (keepers, laggards, storm)]
        for role, report in zip(("keepers", "laggards", "storm"), reports, strict=True):
            print(f"overload: {role}: {json.dumps(report)}", file=sys.stderr)
        # Recovery: the ladder back at its first rung.
        with trio.move_on_after(120):
            while not run.levels or run.levels[-1][1] != 0:
                await trio.sleep(0.25)
        await trio.sleep(0.5)  # one more poll at rung 0
        metrics = (await control.get("/metrics")).text
        nursery.cancel_scope.cancel()
    # Back down to normal after the load ended: the first poll at rung 0 after the last above it.
    above = [t for t, level in run.levels if level > 0]
    recovered_at = next(
        (t for t, level in run.levels if above and t > above[-1] and level == 0), math.nan
    )

    def total(name: str) -> float:
        return sum(report[name] for report in reports)

    return {
        "offered_streams": total("clients"),
        "admitted_streams": total("admitted"),
        "refused_overloaded": total("refused_overloaded"),
        "clients_refused": total("clients_refused"),
        "shed_by_ladder": scraped(metrics, "sse_streams_shed_total"),
        "lagged_by_inbox": scraped(metrics, 'sse_queue_overflow_total{policy="disconnected"}'),
        "ended_lagged": total("ended_lagged"),
        "reconnects": total("attempts") - total("clients"),
        "events_published": load.events if run.final is not None else run.published + 1,
        "lost_high_priority": total("lost"),
        "duplicates": total("duplicates"),
        "not_caught_up": total("not_caught_up"),
        "highest_rung": max((level for _, level in run.levels), default=0),
        "recovered_after_s": max(0.0, recovered_at - (run.load_ended - started)),
        "publishes_refused": sum(n for status, n in statuses.items() if status != 202),
        "socket_bytes_max_kib": run.socket_bytes_max / 1024,
        "router_bytes_max_kib": run.router_bytes_max / 1024,
        "router_cpu_seconds": server.cpu_seconds() - cpu_before,
        "clients_cpu_seconds": total("client_cpu_seconds"),
    }


def run_overload(
    client: Path, server: Server, load: OverloadLoad | None = None
) -> dict[str, float]:
    """The overload run against a router already listening (bench/run.py ``start_router``)."""
    return trio.run(overload_run, client, server, load or OverloadLoad())
