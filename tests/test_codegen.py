"""The generated TypeScript types and mapping document match router.core, and compile."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from router.codegen.__main__ import OUTPUTS, main
from router.codegen.mapping_doc import render_mapping_doc
from router.codegen.typescript import render_typescript
from router.core.events import EVENT_CLASSES, METADATA_FIELDS, ErrorCode
from router.core.mapping import MAPPING_RULES

ROOT = Path(__file__).resolve().parent.parent
TS_PACKAGE = ROOT / "clients" / "typescript"
TS_FILE = TS_PACKAGE / "src" / "index.ts"
DOC_FILE = ROOT / "docs" / "sse-event-mapping.md"
STALE = "is out of date with router/core: run `just generate`"


def test_typescript_is_generated_from_the_core() -> None:
    assert TS_FILE.read_text(encoding="utf-8") == render_typescript(), f"{TS_FILE.name} {STALE}"


def test_mapping_doc_is_generated_from_the_core() -> None:
    assert DOC_FILE.read_text(encoding="utf-8") == render_mapping_doc(), f"{DOC_FILE.name} {STALE}"


def test_typescript_names_every_event_field_and_producer_type() -> None:
    text = TS_FILE.read_text(encoding="utf-8")
    missing: list[str] = []
    for cls in EVENT_CLASSES:
        if f'"{cls.EVENT}"' not in text:
            missing.append(cls.EVENT)
        for spec in cls.SCHEMA.fields:
            declaration = f"  {spec.name}{'' if spec.required else '?'}: {spec.typescript};"
            if declaration not in text:
                missing.append(f"{cls.EVENT}: {declaration.strip()}")
    missing += [
        f"  {name}: string;" for name in METADATA_FIELDS if f"  {name}: string;" not in text
    ]
    missing += [
        r.event_type
        for r in MAPPING_RULES
        if f'"{r.event_type}": "{r.message_class.EVENT}"' not in text
    ]
    missing += [code.value for code in ErrorCode if f'"{code.value}"' not in text]
    assert not missing, f"{TS_FILE.name} lacks {missing}"


def test_event_names_follow_the_naming_rule() -> None:
    for rule in MAPPING_RULES:
        assert re.fullmatch(r"[a-z]+\.[a-z]+(-[a-z]+)*", rule.message_class.EVENT), rule
        assert not rule.message_class.EVENT.startswith("sse."), "sse.* is the router's own"
        assert re.fullmatch(r"[A-Z][A-Za-z]*\.[A-Z][A-Za-z]*", rule.event_type), rule


def test_typescript_compiles() -> None:
    if shutil.which("npx") is None:
        pytest.fail("npx is not installed: install Node.js 20 or later")
    if not (TS_PACKAGE / "node_modules" / "typescript").is_dir():
        pytest.fail("the TypeScript toolchain is missing: run `npm ci --prefix clients/typescript`")
    result = subprocess.run(
        # From the package, so npx finds its tsc (from the root it would fetch a package "tsc").
        ["npx", "--no-install", "tsc", "--noEmit", "-p", "."],
        cwd=TS_PACKAGE,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"tsc failed:\n{result.stdout}{result.stderr}"


def test_check_passes_on_the_committed_files() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "router.codegen", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_check_names_stale_files_and_generate_fixes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "sse-event-mapping.md").write_text("# edited by hand\n")
    assert main(["--check"], root=tmp_path) == 1
    error = capsys.readouterr().err
    assert all(name in error for name in OUTPUTS), error
    assert "just generate" in error
    assert main([], root=tmp_path) == 0
    assert main(["--check"], root=tmp_path) == 0
    assert (tmp_path / "docs" / "sse-event-mapping.md").read_text() == render_mapping_doc()
