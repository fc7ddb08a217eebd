"""What an idle stream costs the router in memory: ``python -m bench.memory [--streams N]``.

Starts the router (embedded bus, as ``just bench``) with its heap probe on
(``SSE_ROUTER_HEAP_PROBE``, see router/heap_probe.py), weighs it, opens N idle streams with the C
load client (``--websocket``: WebSockets), lets it settle, weighs it again, and prints:

- the RSS per stream: the router's resident set after minus before, over the streams opened;
- the Python heap per stream, from tracemalloc inside the router (after minus before);
- the top allocation sites by file and line with the streams open, bytes per stream each.

A second run without the probe (``--no-probe``) gives the RSS alone, without tracemalloc's own
overhead in it. Memory figures hardly depend on the machine's load; this measures and asserts
nothing (tests/test_stream_memory.py holds the bound).
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from pathlib import Path

from bench.run import Server, build_client, raise_open_files_limit, run_client, start_router


def heap_report(server: Server, path: Path) -> list[str]:
    """Ask the router for its heap report (SIGUSR2) and wait for the file it writes."""
    path.unlink(missing_ok=True)
    server.process.send_signal(signal.SIGUSR2)
    for _ in range(600):
        if path.exists():
            return path.read_text().splitlines()
        time.sleep(0.1)
    raise RuntimeError("the router wrote no heap report")


def traced_total(report: list[str]) -> int:
    _, size, _ = report[0].split()
    return int(size)


def measure(streams: int, transport: str, probe: bool) -> None:
    raise_open_files_limit()
    client = build_client()
    report_path = Path(tempfile.mkdtemp(prefix="sse-router-heap-")) / "heap.txt"
    if probe:
        os.environ["SSE_ROUTER_HEAP_PROBE"] = str(report_path)
    else:
        os.environ.pop("SSE_ROUTER_HEAP_PROBE", None)
    server = start_router()
    try:
        time.sleep(1.0)
        rss_before = server.rss_kib()
        before = heap_report(server, report_path) if probe else []
        measured: dict[str, object] = {}

        def opened() -> None:
            time.sleep(2.0)  # let the router settle, then weigh it
            measured["rss"] = server.rss_kib()
            if probe:
                measured["after"] = heap_report(server, report_path)

        result = run_client(
            client,
            server,
            streams,
            0,
            3.0,
            opened,
            transport="websocket" if transport == "websocket" else "sse",
        )
        count = max(1, int(result["opened"]))
        rss_after = int(str(measured["rss"]))
        print(f"transport {transport}, streams opened {count}, failed {int(result['failed'])}")
        print(f"load average {os.getloadavg()[0]:.2f} (memory hardly depends on it)")
        print(
            f"RSS: {rss_before / 1024:.1f} MiB before, {rss_after / 1024:.1f} MiB after: "
            f"{(rss_after - rss_before) * 1024 / count:,.0f} bytes per stream"
            + (" (with tracemalloc's own overhead)" if probe else "")
        )
        if probe:
            after = measured["after"]
            assert isinstance(after, list)
            heap = (traced_total(after) - traced_total(before)) / count
            print(f"Python heap (tracemalloc): {heap:,.0f} bytes per stream")
            for kind, title in (("line", "sites"), ("file", "files"), ("owner", "owners")):
                print(f"top {title} with the streams open (bytes, objects per stream, where):")
                for line in after[1:]:
                    if line.startswith(kind + " "):
                        _, size, objects, where = line.split(" ", 3)
                        print(f"  {int(size) / count:8,.0f} {int(objects) / count:6.1f}  {where}")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--websocket", action="store_true", help="WebSockets, not SSE")
    parser.add_argument("--no-probe", action="store_true", help="RSS only, no tracemalloc")
    args = parser.parse_args()
    measure(args.streams, "websocket" if args.websocket else "sse", probe=not args.no_probe)


if __name__ == "__main__":
    main()
