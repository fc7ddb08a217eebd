"""The sans-I/O core of the router.

Everything under ``router.core`` is pure: it parses, validates, converts and encodes, and never
touches a socket, a clock, trio, Quart or a broker client. A test enforces that wall. Actors and the
HTTP layer build on these modules; they are small enough to be tested exhaustively on their own.
"""
