"""Failures as the real API server reports them: a ``Status`` object with a code and a reason.

The Kubernetes clients branch on ``code`` and ``reason`` (kubernetes-asyncio raises ``ApiException(status=code)``,
client-go switches on the reason), so every error this server produces goes through :class:`ApiError`.
"""

from __future__ import annotations

from typing import Any

#: HTTP status -> the ``reason`` the real server puts beside it.
REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status_object(code: int, message: str, reason: str | None = None, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``v1 Status`` failure, as sent in an error response body or a watch ``ERROR`` event."""
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or REASONS.get(code, "Unknown"),
        "code": code,
    }
    if details:
        status["details"] = details
    return status


class ApiError(Exception):
    """A request the server refuses; both the HTTP layer and the Python API raise it."""

    def __init__(self, code: int, message: str, reason: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code} {reason or REASONS.get(code, 'Unknown')}: {message}")
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details

    def status(self) -> dict[str, Any]:
        return status_object(self.code, self.message, self.reason, self.details)


def not_found(plural: str, name: str, group: str = "") -> ApiError:
    what = f"{plural}.{group}" if group else plural
    return ApiError(404, f'{what} "{name}" not found', details={"name": name, "group": group, "kind": plural} if group else {"name": name, "kind": plural})


def already_exists(plural: str, name: str, group: str = "") -> ApiError:
    what = f"{plural}.{group}" if group else plural
    details = {"name": name, "kind": plural, **({"group": group} if group else {})}
    return ApiError(409, f'{what} "{name}" already exists', "AlreadyExists", details)


def conflict(plural: str, name: str, group: str = "") -> ApiError:
    what = f"{plural}.{group}" if group else plural
    details = {"name": name, "kind": plural, **({"group": group} if group else {})}
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {what} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        "Conflict",
        details,
    )


def invalid(kind: str, name: str, field: str, why: str) -> ApiError:
    return ApiError(
        422,
        f'{kind} "{name}" is invalid: {field}: {why}',
        "Invalid",
        {"name": name, "kind": kind, "causes": [{"reason": "FieldValueInvalid", "message": why, "field": field}]},
    )


def expired(requested: int, oldest: int) -> ApiError:
    return ApiError(410, f"too old resource version: {requested} ({oldest})", "Expired")
