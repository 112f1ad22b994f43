"""Connection strings as managed Postgres hosts give them, against the machine's Postgres.

Each form is either accepted (the store answers, and what the parameter asks for reaches the
server) or refused in one line naming the parameter: at start-up by the settings, or by
`byok-relay migrate` when only the server can tell (TLS it does not offer).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import certifi
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

import backends
from backends.pgparams import UnsupportedParameter, translate
from backends.sql import SQLStore, engine_url
from relay.config import ConfigError, Settings
from tests.relayprocess import run_cli
from tests.servers import create_database, drop_database, in_thread

pytestmark = pytest.mark.postgres

SECRET = "s" * 40


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """An empty database of this module's own (`postgresql://postgres@127.0.0.1:5432/...`)."""
    url = in_thread(create_database, "byok_urls")
    yield url
    in_thread(drop_database, url)


def with_query(url: str, query: str) -> str:
    return f"{url}?{query}"


async def server_values(url: str, *settings: str) -> list[str]:
    """What the server says of `settings` on a connection the SQL store opens from `url`."""
    store = backends.open_store(url)
    assert isinstance(store, SQLStore)
    try:
        await store.ping()
        async with store._engine.connect() as conn:
            return [
                str(await conn.scalar(text(f"SELECT current_setting('{name}')")))
                for name in settings
            ]
    finally:
        await store.close()


@pytest.mark.parametrize(
    "query",
    [
        "sslmode=disable",
        "sslmode=allow",
        "sslmode=prefer",
        "ssl=prefer",
        "channel_binding=prefer",
        "channel_binding=disable",
        "connect_timeout=3",
        "connect_timeout=0",
        "target_session_attrs=read-write",
        "target_session_attrs=any",
        "pgbouncer=true",
        "application_name=x",
    ],
)
def test_accepted_forms_connect(database: str, query: str) -> None:
    Settings.from_env({"ENCRYPTION_SECRET": SECRET, "DATABASE_URL": with_query(database, query)})
    assert asyncio.run(server_values(with_query(database, query), "server_version"))


def test_startup_parameters_reach_the_server(database: str) -> None:
    """The brief's own example: every parameter in one URL, and each one honoured."""
    query = "sslmode=disable&application_name=x&connect_timeout=3&options=" + quote(
        "-c search_path=public -c statement_timeout=4321"
    )
    url = with_query(database, query)
    Settings.from_env({"ENCRYPTION_SECRET": SECRET, "DATABASE_URL": url})
    values = asyncio.run(server_values(url, "application_name", "search_path", "statement_timeout"))
    assert values == ["x", "public", "4321ms"]


def test_heroku_scheme_and_a_unix_socket(database: str) -> None:
    """`postgres://` (Heroku, Render) and `?host=/socket/folder` (Cloud SQL's form)."""
    name = make_url(database).database
    heroku = database.replace("postgresql://", "postgres://", 1)
    assert asyncio.run(server_values(heroku, "server_version"))
    socket_folder = "/var/run/postgresql"
    if Path(socket_folder, ".s.PGSQL.5432").exists():
        cloud_sql = f"postgresql://postgres@/{name}?host={socket_folder}"
        assert asyncio.run(server_values(cloud_sql, "server_version"))


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("sslmode=bogus", "sslmode"),
        ("channel_binding=require", "channel_binding"),
        ("channel_binding=maybe", "channel_binding"),
        ("sslrootcert=/nonexistent/root.crt&sslmode=verify-full", "sslrootcert"),
        ("sslcert=/nonexistent/client.crt", "sslcert"),
        ("sslkey=/nonexistent/client.key", "sslkey"),
        ("target_session_attrs=fastest", "target_session_attrs"),
        ("connect_timeout=soon", "connect_timeout"),
        ("pgbouncer=maybe", "pgbouncer"),
        ("connection_limit=1", "connection_limit"),  # Prisma's, not libpq's
        ("sslmode=require&sslmode=disable", "sslmode"),
        ("sslrootcert=system&sslmode=require", "sslrootcert"),
    ],
)
def test_refused_forms_name_the_parameter(database: str, query: str, parameter: str) -> None:
    url = with_query(database.replace("postgresql://postgres@", "postgresql://u:hunter2@"), query)
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"ENCRYPTION_SECRET": SECRET, "DATABASE_URL": url})
    message = str(refused.value)
    assert f"parameter {parameter}:" in message
    assert "\n" not in message
    assert "hunter2" not in message
    result = run_cli(Path.cwd(), "migrate", ENCRYPTION_SECRET=SECRET, DATABASE_URL=url)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"byok-relay: {message}"]


