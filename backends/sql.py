"""The SQL key store: SQLite (aiosqlite) and Postgres (asyncpg) through SQLAlchemy 2 async.

The schema comes from the alembic migrations (`byok-relay migrate`), never from `create_all`.

Its length is the `KeyStore` contract: one method per operation, each one statement or
transaction, for SQLite and Postgres alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import operator
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from sqlalchemy import (
    String,
    Table,
    any_,
    bindparam,
    case,
    delete,
    event,
    func,
    null,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, Dialect, Row, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql import ColumnElement, Executable, Select

from .base import (
    DAY_MS,
    TOKEN_KINDS,
    UNVERIFIED,
    Charge,
    ChildToken,
    KeyInfo,
    KeyMeta,
    KeyStore,
    LedgerRow,
    StoreError,
    StoreOptions,
    StoreUnavailable,
    UsageRecord,
    UsageStats,
    User,
)
from .ledger import GROUP_FIELDS, Part, check_group, rows_of
from .pgparams import translate
from .schemes import SCHEMES, url_scheme
from .sqlite_writer import SQLiteWriter, sqlite_file
from .tables import keys, spend, tokens, usage, users

__all__ = ["SQLStore", "async_url", "engine_url", "ensure_sqlite_directory"]

T = TypeVar("T")

# Rows one pruning statement deletes: each is its own short transaction.
_PRUNED_PER_STATEMENT: Final = 5000
_USAGE_FIELDS = tuple(field.name for field in dataclasses.fields(UsageRecord))
_TOKENS_PER_QUERY: Final = 500
_USER_COLUMNS = (
    users.c.id,
    users.c.app_id,
    users.c.created_at,
    users.c.expires_at,
    users.c.revoked_at,
    users.c.caps,
)
# The priced records' cost, and how many had tokens but no price (`UsageStats.unpriced`).
_COST_SUMS = (
    func.coalesce(func.sum(usage.c.cost_micros), 0),
    func.coalesce(
        func.sum(
            case(
                (
                    usage.c.cost_micros.is_(None)
                    & (
                        (func.coalesce(usage.c.input_tokens, 0) > 0)
                        | (func.coalesce(usage.c.output_tokens, 0) > 0)
                    ),
                    1,
                ),
                else_=0,
            )
        ),
        0,
    ),
)
# One column per field of ChildToken, named as the field; beside a user's, labelled `child_<name>`.
_CHILD_COLUMNS = tuple(tokens.c[field.name] for field in dataclasses.fields(ChildToken))
_CHILD_LABELS = tuple(f"child_{column.name}" for column in _CHILD_COLUMNS)
# One column per field of KeyInfo, named as the field (a field without a column fails here).
_INFO_COLUMNS = tuple(keys.c[field.name] for field in dataclasses.fields(KeyInfo))


def async_url(url: str) -> str:
    """`url` with the async driver its scheme names in `SCHEMES` (`postgres://` too)."""
    scheme = url_scheme(url)
    driver = SCHEMES[scheme].driver if scheme in SCHEMES else None
    if driver is None:
        raise ValueError(f"not a SQL store URL scheme: {scheme!r}")
    return make_url(driver + "://" + url.partition("://")[2]).render_as_string(hide_password=False)


def engine_url(url: str, *, statement_cache: bool = True) -> tuple[URL, dict[str, Any]]:
    """The SQLAlchemy URL for `url` and its `connect_args`: a Postgres URL's libpq parameters
    made asyncpg's (`backends.pgparams`), or `UnsupportedParameter` naming the one refused."""
    parsed = make_url(async_url(url))
    if parsed.get_backend_name() != "postgresql":
        return parsed, {}
    return translate(parsed, statement_cache=statement_cache)


