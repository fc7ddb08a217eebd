"""tests/private_reaches.py's table of versions, held to pyproject.toml's ranges, and the check
that a run imported the versions it is for (the runs themselves are `just private-reaches`)."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import h11
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.private_reaches import EDGES, REACH_TESTS, ROOT, misimported

REACHED = ("hypercorn", "h11", "wsproto", "aiokafka")
"""The libraries whose objects the router reaches past their public face."""


def admitted() -> dict[str, SpecifierSet]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = (Requirement(line) for line in project["dependencies"])
    return {r.name.lower(): r.specifier for r in requirements if r.name.lower() in REACHED}


def bound(specifier: SpecifierSet, operator: str) -> Version:
    (found,) = (Version(s.version) for s in specifier if s.operator == operator)
    return found


def versions_run(name: str) -> set[Version]:
    """The versions of ``name`` some run tests: the edges', and the suite's own (installed)."""
    versions = {Version(e.versions[name]) for e in EDGES if name in e.versions}
    return versions | {Version(importlib.metadata.version(name))}


@pytest.mark.parametrize("name", REACHED)
def test_every_reached_library_is_admitted_between_a_floor_and_a_ceiling(name: str) -> None:
    """An open range would admit versions no run has tested."""
    specifier = admitted()[name]
    assert bound(specifier, ">=") < bound(specifier, "<")


@pytest.mark.parametrize("name", REACHED)
def test_the_edges_lie_in_the_admitted_range_and_reach_its_floor(name: str) -> None:
    specifier = admitted()[name]
    assert all(specifier.contains(v) for v in versions_run(name)), versions_run(name)
    assert bound(specifier, ">=") in versions_run(name)


@pytest.mark.parametrize("name", REACHED)
def test_every_admitted_minor_is_tested(name: str) -> None:
    specifier = admitted()[name]
    floor, ceiling = bound(specifier, ">="), bound(specifier, "<")
    # A range within one major version, up to a minor's first release: its minors can be listed.
    assert floor.major == ceiling.major
    assert ceiling.micro == 0
    minors = {(floor.major, m) for m in range(floor.minor, ceiling.minor)}
    assert minors <= {(v.major, v.minor) for v in versions_run(name)}


def test_every_reached_library_has_tests_and_they_name_files_that_exist() -> None:
    assert set(REACH_TESTS) == set(REACHED)
    tests = {test for edge in EDGES for test in edge.tests}
    assert all((ROOT / test.partition("::")[0]).is_file() for test in tests)


def test_a_run_that_imported_another_version_or_another_copy_is_told_so() -> None:
    installed = importlib.metadata.version("h11")
    here = str(Path(h11.__file__).resolve().parent.parent)
    assert misimported(f"h11=={installed}", here) == []
    (wrong_version,) = misimported("h11==0.0.1", here)
    assert "imported " + installed in wrong_version
    (wrong_copy,) = misimported(f"h11=={installed}", str(ROOT / ".cache" / "elsewhere"))
    assert str(Path(h11.__file__).resolve()) in wrong_copy
