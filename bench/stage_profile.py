"""Where a router process spends its CPU, by stage: a sampling profiler on CPU time.

``python -m bench.stage_profile OUT.json serve ...`` runs the router (``router.cli``) with a
``SIGPROF`` timer that fires every millisecond of the process's CPU time (user and system, so
not wall time: the figures hold on a busy machine) and charges each to the stage of the Python
stack it interrupted (see :data:`STAGES`). ``SIGUSR1`` writes the milliseconds of each stage so
far to ``OUT.json`` and starts counting again: the connect workload of ``bench/run.py``
(``--profile-stages``) sends it before and after a storm and divides by the connections.

A sample goes to the innermost frame of a stage the table names: JWT verification called from
the front door is ``jwt``, a socket write from hypercorn is ``socket``. Samples with no named
frame are the trio scheduler's (its loop, epoll, task switches) or, outside it, ``other``.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
from collections import Counter
from types import FrameType

INTERVAL_SECONDS = 0.001

STAGES: tuple[tuple[str, str], ...] = (
    # (a fragment of a frame's file name, its stage); the first that matches wins.
    ("/jwt/", "jwt"),
    ("/cryptography/", "jwt"),
    ("router/auth.py", "jwt"),
    ("router/core/token_cache.py", "jwt"),
    ("router/admission.py", "admission rules"),
    ("router/core/admission.py", "admission rules"),
    ("router/core/ratelimit.py", "admission rules"),
    ("router/core/stream_request.py", "admission rules"),
    ("router/core/address_rules.py", "admission rules"),
    ("router/core/control.py", "admission rules"),
    ("router/address_gate.py", "admission rules"),
    ("actors/registry.py", "registry and session"),
    ("actors/hub.py", "registry and session"),
    ("actors/session.py", "registry and session"),
    ("router/core/inbox.py", "registry and session"),
    ("router/core/serving.py", "registry and session"),
    ("router/http/direct_body.py", "first write"),
    ("actors/overload.py", "overload monitor"),
    ("/logging/", "logging"),
    ("router/logs.py", "logging"),
    ("/structlog/", "logging"),
    ("router/http/", "router http layer"),
    ("/quart_trio/", "quart"),
    ("/quart/", "quart"),
    ("/werkzeug/", "quart"),
    ("/h11/", "h11"),
    ("/hypercorn/", "hypercorn"),
    ("trio/_highlevel_serve_listeners.py", "accept"),
    ("trio/_socket.py", "socket"),
    ("trio/_highlevel_socket.py", "socket"),
)

_samples: Counter[str] = Counter()
"""CPU seconds charged to each stage."""
_passes: Counter[int] = Counter()
"""The collector's passes over each generation (router/collector.py freezes a storm's objects
so that there are next to none)."""
PASSES = "gc passes"
"""The report's key for :data:`_passes`: counts, not milliseconds."""
_last_sample = 0.0
_collecting_since: float | None = None


def stage_of(frame: FrameType | None) -> str:
    """The stage of the innermost frame of ``frame``'s stack that :data:`STAGES` names."""
    in_trio = False
    while frame is not None:
        filename = frame.f_code.co_filename
        for fragment, stage in STAGES:
            if fragment in filename:
                return stage
        in_trio = in_trio or "/trio/" in filename
        frame = frame.f_back
    return "trio scheduler" if in_trio else "other"


def _sample(signum: int, frame: FrameType | None) -> None:
    """Charge the CPU time since the last sample to the stage interrupted. A handler runs only
    between two bytecodes, so one long C call (a syscall, a regex) is one late sample: weighing
    it by the time elapsed, not by one tick, keeps the total equal to the process's CPU time."""
    global _last_sample
    now = time.process_time()
    if _collecting_since is None:  # during a collection, the time is the collector's (below)
        _samples[stage_of(frame)] += now - _last_sample
    _last_sample = now


def _collector(phase: str, info: dict[str, int]) -> None:
    """The cyclic collector runs inside whatever allocated: its time is a stage of its own."""
    global _collecting_since, _last_sample
    now = time.process_time()
    if phase == "start":
        _samples[stage_of(sys._getframe(0).f_back)] += now - _last_sample
        _collecting_since = now
    elif _collecting_since is not None:
        _samples[f"gc (generation {info['generation']})"] += now - _collecting_since
        _passes[info["generation"]] += 1
        _collecting_since = None
    _last_sample = now


def _report_to(out: str) -> None:
    global _last_sample
    milliseconds: dict[str, object] = {stage: seconds * 1000 for stage, seconds in _samples.items()}
    milliseconds[PASSES] = {str(generation): count for generation, count in _passes.items()}
    _last_sample = time.process_time()
    _samples.clear()
    _passes.clear()
    written = f"{out}.part"
    with open(written, "w") as report:
        json.dump(milliseconds, report, indent=1, sort_keys=True)
    os.replace(written, out)  # whole, for the harness that waits for it


def main() -> None:
    out, *argv = sys.argv[1:]
    signal.signal(signal.SIGPROF, _sample)
    signal.signal(signal.SIGUSR1, lambda signum, frame: _report_to(out))
    gc.callbacks.append(_collector)
    signal.setitimer(signal.ITIMER_PROF, INTERVAL_SECONDS, INTERVAL_SECONDS)
    from router.cli import main as router_main

    sys.exit(router_main(argv))


if __name__ == "__main__":
    main()
