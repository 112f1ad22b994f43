"""`GET /health` and `GET /version`."""

from __future__ import annotations

import logging
import time

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse

from backends import StoreError, StoreUnavailable

from . import __version__
from .errors import BadRequest
from .providers import PROVIDERS
from .ratelimit import client_ip
from .services import Services

__all__ = ["health", "version"]

logger = logging.getLogger("relay")


async def health(request: Request) -> JSONResponse:
    services: Services = request.state.services
    settings = services.settings
    try:
        await services.store.ping()
        db: dict[str, object] = {"ok": True}
    except StoreUnavailable:
        db = {"ok": False, "error": "key store unreachable"}  # its breaker logs it, once
    except StoreError as exc:
        logger.warning("health: key store check failed: %s", exc)
        db = {"ok": False, "error": "key store unreachable"}
    checks: dict[str, object] = {"db": db}
    if request.query_params.get("deep") in ("1", "true"):
        await services.limiter.check("health", client_ip(request.scope))
        checks["upstream"] = await _probe(services, request.query_params.get("provider"))
    checks["config"] = {
        "ok": True,
        "app_secret": settings.app_secret is not None,
        "allowed_origins": list(settings.allowed_origins),
        "allowed_models": bool(settings.allowed_models),
        "environment": settings.environment,
    }
    # Draining: the process is going away, so no orchestrator should send it more.
    draining = services.drain.draining
    ok = db["ok"] is True and not draining
    body = {
        "ok": ok,
        "draining": draining,
        "version": __version__,
        "uptime": round(time.time() - services.started_at, 3),
        "timestamp": int(time.time() * 1000),
        "providers": list(PROVIDERS),
        "checks": checks,
    }
    return JSONResponse(body, status_code=200 if ok else 503, headers={"cache-control": "no-store"})


async def _probe(services: Services, name: str | None) -> dict[str, object]:
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
        return {"ok": False, "provider": provider.name, "error": type(exc).__name__}
    return {
        "ok": True,
        "provider": provider.name,
        "status": response.status_code,
        "latency_ms": round((time.monotonic() - started) * 1000, 1),
    }


async def version(request: Request) -> JSONResponse:
    settings = request.state.services.settings
    return JSONResponse(
        {"version": __version__, "commit": settings.commit, "buildTime": settings.build_time}
    )
