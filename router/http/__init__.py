"""The HTTP layer: Quart-Trio endpoints that attach clients to the router."""
