"""Users and their tokens: `POST /users`, `DELETE /users`, `POST /tokens/revoke`."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse

from backends import User

from .auth import authenticate, check_app_secret, now_ms
from .bodies import read_json
from .errors import BadRequest
from .ratelimit import client_ip
from .services import Services
from .tokens import new_token

__all__ = ["delete_user", "register", "revoke_token"]

MAX_APP_ID_LENGTH = 128
NO_STORE = {"cache-control": "no-store"}


async def register(request: Request) -> JSONResponse:
    services: Services = request.state.services
    await services.limiter.check("register", client_ip(request.scope))
    check_app_secret(
        services,
        request.headers,
        "Unauthorized: valid Authorization: Bearer <APP_SECRET> header required to register.",
    )
    body = await read_json(request, services.settings.request_body_limit)
    app_id = body.get("app_id")
    if (
        not isinstance(app_id, str)
        or not 0 < len(app_id) <= MAX_APP_ID_LENGTH
        or not app_id.isprintable()
    ):
        raise BadRequest("app_id is required", code="invalid_app_id")
    now = now_ms()
    days = services.settings.token_expiry_days
    expires_at = now + int(days * 86_400_000) if days > 0 else None
    token = new_token()
    user = User(id=uuid.uuid4().hex, app_id=app_id, created_at=now, expires_at=expires_at)
    await services.store.create_user(user, services.tokens.hash(token))
    return JSONResponse({"token": token, "expires_at": expires_at}, headers=NO_STORE)


async def revoke_token(request: Request) -> JSONResponse:
    services: Services = request.state.services
    user = await authenticate(services, request.headers)
    await services.store.revoke_token(user.id, now_ms())
    services.inflight.end_user(user.id)  # other instances end theirs within CACHE_TTL
    return JSONResponse({"ok": True, "message": "Token revoked."})


async def delete_user(request: Request) -> JSONResponse:
    services: Services = request.state.services
    user = await authenticate(services, request.headers)
    await services.store.delete_user(user.id)
    # The store refuses any later record of the user; those still queued here go now.
    services.usage.forget(user.id)
    services.inflight.end_user(user.id)  # other instances end theirs within CACHE_TTL
    return JSONResponse({"ok": True, "message": "Account and all stored keys deleted."})
