"""Every request's id and record, told to the sinks once it ends: the access line (one JSON
object per request, at `info`) and the metrics.

The id is the client's `x-request-id` when it is well formed (a load balancer's, a platform
router's, a client's own), else a new one; it is answered in `x-relay-request-id` on every
response (a provider's own `x-request-id` passes through beside it) and the relay path passes it
to providers that take one. The line says what an on-call engineer asks first: the route as its
template (never the raw path, which may hold a model or file name), status and outcome,
duration and time to first byte, bytes each way, and for a relayed request its provider, model,
tokens, app and a short digest of the user id (never a token). Whatever deeper code knows of the
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
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.telemetry.logs import write_fields

__all__ = [
    "ACCESS",
    "REQUEST_ID_HEADER",
    "Access",
    "AccessLine",
    "AccessMiddleware",
    "Sink",
    "short_user",
    "write_line",
]

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
        "client_upstream",
        "first_byte",
        "id",
        "input_tokens",
        "model",
        "outcome",
        "output_tokens",
        "provider",
        "route",
        "started",
        "status",
        "streamed",
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
        self.outcome: str | None = None  # set once a relayed exchange has ended
        self.streamed = False
        self.client_upstream = False  # the client named the upstream (openai-compatible)
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None

    def route_of(self, scope: Scope) -> str:
        """The route's template: the router's match, or the relay path's own."""
        if self.route is not None:
            return self.route
        matched = scope.get("route")
        return getattr(matched, "path", None) or "unmatched"


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


Sink = Callable[[Scope, Access, float], None]
"""What is told of each request once it has ended: its scope, its record, when it ended."""


class AccessMiddleware:
    def __init__(self, app: ASGIApp, sinks: Sequence[Sink] = ()) -> None:
        """`sinks`: told of every request (the access line, the metrics); the id is answered
        either way."""
        self.app = app
        self.sinks = tuple(sinks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        access = scope[ACCESS] = Access(_request_id(scope))
        try:
            await self.app(scope, _Receive(receive, access), _Send(send, access))
        except BaseException:
            if not access.status:  # the server answers 500 for what escaped before a head
                access.status = 500
            raise
        finally:
            if self.sinks:
                # After the loop's current round: a response's last bytes may still be held for
                # its end (`relay.server.protocol`'s cork), and nothing here may delay them.
                asyncio.get_running_loop().call_soon(
                    _tell, self.sinks, scope, access, time.monotonic()
                )


def _tell(sinks: tuple[Sink, ...], scope: Scope, access: Access, ended: float) -> None:
    for sink in sinks:
        try:
            sink(scope, access, ended)
        except Exception:  # one sink's fault: the others are still told, the loop unharmed
            _sink_failed(sink)


_SINK_FAILURE_EVERY: Final = 60.0
_last_sink_failure = -_SINK_FAILURE_EVERY


def _sink_failed(sink: Sink) -> None:
    global _last_sink_failure
    now = time.monotonic()
    if now - _last_sink_failure >= _SINK_FAILURE_EVERY:  # at most once a minute
        _last_sink_failure = now
        logger.warning("request record not told: %r failed", sink, exc_info=True)


class AccessLine:
    """The access line (a sink). A request to one of the `quiet` paths that succeeds writes none
    (an orchestrator's probes, every few seconds); one that fails does."""

    def __init__(self, quiet: Collection[str] = ()) -> None:
        self.quiet = frozenset(quiet)

    def __call__(self, scope: Scope, access: Access, ended: float) -> None:
        if access.status < 400 and scope["path"] in self.quiet:
            return
        write_line(scope, access, ended)


def write_line(scope: Scope, access: Access, ended: float) -> None:
    """Write `access` as its line."""
    if not logger.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    write_fields(
        logger,
        "request",
        {
            "request_id": access.id,
            "method": scope["method"],
            "route": access.route_of(scope),
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
            "input_tokens": access.input_tokens,
            "output_tokens": access.output_tokens,
            "app_id": access.app_id,
            "user": access.user,
            "client": client[0] if client else None,
        },
    )


class _Receive:
    __slots__ = ("access", "receive")

    def __init__(self, receive: Receive, access: Access) -> None:
        self.receive = receive
        self.access = access

    def __call__(self) -> Awaitable[Message]:
        # The server's receive is called only once this is awaited: a caller that never awaits
        # it (a watcher cancelled before it ran) leaves no coroutine of the server's unawaited.
        return _counted(self.receive, self.access)


async def _counted(receive: Receive, access: Access) -> Message:
    got = await receive()
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
