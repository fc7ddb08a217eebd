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

The report also charges each sample to a *place* (under :data:`PLACES`): the outermost frame of
the router's own code in the trio task interrupted (the task it ran for: a session, the adapter,
a route), the innermost frame of the router's code and the innermost frame of all (what ran),
each as ``file:function``; and it gives each trio task's exact CPU time and steps, by name
(:class:`TaskSteps`, under :data:`TASKS` and :data:`STEPS`). The targeted workload prints those,
for no one stage table fits every path an event takes.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import trio

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
_places: Counter[str] = Counter()
"""CPU seconds charged to each place (:func:`place_of`)."""
PLACES = "places"
"""The report's key for :data:`_places` (milliseconds)."""
OWN_CODE = ("/router/", "/actors/")
_task_steps: Counter[str] = Counter()
"""CPU seconds of the trio tasks' steps, by task name (:class:`TaskSteps`)."""
_task_step_counts: Counter[str] = Counter()
"""The steps of each task name, counted."""
STEPS = "task steps"
"""The report's key for :data:`_task_step_counts` (counts)."""
TASKS = "tasks"
"""The report's key for :data:`_task_steps` (milliseconds; ``between steps``: the rest of the
main thread's CPU, trio's scheduler and epoll, measured the same way)."""
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


def _spelled(frame: FrameType) -> str:
    filename = frame.f_code.co_filename
    for root in (*OWN_CODE, "/site-packages/", "/lib/python"):
        if root in filename:
            filename = filename.rsplit(root, 1)[1]
            if root in OWN_CODE:
                filename = root.strip("/") + "/" + filename
            break
    return f"{filename}:{frame.f_code.co_name}"


def place_of(frame: FrameType | None) -> str:
    """``task | innermost router frame | innermost frame`` of ``frame``'s stack. The task is the
    outermost frame of the router's own code in the trio task that ran (below trio's run loop),
    or that task's first frame when none is the router's; ``-`` for none."""
    innermost = _spelled(frame) if frame is not None else "-"
    task, own, first = "-", "-", "-"
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.endswith("trio/_core/_run.py"):
            break  # the run loop that resumed the task
        first = _spelled(frame)
        if any(root in filename for root in OWN_CODE):
            task = first
            own = first if own == "-" else own
        frame = frame.f_back
    return f"{task if task != '-' else first} | {own} | {innermost}"


def _sample(signum: int, frame: FrameType | None) -> None:
    """Charge the CPU time since the last sample to the stage interrupted. A handler runs only
    between two bytecodes, so one long C call (a syscall, a regex) is one late sample: weighing
    it by the time elapsed, not by one tick, keeps the total equal to the process's CPU time."""
    global _last_sample
    now = time.process_time()
    if _collecting_since is None:  # during a collection, the time is the collector's (below)
        _samples[stage_of(frame)] += now - _last_sample
        _places[place_of(frame)] += now - _last_sample
    _last_sample = now


def _collector(phase: str, info: dict[str, int]) -> None:
    """The cyclic collector runs inside whatever allocated: its time is a stage of its own."""
    global _collecting_since, _last_sample
    now = time.process_time()
    if phase == "start":
        _samples[stage_of(sys._getframe(0).f_back)] += now - _last_sample
        _places[place_of(sys._getframe(0).f_back)] += now - _last_sample
        _collecting_since = now
    elif _collecting_since is not None:
        _samples[f"gc (generation {info['generation']})"] += now - _collecting_since
        _passes[info["generation"]] += 1
        _collecting_since = None
    _last_sample = now


class TaskSteps(trio.abc.Instrument):
    """Each task step's CPU time (the thread's, read before and after it), charged to its task's
    name: exact where the samples are statistical, at the price of two clock reads a step.

    Sampling charges a signal's whole interval to the frame that handles it, and the handler
    runs at the next bytecode boundary after a system call returns, so it leans toward the code
    right after one (a body's JSON parse after its read); a task's steps carry no such bias."""

    def __init__(self) -> None:
        self._step_began = 0.0
        self._between_began = time.thread_time()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._step_began = now = time.thread_time()
        _task_steps["between steps"] += now - self._between_began

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self._between_began = now = time.thread_time()
        name = task.name.split(" ", 1)[0]
        _task_steps[name] += now - self._step_began
        _task_step_counts[name] += 1


def _run_with_task_steps(original: Callable[..., Any]) -> Callable[..., Any]:
    """``trio.run`` with :class:`TaskSteps` among its instruments."""

    def run(*args: Any, instruments: Sequence[trio.abc.Instrument] = (), **kw: Any) -> Any:
        return original(*args, instruments=(*instruments, TaskSteps()), **kw)

    return run


def _report_to(out: str) -> None:
    # No sample may land while the tables are read (a dict changed during iteration): the
    # timer's signal waits until they are cleared.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPROF})
    try:
        _write_report(out)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGPROF})


def _write_report(out: str) -> None:
    global _last_sample
    milliseconds: dict[str, object] = {stage: seconds * 1000 for stage, seconds in _samples.items()}
    milliseconds[PASSES] = {str(generation): count for generation, count in _passes.items()}
    milliseconds[PLACES] = {place: seconds * 1000 for place, seconds in _places.items()}
    milliseconds[TASKS] = {task: seconds * 1000 for task, seconds in _task_steps.items()}
    _last_sample = time.process_time()
    milliseconds[STEPS] = dict(_task_step_counts)
    _task_steps.clear()
    _task_step_counts.clear()
    _samples.clear()
    _passes.clear()
    _places.clear()
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
    trio.run = _run_with_task_steps(trio.run)  # before the router's module reads it
    from router.cli import main as router_main

    sys.exit(router_main(argv))


if __name__ == "__main__":
    main()
