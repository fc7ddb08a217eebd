"""The ``sse-router`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

from router import __version__
from router.config import Settings, add_serve_arguments
from router.server import serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sse-router", description="Serve domain events as Server-Sent Events."
    )
    parser.add_argument("--version", action="version", version=f"sse-router {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_serve_arguments(
        commands.add_parser("serve", help="run the router", description="Run the router.")
    )
    return parser


async def _serve_and_announce(settings: Settings) -> None:
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(serve, settings)
        for address in addresses:
            print(f"sse-router listening on {address}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        trio.run(_serve_and_announce, Settings.from_args(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
