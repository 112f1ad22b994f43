"""Relay tokens: random bearer strings, stored only as HMAC-SHA256 digests."""

from __future__ import annotations

import hashlib
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
        # Keyed once; each token hashes on a copy. Cheaper than `hmac.digest`, which also
        # releases the GIL on every call, letting a store thread in in the middle of a request.
        self._keyed = hmac.new(secret.encode(), digestmod=hashlib.sha256)

    def hash(self, token: str) -> str:
        digest = self._keyed.copy()
        digest.update(token.encode())
        return digest.hexdigest()
