"""Router settings: command-line flags, each with an ``SSE_ROUTER_*`` environment twin.

A flag given on the command line wins over its environment variable, which wins over the default.
Every value is validated at start, so a bad setting stops the process with a clear message instead
of failing later inside an actor.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

ENV_PREFIX = "SSE_ROUTER_"


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    shutdown_grace_seconds: float = 5.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        return cls(
            host=args.host, port=args.port, shutdown_grace_seconds=args.shutdown_grace_seconds
        )


def env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper()


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {value}")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def add_serve_arguments(
    parser: argparse.ArgumentParser, environ: Mapping[str, str] = os.environ
) -> None:
    """Declare every ``serve`` flag, defaulting to its environment variable when that is set.

    argparse converts and validates a string default like a command-line value, so a bad
    environment value is rejected at start exactly like a bad flag.
    """
    defaults = Settings()

    def flag(name: str, *, help: str, default: object, **kwargs: object) -> None:
        dest = name.removeprefix("--").replace("-", "_")
        env = env_name(dest)
        parser.add_argument(
            name,
            default=environ.get(env, default),
            help=f"{help} [env {env}; default %(default)s]",
            **kwargs,  # type: ignore[arg-type]
        )

    flag("--host", default=defaults.host, help="address to listen on")
    flag("--port", type=port, default=defaults.port, help="port to listen on, 0 for any")
    flag(
        "--shutdown-grace-seconds",
        type=positive_seconds,
        default=defaults.shutdown_grace_seconds,
        help="how long open streams get to finish after SIGTERM before they are cut",
    )
