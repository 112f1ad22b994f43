"""What the SQL store costs on the embedded default: SQLite's driver runs every call in a
thread of its own, so each call is a thread round trip (a GIL hand-off and a wake-up of the
event loop) on a request that misses the cache."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import event, select

from backends import Charge, User, migrate
from backends.sql import SQLStore
from backends.tables import spend
from tests import servers

pytestmark = [pytest.mark.anyio, pytest.mark.sqlite]

TOKEN_HASH = "a" * 64


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture
async def store(url: str) -> AsyncIterator[SQLStore]:
    store = SQLStore.from_url(url)
    await store.create_user(User("u1", "app", 1, None, None), TOKEN_HASH)
    yield store
    await store.close()


async def _thread_calls(
    monkeypatch: pytest.MonkeyPatch, lookup: Callable[[], Awaitable[Any]]
) -> int:
    calls = 0
    execute = aiosqlite.Connection._execute
    # Only this event loop's calls: a relay of another test may run in this process, on a loop
    # of its own in another thread, with stores of its own.
    here = threading.get_ident()

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += threading.get_ident() == here
        return await execute(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    await lookup()  # the pool has its connection
    with monkeypatch.context() as patched:
        patched.setattr(aiosqlite.Connection, "_execute", counted)
        await lookup()
    return calls


async def test_a_lookup_is_five_thread_round_trips(
    store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cursor, execute, fetch, close, and the pool's rollback on return; no isolation-level
    switch at checkout and return (which made seven)."""
    assert await _thread_calls(monkeypatch, lambda: store.user_for_token(TOKEN_HASH)) == 5
    assert await _thread_calls(monkeypatch, lambda: store.get_key("u1", "openai")) == 5
    assert (await store.user_for_token(TOKEN_HASH)) is not None


async def test_a_reservation_is_one_statement_on_the_writer_thread(
    store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A capped request waits for it: on a SQLite file it is run whole by the store's writer
    thread, one hand-off (it was 15 through aiosqlite, a statement per step), and it is one
    statement whatever the number of caps."""
    day = Charge("day", 1, 10**6, 2**40)
    month = Charge("month", 5, 10**6, 2**41)
    assert await store.reserve("u1", [day, month], 1) is None
    assert store._writer is not None
    statements: list[str] = []
    event.listen(
        store._writer._engine, "before_cursor_execute", lambda *args: statements.append(args[2])
    )
    hops = await _thread_calls(monkeypatch, lambda: store.reserve("u1", [day, month], 1))
    assert hops == 0
    assert [sql.split()[:3] for sql in statements] == [["INSERT", "INTO", "spend"]] * 2
    assert await store.spent("u1", ["day", "month"], 1) == {"day": 3, "month": 15}


async def test_counters_of_periods_over_go_when_a_period_begins(store: SQLStore) -> None:
    assert await store.reserve("u1", [Charge("day-1", 1, 10, 100)], 1) is None
    assert await store.reserve("u1", [Charge("day-1", 1, 10, 100)], 50) is None
    assert await store.reserve("u1", [Charge("day-2", 1, 10, 200)], 100) is None
    async with store._engine.connect() as conn:
        rows = (await conn.execute(select(spend.c.counter, spend.c.amount))).all()
    assert [tuple(row) for row in rows] == [("day-2", 1)]


@pytest.mark.postgres
async def test_a_postgres_reservation_is_one_call_outside_a_transaction(
    postgres_url: str,
) -> None:
    """One statement, the function of migration 0011, on the store's autocommit connections (no
    BEGIN and COMMIT round trips around it)."""
    await servers.truncate(postgres_url)
    store = SQLStore.from_url(postgres_url)
    try:
        await store.create_user(User("u1", "app", 1, None, None), TOKEN_HASH)
        statements: list[str] = []
        engine = store._engine.sync_engine
        event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        day, month = Charge("day", 1, 10, 2**40), Charge("month", 6, 10, 2**41)
        assert await store.reserve("u1", [day, month], 1) is None
        assert await store.reserve("u1", [day, month], 1) == 1  # month would pass: nothing added
        assert len(statements) == 2
        assert all(s.startswith("SELECT relay_reserve(") for s in statements)
        assert await store.spent("u1", ["day", "month"], 1) == {"day": 1, "month": 6}
    finally:
        await store.close()
