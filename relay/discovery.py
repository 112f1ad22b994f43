"""`GET /models`: how `POST /relay` routes model names, and which models are allowed."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from .routing import routing_table
from .services import Services

__all__ = ["models"]


async def models(request: Request) -> JSONResponse:
    services: Services = request.state.services
    allowed = list(services.settings.allowed_models)
    body: dict[str, object] = {**routing_table(), "restricted": bool(allowed)}
    if allowed:
        body["allowed_models"] = allowed
        body["message"] = (
            "Only models matching allowed_models (* matches anything; the bare name or "
            "provider/name) are permitted on this relay."
        )
    return JSONResponse(body)
