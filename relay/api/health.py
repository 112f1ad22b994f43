"""`GET /health` and `GET /version`.

`/health` is kept for the browser clients of the Node relay, its keys unchanged; an anonymous
caller sees the status and each check's `ok`, and only the operator (`Authorization: Bearer
<APP_SECRET>`) the configuration behind `checks.config`. Orchestrators ask `relay.api.probes`.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

import httpx
import msgspec
from msgspec import UNSET, Meta, UnsetType
from starlette.requests import Request
from starlette.responses import Response

from backends import StoreError, StoreUnavailable
from relay import __version__
from relay.api.shapes import ProviderName, answer
from relay.errors import BadRequest
from relay.providers.table import PROVIDERS
from relay.security.auth import check_app_secret
from relay.server.ratelimit import client_ip
from relay.services import Services

__all__ = ["Health", "Version", "health", "version"]

logger = logging.getLogger("relay")


class StoreCheck(msgspec.Struct):
    ok: bool
    error: str | UnsetType = UNSET


class ConfigCheck(msgspec.Struct, kw_only=True):
    """The fields beside `ok` only for `Authorization: Bearer <APP_SECRET>`."""

    ok: bool
    app_secret: bool | UnsetType = UNSET
    allowed_origins: list[str] | UnsetType = UNSET
    allowed_models: bool | UnsetType = UNSET
    environment: str | UnsetType = UNSET


class UpstreamCheck(msgspec.Struct, kw_only=True):
    ok: bool
    provider: ProviderName
    status: int | UnsetType = UNSET
    latency_ms: float | UnsetType = UNSET
    error: str | UnsetType = UNSET


class HealthChecks(msgspec.Struct, kw_only=True):
    db: StoreCheck
    upstream: UpstreamCheck | UnsetType = UNSET
    config: ConfigCheck


class Health(msgspec.Struct):
    ok: bool
    draining: Annotated[
        bool, Meta(description="Shutting down: finishing what is in progress, taking no more.")
    ]
    version: str
    uptime: Annotated[float, Meta(description="Seconds since start.")]
    timestamp: Annotated[int, Meta(description="Epoch milliseconds.")]
    providers: list[ProviderName]
    checks: HealthChecks


class Version(msgspec.Struct):
    version: str
    commit: str
    build_time: str = msgspec.field(name="buildTime")


async def health(request: Request) -> Response:
    services: Services = request.state.services
    settings = services.settings
    operator = _operator(request)
    try:
        await services.store.ping()
        db = StoreCheck(True)
    except StoreUnavailable:
        db = StoreCheck(False, "key store unreachable")  # its breaker logs it, once
    except StoreError as exc:
        logger.warning("health: key store check failed: %s", exc)
        db = StoreCheck(False, "key store unreachable")
    upstream: UpstreamCheck | UnsetType = UNSET
    if request.query_params.get("deep") in ("1", "true"):
        await services.limiter.check("health", client_ip(request.scope))
        upstream = await _probe(services, request.query_params.get("provider"))
    config = ConfigCheck(ok=True)
    if operator:
        config = ConfigCheck(
            ok=True,
            app_secret=True,
            allowed_origins=list(settings.allowed_origins),
            allowed_models=bool(settings.allowed_models),
            environment=settings.environment,
        )
    # Draining: the process is going away, so no orchestrator should send it more.
    draining = services.drain.draining
    ok = db.ok and not draining
    body = Health(
        ok=ok,
        draining=draining,
        version=__version__,
        uptime=round(time.time() - services.started_at, 3),
        timestamp=int(time.time() * 1000),
        providers=list(PROVIDERS),
        checks=HealthChecks(db=db, upstream=upstream, config=config),
    )
    return answer(body, 200 if ok else 503, {"cache-control": "no-store"})


def _operator(request: Request) -> bool:
    """The operator's credential, given: a wrong one is refused (401) rather than ignored.
    Without APP_SECRET there is no operator credential, and nobody sees the configuration."""
    secret = request.state.services.settings.app_secret
    if secret is None or "authorization" not in request.headers:
        return False
    check_app_secret(
        secret, request.headers, "Unauthorized: the operator's view needs Bearer <APP_SECRET>."
    )
    return True


async def _probe(services: Services, name: str | None) -> UpstreamCheck:
    """Can this relay reach the provider? One unauthenticated GET of its base URL: any HTTP
    answer means reachable. No key is ever sent."""
    provider = PROVIDERS.get(name or "")
    if provider is None or not provider.base_url:
        raise BadRequest(
            "provider must name a provider with a fixed base URL: "
            + ", ".join(p.name for p in PROVIDERS.values() if p.base_url),
            code="invalid_provider",
        )
    url = services.settings.base_url_for(provider.name, provider.base_url) + "/"
    timeout = min(5.0, services.settings.connect_timeout)
    started = time.monotonic()
    try:
        response = await services.http.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return UpstreamCheck(ok=False, provider=provider.name, error=type(exc).__name__)
    return UpstreamCheck(
        ok=True,
        provider=provider.name,
        status=response.status_code,
        latency_ms=round((time.monotonic() - started) * 1000, 1),
    )


async def version(request: Request) -> Response:
    settings = request.state.services.settings
    return answer(Version(__version__, settings.commit, settings.build_time))