def ensure_sqlite_directory(url: str) -> None:
    """Create the folder and the file of a SQLite file URL (`./data/` on a first start), both
    owner-only (0700, 0600: the file holds every user's encrypted keys). What exists is left
    as it is."""
    parsed = make_url(async_url(url))
    if not sqlite_file(parsed):
        return
    path = Path(parsed.database or "").expanduser()
    missing = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)  # mkdir's mode passes through the umask
    with contextlib.suppress(FileExistsError):  # SQLite's -wal and -shm take the file's mode
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        path.chmod(0o600)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class _UsageInsert:
    """How usage records reach the table, on every relayed request: the INSERT compiled once for
    the dialect, and rows as plain tuples (SQLAlchemy's per-row parameter processing is half an
    insert's cost on the event loop, and these columns need none).

    The rows pass through a `WITH v (...) AS (VALUES ...)` and only those whose user exists are
    inserted, in the same statement: a record of an erased user is dropped, not an error.

    On SQLite, a batch goes in one multi-row INSERT (up to `SQLITE_ROWS` rows a statement):
    sqlite3's executemany gives up the GIL around every row, and aiosqlite's thread, taking it
    back while the event loop is busy, forces a thread switch each time. asyncpg's executemany
    runs on the loop itself, all rows in one round trip."""

    # Rows per statement, within SQLite's limit on parameters (999 before 3.32).
    SQLITE_ROWS: Final = (32766 if sqlite3.sqlite_version_info >= (3, 32) else 999) // len(
        _USAGE_FIELDS
    )

    def __init__(self, dialect: Dialect) -> None:
        statement = usage.insert().values({name: bindparam(name) for name in _USAGE_FIELDS})
        compiled = statement.compile(dialect=dialect, for_executemany=True)
        order = compiled.positiontup  # both drivers take positional parameters
        if order is None or sorted(order) != sorted(_USAGE_FIELDS):
            raise RuntimeError(f"unexpected usage INSERT parameters in {dialect.name}: {order}")
        insert, _, self._values = str(compiled).partition(" VALUES ")
        columns = ", ".join(dialect.identifier_preparer.quote(name) for name in order)
        # The INSERT comes first: sqlite3 opens its implicit transaction only for a statement
        # that starts with INSERT, UPDATE, DELETE or REPLACE.
        self._head = f"{insert} WITH v ({columns}) AS (VALUES "
        # Postgres: a user being erased is waited for, then skipped (the foreign key's check
        # would fail the batch), and one seen stays locked, so an erasure cascades to these rows.
        # SQLite has one writer at a time: its check cannot race.
        exists = "SELECT 1 FROM users WHERE users.id = v.user_id"
        if dialect.name == "postgresql":
            exists += " FOR KEY SHARE"
        self._tail = f") SELECT * FROM v WHERE EXISTS ({exists})"  # noqa: S608 - no values
        self._sql = self._head + self._values + self._tail
        self._row: Callable[[UsageRecord], tuple[Any, ...]] = operator.attrgetter(*order)
        self._multirow = dialect.name == "sqlite"

    async def write(self, conn: AsyncConnection, records: Sequence[UsageRecord]) -> None:
        rows = [self._row(record) for record in records]
        if not self._multirow:
            await conn.exec_driver_sql(self._sql, rows)
            return
        for start in range(0, len(rows), self.SQLITE_ROWS):
            chunk = rows[start : start + self.SQLITE_ROWS]
            params = tuple(itertools.chain.from_iterable(chunk))
            sql = f"{self._head}{', '.join([self._values] * len(chunk))}{self._tail}"
            await conn.exec_driver_sql(sql, params)


def _user(row: Row[Any]) -> User:
    child = None
    if row.child_id is not None:
        child = ChildToken(*(getattr(row, label) for label in _CHILD_LABELS))
    return User(row.id, row.app_id, row.created_at, row.expires_at, row.revoked_at, child, row.caps)


def _lookup(
    digests: Callable[[ColumnElement[str]], ColumnElement[bool]],
) -> Select[Any]:
    """Users by token digest (`digests` picks them from a digest column), with the digest:
    those of the account's own token, then those of a narrow one, in one query."""
    own = select(
        users.c.token_hash, *_USER_COLUMNS, *(null().label(n) for n in _CHILD_LABELS)
    ).where(digests(users.c.token_hash))
    narrow = (
        select(
            tokens.c.token_hash,
            *_USER_COLUMNS,
            *(c.label(n) for c, n in zip(_CHILD_COLUMNS, _CHILD_LABELS, strict=True)),
        )
        .select_from(tokens.join(users, users.c.id == tokens.c.user_id))
        .where(digests(tokens.c.token_hash))
    )
    return select(union_all(own, narrow).subquery())


