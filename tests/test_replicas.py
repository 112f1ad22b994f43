"""Replicas that start together on an empty Postgres database all come up: the migrations run
under an advisory lock, so one migrates while the others wait, then find nothing to do."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from backends.migrate import LOCK_KEY
from tests.mockprovider import MockProvider
from tests.relayprocess import RelayProcess, run_cli
from tests.relayserver import relay_env
from tests.servers import _asyncpg_dsn, create_database, drop_database, in_thread

pytestmark = pytest.mark.postgres

REPLICAS = 3


@pytest.fixture
def empty_database(postgres_url: str) -> Iterator[str]:
    """A database with no table at all (`postgres_url` fails clearly when the server is down)."""
    url = in_thread(create_database, "byok_replicas")
    yield url
    in_thread(drop_database, url)


def test_replicas_started_at_once_on_an_empty_database_all_serve(
    empty_database: str, mock: MockProvider, tmp_path: Path
) -> None:
    """The test holds the migration lock until all three `serve` processes wait for it (seen in
    `pg_locks`), so they race whatever the machine's load, then lets them go together."""
    env = relay_env(tmp_path / "unused.db", mock.url, LOG_LEVEL="info", DATABASE_URL=empty_database)
    asyncio.run(start_together(empty_database, lambda: RelayProcess(tmp_path, env)))


async def start_together(url: str, start: Callable[[], RelayProcess]) -> None:
    holder = await asyncpg.connect(_asyncpg_dsn(url), timeout=10)
    await holder.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    starting = [asyncio.create_task(asyncio.to_thread(start)) for _ in range(REPLICAS)]
    try:
        waiting = 0
        deadline = time.monotonic() + 60
        while waiting < REPLICAS and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        await holder.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await holder.close()
    outcomes = await asyncio.gather(*starting, return_exceptions=True)
    started = [o for o in outcomes if isinstance(o, RelayProcess)]
    try:
        assert waiting == REPLICAS, f"{waiting} of {REPLICAS} replicas waited for the lock"
        assert len(started) == REPLICAS, [
            str(o) for o in outcomes if not isinstance(o, RelayProcess)
        ]
        for relay in started:
            with relay.client() as client:
                assert client.get("/health").status_code == 200
            relay.wait_for("migrations: waiting for another process that is migrating")
    finally:
        for relay in started:
            relay.stop()


def test_migrate_after_the_replicas_finds_nothing_to_do(
    empty_database: str, tmp_path: Path
) -> None:
    """`byok-relay migrate` as a release step, run twice: the second finds the schema current."""
    env = {"ENCRYPTION_SECRET": "s" * 40, "DATABASE_URL": empty_database}
    for _ in range(2):
        result = run_cli(tmp_path, "migrate", **env)
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip().endswith("byok-relay: migrations applied")
