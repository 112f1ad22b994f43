"""libpq's connection-string parameters, as managed Postgres hosts give them, made asyncpg's.

SQLAlchemy's asyncpg dialect hands every query parameter to `asyncpg.connect` as a keyword
argument, where libpq's names (`sslmode`, `connect_timeout`, `application_name`, ...) are a
TypeError at the first connect. `translate` takes each out of the URL and says what it means
to asyncpg, or refuses it with `UnsupportedParameter`: one line naming the parameter, never
the URL (which holds the password).
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

from sqlalchemy.engine import URL

__all__ = ["SSL_MODES", "UnsupportedParameter", "translate"]

SSL_MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SESSION_ATTRS: Final = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")
_TLS_FILES: Final = ("sslrootcert", "sslcert", "sslkey", "sslcrl")
# Read by asyncpg's own DSN parser with libpq's meaning: handed over in a DSN of their own.
_TLS: Final = (
    "sslmode",
    *_TLS_FILES,
    "sslpassword",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "sslnegotiation",
)
# Sent in the startup packet, as libpq sends them (Neon reads `options=endpoint%3D...` there).
_STARTUP: Final = ("application_name", "options")
# The dialect's own: left in the URL (`host` is its form for a Unix socket, as Cloud SQL's).
_DIALECT: Final = ("host", "prepared_statement_cache_size")
_OTHERS: Final = ("ssl", "connect_timeout", "channel_binding", "target_session_attrs", "pgbouncer")
KNOWN: Final = frozenset((*_TLS, *_STARTUP, *_DIALECT, *_OTHERS))


class UnsupportedParameter(ValueError):
    """A connection-string parameter asyncpg cannot honour; the message names it, not the URL."""


def _refuse(name: str, why: str) -> UnsupportedParameter:
    return UnsupportedParameter(f"DATABASE_URL parameter {name}: {why}")


def _single(query: Mapping[str, str | tuple[str, ...]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in query.items():
        if isinstance(value, tuple):
            raise _refuse(name, "given more than once")
        values[name] = value
    return values


def _system_context(params: dict[str, str]) -> ssl.SSLContext:
    """`sslrootcert=system` (libpq 16): the system's CAs, with full verification."""
    if params.get("sslmode", "verify-full") != "verify-full":
        raise _refuse("sslrootcert", "system needs sslmode=verify-full (or no sslmode)")
    context = ssl.create_default_context()
    if "sslcert" in params:
        context.load_cert_chain(
            params["sslcert"], params.get("sslkey"), password=params.get("sslpassword")
        )
    return context


def translate(url: URL, *, statement_cache: bool = True) -> tuple[URL, dict[str, Any]]:
    """`url` without libpq's parameters, and the `connect_args` that carry their meaning.

    `statement_cache` false, or `pgbouncer=true`: no prepared statement outlives its use, as a
    transaction pooler (PgBouncer, Supabase's) needs."""
    params = _single(url.query)
    connect_args: dict[str, Any] = {}
    for name in params:
        if name not in KNOWN:
            raise _refuse(name, "not supported (asyncpg has no such setting)")
    if "ssl" in params:  # asyncpg's own spelling of sslmode
        params.setdefault("sslmode", params.pop("ssl"))
    if params.get("sslmode", "prefer") not in SSL_MODES:
        raise _refuse("sslmode", f"must be one of {', '.join(SSL_MODES)}")
    for name in _TLS_FILES:
        value = params.get(name)
        if value is not None and value != "system" and not Path(value).expanduser().is_file():
            raise _refuse(name, "names no readable file")
    if params.get("sslrootcert") == "system":
        connect_args["ssl"] = _system_context(params)
    else:
        tls: dict[str, str] = {name: params[name] for name in _TLS if name in params}
        if tls:
            connect_args["dsn"] = "postgresql://?" + urlencode(tls)

    startup = {name: params[name] for name in _STARTUP if name in params}
    if startup:
        connect_args["server_settings"] = startup
    if "connect_timeout" in params:
        try:
            timeout = float(params["connect_timeout"])
        except ValueError:
            raise _refuse("connect_timeout", "must be a number of seconds") from None
        if timeout > 0:  # libpq: 0 or less waits as long as it takes; DB_CONNECT_TIMEOUT here
            connect_args["timeout"] = timeout
    binding = params.get("channel_binding", "prefer")
    if binding == "require":
        raise _refuse(
            "channel_binding", "require is not supported by asyncpg: use prefer or remove it"
        )
    if binding not in ("disable", "prefer"):
        raise _refuse("channel_binding", "must be disable, prefer or require")
    if "target_session_attrs" in params:
        if params["target_session_attrs"] not in _SESSION_ATTRS:
            raise _refuse("target_session_attrs", f"must be one of {', '.join(_SESSION_ATTRS)}")
        connect_args["target_session_attrs"] = params["target_session_attrs"]
    pgbouncer = params.get("pgbouncer", "false").lower()
    if pgbouncer not in ("true", "false"):
        raise _refuse("pgbouncer", "must be true or false")
    if pgbouncer == "true" or not statement_cache:
        # asyncpg's cache and SQLAlchemy's, and statement names unique across the pooler's
        # server connections (sqlalchemy.dialects.postgresql.asyncpg, "PGBouncer").
        connect_args["statement_cache_size"] = 0
        connect_args["prepared_statement_cache_size"] = 0
        connect_args["prepared_statement_name_func"] = lambda: f"__asyncpg_{uuid.uuid4()}__"
    kept: dict[str, str] = {name: params[name] for name in _DIALECT if name in params}
    return url.set(query=kept), connect_args
