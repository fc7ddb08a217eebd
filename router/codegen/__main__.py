"""``python -m router.codegen``: write the generated files; ``--check``: fail if any is stale."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import router
from router.codegen.mapping_doc import render_mapping_doc
from router.codegen.typescript import render_typescript

ROOT = Path(router.__file__).resolve().parent.parent
OUTPUTS: dict[str, Callable[[], str]] = {
    "clients/typescript/src/index.ts": render_typescript,
    "docs/sse-event-mapping.md": render_mapping_doc,
}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def main(argv: Sequence[str] | None = None, *, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.codegen", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is stale"
    )
    args = parser.parse_args(argv)
    stale: list[str] = []
    for name, render in OUTPUTS.items():
        path = root / name
        text = render()
        if _read(path) == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="\n")
            print(f"wrote {name}")
    if args.check and stale:
        print(f"stale generated files: {', '.join(stale)}; run `just generate`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
