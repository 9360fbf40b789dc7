"""The service's error body ``{"error": {"status", "reason", "message", "code", "errors"}}`` and exception."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


def reason_phrase(status: int) -> str:
    """The standard reason phrase of an HTTP status (``"Not Found"``), ``"Error"`` for an unknown code."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_body(
    status: int, message: str, code: str, errors: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """The ``RestErrorWrapper`` shape every client parses (``errors`` only when there are some)."""
    inner: dict[str, Any] = {
        "status": status,
        "reason": reason_phrase(status),
        "message": message,
        "code": code,
    }
    if errors:
        inner["errors"] = errors
    return {"error": inner}


class ApiError(Exception):
    """Raised anywhere in the emulator; the app turns it into the wrapper body with that status."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str = "COMMON_BAD_PAYLOAD",
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.errors = errors
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON error body this error answers with."""
        return error_body(self.status, self.message, self.code, self.errors)


def bad_payload(message: str, errors: list[dict[str, str]] | None = None) -> ApiError:
    """A 400 ``COMMON_BAD_PAYLOAD`` error (``errors``: per-field problems, if any)."""
    return ApiError(400, message, "COMMON_BAD_PAYLOAD", errors)


def not_found(message: str) -> ApiError:
    """A 404 ``COMMON_NOT_FOUND`` error."""
    return ApiError(404, message, "COMMON_NOT_FOUND")


def conflict(message: str) -> ApiError:
    """A 409 for an update or delete the job's status forbids (the service's code: ``COMMON_BAD_PAYLOAD``)."""
    return ApiError(409, message, "COMMON_BAD_PAYLOAD")


UNAUTHORIZED_MESSAGE = (
    "You are not authorized! Please provide a valid access token within the header "
    "[Authorization: Bearer <accessToken>] of your request."
)


def unauthorized(detail: str | None = None) -> ApiError:
    """A 401 ``COMMON_UNAUTHORIZED`` with ``WWW-Authenticate: Bearer``; ``detail``: what is wrong."""
    message = UNAUTHORIZED_MESSAGE if detail is None else f"{UNAUTHORIZED_MESSAGE} ({detail})"
    return ApiError(401, message, "COMMON_UNAUTHORIZED", headers={"WWW-Authenticate": "Bearer"})
