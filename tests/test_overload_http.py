"""The overload ladder as HTTP clients and a load balancer see it (its rules: test_overload.py;
the ladder driven by a burst: test_overload_actor.py)."""

from __future__ import annotations

import json

import trio

from router.core.overload import REFUSED_SPREAD_SECONDS, REFUSED_WAIT_SECONDS, Level
from tests.e2e_helpers import HANG_GUARD_SECONDS, STREAM_PATH, auth, running_router
from tests.sse_spec_parser import parse_stream


async def test_an_overloaded_router_refuses_new_streams_in_band_and_says_degraded() -> None:
    """A memory limit of one byte: the resident set is past it from the first measurement, and
    the ladder climbs to its top, a rung per rise period."""
    async with running_router(max_memory=1, overload_rise_seconds=0.01) as router:
        overload = router.running.overload
        with trio.fail_after(HANG_GUARD_SECONDS):
            while overload.level is not Level.SHED:
                await overload.changed.wait()
        ready = await router.client.get("/readyz")
        assert ready.status_code == 503  # a load balancer sends new clients elsewhere
        assert ready.json() == {
            "ready": False,
            "status": "degraded",
            "checks": {"bus": True, "cache": True, "overload": "shed"},
        }
        headers = {**auth(novels=["n1"]), "Accept": "text/event-stream"}
        refused = await router.client.get(STREAM_PATH, headers=headers)
        assert refused.status_code == 200  # in-band, so that the browser retries by itself
        (event,) = parse_stream(refused.content).events
        assert json.loads(event.data)["code"] == "overloaded"
        assert event.retry is not None
        low, high = REFUSED_WAIT_SECONDS, REFUSED_WAIT_SECONDS + REFUSED_SPREAD_SECONDS
        assert low * 1000 <= event.retry <= high * 1000
        plain = await router.client.get(STREAM_PATH, headers=auth(novels=["n1"]))
        assert plain.status_code == 503
        assert plain.json()["error"]["code"] == "overloaded"
        assert 5 <= int(plain.headers["Retry-After"]) <= 15
        exposition = (await router.client.get("/metrics")).text
        assert "sse_overload_level 3.0" in exposition
        assert 'sse_rate_limited_connections_total{limit="overload"} 2.0' in exposition
        assert 'sse_overload_changes_total{level="shed"} 1.0' in exposition
        resident = next(
            line for line in exposition.splitlines() if line.startswith("sse_resident_memory_bytes")
        )
        assert float(resident.split()[1]) > 1
