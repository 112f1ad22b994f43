"""Key stores behind one contract (`backends.base.KeyStore`), chosen by URL scheme.

This package serves the relay and never imports it: a store knows nothing of providers or
HTTP, and the migrations run without the relay's settings.
"""

from __future__ import annotations

import importlib

from .base import (
    DAY_MS,
    KEY_STATUSES,
    LEDGER_GROUPS,
    OUTCOMES,
    TOKEN_KINDS,
    Charge,
    ChildToken,
    KeyInfo,
    KeyMeta,
    KeyStore,
    LedgerRow,
    Outcome,
    StoreError,
    StoreOptions,
    StoreUnavailable,
    UsageRecord,
    UsageStats,
    User,
)
from .schemes import SCHEMES, Scheme, UnknownScheme, scheme_of, url_scheme

__all__ = [
    "DAY_MS",
    "KEY_STATUSES",
    "LEDGER_GROUPS",
    "OUTCOMES",
    "SCHEMES",
    "TOKEN_KINDS",
    "Charge",
    "ChildToken",
    "KeyInfo",
    "KeyMeta",
    "KeyStore",
    "LedgerRow",
    "Outcome",
    "Scheme",
    "StoreError",
    "StoreOptions",
    "StoreUnavailable",
    "UnknownScheme",
    "UsageRecord",
    "UsageStats",
    "User",
    "open_store",
    "scheme_of",
    "url_scheme",
]


def open_store(url: str, options: StoreOptions | None = None) -> KeyStore:
    """The key store for `url`, not yet connected (the first call connects)."""
    module_name, class_name = scheme_of(url).store.split(":")
    store_class = getattr(importlib.import_module(module_name), class_name)
    store: KeyStore = store_class.from_url(url, options or StoreOptions())
    return store
