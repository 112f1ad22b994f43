"""Every request's id, and its access line: one JSON object per request, at `info`.

The id is the client's `x-request-id` when it is well formed (a load balancer's, a platform
router's, a client's own), else a new one; it is answered in `x-relay-request-id` on every
response (a provider's own `x-request-id` passes through beside it) and the relay path passes it
to providers that take one. The line says what an on-call engineer asks first: the route as its
template (never the raw path, which may hold a model or file name), status and outcome,
duration and time to first byte, bytes each way, and for a relayed request its provider, model,
app and a short digest of the user id (never a token). Whatever deeper code knows of the
request it writes into the `Access` record in the scope (`ACCESS`).

Pure ASGI and outermost but for CORS, so that even a refusal by the per-IP limit is logged;
its wrapper of `send` returns the server's own awaitable (no coroutine per chunk).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ACCESS", "REQUEST_ID_HEADER", "Access", "AccessLogMiddleware", "short_user"]

logger = logging.getLogger("relay.access")

ACCESS: Final = "relay.access"
"""The scope key of the request's `Access` record."""
REQUEST_ID_HEADER: Final = "x-relay-request-id"
_REQUEST_ID_HEADER: Final = REQUEST_ID_HEADER.encode()
_WELL_FORMED: Final = re.compile(rb"[A-Za-z0-9._:@+=/-]{1,128}")


@functools.lru_cache(maxsize=4096)  # a few users make most requests
def short_user(user_id: str) -> str:
    """A user's id as access lines show it: a digest prefix, enough to tell users apart in a
    log and to find one's lines given the id, not to enumerate them."""
    return hashlib.sha256(user_id.encode()).hexdigest()[:12]


class Access:
    """What one request's access line says, filled in as the request goes."""

    __slots__ = (
        "app_id",
        "bytes_in",
        "bytes_out",
        "first_byte",
        "id",
        "model",
        "outcome",
        "provider",
        "route",
        "started",
        "status",
        "user",
    )

    def __init__(self, request_id: str) -> None:
        self.id = request_id
        self.started = time.monotonic()
        self.first_byte = 0.0
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.route: str | None = None  # set by the router bypass for relayed paths
        self.provider: str | None = None
        self.model: str | None = None
        self.app_id: str | None = None
        self.user: str | None = None
        self.outcome: str | None = None


# A new id is this process's random prefix and a count: unique across processes and restarts
# without a call for random bytes per request (an id need not be unguessable, only unique).
_PREFIX: Final = secrets.token_hex(8)
_COUNT: Final = itertools.count()


def _request_id(scope: Scope) -> str:
    name: bytes
    value: bytes
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if _WELL_FORMED.fullmatch(value):
                return value.decode()
            break
    return f"{_PREFIX}{next(_COUNT):016x}"


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, *, log: bool) -> None:
        """`log`: whether access lines are written (the id is answered either way)."""
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        access = scope[ACCESS] = Access(_request_id(scope))
        try:
            await self.app(scope, _Receive(receive, access), _Send(send, access))
        finally:
            if self.log and logger.isEnabledFor(logging.INFO):
                # After the loop's current round: a response's last bytes may still be held for
                # its end (`relay.server.protocol`'s cork), and the line must not delay them.
                asyncio.get_running_loop().call_soon(_write, scope, access, time.monotonic())


def _write(scope: Scope, access: Access, ended: float) -> None:
    route = access.route
    if route is None:
        matched = scope.get("route")
        route = getattr(matched, "path", None) or "unmatched"
    client = scope.get("client")
    logger.info(
        "request",
        extra={
            "fields": {
                "request_id": access.id,
                "method": scope["method"],
                "route": route,
                "status": access.status,
                "outcome": access.outcome,
                "duration_ms": round((ended - access.started) * 1000, 2),
                "ttfb_ms": round((access.first_byte - access.started) * 1000, 2)
                if access.first_byte
                else None,
                "bytes_in": access.bytes_in,
                "bytes_out": access.bytes_out,
                "provider": access.provider,
                "model": access.model,
                "app_id": access.app_id,
                "user": access.user,
                "client": client[0] if client else None,
            }
        },
    )


class _Receive:
    __slots__ = ("access", "receive")

    def __init__(self, receive: Receive, access: Access) -> None:
        self.receive = receive
        self.access = access

    def __call__(self) -> Awaitable[Message]:
        return _counted(self.receive(), self.access)


async def _counted(message: Awaitable[Message], access: Access) -> Message:
    got = await message
    body = got.get("body")
    if body:
        access.bytes_in += len(body)
    return got


class _Send:
    __slots__ = ("access", "send")

    def __init__(self, send: Send, access: Access) -> None:
        self.send = send
        self.access = access

    def __call__(self, message: Message) -> Awaitable[None]:
        access = self.access
        if message["type"] == "http.response.body":
            body = message.get("body")
            if body:
                if not access.first_byte:
                    access.first_byte = time.monotonic()
                access.bytes_out += len(body)
        elif message["type"] == "http.response.start":
            access.status = message["status"]
            message["headers"] = [
                *message.get("headers", ()),
                (_REQUEST_ID_HEADER, access.id.encode()),
            ]
        return self.send(message)
