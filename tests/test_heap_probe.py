"""The debug-only heap probe (router/heap_probe.py): off unless asked, and a report it can parse."""

from __future__ import annotations

import tracemalloc

import pytest

from router import heap_probe


def test_the_probe_is_off_unless_its_variable_names_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(heap_probe.ENVIRONMENT_VARIABLE, raising=False)
    assert heap_probe.requested_path() is None
    monkeypatch.setenv(heap_probe.ENVIRONMENT_VARIABLE, " ")
    assert heap_probe.requested_path() is None
    monkeypatch.setenv(heap_probe.ENVIRONMENT_VARIABLE, "/tmp/heap.txt")
    assert str(heap_probe.requested_path()) == "/tmp/heap.txt"


def test_a_report_has_its_total_then_sites_files_and_owners() -> None:
    heap_probe.start()
    try:
        kept = [bytearray(1000) for _ in range(100)]
        lines = heap_probe.report(top=5).splitlines()
    finally:
        tracemalloc.stop()
    kind, size, count = lines[0].split()
    assert kind == "total"
    assert int(size) >= 100 * 1000
    assert int(count) >= 100
    kinds = [line.split()[0] for line in lines[1:]]
    assert 1 <= kinds.count("line") <= 5
    assert 1 <= kinds.count("file") <= 5
    assert "owner" in kinds
    assert kinds == sorted(kinds, key=["line", "file", "owner"].index)
    assert any(line.endswith(__file__) for line in lines if line.startswith("file "))
    del kept


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("/venv/lib/python3.11/site-packages/trio/_core/_run.py", "trio"),
        ("/venv/lib/python3.11/site-packages/six.py", "six"),
        ("<attrs generated methods trio._channel.MemoryChannelState>", "trio"),
        ("/work/tree/actors/session.py", "router"),
        ("/work/tree/router/http/asgi.py", "router"),
        ("/usr/lib/python3.11/contextlib.py", "standard library"),
    ],
)
def test_each_file_has_an_owner(filename: str, expected: str) -> None:
    assert heap_probe.owner(filename) == expected
