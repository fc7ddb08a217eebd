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
        response = jsonify(error_document(self.status, self.code, self.message, self.parameter))
        response.status_code = self.status
        response.headers.update(self.headers)
        return response


def error_document(
    status: int, code: str, message: str, parameter: str | None = None
) -> dict[str, object]:
    """The JSON body of a refusal."""
    body: dict[str, object] = {"status": status, "code": code, "message": message}
    if parameter is not None:
        body["parameter"] = parameter
    return {"error": body}
