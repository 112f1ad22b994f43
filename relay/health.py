"""`GET /health` and `GET /version`."""

from __future__ import annotations

import logging
import time

from starlette.requests import Request
from starlette.responses import JSONResponse

from backends import StoreError

from . import __version__
from .providers import PROVIDERS
from .services import Services

__all__ = ["health", "version"]

logger = logging.getLogger("relay")


async def health(request: Request) -> JSONResponse:
    services: Services = request.state.services
    settings = services.settings
    try:
        await services.store.ping()
        db: dict[str, object] = {"ok": True}
    except StoreError as exc:
        logger.warning("health: key store check failed: %s", exc)
        db = {"ok": False, "error": "key store unreachable"}
    config = {
        "ok": True,
        "app_secret": settings.app_secret is not None,
        "allowed_origins": list(settings.allowed_origins),
        "allowed_models": bool(settings.allowed_models),
        "environment": settings.environment,
    }
    ok = db["ok"] is True
    body = {
        "ok": ok,
        "version": __version__,
        "uptime": round(time.time() - services.started_at, 3),
        "timestamp": int(time.time() * 1000),
        "providers": list(PROVIDERS),
        "checks": {"db": db, "config": config},
    }
    return JSONResponse(body, status_code=200 if ok else 503, headers={"cache-control": "no-store"})


async def version(request: Request) -> JSONResponse:
    settings = request.state.services.settings
    return JSONResponse(
        {"version": __version__, "commit": settings.commit, "buildTime": settings.build_time}
    )
