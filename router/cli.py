"""The ``sse-router`` command: ``serve`` runs the router, ``token`` mints a development token."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import trio

from router import __version__, supervisor
from router.config import ConfigurationError, Settings, add_serve_arguments, count, env_name
from router.logs import configure_logging

# Imported where they are used, not here: the supervisor of ``serve --workers N`` runs this module
# and needs none of them, and the HTTP stack, the brokers' clients and the token library are about
# 45 MiB of a process that only starts, watches and stops its workers (docs/performance.md).


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sse-router", description="Serve domain events as Server-Sent Events."
    )
    parser.add_argument("--version", action="version", version=f"sse-router {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_serve_arguments(
        commands.add_parser("serve", help="run the router", description="Run the router.")
    )
    token = commands.add_parser(
        "token",
        help="mint a development token",
        description="Print an HS256 token signed with the configured secret, for trying things.",
    )
    token.add_argument("--sub", required=True, help="the user id")
    token.add_argument("--novels", default="", help="comma-separated novel ids the user may see")
    token.add_argument("--roles", default="", help="comma-separated roles, e.g. publisher")
    token.add_argument("--sid", default=None, help="a session id")
    token.add_argument("--ttl", type=count(1), default=3600, help="seconds until it expires")
    token.add_argument(
        "--jwt-secret",
        default=os.environ.get(env_name("jwt_secret")),
        help=f"the secret [env {env_name('jwt_secret')}]",
    )
    token.add_argument("--jwt-audience", default=os.environ.get(env_name("jwt_audience")))
    token.add_argument("--jwt-issuer", default=os.environ.get(env_name("jwt_issuer")))
    return parser


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "token":
        from router.auth import MIN_SECRET_BYTES, mint_token

        if args.jwt_secret is None or len(args.jwt_secret.encode()) < MIN_SECRET_BYTES:
            parser.error(f"token needs --jwt-secret of at least {MIN_SECRET_BYTES} bytes")
        print(
            mint_token(
                args.jwt_secret,
                sub=args.sub,
                novels=_split(args.novels),
                roles=_split(args.roles),
                sid=args.sid,
                ttl_seconds=args.ttl,
                audience=args.jwt_audience,
                issuer=args.jwt_issuer,
            )
        )
        return 0
    settings = Settings.from_args(args)
    configure_logging(settings.log_level, settings.log_format)  # type: ignore[arg-type]
    if settings.workers > 1:
        # The workers check the token key and the address rules as a single router does: one
        # that refuses them exits 2 before it is ready, which stops the supervisor at once with
        # that code (router/supervisor.py), its message on the shared stderr.
        serve_argv = list(sys.argv[1:] if argv is None else argv)
        return supervisor.main(settings, serve_argv)
    from router.server import address_gate, serve, token_verifier

    try:
        token_verifier(settings)  # refuse to start before anything runs
        address_gate(settings)
    except ConfigurationError as error:
        print(f"sse-router: {error}", file=sys.stderr)
        return 2
    return run_router(partial(serve, settings))


def run_router(router: Callable[[], Awaitable[None]]) -> int:
    """Run ``router`` (a ``serve``) to its end: the process's exit code."""
    # Everything imported so far lives as long as the process: keep the cyclic collector off it,
    # and let it run less often, since a busy router allocates many short-lived objects per event.
    # Once it listens, router/collector.py freezes what it built, and a connect storm's streams.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        trio.run(router)
    except ConfigurationError as error:  # found once the bus answered: the partitions
        print(f"sse-router: {error}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        # Raised from inside a nursery (a worker's serve() is started in one), the refusal comes
        # wrapped: still a refusal of the settings, which the supervisor must see as code 2.
        refused, other = group.split(ConfigurationError)
        if refused is None or other is not None:
            raise
        print(f"sse-router: {_first_leaf(refused)}", file=sys.stderr)
        return 2
    return 0


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


if __name__ == "__main__":
    sys.exit(main())
