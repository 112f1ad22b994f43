"""The long-lived objects of one relay process, created in the lifespan and closed in reverse."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator

import httpx

from backends import KeyStore, StoreOptions, open_store

from .config import Settings
from .crypto import KeyCipher
from .tokens import TokenHasher
from .upstream import new_http_client

__all__ = ["Services", "open_services", "store_options"]

logger = logging.getLogger("relay")


@dataclasses.dataclass(frozen=True)
class Services:
    settings: Settings
    store: KeyStore
    cipher: KeyCipher
    tokens: TokenHasher
    http: httpx.AsyncClient
    started_at: float


def store_options(settings: Settings) -> StoreOptions:
    return StoreOptions(
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout,
        connect_timeout=settings.db_connect_timeout,
        namespace=settings.redis_namespace,
    )


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, store: KeyStore | None = None
) -> AsyncIterator[Services]:
    cipher = KeyCipher([str(s) for s in settings.encryption_secrets], settings.encryption_salt)
    tokens = TokenHasher(str(settings.token_hmac_secret))
    async with contextlib.AsyncExitStack() as stack:
        if store is None:
            store = open_store(str(settings.database_url), store_options(settings))
            stack.push_async_callback(store.close)
        http = await stack.enter_async_context(new_http_client(settings))
        if settings.app_secret is None:
            logger.warning("APP_SECRET is not set: anyone can register with POST /users")
        yield Services(settings, store, cipher, tokens, http, time.time())
