"""Users and their tokens: `POST /users`, `DELETE /users`, `POST /tokens/revoke` (the account's
own token and every narrow one with it; a narrow token, itself and those minted from it)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from backends import User
from relay.api.bodies import read_json
from relay.api.shapes import AppId, answer, is_printable_name, parse
from relay.api.tokens import ended
from relay.errors import BadRequest
from relay.security.auth import authenticate, check_app_secret, now_ms
from relay.security.tokens import new_token
from relay.server.ratelimit import client_ip
from relay.services import Services

__all__ = ["OkMessage", "RegisterBody", "Registered", "delete_user", "register", "revoke_token"]

NO_STORE = {"cache-control": "no-store"}


class RegisterBody(msgspec.Struct):
    """The app the token is for (printable characters)."""

    app_id: AppId


class Registered(msgspec.Struct):
    """A new relay token; it is shown once."""

    token: Annotated[str, Meta(description="Send it as `x-relay-token`.")]
    expires_at: Annotated[
        int | None, Meta(description="Epoch milliseconds; null when tokens do not expire.")
    ]


class OkMessage(msgspec.Struct):
    ok: Literal[True]
    message: str


async def register(request: Request) -> Response:
    services: Services = request.state.services
    await services.limiter.check("register", client_ip(request.scope))
    check_app_secret(
        services.settings.app_secret,
        request.headers,
        "Unauthorized: valid Authorization: Bearer <APP_SECRET> header required to register.",
    )
    refusal = BadRequest("app_id is required", code="invalid_app_id")
    body = await read_json(request, services.settings.request_body_limit)
    app_id = parse(body, RegisterBody, refusal).app_id
    if not is_printable_name(app_id):
        raise refusal
    now = now_ms()
    days = services.settings.token_expiry_days
    expires_at = now + int(days * 86_400_000) if days > 0 else None
    token = new_token()
    user = User(id=uuid.uuid4().hex, app_id=app_id, created_at=now, expires_at=expires_at)
    await services.store.create_user(user, services.tokens.hash(token))
    return answer(Registered(token, expires_at), headers=NO_STORE)


async def revoke_token(request: Request) -> Response:
    services: Services = request.state.services
    user = await authenticate(services.store, services.tokens, request.headers, narrow=True)
    if user.child is not None:  # a narrow token, and those minted from it
        ended(services, user, await services.store.delete_child_token(user.id, user.child.id))
        return answer(OkMessage(True, "Token revoked."))
    await services.store.revoke_token(user.id, now_ms())
    services.inflight.end_user(user.id)  # other instances end theirs within CACHE_TTL
    return answer(OkMessage(True, "Token revoked."))


async def delete_user(request: Request) -> Response:
    services: Services = request.state.services
    user = await authenticate(services.store, services.tokens, request.headers)
    await services.store.delete_user(user.id)
    # The store refuses any later record of the user; those still queued here go now.
    services.usage.forget(user.id)
    services.inflight.end_user(user.id)  # other instances end theirs within CACHE_TTL
    return answer(OkMessage(True, "Account and all stored keys deleted."))
