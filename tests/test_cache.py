"""`backends.cache.CachedStore` over a real SQLite store: what it saves and what it must not hide.

The contract tests run against a cached store too (`tests/test_store_contract.py`); these check
the cache's own promises: reads answered from memory, a write seen at once by the process that
made it and within the TTL by any other, misses shared, nothing stale kept.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import backends
from backends import KeyStore, StoreUnavailable, User, migrate
from backends.cache import CachedStore

pytestmark = [pytest.mark.anyio, pytest.mark.sqlite]

T0 = 1_700_000_000_000
TTL = 0.3
USER = User(id="u1", app_id="app", created_at=T0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cache.db'}"
    await anyio.to_thread.run_sync(migrate.upgrade, url)
    return url


@pytest.fixture
async def inner(db_url: str) -> AsyncIterator[KeyStore]:
    store = backends.open_store(db_url)
    await store.create_user(USER, "digest-1")
    await store.put_key("u1", "openai", b"record-1", T0)
    yield store
    await store.close()


@pytest.fixture
def reads(inner: KeyStore, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times each read reached the real store underneath."""
    counts: Counter[str] = Counter()
    for name in ("user_for_token", "get_key"):
        real = getattr(inner, name)

        def counted(*args: Any, _real: Any = real, _name: str = name) -> Awaitable[Any]:
            counts[_name] += 1
            return _real(*args)  # type: ignore[no-any-return]

        monkeypatch.setattr(inner, name, counted)
    return counts


@pytest.fixture
def cached(inner: KeyStore) -> CachedStore:
    return CachedStore(inner, ttl=TTL)


async def test_repeated_reads_are_answered_from_memory(
    cached: CachedStore, reads: Counter[str]
) -> None:
    for _ in range(50):
        assert await cached.user_for_token("digest-1") == USER
        assert await cached.get_key("u1", "openai") == b"record-1"
    assert reads == {"user_for_token": 1, "get_key": 1}


async def test_an_entry_dies_after_the_ttl(cached: CachedStore, reads: Counter[str]) -> None:
    await cached.get_key("u1", "openai")
    await asyncio.sleep(TTL + 0.05)
    await cached.get_key("u1", "openai")
    assert reads["get_key"] == 2


async def test_misses_are_not_kept(cached: CachedStore, inner: KeyStore) -> None:
    assert await cached.user_for_token("digest-2") is None
    assert await cached.get_key("u1", "anthropic") is None
    await inner.create_user(User(id="u2", app_id="app", created_at=T0), "digest-2")
    await inner.put_key("u1", "anthropic", b"record-a", T0)
    assert (await cached.user_for_token("digest-2")) is not None  # no TTL to wait out
    assert await cached.get_key("u1", "anthropic") == b"record-a"


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda s: s.put_key("u1", "openai", b"record-2", T0 + 1), id="put_key"),
        pytest.param(lambda s: s.replace_key("u1", "openai", b"record-1", b"record-2"), id="cas"),
        pytest.param(lambda s: s.delete_key("u1", "openai"), id="delete_key"),
        pytest.param(lambda s: s.delete_user("u1"), id="delete_user"),
    ],
)
async def test_a_key_write_is_seen_at_once_by_its_own_process(
    cached: CachedStore, write: Callable[[KeyStore], Awaitable[Any]]
) -> None:
    assert await cached.get_key("u1", "openai") == b"record-1"
    await write(cached)
    assert await cached.get_key("u1", "openai") in (b"record-2", None)


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda s: s.revoke_token("u1", T0 + 5), id="revoke"),
        pytest.param(lambda s: s.delete_user("u1"), id="delete_user"),
    ],
)
async def test_a_revocation_is_seen_at_once_by_its_own_process(
    cached: CachedStore, write: Callable[[KeyStore], Awaitable[Any]]
) -> None:
    assert await cached.user_for_token("digest-1") == USER
    await write(cached)
    user = await cached.user_for_token("digest-1")
    assert user is None or user.revoked_at == T0 + 5


async def test_another_processs_write_is_seen_within_the_ttl(inner: KeyStore, db_url: str) -> None:
    """Two stores on one database stand for two relay instances."""
    ttl = 1.0  # the second store's opening and writes fit well inside it
    cached = CachedStore(inner, ttl=ttl)
    assert await cached.user_for_token("digest-1") == USER
    assert await cached.get_key("u1", "openai") == b"record-1"
    other = CachedStore(backends.open_store(db_url), ttl=ttl)
    try:
        await other.put_key("u1", "openai", b"record-2", T0 + 1)
        await other.revoke_token("u1", T0 + 5)
        written = time.monotonic()
        assert await cached.get_key("u1", "openai") == b"record-1"  # the promise is a bound...
        await asyncio.sleep(max(0.0, written + ttl - time.monotonic()))
        assert await cached.get_key("u1", "openai") == b"record-2"  # ...and it holds
        user = await cached.user_for_token("digest-1")
        assert user is not None
        assert user.revoked_at == T0 + 5
    finally:
        await other.close()


async def test_concurrent_misses_share_one_read(cached: CachedStore, reads: Counter[str]) -> None:
    results = await asyncio.gather(*(cached.get_key("u1", "openai") for _ in range(100)))
    assert results == [b"record-1"] * 100
    assert reads["get_key"] == 1


