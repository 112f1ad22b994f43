"""Where the key store's URL comes from: `DATABASE_URL`, else SQLite at `DB_PATH`, read from
the process environment over `.env`.

The relay's settings and the alembic environment (`migrations/env.py`) both read it here, so
`alembic upgrade head` from a checkout reaches the store `byok-relay serve` uses; the `.env`
format is parsed here only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_DB_PATH",
    "database_url",
    "read_env_file",
    "read_environment",
]

DEFAULT_DB_PATH: Final = "./data/relay.db"
DEFAULT_DATABASE_URL: Final = "sqlite:///" + DEFAULT_DB_PATH


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a dotenv file: `KEY=value` lines, `#` comments, optional quotes. Missing file: `{}`."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def read_environment(env_file: Path) -> dict[str, str]:
    """The values of `env_file`, with the process environment's over them."""
    env = read_env_file(env_file)
    env.update(os.environ)
    return env


def database_url(url: str | None, db_path: str | None) -> str:
    """The store's URL from the values of `DATABASE_URL` and `DB_PATH`: the URL, else the SQLite
    file at the path (`DEFAULT_DB_PATH` when unset); a blank value counts as unset."""
    return (url or "").strip() or "sqlite:///" + ((db_path or "").strip() or DEFAULT_DB_PATH)
