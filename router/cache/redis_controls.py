"""The controls in force, in the replay cache's Redis: one sorted set per deployment.

Each member is a control envelope's JSON, scored by when it is to be forgotten (seconds since the
epoch). Keeping one also removes those whose time has passed, and sets the key to expire with the
last of them, so Redis never holds a control longer than its time even if no router calls again.
Reading takes only those still in force.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from redis.exceptions import RedisError

from router.core.control import Control, parse_control
from router.core.envelope import EnvelopeError
from router.redis_client import RedisConnection

log = logging.getLogger(__name__)


class RedisControls:
    def __init__(self, url: str, *, key_prefix: str, timeout_seconds: float = 1.0) -> None:
        self.key = f"{key_prefix}:controls"
        self.errors = 0
        self._redis = RedisConnection(
            url, timeout_seconds=timeout_seconds, read_timeout_seconds=timeout_seconds
        )

    async def keep(self, controls: Sequence[tuple[Control, float]], now: float) -> None:
        if not controls:
            return
        members = {control.to_bytes(): until for control, until in controls}
        last = math.ceil(max(members.values()))
        try:
            await self._redis.call_in_order(
                ("zadd", (self.key, members), {"gt": True}),
                ("zremrangebyscore", (self.key, "-inf", now), {}),
                ("expireat", (self.key, last), {"gt": True}),
                ("expireat", (self.key, last), {"nx": True}),
            )
        except (RedisError, OSError, TimeoutError) as error:
            self.errors += 1
            log.warning("cannot keep controls in redis", extra={"error": repr(error)})

    async def in_force(self, now: float) -> list[Control]:
        try:
            _, kept = await self._redis.call_in_order(
                ("zremrangebyscore", (self.key, "-inf", now), {}),
                ("zrangebyscore", (self.key, f"({now}", "+inf"), {}),
            )
        except (RedisError, OSError, TimeoutError) as error:
            self.errors += 1
            log.warning("cannot read controls from redis", extra={"error": repr(error)})
            return []
        controls = []
        for member in kept:
            try:
                controls.append(parse_control(member))
            except EnvelopeError as error:  # written by another version, or by hand
                log.warning("control in redis skipped", extra={"error": str(error)})
        return controls

    async def aclose(self) -> None:
        await self._redis.aclose()
