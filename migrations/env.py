"""Alembic environment (the async template): one migration set for SQLite and Postgres."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from backends import environ
from backends.sql import async_url, engine_url
from backends.tables import metadata

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name)


def database_url() -> str:
    """The URL given by the caller (`byok-relay migrate`), else DATABASE_URL / DB_PATH over
    `.env`, read as `byok-relay serve` reads them."""
    url = config.attributes.get("url")
    if url:
        return str(url)
    env = environ.read_environment(Path(".env"))
    return environ.database_url(env.get("DATABASE_URL"), env.get("DB_PATH"))


def statement_cache() -> bool:
    """The caller's choice, else `DB_STATEMENT_CACHE` over `.env` (0: no prepared statements)."""
    chosen = config.attributes.get("statement_cache")
    if chosen is not None:
        return bool(chosen)
    env = environ.read_environment(Path(".env"))
    return environ.statement_cache(env.get("DB_STATEMENT_CACHE"))


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    url, connect_args = engine_url(database_url(), statement_cache=statement_cache())
    engine = create_async_engine(url, poolclass=pool.NullPool, connect_args=connect_args)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=async_url(database_url()),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_async_migrations())