def test_neon_endpoint_option_is_sent_as_libpq_sends_it() -> None:
    """Neon's `options=endpoint%3D...` is for its proxy: in the startup packet's `options`."""
    neon = (
        "postgresql://alex:pw@ep-cool-darkness-123456.us-east-2.aws.neon.tech/dbname"
        "?sslmode=require&options=endpoint%3Dep-cool-darkness-123456"
    )
    url, connect_args = engine_url(neon)
    assert dict(url.query) == {}
    assert connect_args["server_settings"] == {"options": "endpoint=ep-cool-darkness-123456"}
    assert connect_args["dsn"] == "postgresql://?sslmode=require"


def test_sslrootcert_system_uses_the_system_store() -> None:
    _, connect_args = translate(make_url("postgresql://h/db?sslrootcert=system"))
    context = connect_args["ssl"]
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(UnsupportedParameter, match="sslrootcert"):
        translate(make_url("postgresql://h/db?sslrootcert=system&sslmode=verify-ca"))


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("sslmode=require", "the server does not offer TLS, which DATABASE_URL's sslmode requires"),
        ("sslmode=verify-ca", "the server does not offer TLS"),
    ],
)
def test_tls_the_server_does_not_offer_is_one_line(
    database: str, query: str, reason: str, tmp_path: Path
) -> None:
    """The machine's Postgres runs without TLS (`SHOW ssl` is off): a URL that requires it
    fails `migrate` (and `serve`, which migrates first) in one line saying so."""
    off = asyncio.run(server_values(database, "ssl"))
    assert off == ["off"], "the test server offers TLS: this test needs one that does not"
    url = with_query(database, f"{query}&sslrootcert={certifi.where()}")
    result = run_cli(tmp_path, "migrate", ENCRYPTION_SECRET=SECRET, DATABASE_URL=url)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert reason in lines[0]


def test_verify_full_without_a_root_certificate_is_one_line(database: str, tmp_path: Path) -> None:
    url = with_query(database, "sslmode=verify-full")
    env = {"ENCRYPTION_SECRET": SECRET, "DATABASE_URL": url, "HOME": str(tmp_path)}
    result = run_cli(tmp_path, "migrate", **env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "root certificate file" in lines[0]


async def prepared_statements(url: str, **options: bool) -> list[str]:
    """The names of the statements the server holds prepared on one connection after ten
    different queries."""
    full, connect_args = engine_url(url, **options)
    engine = create_async_engine(full, connect_args=connect_args)
    try:
        async with engine.connect() as conn:
            for value in range(10):
                await conn.execute(text(f"SELECT {value} + CAST(:v AS int)"), {"v": value})
            names = await conn.scalars(text("SELECT name FROM pg_prepared_statements"))
            return list(names)
    finally:
        await engine.dispose()


def test_a_transaction_pooler_gets_no_lasting_prepared_statements(database: str) -> None:
    """`pgbouncer=true` or `DB_STATEMENT_CACHE=0`: nothing stays prepared on the server, which
    a transaction pooler would hand to another client's session."""
    assert len(asyncio.run(prepared_statements(database))) >= 10  # the default caches them
    for pooled in (
        asyncio.run(prepared_statements(with_query(database, "pgbouncer=true"))),
        asyncio.run(prepared_statements(database, statement_cache=False)),
    ):
        # At most the last, until asyncpg closes it; named uniquely, never `__asyncpg_stmt_1__`
        # that the pooler's next client would collide with.
        assert len(pooled) <= 1
        assert all(re.fullmatch(r"__asyncpg_[0-9a-f-]{36}__", name) for name in pooled), pooled
    settings = Settings.from_env(
        {"ENCRYPTION_SECRET": SECRET, "DATABASE_URL": database, "DB_STATEMENT_CACHE": "0"}
    )
    assert settings.db_statement_cache is False
