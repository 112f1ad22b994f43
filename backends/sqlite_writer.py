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

__all__ = ["SQLiteWriter", "sqlite_file"]

T = TypeVar("T")


def sqlite_file(url: URL) -> bool:
    """Whether `url` names a SQLite database file by its path: not an in-memory database, nor a
    `file:` URI (whose options only its driver reads)."""
    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file:")
    return url.get_backend_name() == "sqlite" and not in_memory


class SQLiteWriter:
    def __init__(self, url: URL, timeout: float, on_connect: Callable[[Any, Any], None]) -> None:
        """A writer to the SQLite file `url` names (`sqlite_file`; whatever its driver, this
        uses pysqlite), its connection set up by `on_connect` as the pool's are, waiting
        `timeout` seconds for the lock."""
        self._engine = create_engine(
            url.set(drivername="sqlite+pysqlite"),
            pool_size=1,
            max_overflow=0,
            connect_args={"timeout": timeout},
        )
        event.listen(self._engine, "connect", on_connect)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "relay-sqlite-writer")
        self._closed = False

    async def run(self, work: Callable[[Connection], T]) -> T:
        """`work` in one transaction, committed when it returns (unless it rolled back)."""

        def transaction() -> T:
            with self._engine.begin() as conn:
                return work(conn)

        return await asyncio.get_running_loop().run_in_executor(self._thread, transaction)

    def close(self) -> None:
        """Close the connection on the thread that made it (sqlite3 allows no other), then the
        thread; once."""
        if self._closed:
            return
        self._closed = True
        self._thread.submit(self._engine.dispose).result()
        self._thread.shutdown(wait=True)
