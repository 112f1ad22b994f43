"""The relay's error hierarchy and the one JSON shape every error takes.

    RelayError                 an error answered to the client: status, message, stable code
    ├── BadRequest             400
    ├── Unauthorized           401
    ├── PaymentRequired        402: a spending cap of the key owner's (never worth a retry)
    ├── Forbidden              403
    ├── NotFound               404
    ├── MethodNotAllowed       405
    ├── PayloadTooLarge        413
    ├── UpstreamError          502 / 504: the provider could not be reached or timed out
    └── ServiceUnavailable     503: the key store (or another dependency) is down

Anything else that escapes a handler is logged and answered as a 500 with the same shape; the
process keeps serving. Messages are ones browser clients match on (see the API contract): keep them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.types import Send

__all__ = [
    "BadRequest",
    "Forbidden",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PaymentRequired",
    "RelayError",
    "ServiceUnavailable",
    "Unauthorized",
    "UpstreamError",
    "error_body",
    "send_error",
]


class RelayError(Exception):
    status: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> bytes:
        return error_body(self.message, self.code, **self.extra)


class BadRequest(RelayError):
    status = 400
    code = "bad_request"


class Unauthorized(RelayError):
    status = 401
    code = "unauthorized"


class PaymentRequired(RelayError):
    status = 402
    code = "budget_exceeded"

    def __init__(self, message: str, **kwargs: Any) -> None:
        # The official SDKs retry what this header does not forbid.
        kwargs["headers"] = {"x-should-retry": "false", **kwargs.get("headers", {})}
        super().__init__(message, **kwargs)


class Forbidden(RelayError):
    status = 403
    code = "forbidden"


class NotFound(RelayError):
    status = 404
    code = "not_found"


class MethodNotAllowed(RelayError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(RelayError):
    status = 413
    code = "payload_too_large"

    def __init__(self, message: str = "Request body too large", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)


class UpstreamError(RelayError):
    status = 502
    code = "upstream_unreachable"


class ServiceUnavailable(RelayError):
    status = 503
    code = "service_unavailable"


def error_body(message: str, code: str, **extra: Any) -> bytes:
    return json.dumps({"error": message, "code": code, **extra}, separators=(",", ":")).encode()


async def send_error(send: Send, error: RelayError) -> None:
    """Answer `error` on a raw ASGI channel (for handlers that speak ASGI directly)."""
    body = error.body()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in error.headers.items()),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