def _reservation(
    dialect: Dialect, insert: Callable[[Table], Any], counters: int
) -> tuple[str, tuple[str, ...]]:
    """Add amounts to `counters` counters of user `u` in one statement (a counter whose period
    ended by `now` starts again at its amount), answering each counter's new amount. Its
    parameters: `u`, `now`, and `c<i>`, `a<i>`, `e<i>` (counter, amount, expiry) for each.
    Compiled here, once: SQLAlchemy caches no multi-row INSERT, and compiling one took longer
    than running it."""
    fresh = insert(spend).values(
        [
            {
                "user_id": bindparam("u"),
                "counter": bindparam(f"c{i}"),
                "amount": bindparam(f"a{i}"),
                "expires_at": bindparam(f"e{i}"),
            }
            for i in range(counters)
        ]
    )
    over = spend.c.expires_at <= bindparam("now")
    added = spend.c.amount + fresh.excluded.amount
    statement = fresh.on_conflict_do_update(
        index_elements=[spend.c.user_id, spend.c.counter],
        set_={
            "amount": case((over, fresh.excluded.amount), else_=added),
            "expires_at": case((over, fresh.excluded.expires_at), else_=spend.c.expires_at),
        },
    ).returning(spend.c.counter, spend.c.amount)
    compiled = statement.compile(dialect=dialect)
    order = compiled.positiontup  # both drivers take positional parameters
    if order is None:
        raise RuntimeError(f"unexpected reservation parameters in {dialect.name}")
    return str(compiled), tuple(order)


def _first_refused(
    charges: Sequence[Charge], amounts: Mapping[str, int], adding: Mapping[str, int]
) -> int | None:
    """The index of the first charge that takes its counter past its limit, the counters
    standing at `amounts` once `adding` was added; None when none does."""
    running = {name: amounts[name] - added for name, added in adding.items()}
    for index, charge in enumerate(charges):
        running[charge.counter] += charge.amount
        if running[charge.counter] > charge.limit:
            return index
    return None


def _drop_at_once(dbapi_connection: Any, _record: Any, _exception: BaseException | None) -> None:
    # SQLAlchemy closes an invalidated asyncpg connection politely, waiting up to 2 s for a
    # server that may be frozen (the call's deadline is what invalidated it): drop it now.
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is not None:
        driver.terminate()


