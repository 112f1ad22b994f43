"""Which store each `DATABASE_URL` scheme names: the one table everything else reads.

`open_store`, the settings' scheme check, `byok-relay migrate` and the SQLAlchemy URL of the
SQL store are all derived from `SCHEMES`. A store's module is imported only when its scheme is
chosen, so an unused driver need not be installed. Errors name the scheme, never the URL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["SCHEMES", "Scheme", "UnknownScheme", "scheme_of", "url_scheme"]


@dataclasses.dataclass(frozen=True)
class Scheme:
    store: str
    """The store class, as `module:Class`."""
    driver: str | None
    """The SQLAlchemy dialect and driver the URL is given to; None: the store takes it as is."""
    migrates: bool
    """The store's schema comes from the alembic migrations (`backends.migrate`)."""


_SQLITE: Final = Scheme("backends.sql:SQLStore", "sqlite+aiosqlite", migrates=True)
_POSTGRES: Final = Scheme("backends.sql:SQLStore", "postgresql+asyncpg", migrates=True)
_REDIS: Final = Scheme("backends.redis:RedisStore", None, migrates=False)

SCHEMES: Final[Mapping[str, Scheme]] = MappingProxyType(
    {
        "sqlite": _SQLITE,
        "sqlite+aiosqlite": _SQLITE,
        "postgres": _POSTGRES,  # as PaaS hosts spell it
        "postgresql": _POSTGRES,
        "postgresql+asyncpg": _POSTGRES,
        "redis": _REDIS,
        "rediss": _REDIS,
    }
)


class UnknownScheme(ValueError):
    """The URL's scheme names no store; the message names the scheme, never the URL."""


def url_scheme(url: str) -> str:
    """The scheme of `url`, lowercased; "" when it has none."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def scheme_of(url: str) -> Scheme:
    """The table's row for `url`'s scheme; `UnknownScheme` when there is none."""
    scheme = url_scheme(url)
    found = SCHEMES.get(scheme)
    if found is None:
        known = ", ".join(sorted({s.split("+")[0] for s in SCHEMES}))
        raise UnknownScheme(f"unsupported DATABASE_URL scheme {scheme!r} (supported: {known})")
    return found
