"""The body of a request that sends one JSON item or an array of them (``POST /api/v1/events``,
``POST /api/v1/control``), read the one way both answer a bad one: ``415`` for another media
type, ``400`` for a body that is not JSON or an empty array, ``413`` for too many items."""

from __future__ import annotations

from typing import Any

from quart import request

from router.core.envelope import EnvelopeError, parse_publish_body
from router.http.errors import HTTPError


async def json_batch(max_batch: int, noun: str) -> list[Any]:
    """The request's items, at most ``max_batch`` (one object is a batch of one); ``noun`` names
    an item in the refusals (``envelope``, ``control envelope``)."""
    if request.mimetype != "application/json":
        raise HTTPError(415, "unsupported-media-type", "send application/json")
    try:
        body: Any = parse_publish_body(await request.get_data(as_text=False))
    except EnvelopeError as error:
        raise HTTPError(400, "bad-json", f"the body is not JSON: {error.detail}") from None
    items = body if isinstance(body, list) else [body]
    if not items:
        raise HTTPError(400, "empty-batch", f"the array holds no {noun}")
    if len(items) > max_batch:
        raise HTTPError(413, "batch-too-large", f"at most {max_batch} {noun}s at once")
    return items
