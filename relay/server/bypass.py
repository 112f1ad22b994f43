"""`/relay/{provider}/...` straight to the streaming proxy, below Starlette's router.

Nearly every request a relay serves is relayed, and the proxy is a raw ASGI endpoint that needs
nothing of Starlette's but its error handlers: routing it first, by prefix, spares each request
the router and two exception middlewares (about a tenth of a relayed request's CPU time). What
the bypass does not take (`POST /relay`, `/relay/`, `/relay/v1/...`, a provider the table does not
hold, every other path) goes to the app as before.
An error raised before the response starts is answered by the app's own handler for it, so a
relayed request fails exactly as it would through the router.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.telemetry.access import ACCESS

__all__ = ["RouterBypass"]

logger = logging.getLogger("relay")

PREFIX = "/relay/"
ROUTE = "/relay/{provider}/{path}"  # what access lines call the paths taken here

Handler = Callable[[Request, Exception], Awaitable[Response]]


class RouterBypass:
    def __init__(
        self,
        app: ASGIApp,
        relay: ASGIApp,
        handlers: Mapping[type[Exception], Handler],
        providers: Collection[str],
    ) -> None:
        """`providers`: the names taken here; any other (`/relay/v1/...`, an unknown provider)
        goes through the router."""
        self.app = app
        self.relay = relay
        self.handlers = handlers
        self.providers = frozenset(providers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        provider = path[len(PREFIX) :].partition("/")[0] if path.startswith(PREFIX) else ""
        if provider not in self.providers or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["path_params"] = {"provider": provider}  # in place, as Starlette's router does
        access = scope.get(ACCESS)
        if access is not None:
            access.route = ROUTE
        watched = _WatchedSend(send)
        try:
            await self.relay(scope, receive, watched)
        except Exception as exc:
            if watched.started:
                raise  # nothing to answer with: the server drops the connection
            handler = self._handler(exc)
            if handler is None:
                raise
            if handler is self.handlers.get(Exception):  # the catch-all: a bug, not a refusal
                logger.exception("unexpected error relaying a request")
            response = await handler(Request(scope), exc)
            await response(scope, receive, send)

    def _handler(self, exc: Exception) -> Handler | None:
        for cls in type(exc).__mro__:
            handler = self.handlers.get(cls)
            if handler is not None:
                return handler
        return None


class _WatchedSend:
    """The server's `send`, noting that the response has started. Not a coroutine function: a
    call returns the server's own awaitable, so a streamed chunk costs no extra coroutine."""

    __slots__ = ("send", "started")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    def __call__(self, message: Message) -> Awaitable[None]:
        self.started = True
        return self.send(message)
