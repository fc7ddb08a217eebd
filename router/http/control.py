"""The control API: what a back end without a bus client may ask of the router's access control.

- ``POST /api/v1/control``: one control envelope or a JSON array of them (role ``controller``),
  each checked, kept in the control store, then published to the bus, once per partition it must
  reach (see :meth:`router.core.control.Control.routes`), so every instance applies it in bus
  order. ``issued_at`` may be left out: it is then the router's now.
- ``GET /api/v1/connections?user_id=...`` (role ``controller``): the open streams of this
  instance, never their tokens.

The rules are router.core.control's and the hub's; this module only translates.
"""

from __future__ import annotations

from datetime import UTC, datetime

from quart import Response, jsonify, request
from quart_trio import QuartTrio

from actors.hub import Hub
from actors.session import Session
from router.admission import Admission
from router.auth import Verified
from router.bus.base import BusUnavailableError
from router.core.admission import Credentials, Refused
from router.core.control import CLOCK_SKEW_SECONDS, Control, parse_control
from router.core.envelope import EnvelopeError, EnvelopeProblem
from router.http.admission import http_error
from router.http.errors import HTTPError
from router.http.json_batch import json_batch

CONTROLLER_ROLE = "controller"
"""The role the control API asks for: not ``publisher``, since a publisher may only add events,
and this takes rights away from users."""


def register_control_api(app: QuartTrio, hub: Hub, admission: Admission, max_batch: int) -> None:
    @app.post("/api/v1/control")
    async def control() -> tuple[Response, int]:
        _controller(admission)
        items = await json_batch(max_batch, "control envelope")
        now = hub.wall_clock()
        controls = [_checked(item, index, now) for index, item in enumerate(items)]
        # Kept first: an instance that starts reading the bus after this publish loads them.
        await hub.keep(controls)
        try:
            placed = await hub.publish([p for control in controls for p in control.placements()])
        except BusUnavailableError as error:
            raise HTTPError(
                503, "bus-unavailable", str(error), headers={"Retry-After": "5"}
            ) from None
        hub.hold(controls)  # a reconnect here with an old token is refused before the answer
        answer = {
            "controls": [control.to_json() for control in controls],
            "positions": [str(identity) for identity in placed],
        }
        return jsonify(answer), 202

    @app.get("/api/v1/connections")
    async def connections() -> Response:
        _controller(admission)
        user_id = request.args.get("user_id") or None
        return jsonify({"connections": [_described(s) for s in hub.streams(user_id)]})


def _controller(admission: Admission) -> Verified:
    verified = admission.authenticate(
        Credentials(
            authorization=request.headers.get("Authorization"),
            cookie=request.cookies.get("access_token"),
        ),
        admission.address(request.remote_addr, request.headers.get("X-Forwarded-For")),
    )
    if isinstance(verified, Refused):
        raise http_error(verified)
    if CONTROLLER_ROLE not in verified.principal.roles:
        raise HTTPError(403, "forbidden", f"the control API needs the {CONTROLLER_ROLE!r} role")
    return verified


def _checked(item: object, index: int, now: float) -> Control:
    """A control to publish, dated now if it says no time; one dated ahead of this router's
    clock by more than the skew it believes is refused: it would be held that much longer."""
    try:
        control = parse_control(item, now=_rfc3339(now))  # type: ignore[arg-type]
    except EnvelopeError as error:
        raise HTTPError(400, error.problem.value, error.detail, parameter=f"[{index}]") from None
    if control.issued_seconds > now + CLOCK_SKEW_SECONDS:
        raise HTTPError(
            400,
            EnvelopeProblem.BAD_FIELD.value,
            f"'issued_at' is more than {CLOCK_SKEW_SECONDS:g} s ahead of the router's clock",
            parameter=f"[{index}]",
        )
    return control


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _described(session: Session) -> dict[str, object]:
    """One open stream as the listing shows it: who, what it follows, since when; no token."""
    asked = session.stream_filter
    return {
        "connection_id": session.connection_id,
        "user_id": session.principal.user_id,
        "session_id": session.principal.session_id,
        "filter": {
            "novel_ids": sorted(asked.novel_ids),
            "session_id": asked.session_id,
            "event_types": sorted(asked.event_types),
        },
        "transport": session.transport,
        "opened_at": _rfc3339(session.opened_at),
        "events_sent": session.events_sent,
    }
