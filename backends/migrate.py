"""Apply or check the alembic migrations of the SQL key stores, from code.

Stores without a schema (`Scheme.migrates` false: Redis) need none: `upgrade` is a no-op there.
On Postgres, `upgrade` runs under an advisory lock, so replicas starting together on an empty
database take turns: one migrates, the others wait for it and then find nothing to do.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import create_async_engine

import migrations

from .schemes import SCHEMES, url_scheme
from .sql import engine_url, ensure_sqlite_directory

__all__ = ["LOCK_KEY", "alembic_config", "check", "failure_reason", "upgrade"]

logger = logging.getLogger("backends.migrate")

LOCK_KEY: Final = 0x62796F6B_72656C61  # "byokrela": one key for every relay on a database


def alembic_config(url: str, *, statement_cache: bool = True) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["url"] = url
    config.attributes["statement_cache"] = statement_cache
    config.attributes["configure_logging"] = False
    return config


def upgrade(url: str, *, statement_cache: bool = True) -> bool:
    """Bring the store at `url` to the newest schema. False when the store has no migrations.

    `statement_cache` false: no prepared statement is kept (a transaction pooler in between)."""
    scheme = SCHEMES.get(url_scheme(url))
    if scheme is None or not scheme.migrates:
        return False
    config = alembic_config(url, statement_cache=statement_cache)
    if scheme.driver is not None and scheme.driver.startswith("postgresql"):
        asyncio.run(_upgrade_locked(url, config, statement_cache))
    else:
        ensure_sqlite_directory(url)
        command.upgrade(config, "head")
    return True


async def _upgrade_locked(url: str, config: Config, statement_cache: bool) -> None:
    """`alembic upgrade head` while this process holds the migration lock, on a connection of
    its own (a session lock: behind a transaction pooler, migrate through the direct URL)."""
    full, connect_args = engine_url(url, statement_cache=statement_cache)
    engine = create_async_engine(full, poolclass=pool.NullPool, connect_args=connect_args)
    key = {"key": LOCK_KEY}
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            if not await conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), key):
                logger.info("migrations: waiting for another process that is migrating")
                await conn.execute(text("SELECT pg_advisory_lock(:key)"), key)
            try:
                # alembic runs an event loop of its own (migrations/env.py): on another thread.
                await asyncio.to_thread(command.upgrade, config, "head")
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:key)"), key)
    finally:
        await engine.dispose()


def check(url: str) -> None:
    """Raise when the models and the migrations disagree (`alembic check`)."""
    command.check(alembic_config(url))


def failure_reason(exc: BaseException) -> str:
    """Why a migration could not reach the store, in a few words free of the URL: the first
    cause found that says more than "is the database reachable?"."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {seen.verify_message}"
        if isinstance(seen, ssl.SSLError):  # a root certificate or client key it cannot load
            return f"TLS could not be set up ({seen.reason or seen})"
        if type(seen).__name__ == "ClientConfigurationError":  # asyncpg's: a TLS file or mode
            return str(seen).splitlines()[0]
        if isinstance(seen, ConnectionError) and "SSL" in str(seen):
            return "the server does not offer TLS, which DATABASE_URL's sslmode requires"
        if type(seen).__module__.startswith("asyncpg") and getattr(seen, "sqlstate", None):
            return f"the server refused: {str(seen).splitlines()[0]}"
        if isinstance(seen, OSError) and seen.strerror:
            return f"cannot connect ({seen.strerror}); is the database reachable?"
        seen = seen.__cause__ or seen.__context__
    return f"{type(exc).__name__}; is the database reachable?"
