"""CORS as pure ASGI middleware (it sits on the streaming path, so it never wraps a body).

Preflights are answered here, before anything touches a rate limit or the key store. A preflight
from an origin that is not allowed gets a JSON 403 (browsers then refuse the real request).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.errors import Forbidden, send_error
from relay.providers.headers import (
    ALLOWED_REQUEST_HEADERS,
    ALLOWED_REQUEST_PREFIXES,
    EXPOSED_HEADERS,
)

__all__ = ["CORSMiddleware"]

ALLOWED_METHODS: Final = "GET, POST, DELETE, OPTIONS"
EXPOSED: Final = ", ".join(sorted(EXPOSED_HEADERS)).encode()
PREFLIGHT_MAX_AGE: Final = b"600"


class CORSMiddleware:
    def __init__(self, app: ASGIApp, allow_origins: Sequence[str]) -> None:
        self.app = app
        self.any_origin = "*" in allow_origins
        self.origins = frozenset(allow_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = self.any_origin or origin in self.origins
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(origin, allowed, headers, send)
            return
        if not allowed:
            await self.app(scope, receive, send)
            return
        cors_headers = self._origin_headers(origin)
        cors_headers.append((b"access-control-expose-headers", EXPOSED))

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *cors_headers]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _origin_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        if self.any_origin:
            return [(b"access-control-allow-origin", b"*")]
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]

    async def _preflight(self, origin: str, allowed: bool, headers: Headers, send: Send) -> None:
        if not allowed:
            await send_error(send, Forbidden("Origin not allowed", code="origin_not_allowed"))
            return
        requested = [
            h.strip().lower()
            for h in headers.get("access-control-request-headers", "").split(",")
            if h.strip()
        ]
        granted = [
            h
            for h in requested
            if h in ALLOWED_REQUEST_HEADERS or h.startswith(ALLOWED_REQUEST_PREFIXES)
        ]
        response_headers = [
            *self._origin_headers(origin),
            (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
            (b"access-control-max-age", PREFLIGHT_MAX_AGE),
            (b"content-length", b"0"),
        ]
        if granted:
            response_headers.append(
                (b"access-control-allow-headers", ", ".join(granted).encode("latin-1"))
            )
        if not self.any_origin:
            response_headers.append((b"vary", b"Access-Control-Request-Headers"))
        await send({"type": "http.response.start", "status": 204, "headers": response_headers})
        await send({"type": "http.response.body", "body": b""})
