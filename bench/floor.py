"""The floor: the least a Starlette proxy can do, to show what the relay's own work costs.

    python -m bench.floor UPSTREAM_URL [TRANSPORT]   prints {"port": P}, serves on 127.0.0.1:P

One route, `POST /relay/openai/{path}`, forwards the method, path, query string, body and
content-type to the upstream and streams the answer back as it arrives: no authentication, no
key lookup, no limits, no usage meter. It sends through the relay's own upstream transport
(`relay.upstream.client.new_transport`) the way the relay does, straight to it, and runs on uvicorn
as the relay does (uvloop, httptools, no access log, one worker, the same garbage-collector
settings), so the gap between the floor and the relay is the relay's own work.

TRANSPORT swaps the upstream transport for another with the same httpx API (`TRANSPORTS`), which
is how `bench.transports` compares them.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator, Callable
from typing import Final

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from bench.processes import raise_file_limit
from relay.server import gcsettings
from relay.upstream.client import KEEPALIVE_EXPIRY, MAX_CONNECTIONS, new_transport

__all__ = ["TRANSPORTS", "create_app", "main", "serve_announced"]


# The relay's pool size and idle expiry, for the transports compared with its own.
LIMITS: Final = httpx.Limits(max_connections=MAX_CONNECTIONS, keepalive_expiry=KEEPALIVE_EXPIRY)


def _httpx_pool() -> httpx.AsyncBaseTransport:
    """httpx 0.28's own connection pool (httpcore), sized like the relay's."""
    return httpx.AsyncHTTPTransport(limits=LIMITS)


def _httpx_aiohttp() -> httpx.AsyncBaseTransport:
    """The `httpx-aiohttp` package's transport (not a dependency: `pip install httpx-aiohttp`)."""
    from httpx_aiohttp import AiohttpTransport  # type: ignore[import-not-found]

    transport: httpx.AsyncBaseTransport = AiohttpTransport(limits=LIMITS)
    return transport


TRANSPORTS: Final[dict[str, Callable[[], httpx.AsyncBaseTransport]]] = {
    "relay": new_transport,
    "httpx": _httpx_pool,
    "httpx-aiohttp": _httpx_aiohttp,
}


async def forward(request: Request) -> Response:
    transport: httpx.AsyncBaseTransport = request.state.transport
    url = f"{request.state.upstream}/{request.path_params['path']}"
    query = request.scope["query_string"]
    if query:
        url += "?" + query.decode("latin-1")
    content_type = request.headers.get("content-type", "application/json")
    outgoing = httpx.Request(
        request.method, url, headers={"content-type": content_type}, content=await request.body()
    )
    response = await transport.handle_async_request(outgoing)
    # `aclose` is a coroutine function, so Starlette awaits it instead of using a thread.
    return StreamingResponse(
        response.aiter_raw(),
        status_code=response.status_code,
        headers={"content-type": response.headers.get("content-type", "application/json")},
        background=BackgroundTask(response.aclose),
    )


def create_app(upstream: str, transport: str = "relay") -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        async with TRANSPORTS[transport]() as transport_:
            gcsettings.settle()  # the collector settings `byok-relay serve` uses
            yield {"transport": transport_, "upstream": upstream.rstrip("/")}

    routes = [Route("/relay/openai/{path:path}", forward, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan)


def serve_announced(app: ASGIApp) -> None:
    """Serve `app` on uvicorn as the relay is served (uvloop, httptools, no access log, no proxy
    headers, one worker), on a free port of 127.0.0.1 announced on stdout as `{"port": P}`."""
    raise_file_limit()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
        proxy_headers=False,
        backlog=4096,
    )
    uvicorn.Server(config).run(sockets=[sock])


def main() -> None:
    serve_announced(create_app(*sys.argv[1:3]))


if __name__ == "__main__":
    main()