async def test_a_read_that_overlaps_a_write_is_used_once_and_not_kept(
    cached: CachedStore, inner: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_get = inner.get_key
    release = asyncio.Event()
    slow_reads = 0

    async def slow_get(user_id: str, provider: str) -> bytes | None:
        nonlocal slow_reads
        slow_reads += 1
        record = await real_get(user_id, provider)  # read before the write lands...
        await release.wait()  # ...answered after it
        return record

    monkeypatch.setattr(inner, "get_key", slow_get)
    reader = asyncio.create_task(cached.get_key("u1", "openai"))
    await asyncio.sleep(0.05)
    await cached.put_key("u1", "openai", b"record-2", T0 + 1)
    release.set()
    assert await reader == b"record-1"  # it began before the write: either answer is right
    monkeypatch.setattr(inner, "get_key", real_get)
    assert await cached.get_key("u1", "openai") == b"record-2"  # but it was not kept


async def test_a_caller_leaving_does_not_cancel_the_read_others_wait_for(
    cached: CachedStore, inner: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_get = inner.get_key
    release = asyncio.Event()

    async def slow_get(user_id: str, provider: str) -> bytes | None:
        await release.wait()
        return await real_get(user_id, provider)

    monkeypatch.setattr(inner, "get_key", slow_get)
    leaving = asyncio.create_task(cached.get_key("u1", "openai"))
    staying = asyncio.create_task(cached.get_key("u1", "openai"))
    await asyncio.sleep(0.01)
    leaving.cancel()
    release.set()
    assert await staying == b"record-1"
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_a_failed_read_reaches_every_waiter_and_is_not_kept(
    cached: CachedStore, inner: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_get = inner.get_key

    async def down(user_id: str, provider: str) -> bytes | None:
        await asyncio.sleep(0.01)
        raise StoreUnavailable("get_key: the store did not answer")

    monkeypatch.setattr(inner, "get_key", down)
    results = await asyncio.gather(
        *(cached.get_key("u1", "openai") for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, StoreUnavailable) for r in results)
    monkeypatch.setattr(inner, "get_key", real_get)
    assert await cached.get_key("u1", "openai") == b"record-1"


async def test_memory_is_bounded(inner: KeyStore, reads: Counter[str]) -> None:
    cached = CachedStore(inner, ttl=60, max_entries=10)
    for i in range(30):
        await inner.put_key("u1", f"p{i}", f"r{i}".encode(), T0)
        assert await cached.get_key("u1", f"p{i}") == f"r{i}".encode()
    assert reads["get_key"] == 30
    for i in range(20, 30):  # the newest ten are kept...
        await cached.get_key("u1", f"p{i}")
    assert reads["get_key"] == 30
    await cached.get_key("u1", "p0")  # ...the oldest were let go
    assert reads["get_key"] == 31


async def test_a_ttl_of_zero_is_no_cache_not_a_cache(inner: KeyStore) -> None:
    with pytest.raises(ValueError, match="positive"):
        CachedStore(inner, ttl=0)


async def test_an_entry_in_use_is_refreshed_ahead_and_still_dies_within_the_ttl(
    cached: CachedStore, inner: KeyStore, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await cached.get_key("u1", "openai") == b"record-1"
    real_get = inner.get_key

    async def slow_get(user_id: str, provider: str) -> bytes | None:
        await asyncio.sleep(0.05)
        return await real_get(user_id, provider)

    monkeypatch.setattr(inner, "get_key", slow_get)
    other = backends.open_store(db_url)  # another instance's write
    try:
        await other.put_key("u1", "openai", b"record-2", T0 + 1)
        written = time.monotonic()
        seen: list[bytes | None] = []
        slowest = 0.0
        while time.monotonic() < written + TTL + 0.1:
            started = time.monotonic()
            seen.append(await cached.get_key("u1", "openai"))
            slowest = max(slowest, time.monotonic() - started)
            await asyncio.sleep(0.01)
    finally:
        await other.close()
    assert slowest < 0.04  # never waited for the 50 ms read: refreshed while still served
    assert seen[0] == b"record-1"
    assert seen[-1] == b"record-2"  # and the change still arrived within the TTL


async def test_a_refresh_that_finds_nothing_forgets_the_entry(inner: KeyStore, db_url: str) -> None:
    ttl = 1.0  # a second store's writes and a background refresh fit well inside it
    cached = CachedStore(inner, ttl=ttl)
    started = time.monotonic()
    assert await cached.get_key("u1", "openai") == b"record-1"
    other = backends.open_store(db_url)
    try:
        await other.delete_key("u1", "openai")
    finally:
        await other.close()
    await asyncio.sleep(max(0.0, started + ttl * 0.6 - time.monotonic()))
    assert await cached.get_key("u1", "openai") == b"record-1"  # still served; refresh begins
    # Gone before the entry would have died anyway: the refresh, not the TTL, forgot it.
    while await cached.get_key("u1", "openai") is not None:
        assert time.monotonic() < started + ttl * 0.95, "the refresh did not forget the entry"
        await asyncio.sleep(0.01)
