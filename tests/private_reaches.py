"""The tests of the router's reaches into libraries' objects, run on the older edges of the
versions ``pyproject.toml`` admits: ``python -m tests.private_reaches`` (``just private-reaches``).

The reaches: ``router/http/direct_body.py`` (hypercorn's stream, protocol and server, h11's
private ``ChunkedWriter``), ``direct_websocket.py`` and ``pong_watch.py`` (hypercorn's
``WSStream`` and its wsproto connection), ``router/bus/kafka.py`` (an aiokafka consumer's
``_client``, ``_fetcher``, closed when its stop is cut short; the topic probe goes through no
reach, on a public ``AIOKafkaClient`` of the bus's own) and ``kafka_metadata.py`` (aiokafka's
protocol types, which that client sends). The suite
itself runs on what the environment resolved, the newest versions admitted; this runs the tests
of each library (:data:`REACH_TESTS`) once per :data:`EDGES` entry, with that entry's exact
versions installed (``pip install --no-deps --target``, kept under ``.cache/private-reaches/``)
first on ``PYTHONPATH``. Each run is told what it must import (:data:`EXPECTED_ENV`);
``tests/conftest.py`` stops it before any test if it imported another version or another copy
(:func:`misimported`), so a path that silently falls through to the environment's copy cannot
pass.

Cost: three pytest runs of about 5 CPU seconds each, two at a time; the first run on a machine
downloads about 2 MB.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "private-reaches"

EXPECTED_ENV = "SSE_ROUTER_EXPECT_VERSIONS"
"""``name==version`` pairs, space-separated: what a run must import, from
:data:`EXPECTED_FROM_ENV`."""
EXPECTED_FROM_ENV = "SSE_ROUTER_EXPECT_VERSIONS_FROM"

HTTP_REACH_TESTS = (
    "tests/test_direct_body.py",
    "tests/test_direct_websocket.py",
    "tests/test_pong_watch.py",
    "tests/test_accept.py",  # hypercorn's server built from its parts, accepting in bulk
    # End to end through the reaches: the counted fallback, hypercorn's own pings answered and
    # watched, a stalled reader's writes under the send lock, hypercorn's close after ours.
    "tests/test_metrics.py::test_a_body_the_direct_writer_cannot_take_is_counted_and_logged_once_per_reason",
    "tests/test_websocket.py::test_heartbeats_are_pings_and_the_client_s_own_pings_are_answered",
    "tests/test_websocket.py::test_a_reader_that_stalls_is_cut_as_lagged_while_others_keep_receiving",
    "tests/test_websocket.py::test_shutdown_says_server_shutdown_then_closes_going_away",
)
KAFKA_REACH_TESTS = (
    # The topic probe's Metadata v10 types, sent on the bus's own client; the cleanup of a stop
    # cut short through the consumer's _client and _fetcher, and the probe client closed beside
    # it within the same deadline.
    "tests/test_kafka.py::test_every_event_type_goes_from_kafka_to_the_browser",
    "tests/test_kafka.py::test_a_consumer_whose_stop_is_cut_short_still_closes_its_connections",
    "tests/test_kafka.py::test_the_probe_client_is_closed_with_the_bus_even_when_its_stop_is_cut_short",
)
REACH_TESTS = {
    "hypercorn": HTTP_REACH_TESTS,
    "h11": HTTP_REACH_TESTS,
    "wsproto": HTTP_REACH_TESTS,
    "aiokafka": KAFKA_REACH_TESTS,
}
"""The tests that go through each library's reached objects."""


@dataclass(frozen=True)
class Edge:
    """One set of versions to run the reach tests on; what it does not name is the environment's.

    Names are distribution names that are also the import names (true of all four libraries)."""

    why: str
    versions: Mapping[str, str]

    @property
    def pins(self) -> list[str]:
        return [f"{name}=={version}" for name, version in sorted(self.versions.items())]

    @property
    def directory(self) -> Path:
        return CACHE / "_".join(f"{n}-{v}" for n, v in sorted(self.versions.items()))

    @property
    def tests(self) -> list[str]:
        """The tests of the libraries this edge names, each once."""
        return list(dict.fromkeys(t for name in self.versions for t in REACH_TESTS[name]))


# Each floor, each admitted minor and both ends of hypercorn 0.17 once; the newest of all is the
# suite's own. hypercorn asks any h11 and wsproto>=0.14, so pip allows each set.
# tests/test_private_reaches.py checks the table against pyproject.toml's ranges: a floor raised
# or a range widened there fails it until the table follows.
EDGES: tuple[Edge, ...] = (
    Edge(
        "every floor",
        {"hypercorn": "0.17.0", "h11": "0.16.0", "wsproto": "1.2.0", "aiokafka": "0.13.0"},
    ),
    Edge(
        "hypercorn 0.17's last patch under the newest wsproto",
        {"hypercorn": "0.17.3", "wsproto": "1.3.2"},
    ),
    Edge(
        "the newest hypercorn over the oldest wsproto",
        {"hypercorn": "0.18.0", "wsproto": "1.2.0"},
    ),
)


def misimported(expected: str, directory: str) -> list[str]:
    """What this process imports otherwise than ``expected`` (see :data:`EXPECTED_ENV`) says:
    another version, or a copy from elsewhere than ``directory``. Empty when all is as said."""
    wrong = []
    for pin in expected.split():
        name, _, version = pin.partition("==")
        module = importlib.import_module(name)
        found = importlib.metadata.version(name)
        where = Path(module.__file__ or "").resolve()
        if found != version or not where.is_relative_to(Path(directory).resolve()):
            wrong.append(f"{pin} expected from {directory}, imported {found} from {where}")
    return wrong


def install(edge: Edge) -> Path:
    """The edge's directory, its versions installed into it unless they already are.

    Installed beside it first and renamed into place, so an interrupted install never passes
    for a complete one."""
    if edge.directory.is_dir():
        return edge.directory
    partial = edge.directory.with_name(edge.directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    only = ["--no-deps", "--only-binary=:all:", "--no-compile", "--target", str(partial)]
    subprocess.run([*pip, *only, *edge.pins], check=True)
    partial.rename(edge.directory)
    return edge.directory


def run(edge: Edge, pytest_args: list[str]) -> tuple[Edge, int, str]:
    """Run the edge's tests on its versions; their exit status and output."""
    directory = install(edge)
    path = os.pathsep.join(
        p for p in (str(directory), str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    env = {
        **os.environ,
        "PYTHONPATH": path,
        EXPECTED_ENV: " ".join(edge.pins),
        EXPECTED_FROM_ENV: str(directory),
    }
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*command, *pytest_args, *edge.tests],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    return edge, done.returncode, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="edges run at once (default 2)")
    args, pytest_args = parser.parse_known_args()  # the rest goes to each pytest run, e.g. -x
    for edge in EDGES:  # one at a time: pip's cache is not for concurrent writers
        install(edge)
    for stale in set(CACHE.iterdir()) - {edge.directory for edge in EDGES}:
        shutil.rmtree(stale)  # a set the table no longer names
    failed = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for edge, status, output in pool.map(lambda e: run(e, pytest_args), EDGES):
            print(f"== {' '.join(edge.pins)} ({edge.why}): exit {status}", flush=True)
            print(output.rstrip(), flush=True)
            if status != 0:
                failed.append(edge)
    print(f"private reaches: {len(EDGES) - len(failed)} of {len(EDGES)} version sets green")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
