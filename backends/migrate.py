"""Apply or check the alembic migrations of the SQL key stores, from code.

Stores without a schema (none yet besides SQL) need no migrations: `upgrade` is a no-op there.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations

from . import url_scheme
from .sql import ensure_sqlite_directory

__all__ = ["SQL_SCHEMES", "alembic_config", "check", "upgrade"]

SQL_SCHEMES = frozenset(
    {"sqlite", "sqlite+aiosqlite", "postgres", "postgresql", "postgresql+asyncpg"}
)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["url"] = url
    config.attributes["configure_logging"] = False
    return config


def upgrade(url: str) -> bool:
    """Bring the store at `url` to the newest schema. False when the store has no migrations."""
    if url_scheme(url) not in SQL_SCHEMES:
        return False
    ensure_sqlite_directory(url)
    command.upgrade(alembic_config(url), "head")
    return True


def check(url: str) -> None:
    """Raise when the models and the migrations disagree (`alembic check`)."""
    command.check(alembic_config(url))
