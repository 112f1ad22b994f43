"""Where the key store's URL comes from: `DATABASE_URL`, else SQLite at `DB_PATH`, read from
the process environment over `.env`.

The relay's settings and the alembic environment (`migrations/env.py`) both read it here, so
`alembic upgrade head` from a checkout reaches the store `byok-relay serve` uses; `.env` is read
here only, by python-dotenv, as Docker Compose reads it (inline comments, quotes, multi-line
values).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from dotenv import dotenv_values

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_DB_PATH",
    "database_url",
    "read_env_file",
    "read_environment",
    "statement_cache",
]

DEFAULT_DB_PATH: Final = "./data/relay.db"
DEFAULT_DATABASE_URL: Final = "sqlite:///" + DEFAULT_DB_PATH


def read_env_file(path: Path) -> dict[str, str]:
    """The values of a dotenv file (a name without `=` is left out). Missing file: `{}`."""
    if not path.is_file():
        return {}
    values = dotenv_values(path, encoding="utf-8", interpolate=False)
    return {name: value for name, value in values.items() if value is not None}


def read_environment(env_file: Path) -> dict[str, str]:
    """The values of `env_file`, with the process environment's over them."""
    env = read_env_file(env_file)
    env.update(os.environ)
    return env


def database_url(url: str | None, db_path: str | None) -> str:
    """The store's URL from the values of `DATABASE_URL` and `DB_PATH`: the URL, else the SQLite
    file at the path (`DEFAULT_DB_PATH` when unset); a blank value counts as unset."""
    return (url or "").strip() or "sqlite:///" + ((db_path or "").strip() or DEFAULT_DB_PATH)


def statement_cache(value: str | None) -> bool:
    """`DB_STATEMENT_CACHE`: 0 turns prepared statements off (a transaction pooler in front)."""
    chosen = (value or "").strip().lower()
    if chosen not in ("", "0", "1", "true", "false", "on", "off", "yes", "no"):
        raise ValueError("DB_STATEMENT_CACHE must be 0 or 1")
    return chosen not in ("0", "false", "off", "no")
