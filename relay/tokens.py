"""Relay tokens: random bearer strings, stored only as HMAC-SHA256 digests."""

from __future__ import annotations

import hmac
import secrets
from typing import Final

__all__ = ["MAX_TOKEN_LENGTH", "TokenHasher", "new_token"]

MAX_TOKEN_LENGTH: Final = 512
_TOKEN_BYTES: Final = 32


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe text (43 characters)."""
    return secrets.token_urlsafe(_TOKEN_BYTES)


class TokenHasher:
    """Turns a token into the hex digest the key store indexes (the Node relay's format)."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def hash(self, token: str) -> str:
        # The one-shot form: computed in C, without an HMAC object per request.
        return hmac.digest(self._key, token.encode(), "sha256").hex()
