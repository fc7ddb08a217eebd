"""A debug-only look at what the router's Python heap holds: ``SSE_ROUTER_HEAP_PROBE=<file>``.

With the variable set, :func:`serve` starts :mod:`tracemalloc` before anything else is built and
runs :func:`dump_on_signal`: each ``SIGUSR2`` writes the traced total and the top allocation sites
by file and line to ``<file>`` (replaced each time). ``bench/memory.py`` uses it to say what each
open stream holds. tracemalloc roughly doubles the cost of every allocation, so this is never on
in production, and there is no flag for it: unset, nothing here runs and nothing is imported.
"""

from __future__ import annotations

import os
import signal
import tracemalloc
from pathlib import Path

import trio

ENVIRONMENT_VARIABLE = "SSE_ROUTER_HEAP_PROBE"
TOP_SITES = 20
TRACED_FRAMES = 1
"""Each allocation is charged to the line that made it (deeper traces cost far more memory)."""


def requested_path() -> Path | None:
    """Where the probe writes, or ``None`` when it is off."""
    value = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    return Path(value) if value else None


def start() -> None:
    if not tracemalloc.is_tracing():
        tracemalloc.start(TRACED_FRAMES)


def report(top: int = TOP_SITES) -> str:
    """The traced total, then the ``top`` sites by bytes (``line bytes count file:line``), then
    the ``top`` files (``file bytes count file``)."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__),)
    )
    by_line = snapshot.statistics("lineno")
    total = sum(stat.size for stat in by_line)
    count = sum(stat.count for stat in by_line)
    lines = [f"total {total} {count}"]
    for stat in by_line[:top]:
        frame = stat.traceback[0]
        lines.append(f"line {stat.size} {stat.count} {frame.filename}:{frame.lineno}")
    by_file = snapshot.statistics("filename")
    for stat in by_file[:top]:
        lines.append(f"file {stat.size} {stat.count} {stat.traceback[0].filename}")
    owners: dict[str, list[int]] = {}
    for stat in by_file:
        owned = owners.setdefault(owner(stat.traceback[0].filename), [0, 0])
        owned[0] += stat.size
        owned[1] += stat.count
    for name, (size, count) in sorted(owners.items(), key=lambda item: -item[1][0]):
        lines.append(f"owner {size} {count} {name}")
    return "\n".join(lines) + "\n"


def owner(filename: str) -> str:
    """Who a source file belongs to: an installed package, the router, or the standard library
    (attrs' generated methods are charged to the package of the class they were made for)."""
    if filename.startswith("<attrs generated"):
        return filename.split()[-1].split(".")[0].strip("<>")
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    for ours in ("/router/", "/actors/"):
        if ours in filename:
            return "router"
    return "standard library"


async def dump_on_signal(path: Path) -> None:
    """Write :func:`report` to ``path`` at each ``SIGUSR2``, until cancelled. The snapshot is taken
    on the loop (it stalls it for as long as it takes: a debug tool); the file is written in a
    thread, then moved into place, so a reader never sees half a report."""
    with trio.open_signal_receiver(signal.SIGUSR2) as signals:
        async for _ in signals:
            text = report()
            partial = path.with_suffix(path.suffix + ".partial")
            await trio.to_thread.run_sync(partial.write_text, text)
            await trio.to_thread.run_sync(partial.replace, path)
