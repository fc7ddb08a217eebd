"""The design's walls, checked on the source: a pure core; actors touch no HTTP or broker."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = sorted((ROOT / "router" / "core").rglob("*.py"))
ACTORS = sorted((ROOT / "actors").rglob("*.py"))
HTTP_AND_BROKERS = {
    "quart",
    "quart_trio",
    "hypercorn",
    "redis",
    "aiokafka",
    "trio_asyncio",
    "psycopg",
    "sqlite3",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_core_has_modules_to_check() -> None:
    assert len(CORE) >= 5


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_imports_only_the_standard_library_and_itself(path: Path) -> None:
    outside = {
        name
        for name in imported_modules(path)
        if name.split(".")[0] not in sys.stdlib_module_names
        and not (name == "router.core" or name.startswith("router.core."))
    }
    assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


@pytest.mark.parametrize("path", ACTORS, ids=lambda p: p.name)
def test_actors_import_no_http_framework_or_broker_client(path: Path) -> None:
    forbidden = {n for n in imported_modules(path) if n.split(".")[0] in HTTP_AND_BROKERS}
    assert not forbidden, f"{path.relative_to(ROOT)} imports {sorted(forbidden)}"


def test_the_inbox_reaches_no_event_loop_and_no_actor() -> None:
    """The session's inbox is driven by the actor and tested without it: importing it, with all
    that it imports in turn, loads no trio, no actor, no HTTP framework and no broker client."""
    walled = sorted({"trio", "actors"} | HTTP_AND_BROKERS)
    probe = (
        "import sys, router.core.inbox; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({walled!r})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"


def test_admission_imports_no_http_framework() -> None:
    """The front door is every transport's: none of them may leak into it."""
    path = ROOT / "router" / "admission.py"
    forbidden = {n for n in imported_modules(path) if n.split(".")[0] in HTTP_AND_BROKERS}
    assert not forbidden, f"router/admission.py imports {sorted(forbidden)}"


def test_the_metrics_import_no_actor() -> None:
    """Counts reach ``/metrics`` one way: reported to the Observer, never read off an actor."""
    imported = imported_modules(ROOT / "router" / "metrics.py")
    actors = {name for name in imported if name.split(".")[0] == "actors"}
    assert not actors, f"router/metrics.py imports {sorted(actors)}"


def test_the_front_door_reports_to_the_observer_not_to_prometheus() -> None:
    """Admission's refusals reach ``/metrics`` the one way every count does: through the
    Observer, so the front door knows neither the metrics nor their client library."""
    imported = imported_modules(ROOT / "router" / "admission.py")
    reached = {n for n in imported if n == "router.metrics" or n.startswith("prometheus_client")}
    assert not reached, f"router/admission.py imports {sorted(reached)}"


def test_only_the_metrics_modules_import_prometheus() -> None:
    """No part of the router counts into a Prometheus object itself: the metrics modules
    (``router/metrics.py`` and its tallies, ``router/tally.py``) are the only ones that may."""
    allowed = {ROOT / "router" / "metrics.py", ROOT / "router" / "tally.py"}
    sources = sorted((ROOT / "router").rglob("*.py")) + ACTORS
    importers = [
        str(path.relative_to(ROOT))
        for path in sources
        if path not in allowed
        and any(n.split(".")[0] == "prometheus_client" for n in imported_modules(path))
    ]
    assert not importers, f"{importers} import prometheus_client"
