"""Apply or check the alembic migrations of the SQL key stores, from code.

Stores without a schema (`Scheme.migrates` false: Redis) need none: `upgrade` is a no-op there.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations

from .schemes import SCHEMES, url_scheme
from .sql import ensure_sqlite_directory

__all__ = ["alembic_config", "check", "upgrade"]


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["url"] = url
    config.attributes["configure_logging"] = False
    return config


def upgrade(url: str) -> bool:
    """Bring the store at `url` to the newest schema. False when the store has no migrations."""
    scheme = SCHEMES.get(url_scheme(url))
    if scheme is None or not scheme.migrates:
        return False
    ensure_sqlite_directory(url)
    command.upgrade(alembic_config(url), "head")
    return True


def check(url: str) -> None:
    """Raise when the models and the migrations disagree (`alembic check`)."""
    command.check(alembic_config(url))