@contextlib.contextmanager
def _translate(operation: str) -> Iterator[None]:
    """Driver errors become store errors naming the operation, never values or URLs."""
    try:
        yield
    except (OperationalError, InterfaceError, PoolTimeout, OSError, TimeoutError) as exc:
        raise StoreUnavailable(f"key store unavailable during {operation}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailable(f"key store unavailable during {operation}") from exc
        raise StoreError(f"key store failed during {operation}") from exc
    except (UnicodeEncodeError, OverflowError) as exc:  # a value the driver cannot send
        raise StoreError(f"key store refused a value during {operation}") from exc


class SQLStore(KeyStore):
    def __init__(
        self, engine: AsyncEngine, deadline: float | None = None, writer: SQLiteWriter | None = None
    ) -> None:
        """A store on `engine`; each call takes at most `deadline` seconds in all (None: as long
        as the driver's own waits). `writer`: the thread that runs the SQLite file's spending
        transactions whole."""
        self._engine = engine
        self._deadline = deadline
        # Reads run outside a transaction. Postgres needs AUTOCOMMIT for that (no BEGIN and
        # ROLLBACK round trips per lookup); SQLite's driver never opens one for a SELECT, and
        # switching its isolation level costs thread round trips at every checkout and return
        # (a lookup took twice as long), so its reads use the engine as it is.
        self._reader = (
            engine
            if engine.dialect.name == "sqlite"
            else engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        # The lookups are built once: a token's on every relayed request whose user is not
        # cached, the open streams' every few seconds. Postgres takes the digests as one array
        # (one prepared statement whatever their number), SQLite as an expanded IN.
        self._by_token = _lookup(lambda column: column == bindparam("digest"))
        if engine.dialect.name == "postgresql":
            digests = bindparam("digests", type_=ARRAY(String))
            self._by_tokens = _lookup(lambda column: column == any_(digests))
        else:
            digests = bindparam("digests", expanding=True)
            self._by_tokens = _lookup(lambda column: column.in_(digests))
        self._usage = _UsageInsert(engine.dialect)
        # A reservation's statement for so many counters (a request is under a few caps).
        self._reservations = functools.lru_cache(maxsize=32)(
            functools.partial(_reservation, engine.dialect, self._insert)
        )
        # Postgres reserves in one round trip: a function (migration 0011) runs the transaction.
        self._reserve_call = (
            text(
                "SELECT relay_reserve(:who, CAST(:counters AS text[]), CAST(:amounts AS bigint[]),"
                " CAST(:limits AS bigint[]), CAST(:ends AS bigint[]), :at_ms)"
            )
            if engine.dialect.name == "postgresql"
            else None
        )
        self._expired_spend = delete(spend).where(
            spend.c.user_id == bindparam("u"), spend.c.expires_at <= bindparam("now")
        )
        total = spend.c.amount + bindparam("add")
        self._settlement = (
            update(spend)
            .where(spend.c.user_id == bindparam("u"), spend.c.counter == bindparam("name"))
            .values(amount=case((total < 0, 0), else_=total))
        )
        self._writer = writer

    @classmethod
    def from_url(cls, url: str, options: StoreOptions | None = None) -> SQLStore:
        options = options or StoreOptions()
        full, connect_args = engine_url(url, statement_cache=options.statement_cache)
        # No pre-ping (a round trip per checkout): a read on a connection that died in the pool
        # is retried once instead, and recycling keeps idle connections fresh.
        engine_options: dict[str, Any] = {"pool_recycle": 1800, "skip_autocommit_rollback": True}
        if full.get_backend_name() == "sqlite":
            ensure_sqlite_directory(url)
            engine_options["connect_args"] = {"timeout": options.connect_timeout}
        else:
            # No command timeout: each call has its deadline (`_call`), and a query that times
            # out is never retried.
            engine_options.update(
                pool_size=options.pool_size,
                max_overflow=options.pool_size,
                pool_timeout=options.pool_timeout,
                connect_args={"timeout": options.connect_timeout, **connect_args},
            )
        engine = create_async_engine(full, **engine_options)
        if full.get_backend_name() == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            writer = None
            if sqlite_file(full):
                writer = SQLiteWriter(full, options.connect_timeout, _sqlite_pragmas)
            # A call into SQLite runs on its driver's thread, which a deadline cannot stop: its
            # waits are SQLite's own busy timeout.
            return cls(engine, writer=writer)
        event.listen(engine.sync_engine, "invalidate", _drop_at_once)
        return cls(engine, deadline=options.connect_timeout)

    @contextlib.asynccontextmanager
    async def _call(self, operation: str) -> AsyncIterator[None]:
        """One store call: cut off at the deadline whatever it waits on (a pooled connection, a
        connect, every answer), its driver errors translated."""
        with _translate(operation):
            async with asyncio.timeout(self._deadline):
                yield

    @contextlib.asynccontextmanager
    async def _begin(self, operation: str) -> AsyncIterator[AsyncConnection]:
        async with self._call(operation), self._engine.begin() as conn:
            yield conn

    async def _rows(
        self, operation: str, query: Executable, params: Mapping[str, Any] | None = None
    ) -> Sequence[Row[Any]]:
        async with self._call(operation):
            try:
                async with self._reader.connect() as conn:
                    return (await conn.execute(query, params)).all()
            except DBAPIError as exc:
                # Only a connection found dead is tried again; a timeout is no DBAPIError.
                if not exc.connection_invalidated:
                    raise
            # The pooled connection had died (the server restarted): once more, on a new one.
            async with self._reader.connect() as conn:
                return (await conn.execute(query, params)).all()

    async def create_user(self, user: User, token_hash: str) -> None:
        try:
            async with self._begin("create_user") as conn:
                await conn.execute(
                    users.insert().values(
                        id=user.id,
                        app_id=user.app_id,
                        token_hash=token_hash,
                        created_at=user.created_at,
                        expires_at=user.expires_at,
                        revoked_at=user.revoked_at,
                        caps=user.caps,
                    )
                )
        except IntegrityError as exc:
            raise StoreError("create_user: user id or token digest already exists") from exc

    async def user_for_token(self, token_hash: str) -> User | None:
        rows = await self._rows("user_for_token", self._by_token, {"digest": token_hash})
        return _user(rows[0]) if rows else None

    async def users_for_tokens(self, token_hashes: Sequence[str]) -> dict[str, User]:
        found: dict[str, User] = {}
        for start in range(0, len(token_hashes), _TOKENS_PER_QUERY):
            chunk = list(token_hashes[start : start + _TOKENS_PER_QUERY])
            rows = await self._rows("users_for_tokens", self._by_tokens, {"digests": chunk})
            for row in rows:
                found[row.token_hash] = _user(row)
        return found

    async def revoke_token(self, user_id: str, at: int) -> None:
        async with self._begin("revoke_token") as conn:
            await conn.execute(
                update(users)
                .where(users.c.id == user_id, users.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )

    async def delete_user(self, user_id: str) -> None:
        # Not left to the cascades alone: SQLite applies them only where foreign_keys is on.
        async with self._begin("delete_user") as conn:
            await conn.execute(delete(usage).where(usage.c.user_id == user_id))
            await conn.execute(delete(keys).where(keys.c.user_id == user_id))
            await conn.execute(delete(tokens).where(tokens.c.user_id == user_id))
            await conn.execute(delete(spend).where(spend.c.user_id == user_id))
            await conn.execute(delete(users).where(users.c.id == user_id))

    async def set_caps(self, user_id: str, caps: str | None) -> None:
        async with self._begin("set_caps") as conn:
            await conn.execute(update(users).where(users.c.id == user_id).values(caps=caps))

    async def reserve(self, user_id: str, charges: Sequence[Charge], now: int) -> int | None:
        if not charges:
            return None
        if self._reserve_call is not None:
            params = {
                "who": user_id,
                "counters": [charge.counter for charge in charges],
                "amounts": [charge.amount for charge in charges],
                "limits": [charge.limit for charge in charges],
                "ends": [charge.expires_at for charge in charges],
                "at_ms": now,
            }
            refused = (await self._rows("reserve", self._reserve_call, params))[0][0]
            return None if refused is None else int(refused)
        work = functools.partial(self._reserve_in, user_id, charges, now)
        try:
            return await self._write("reserve", work)
        except IntegrityError as exc:
            raise StoreError("reserve: no such user") from exc

    def _reserve_in(
        self, user_id: str, charges: Sequence[Charge], now: int, conn: Connection
    ) -> int | None:
        adding: dict[str, int] = {}
        ends: dict[str, int] = {}
        for charge in charges:
            adding[charge.counter] = adding.get(charge.counter, 0) + charge.amount
            ends[charge.counter] = charge.expires_at
        # One statement adds to every counter, starting those new or over again: SQLite's write
        # lock is held until the amounts are checked and the whole is committed or rolled back.
        # (Postgres runs the same in relay_reserve, its rows locked in name order.)
        params: dict[str, Any] = {"u": user_id, "now": now}
        for i, name in enumerate(sorted(adding)):
            params.update({f"c{i}": name, f"a{i}": adding[name], f"e{i}": ends[name]})
        sql, order = self._reservations(len(adding))
        found = conn.exec_driver_sql(sql, tuple(params[name] for name in order))
        amounts: dict[str, int] = {name: amount for name, amount in found}
        refused = _first_refused(charges, amounts, adding)
        if refused is not None:
            conn.rollback()
            return refused
        if any(amounts[name] == adding[name] for name in adding):
            # A counter began (a new period), or stood at 0: those whose period is over can go.
            conn.execute(self._expired_spend, {"u": user_id, "now": now})
        return None

    async def settle(self, user_id: str, changes: Sequence[tuple[str, int]]) -> None:
        changed = [
            {"u": user_id, "name": name, "add": amount} for name, amount in changes if amount
        ]
        if changed:
            await self._write("settle", lambda conn: conn.execute(self._settlement, changed))

    async def _write(self, operation: str, work: Callable[[Connection], T]) -> T:
        """`work` in a write transaction: run whole by the SQLite file's writer thread, else
        statement by statement from the pool."""
        if self._writer is None:
            async with self._begin(operation) as conn:
                return await conn.run_sync(work)
        async with self._call(operation):
            return await self._writer.run(work)

    async def spent(self, user_id: str, counters: Sequence[str], now: int) -> dict[str, int]:
        if not counters:
            return {}
        query = select(spend.c.counter, spend.c.amount).where(
            spend.c.user_id == user_id,
            spend.c.counter.in_(list(counters)),
            spend.c.expires_at > now,
        )
        return {row.counter: int(row.amount) for row in await self._rows("spent", query)}

    async def create_child_token(
        self, child: ChildToken, token_hash: str, now: int, most: int
    ) -> bool:
        account = child.user_id
        # The DELETE first: on SQLite it takes the write lock, so no other writer comes between
        # the count and the insert. On Postgres the user's row lock does that for its minters.
        expired = delete(tokens).where(tokens.c.user_id == account, tokens.c.expires_at <= now)
        owner = select(users.c.id).where(users.c.id == account).with_for_update()
        live = select(func.count()).select_from(tokens).where(tokens.c.user_id == account)
        parent = select(tokens.c.id).where(
            tokens.c.user_id == account, tokens.c.id == child.parent_id
        )
        taken = select(users.c.id).where(users.c.token_hash == token_hash)
        try:
            async with self._begin("create_child_token") as conn:
                await conn.execute(expired)
                if (await conn.execute(owner)).first() is None:
                    raise StoreError("create_child_token: no such user")
                if (await conn.execute(live)).scalar_one() >= most:
                    return False
                if child.parent_id is not None and (await conn.execute(parent)).first() is None:
                    raise StoreError("create_child_token: no such parent token")
                if (await conn.execute(taken)).first() is not None:
                    raise StoreError("create_child_token: token digest already exists")
                values = dataclasses.asdict(child)
                await conn.execute(tokens.insert().values(token_hash=token_hash, **values))
        except IntegrityError as exc:
            # A parent deleted since it was read, or an id or digest already in use.
            raise StoreError("create_child_token: parent gone, or id or digest in use") from exc
        return True

    async def child_tokens(self, user_id: str) -> list[ChildToken]:
        query = (
            select(*_CHILD_COLUMNS)
            .where(tokens.c.user_id == user_id)
            .order_by(tokens.c.created_at, tokens.c.id)
        )
        return [ChildToken(*tuple(row)) for row in await self._rows("child_tokens", query)]

    async def delete_child_token(self, user_id: str, token_id: str) -> list[str]:
        tree = (
            select(tokens.c.id)
            .where(tokens.c.user_id == user_id, tokens.c.id == token_id)
            .cte("tree", recursive=True)
        )
        tree = tree.union_all(select(tokens.c.id).where(tokens.c.parent_id == tree.c.id))
        async with self._begin("delete_child_token") as conn:
            ids = list((await conn.execute(select(tree.c.id))).scalars())
            if ids:
                # The parent's cascade also takes a child minted since the tree was read.
                await conn.execute(delete(tokens).where(tokens.c.id.in_(ids)))
        return ids

    async def touch_child_token(self, user_id: str, token_id: str, at: int) -> None:
        statement = (
            update(tokens)
            .where(tokens.c.user_id == user_id, tokens.c.id == token_id)
            .values(last_used_at=at)
        )
        async with self._begin("touch_child_token") as conn:
            await conn.execute(statement)

    async def put_key(
        self, user_id: str, provider: str, record: bytes, at: int, meta: KeyMeta = UNVERIFIED
    ) -> bool:
        # Update first, insert only when there was nothing to update. Each statement is atomic,
        # and `ON CONFLICT DO NOTHING` waits for a concurrent inserter instead of failing, so
        # exactly one of several racing writers reports "created" and the last write wins whole.
        where = (keys.c.user_id == user_id) & (keys.c.provider == provider)
        values = {
            "record": record,
            "updated_at": at,
            "hint": meta.hint,
            "status": meta.status,
            "verified_at": meta.verified_at,
            "last_used_at": None,
        }
        replace = update(keys).where(where).values(values)
        create = (
            self._insert(keys)
            .values(user_id=user_id, provider=provider, created_at=at, **values)
            .on_conflict_do_nothing(index_elements=[keys.c.user_id, keys.c.provider])
        )
        try:
            async with self._begin("put_key") as conn:
                if (await conn.execute(replace)).rowcount:
                    return True
                if (await conn.execute(create)).rowcount:
                    return False
                await conn.execute(replace)
                return True
        except IntegrityError as exc:
            raise StoreError("put_key: no such user") from exc

    async def get_key(self, user_id: str, provider: str) -> bytes | None:
        query = select(keys.c.record).where(keys.c.user_id == user_id, keys.c.provider == provider)
        rows = await self._rows("get_key", query)
        return bytes(rows[0][0]) if rows else None

    async def list_keys(self, user_id: str) -> list[KeyInfo]:
        query = select(*_INFO_COLUMNS).where(keys.c.user_id == user_id).order_by(keys.c.provider)
        rows = await self._rows("list_keys", query)
        return [KeyInfo(**row._mapping) for row in rows]

    async def set_key_status(
        self, user_id: str, provider: str, record: bytes, status: str, verified_at: int | None
    ) -> bool:
        values: dict[str, object] = {"status": status}
        if verified_at is not None:
            values["verified_at"] = verified_at
        statement = (
            update(keys)
            .where(keys.c.user_id == user_id, keys.c.provider == provider, keys.c.record == record)
            .values(values)
        )
        async with self._begin("set_key_status") as conn:
            return bool((await conn.execute(statement)).rowcount)

    async def touch_key(self, user_id: str, provider: str, at: int) -> None:
        statement = (
            update(keys)
            .where(keys.c.user_id == user_id, keys.c.provider == provider)
            .values(last_used_at=at)
        )
        async with self._begin("touch_key") as conn:
            await conn.execute(statement)

    async def delete_key(self, user_id: str, provider: str) -> bool:
        statement = delete(keys).where(keys.c.user_id == user_id, keys.c.provider == provider)
        async with self._begin("delete_key") as conn:
            result = await conn.execute(statement)
        return bool(result.rowcount)

    async def record_usage(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        async with self._begin("record_usage") as conn:
            await self._usage.write(conn, records)

    async def usage_stats(
        self, now: int, *, user_id: str | None = None, app_id: str | None = None
    ) -> UsageStats:
        if (user_id is None) == (app_id is None):
            raise ValueError("usage_stats: give exactly one of user_id and app_id")
        scope = usage.c.user_id == user_id if user_id is not None else usage.c.app_id == app_id
        error = case((usage.c.status >= 400, 1), else_=0)
        totals = select(
            func.count(),
            func.sum(case((usage.c.created_at >= now - 7 * DAY_MS, 1), else_=0)),
            func.sum(case((usage.c.created_at >= now - 30 * DAY_MS, 1), else_=0)),
            func.sum(error),
            func.max(usage.c.created_at),
            *_COST_SUMS,
            *(func.sum(usage.c[f"{kind}_tokens"]) for kind in TOKEN_KINDS),
        ).where(scope)
        by_provider_and_outcome = (
            select(usage.c.provider, usage.c.outcome, func.count(), func.sum(error))
            .where(scope)
            .group_by(usage.c.provider, usage.c.outcome)
        )
        by_model = (
            select(usage.c.model, func.count().label("n"))
            .where(scope, usage.c.model.is_not(None))
            .group_by(usage.c.model)
            .order_by(func.count().desc(), usage.c.model)
            .limit(10)
        )
        async with self._call("usage_stats"), self._reader.connect() as conn:
            total, week, month, errors, last, cost, unpriced, *tokens = (
                await conn.execute(totals)
            ).one()
            groups = (await conn.execute(by_provider_and_outcome)).all()
            models = (await conn.execute(by_model)).all()
        providers: dict[str, dict[str, int]] = {}
        outcomes: dict[str, int] = {}
        for provider, outcome, n, e in groups:
            counts = providers.setdefault(provider, {"total": 0, "errors": 0})
            counts["total"] += n
            counts["errors"] += int(e or 0)
            outcomes[outcome] = outcomes.get(outcome, 0) + n
        return UsageStats(
            total=total,
            last_7d=int(week or 0),
            last_30d=int(month or 0),
            error_count=int(errors or 0),
            providers=providers,
            top_models=[(m, n) for m, n in models],
            last_request=last,
            outcomes=outcomes,
            cost_micros=int(cost or 0),
            unpriced=int(unpriced or 0),
            **{f"{kind}_tokens": int(n or 0) for kind, n in zip(TOKEN_KINDS, tokens, strict=True)},
        )

    async def usage_ledger(
        self, user_id: str, start: int, end: int, group_by: str
    ) -> list[LedgerRow]:
        check_group(group_by)
        day = group_by == "day"
        # Integer division on both dialects: the columns are integers.
        group = usage.c.created_at / DAY_MS if day else usage.c[GROUP_FIELDS[group_by]]
        query = (
            select(
                group,
                usage.c.outcome,
                func.count(),
                func.sum(case((usage.c.status >= 400, 1), else_=0)),
                *_COST_SUMS,
                *(func.coalesce(func.sum(usage.c[f"{kind}_tokens"]), 0) for kind in TOKEN_KINDS),
            )
            .where(
                usage.c.user_id == user_id,
                usage.c.created_at >= start,
                usage.c.created_at < end,
            )
            .group_by(group, usage.c.outcome)
        )
        parts = []
        for row in await self._rows("usage_ledger", query):
            key, outcome, requests, errors, cost, unpriced, *tokens = tuple(row)
            group_key = int(key) if day else key
            counts = tuple(map(int, tokens))
            parts.append(
                Part(group_key, outcome, requests, int(errors), counts, int(cost), int(unpriced))
            )
        return rows_of(parts, group_by)

    async def prune_usage(self, before: int) -> int:
        oldest = (
            select(usage.c.id)
            .where(usage.c.created_at < before)
            .order_by(usage.c.id)
            .limit(_PRUNED_PER_STATEMENT)
        )
        statement = usage.delete().where(usage.c.id.in_(oldest.scalar_subquery()))
        deleted = 0
        while True:
            async with self._begin("prune_usage") as conn:
                count = (await conn.execute(statement)).rowcount
            deleted += count
            if count < _PRUNED_PER_STATEMENT:
                return deleted

    async def count_users(self, app_id: str) -> int:
        query = select(func.count()).select_from(users).where(users.c.app_id == app_id)
        return int((await self._rows("count_users", query))[0][0])

    async def iter_keys(self, batch: int = 500) -> AsyncIterator[tuple[str, str, bytes]]:
        after = ("", "")
        while True:
            query = (
                select(keys.c.user_id, keys.c.provider, keys.c.record)
                .where(tuple_(keys.c.user_id, keys.c.provider) > tuple_(*after))
                .order_by(keys.c.user_id, keys.c.provider)
                .limit(batch)
            )
            rows = await self._rows("iter_keys", query)
            for row in rows:
                yield row.user_id, row.provider, bytes(row.record)
            if len(rows) < batch:
                return
            after = (rows[-1].user_id, rows[-1].provider)

    async def replace_key(self, user_id: str, provider: str, old: bytes, new: bytes) -> bool:
        statement = (
            update(keys)
            .where(keys.c.user_id == user_id, keys.c.provider == provider, keys.c.record == old)
            .values(record=new)
        )
        async with self._begin("replace_key") as conn:
            return bool((await conn.execute(statement)).rowcount)

    async def ping(self) -> None:
        await self._rows("ping", select(text("1")))

    async def close(self) -> None:
        await self._engine.dispose()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)
