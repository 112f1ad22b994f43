"""Key stores behind one contract (`backends.base.KeyStore`), chosen by URL scheme."""

from __future__ import annotations

import importlib
from typing import Final

from .base import (
    KEY_STATUSES,
    OUTCOMES,
    KeyInfo,
    KeyMeta,
    KeyStore,
    Outcome,
    StoreError,
    StoreOptions,
    StoreUnavailable,
    UsageRecord,
    UsageStats,
    User,
)

__all__ = [
    "KEY_STATUSES",
    "OUTCOMES",
    "SCHEMES",
    "KeyInfo",
    "KeyMeta",
    "KeyStore",
    "Outcome",
    "StoreError",
    "StoreOptions",
    "StoreUnavailable",
    "UnknownScheme",
    "UsageRecord",
    "UsageStats",
    "User",
    "open_store",
    "url_scheme",
]

# Scheme -> "module:Class", imported only when chosen, so an unused driver need not be importable.
SCHEMES: Final = {
    "sqlite": "backends.sql:SQLStore",
    "sqlite+aiosqlite": "backends.sql:SQLStore",
    "postgres": "backends.sql:SQLStore",
    "postgresql": "backends.sql:SQLStore",
    "postgresql+asyncpg": "backends.sql:SQLStore",
    "redis": "backends.redis:RedisStore",
    "rediss": "backends.redis:RedisStore",
}


class UnknownScheme(ValueError):
    """The URL's scheme names no store; the message names the scheme, never the URL."""


def url_scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def open_store(url: str, options: StoreOptions | None = None) -> KeyStore:
    """The key store for `url`, not yet connected (the first call connects)."""
    scheme = url_scheme(url)
    target = SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(sorted({s.split("+")[0] for s in SCHEMES}))
        raise UnknownScheme(f"unsupported DATABASE_URL scheme {scheme!r} (supported: {known})")
    module_name, class_name = target.split(":")
    store_class = getattr(importlib.import_module(module_name), class_name)
    store: KeyStore = store_class.from_url(url, options or StoreOptions())
    return store
