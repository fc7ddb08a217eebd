"""Every refusal is JSON: ``{"error": {"status", "code", "message"[, "parameter"]}}``."""

from __future__ import annotations

from quart import Response, jsonify


class HTTPError(Exception):
    """Raised by a handler to answer with a JSON error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        parameter: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.parameter = parameter
        self.headers = headers or {}

    def to_response(self) -> Response:
        body: dict[str, object] = {
            "status": self.status,
            "code": self.code,
            "message": self.message,
        }
        if self.parameter is not None:
            body["parameter"] = self.parameter
        response = jsonify({"error": body})
        response.status_code = self.status
        response.headers.update(self.headers)
        return response
