"""`GET /stats` (the caller's usage) and `GET /stats/{app_id}` (a whole app's, for the operator)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from backends import OUTCOMES, UsageStats

from .auth import authenticate, check_app_secret, now_ms
from .errors import ServiceUnavailable
from .services import Services

__all__ = ["app_stats", "user_stats"]


def _body(stats: UsageStats) -> dict[str, object]:
    return {
        "total": stats.total,
        "last_7d": stats.last_7d,
        "last_30d": stats.last_30d,
        "error_count": stats.error_count,
        "error_rate": round(stats.error_count / stats.total, 4) if stats.total else 0,
        "providers": stats.providers,
        "top_models": [{"model": model, "total": total} for model, total in stats.top_models],
        "last_request": stats.last_request,
        "tokens": {"input": stats.input_tokens, "output": stats.output_tokens},
        "outcomes": {outcome: stats.outcomes.get(outcome, 0) for outcome in OUTCOMES},
    }


async def user_stats(request: Request) -> JSONResponse:
    services: Services = request.state.services
    user = await authenticate(services, request.headers)
    await services.usage.flush()  # the caller sees their latest request counted
    stats = await services.store.usage_stats(now_ms(), user_id=user.id)
    return JSONResponse(_body(stats), headers={"cache-control": "no-store"})


async def app_stats(request: Request) -> JSONResponse:
    services: Services = request.state.services
    if services.settings.app_secret is None:
        raise ServiceUnavailable(
            "App statistics need APP_SECRET to be configured", code="app_secret_not_configured"
        )
    check_app_secret(
        services,
        request.headers,
        "Unauthorized: valid Authorization: Bearer <APP_SECRET> header required.",
    )
    app_id: str = request.path_params["app_id"]
    await services.usage.flush()
    stats = await services.store.usage_stats(now_ms(), app_id=app_id)
    body = {
        **_body(stats),
        "app_id": app_id,
        "user_count": await services.store.count_users(app_id),
    }
    return JSONResponse(body, headers={"cache-control": "no-store"})
