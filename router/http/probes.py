"""What a load balancer, Prometheus and a curious operator ask: ``GET /healthz`` (the process is
alive), ``GET /readyz`` (the bus and the replay cache answer, and the overload ladder lets new
streams in), ``GET /metrics`` and ``GET /`` (what this router serves)."""

from __future__ import annotations

from collections.abc import Mapping

from quart import Quart, Response, jsonify

from actors.hub import Hub
from actors.overload import OverloadMonitor
from router import __version__
from router.core.overload import Level
from router.core.stream_request import FILTERABLE_EVENTS
from router.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from router.metrics import Metrics

PROBES = frozenset({"/healthz", "/readyz"})
"""Paths answered whatever the client's address (a load balancer checks from where it runs)."""


def register_probes(
    app: Quart,
    hub: Hub,
    metrics: Metrics,
    overload: OverloadMonitor | None,
    endpoints: Mapping[str, str],
) -> None:
    """``endpoints`` is what ``GET /`` lists: each route's name and its method and path."""

    @app.get("/")
    async def index() -> Response:
        return jsonify(
            {
                "service": "sse-router",
                "version": __version__,
                "endpoints": dict(endpoints),
                "events": sorted(FILTERABLE_EVENTS),
            }
        )

    @app.get("/metrics")
    async def metrics_page() -> Response:
        return Response(metrics.exposition(), content_type=METRICS_CONTENT_TYPE)

    @app.get("/healthz")
    async def healthz() -> Response:
        return jsonify({"status": "ok", "version": __version__})

    @app.get("/readyz")
    async def readyz() -> Response:
        """Ready while the bus answers. Without the replay cache the router still delivers live
        events, so that is ``degraded`` (200), not unready: taking every instance out of a load
        balancer because Redis blinked would cut every stream. While the overload ladder refuses
        new streams it is ``degraded`` with ``503``: a load balancer sends new clients elsewhere
        (it does not cut the streams open here), and sends them again once the ladder is down."""
        bus, cache = await hub.bus.healthy(), await hub.cache.healthy()
        level = Level.NORMAL if overload is None else overload.level
        refusing = level >= Level.REFUSE
        checks: dict[str, object] = {"bus": bus, "cache": cache, "overload": level.label}
        ready = bus and not refusing
        status = "unavailable" if not bus else "ok" if cache and not refusing else "degraded"
        response = jsonify({"ready": ready, "status": status, "checks": checks})
        response.status_code = 200 if ready else 503
        return response
