"""Transactions on a SQLite file run whole on one thread of their own: one hand-off each.

aiosqlite runs every driver call on its connection's thread, so each call is a hand-off and a
wake-up of the event loop, and a short write transaction is six of them (cursor, statement,
rows, close, commit, the pool's reset) with SQLAlchemy's work around each. The spending caps'
reservation is on the path of every capped request; here it is a function of a synchronous
SQLAlchemy connection, run on a thread that owns one pysqlite connection to the same file.
Its writes and the pool's serialise on SQLite's lock as any two writers do, waiting as long as
the pool's (the busy timeout). An in-memory database is one connection's: it has no writer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection

__all__ = ["SQLiteWriter"]

T = TypeVar("T")


class SQLiteWriter:
    def __init__(self, url: URL, timeout: float, on_connect: Callable[[Any, Any], None]) -> None:
        """A writer to the SQLite file of `url` (any driver: pysqlite is used), its connection
        set up by `on_connect` as the pool's are, waiting `timeout` seconds for the lock."""
        self._engine = create_engine(
            url.set(drivername="sqlite+pysqlite"),
            pool_size=1,
            max_overflow=0,
            connect_args={"timeout": timeout, "check_same_thread": False},
        )
        event.listen(self._engine, "connect", on_connect)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "relay-sqlite-writer")

    @staticmethod
    def writes_to(url: URL) -> bool:
        """Whether `url` names a SQLite file (not an in-memory database)."""
        database = url.database or ""
        in_memory = database in ("", ":memory:") or database.startswith("file:")
        return url.get_backend_name() == "sqlite" and not in_memory

    async def run(self, work: Callable[[Connection], T]) -> T:
        """`work` in one transaction, committed when it returns (unless it rolled back)."""

        def transaction() -> T:
            with self._engine.begin() as conn:
                return work(conn)

        return await asyncio.get_running_loop().run_in_executor(self._thread, transaction)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._engine.dispose()
