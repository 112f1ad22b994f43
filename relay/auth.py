"""Who is calling: the relay token in `x-relay-token`, and the `APP_SECRET` gate."""

from __future__ import annotations

import hmac
import time

from starlette.datastructures import Headers

from backends import User

from .errors import Unauthorized
from .services import Services
from .tokens import MAX_TOKEN_LENGTH

__all__ = ["authenticate", "authenticate_digest", "check_app_secret", "now_ms"]

TOKEN_HEADER = "x-relay-token"


def now_ms() -> int:
    return int(time.time() * 1000)


async def authenticate(services: Services, headers: Headers) -> User:
    """The user whose live token is in the request; 401 otherwise."""
    user, _ = await authenticate_digest(services, headers)
    return user


async def authenticate_digest(services: Services, headers: Headers) -> tuple[User, str]:
    """`authenticate`, also returning the token's digest (what identifies it without it)."""
    token = headers.get(TOKEN_HEADER)
    if not token:
        raise Unauthorized("x-relay-token header required", code="token_required")
    user = None
    digest = ""
    if len(token) <= MAX_TOKEN_LENGTH:
        digest = services.tokens.hash(token)
        user = await services.store.user_for_token(digest)
    if (
        user is None
        or user.revoked_at is not None
        or (user.expires_at is not None and user.expires_at <= now_ms())
    ):
        raise Unauthorized("Invalid or expired token", code="invalid_token")
    return user, digest


def check_app_secret(services: Services, headers: Headers, message: str) -> None:
    """401 unless `Authorization: Bearer <APP_SECRET>`; a no-op when no secret is configured."""
    secret = services.settings.app_secret
    if secret is None:
        return
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), str(secret).encode()
    ):
        raise Unauthorized(message, code="app_secret_required")
