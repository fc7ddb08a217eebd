"""Replay caches: recent events kept for resume. Each sits behind
:class:`~router.cache.base.ReplayCache`."""
