"""``POST /api/v1/events``: publish one envelope or a JSON array of them (role ``publisher``).

Every envelope is checked, its encoding included, before any is published: all or nothing. The
bus's breaker open is said at once (``503`` with the breaker's wait), not waited for."""

from __future__ import annotations

import math
from collections.abc import Callable

from quart import Quart, Response, jsonify

from actors.hub import Hub
from actors.publisher import CircuitOpenError
from router.admission import Admission
from router.bus.base import BusUnavailableError
from router.core.admission import Credentials, Refused
from router.core.envelope import EnvelopeError, Sealed, parse_envelope
from router.core.mapping import MappingError, check_mappable
from router.http.admission import http_error
from router.http.errors import HTTPError
from router.http.json_batch import json_batch

PUBLISH_PATH = "/api/v1/events"
PUBLISHER_ROLE = "publisher"


def register_publish_route(
    app: Quart,
    hub: Hub,
    admission: Admission,
    max_batch: int,
    credentials: Callable[[], Credentials],
    client_address: Callable[[], str],
) -> None:
    """``credentials`` and ``client_address`` read the request's token and client as every
    route does; at most ``max_batch`` envelopes at once."""

    @app.post(PUBLISH_PATH)
    async def publish() -> tuple[Response, int]:
        verified = admission.authenticate(credentials(), client_address())
        if isinstance(verified, Refused):
            raise http_error(verified)
        if PUBLISHER_ROLE not in verified.principal.roles:
            raise HTTPError(403, "forbidden", f"publishing needs the {PUBLISHER_ROLE!r} role")
        return await _publish(hub, max_batch)


async def _publish(hub: Hub, max_batch: int) -> tuple[Response, int]:
    items = await json_batch(max_batch, "envelope")
    envelopes = [_checked_envelope(item, index) for index, item in enumerate(items)]
    try:
        identities = await hub.publish(envelopes)
    except CircuitOpenError as error:  # the bus has been failing: said at once, not waited for
        retry_after = str(max(1, math.ceil(error.wait)))
        raise HTTPError(
            503, "bus-unavailable", str(error), headers={"Retry-After": retry_after}
        ) from None
    except BusUnavailableError as error:
        raise HTTPError(503, "bus-unavailable", str(error), headers={"Retry-After": "5"}) from None
    return jsonify({"event_ids": [str(identity) for identity in identities]}), 202


def _checked_envelope(item: object, index: int) -> Sealed:
    """An envelope the router will be able to route, with the bytes the bus carries of it, or a
    400 naming which one is wrong (its ``code`` one of
    :data:`~router.core.mapping.PUBLISH_PROBLEMS`)."""
    try:
        envelope = parse_envelope(item)  # type: ignore[arg-type]
        check_mappable(envelope)
        return envelope.sealed()  # encoded once, here: proves the bus can carry it
    except (EnvelopeError, MappingError) as error:
        raise HTTPError(400, error.problem.value, error.detail, parameter=f"[{index}]") from None
