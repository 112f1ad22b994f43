"""The application: routes, middleware, exception handlers and lifespan. Nothing else."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp

from backends import KeyStore, StoreError, StoreUnavailable
from relay import __version__
from relay.api import (
    accounts,
    agents,
    discovery,
    health,
    keys,
    ledger,
    limits,
    metrics,
    openapi,
    probes,
    stats,
    tokens,
)
from relay.config import Settings
from relay.errors import RelayError, error_body
from relay.providers.allowlist import ModelPolicy
from relay.providers.routing import route_compatible
from relay.providers.table import PROVIDERS
from relay.proxy import listing
from relay.proxy.prepare import ModelRelay, ProviderRelay
from relay.proxy.ssrf import Resolver, UpstreamPolicy
from relay.server import gcsettings
from relay.server.bypass import Handler, RouterBypass
from relay.server.cors import CORSMiddleware
from relay.server.edge import EDGE_LIMITS, EdgeLimits, connections_the_files_allow, raise_file_limit
from relay.server.forwarded import ForwardedMiddleware, TrustedProxies, parse_address
from relay.server.ratelimit import GlobalLimitMiddleware
from relay.services import open_services
from relay.telemetry import access
from relay.telemetry import metrics as telemetry_metrics
from relay.web import assets

if TYPE_CHECKING:  # imported only when traces are configured
    from relay.telemetry.traces import Tracer

__all__ = ["create_app"]

logger = logging.getLogger("relay")

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def _json_error(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        error_body(message, code),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


async def _relay_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RelayError)
    return Response(exc.body(), exc.status, exc.headers, media_type="application/json")


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "Not found", 405: "Method not allowed"}
    message = messages.get(exc.status_code, str(exc.detail))
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["allow"] = ", ".join(_allowed_methods(request))
    return _json_error(exc.status_code, message, code, headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (one path may have a route per method)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE and isinstance(route, Route) and route.methods:
            methods |= route.methods
    return sorted(methods)


async def _store_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, StoreUnavailable):
        # Its breaker logs the store going down and coming back, once each.
        logger.debug("key store unavailable: %s", exc)
        return _json_error(
            503,
            "Key store unavailable, try again shortly",
            "store_unavailable",
            {"retry-after": "1"},
        )
    logger.error("key store error: %s", exc, extra={"cause": type(exc.__cause__).__name__})
    return _json_error(500, "Key store error", "store_error")


async def _server_error(request: Request, exc: Exception) -> Response:
    return _json_error(500, "Internal server error", "internal_error")


def edge_limits(settings: Settings) -> EdgeLimits:
    """What one connection may take of this process (`relay.server.edge`)."""
    trusted = TrustedProxies(settings.forwarded_allow_ips)

    def proxy(address: str) -> bool:
        peer = parse_address(address)
        return peer is not None and trusted.trusts(peer)

    total = settings.max_connections or connections_the_files_allow(raise_file_limit())
    return EdgeLimits(
        head_timeout=settings.head_timeout,
        body_timeout=settings.body_timeout,
        send_timeout=settings.client_send_timeout,
        max_connections=total,
        max_per_address=settings.max_connections_per_address or max(16, total // 8),
        proxy=proxy,
    )


def create_app(
    settings: Settings,
    store: KeyStore | None = None,
    resolver: Resolver | None = None,
    *,
    tune_gc: bool = False,
) -> ASGIApp:
    """The relay for `settings`. A given `store` replaces the one `DATABASE_URL` names, and a
    given `resolver` the system's DNS for openai-compatible upstreams (tests, embedding).
    `tune_gc` tunes the process's garbage collector once started (`relay.server.gcsettings`): for a
    process that only serves, as `byok-relay serve` runs it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        # Lifespan state reaches every request's scope["state"], middleware outside the
        # Starlette app included, and the server's protocol (the client send timeout).
        async with contextlib.AsyncExitStack() as stack:
            if tracer is not None:  # last out: the spans of the shutdown are exported too
                stack.push_async_callback(run_in_threadpool, tracer.shutdown)
            services = await stack.enter_async_context(open_services(settings, store, tracer))
            if tune_gc:
                gcsettings.settle()
            with services.drain.watch():
                yield {"services": services, EDGE_LIMITS: edge_limits(settings)}

    tracer = _tracer(settings)
    upstreams = UpstreamPolicy(settings.private_upstreams, resolver)
    allowed_models = ModelPolicy(settings.allowed_models)
    provider_relay = ProviderRelay(upstreams, allowed_models)
    probe = probes.Probes()
    # `/relay/{provider}/...` reaches the proxy through the bypass below (`relay.server.bypass`);
    # its routes stay here for 405s and the OpenAPI document. `POST /relay` goes first: the router
    # tries routes in order, and no two patterns match the same path.
    routes = [
        Route("/relay", ModelRelay(upstreams, allowed_models), methods=["POST"]),
        Route("/relay/v1/models", listing.list_models, methods=["GET"]),
        Route(
            "/relay/v1/chat/completions",
            ModelRelay(upstreams, allowed_models, route_compatible),
            methods=["POST"],
        ),
        Route("/relay/{provider}", provider_relay),
        Route("/relay/{provider}/{path:path}", provider_relay),
        Route("/health", health.health, methods=["GET"]),
        Route("/version", health.version, methods=["GET"]),
        Route("/livez", probe.livez, methods=["GET"]),
        Route("/readyz", probe.readyz, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        Route("/users", accounts.register, methods=["POST"]),
        Route("/users", accounts.delete_user, methods=["DELETE"]),
        Route("/tokens/revoke", accounts.revoke_token, methods=["POST"]),
        Route("/tokens", tokens.mint_token, methods=["POST"]),
        Route("/tokens", tokens.list_tokens, methods=["GET"]),
        Route("/tokens/{token_id}", tokens.revoke_child, methods=["DELETE"]),
        Route("/limits", limits.put_limits, methods=["PUT"]),
        Route("/limits", limits.get_limits, methods=["GET"]),
        Route("/limits", limits.clear_limits, methods=["DELETE"]),
        Route("/keys", keys.list_keys, methods=["GET"]),
        Route("/stats", stats.user_stats, methods=["GET"]),
        Route("/stats/{app_id}", stats.app_stats, methods=["GET"]),
        Route("/usage", ledger.ledger_json, methods=["GET"]),
        Route("/usage.csv", ledger.ledger_csv, methods=["GET"]),
        Route("/keys/{provider}", keys.store_key, methods=["POST"]),
        Route("/keys/{provider}/rotate", keys.rotate_key, methods=["POST"]),
        Route("/keys/{provider}", keys.delete_key, methods=["DELETE"]),
        Route("/models", discovery.models, methods=["GET"]),
        Route("/llms.txt", agents.llms_txt, methods=["GET"]),
    ]
    if settings.metrics:
        routes.append(Route("/metrics", metrics.metrics_endpoint, methods=["GET"]))
    pages = {**assets.CLIENT, **(assets.DEMO if settings.demo else {})}
    routes += [Route(path, asset.respond, methods=["GET"]) for path, asset in pages.items()]
    handlers: dict[type[Exception], Handler] = {
        RelayError: _relay_error,
        HTTPException: _http_exception,
        StoreError: _store_error,
        Exception: _server_error,
    }
    app = Starlette(
        routes=routes,
        exception_handlers=cast(Any, handlers),
        lifespan=lifespan,
    )
    # No 307 to `path/` (an empty, non-JSON answer whose Location echoes the Host header).
    app.router.redirect_slashes = False
    # Outermost first: CORS (so that even a 500 from the server-error handler is readable by
    # the page, and preflights are answered before anything counts them), then the request's
    # id and record (its access line and metrics), then its span when traced, then the
    # client's address from trusted proxies, then the per-IP limit
    # (never on the probes: none may wait on a limit counted in Redis), then the router bypass
    # (relayed requests skip the router). All pure ASGI.
    inner: ASGIApp = GlobalLimitMiddleware(
        RouterBypass(app, provider_relay, handlers, PROVIDERS), unlimited=probes.PATHS
    )
    if settings.forwarded_allow_ips:
        inner = ForwardedMiddleware(
            inner, settings.forwarded_allow_ips, settings.forwarded_trusted_hops
        )
    if tracer is not None:
        inner = tracer.middleware(inner)
    sinks: list[access.Sink] = []
    if settings.access_log:
        sinks.append(access.AccessLine(quiet=probes.PATHS))
    if settings.metrics:
        sinks.append(telemetry_metrics.observe)
    inner = access.AccessMiddleware(inner, sinks)
    return CORSMiddleware(inner, allow_origins=settings.allowed_origins)


def _tracer(settings: Settings) -> Tracer | None:
    """The tracer `settings.traces` asks for, when the `otel` extra is installed."""
    if settings.traces is None:
        return None
    try:
        from relay.telemetry.traces import Tracer
    except ImportError:
        logger.warning(
            "traces: an OTLP endpoint is set but OpenTelemetry is not installed "
            "(pip install 'byok-relay[otel]'); serving without traces"
        )
        return None
    traces = settings.traces
    parts = urlsplit(traces.endpoint)  # where to, never who as: the URL may hold a password
    logger.info("traces: exported to %s:%s", parts.hostname, parts.port or parts.scheme)
    return Tracer(
        traces.endpoint,
        headers=str(traces.headers) if traces.headers else None,
        service_name=traces.service_name,
        service_version=__version__,
        sample_ratio=traces.sample_ratio,
        follow_caller=traces.follow_caller,
    )
