"""Who is calling: the relay token, and the `APP_SECRET` gate.

The token is read from `x-relay-token`; when that is absent, from where the official SDKs put
their API key (`Authorization: Bearer`, `x-api-key`, `x-goog-api-key`), so that an SDK, or a tool
that lets a user set only a base URL and a key, works with the relay token as its key. None of
these headers is ever forwarded (`relay.providers.table.forwarded_request_headers`).
"""

from __future__ import annotations

import hmac
import time
from typing import Final

from starlette.datastructures import Headers

from backends import KeyStore, User
from relay.errors import Forbidden, Unauthorized
from relay.security.grants import check_live
from relay.security.tokens import MAX_TOKEN_LENGTH, TokenHasher

__all__ = ["authenticate", "authenticate_digest", "check_app_secret", "now_ms"]

TOKEN_HEADER = "x-relay-token"
# Where an SDK sends its API key, in the order they are read: OpenAI's (and most), Anthropic's,
# Google's.
SDK_KEY_HEADERS: Final = ("x-api-key", "x-goog-api-key")


def now_ms() -> int:
    return int(time.time() * 1000)


async def authenticate(
    store: KeyStore, tokens: TokenHasher, headers: Headers, *, narrow: bool = False
) -> User:
    """The user whose live token is in the request, looked up in `store` by its digest under
    `tokens`; 401 otherwise. A narrow token is refused (403) unless `narrow`: only the
    account's own token manages the account (its keys, its erasure, its records)."""
    user, _ = await authenticate_digest(store, tokens, headers)
    if user.child is not None and not narrow:
        raise Forbidden(
            "A narrow token cannot manage the account; use the account's own token.",
            code="account_token_required",
        )
    return user


def _sdk_key(headers: Headers) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for name in SDK_KEY_HEADERS:
        value = headers.get(name, "").strip()
        if value:
            return value
    return None


async def authenticate_digest(
    store: KeyStore, tokens: TokenHasher, headers: Headers
) -> tuple[User, str]:
    """`authenticate`, also returning the token's digest (what identifies it without it)."""
    token = headers.get(TOKEN_HEADER) or _sdk_key(headers)
    if not token:
        # The Node relay's message, which its clients may match.
        raise Unauthorized("x-relay-token header required", code="token_required")
    user = None
    digest = ""
    if len(token) <= MAX_TOKEN_LENGTH:
        digest = tokens.hash(token)
        user = await store.user_for_token(digest)
    if (
        user is None
        or user.revoked_at is not None
        or (user.expires_at is not None and user.expires_at <= now_ms())
    ):
        raise Unauthorized("Invalid or expired token", code="invalid_token")
    check_live(user)
    return user, digest


def check_app_secret(
    secret: object | None, headers: Headers, message: str, code: str = "app_secret_required"
) -> None:
    """401 unless `Authorization: Bearer <secret>`; a no-op when no secret is configured.
    `secret` is an operator's setting (`APP_SECRET`, `METRICS_TOKEN`), a `relay.config.Secret`
    (its `str` is the value)."""
    if secret is None:
        return
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), str(secret).encode()
    ):
        raise Unauthorized(message, code=code)
