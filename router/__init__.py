"""sse-router: domain events from a back end, served as Server-Sent Events."""

__version__ = "0.1.0"
