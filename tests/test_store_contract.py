"""The `KeyStore` contract of `backends/base.py`, run against every store backend.

A new backend joins by adding one `pytest.param` (with its marker) to the `store` fixture and
one branch that opens an empty store of that kind; every test below then runs against it too
(`usage_owners`, which reads beneath the store, needs a branch of its own as well).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from redis import asyncio as aioredis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

import backends
import backends.redis
import backends.sql
from backends import (
    DAY_MS,
    TOKEN_KINDS,
    Charge,
    ChildToken,
    KeyInfo,
    KeyMeta,
    KeyStore,
    Outcome,
    StoreError,
    UsageRecord,
    UsageStats,
    User,
    migrate,
    tables,
)
from backends.cache import CachedStore
from backends.redis_layout import redis_key, usage_stats_of
from backends.sql import async_url
from relay.pricing.caps import MOST
from tests import servers

pytestmark = pytest.mark.anyio

ALL_BYTES = bytes(range(256))
T0 = 1_700_000_000_000  # epoch ms


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


_TEMPLATES: dict[str, Path] = {}
_WHERE = pytest.StashKey[tuple[str, str]]()
"""Where the `store` fixture's data lives: its URL, and its Redis namespace ("" for none)."""


def _migrated_sqlite_copy(factory: pytest.TempPathFactory, path: Path) -> None:
    """Copy a migrated SQLite file to `path`; alembic (~0.2 s) runs once per process."""
    template = _TEMPLATES.get("sqlite")
    if template is None:
        template = factory.mktemp("store-template") / "template.db"
        migrate.upgrade(f"sqlite:///{template}")
        _TEMPLATES["sqlite"] = template
    shutil.copyfile(template, path)


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("cached-sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[KeyStore]:
    """An empty, migrated store of each backend; closed after the test."""
    namespace = None
    if request.param in ("sqlite", "cached-sqlite"):
        path = tmp_path / "x.db"
        # Alembic runs its own event loop, so it must not run on this one's thread.
        await anyio.to_thread.run_sync(_migrated_sqlite_copy, tmp_path_factory, path)
        url = f"sqlite:///{path}"
        opened = backends.open_store(url)
        if request.param == "cached-sqlite":  # what a relay process uses: one process's view
            opened = CachedStore(opened, ttl=1.0)
    elif request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        await servers.truncate(url)
        opened = backends.open_store(url)
    elif request.param == "redis":
        namespace = servers.new_namespace()
        options = backends.StoreOptions(namespace=namespace)
        url = request.getfixturevalue("redis_url")
        opened = backends.open_store(url, options)
    else:  # every param needs a branch that opens an empty store of its kind
        raise AssertionError(f"no store for {request.param}")
    request.node.stash[_WHERE] = (url, namespace or "")
    try:
        yield opened
    finally:
        await opened.close()
        if namespace is not None:
            await anyio.to_thread.run_sync(servers.drop_namespace, namespace)


@pytest.fixture
def usage_owners(
    request: pytest.FixtureRequest, store: KeyStore
) -> Callable[[], Awaitable[set[str]]]:
    """Whose usage records the `store`'s server holds, read beneath the store: leftovers that
    its own queries would not show."""
    url, namespace = request.node.stash[_WHERE]

    async def owners() -> set[str]:
        if namespace:
            client = aioredis.Redis.from_url(url)
            prefix = redis_key(namespace, "usage", "")
            try:
                return {
                    n.decode().removeprefix(prefix) async for n in client.scan_iter(prefix + "*")
                }
            finally:
                await client.aclose()
        engine = create_async_engine(async_url(url))
        try:
            async with engine.connect() as conn:
                query = select(tables.usage.c.user_id).distinct()
                return set((await conn.execute(query)).scalars())
        finally:
            await engine.dispose()

    return owners


def make_user(
    user_id: str = "user-1",
    app_id: str = "app-1",
    created_at: int = T0,
    expires_at: int | None = T0 + 90 * 86_400_000,
    revoked_at: int | None = None,
) -> User:
    return User(
        id=user_id,
        app_id=app_id,
        created_at=created_at,
        expires_at=expires_at,
        revoked_at=revoked_at,
    )


async def add_user(store: KeyStore, user_id: str = "user-1", token_hash: str = "") -> User:
    user = make_user(user_id)
    await store.create_user(user, token_hash or digest(user_id))
    return user


async def providers_of(store: KeyStore, user_id: str) -> list[str]:
    return [key.provider for key in await store.list_keys(user_id)]


def digest(seed: str) -> str:
    """A stand-in for a 64-hex-character token digest."""
    return (seed.encode().hex() + "0" * 64)[:64]


# ---------------------------------------------------------------------------------------------
# Users


async def test_create_user_then_find_it_by_token_hash(store: KeyStore) -> None:
    user = make_user()
    await store.create_user(user, digest("t1"))
    assert await store.user_for_token(digest("t1")) == user
    assert await store.user_for_token(digest("t2")) is None


@pytest.mark.parametrize(
    "user",
    [
        make_user(expires_at=None),
        make_user(revoked_at=T0 + 5),
        make_user(created_at=0, expires_at=2**62, revoked_at=2**62 - 1),
        make_user(user_id="0" * 64, app_id="a" * 128),
        make_user(app_id="app é 🔑 'quoted' \"double\" %s ; DROP TABLE users"),
    ],
)
async def test_users_round_trip_exactly(store: KeyStore, user: User) -> None:
    await store.create_user(user, digest("t"))
    assert await store.user_for_token(digest("t")) == user


async def test_missing_user_for_token(store: KeyStore) -> None:
    assert await store.user_for_token(digest("nobody")) is None
    assert await store.user_for_token("") is None


async def test_users_for_tokens_finds_those_that_exist(store: KeyStore) -> None:
    live = await add_user(store, "user-1", digest("t1"))
    await add_user(store, "user-2", digest("t2"))
    await store.revoke_token("user-2", T0 + 5)
    expired = make_user("user-3", expires_at=T0 - 1)
    await store.create_user(expired, digest("t3"))
    await add_user(store, "user-4", digest("t4"))
    await store.delete_user("user-4")
    found = await store.users_for_tokens(
        [digest("t1"), digest("nobody"), digest("t2"), digest("t3"), digest("t4")]
    )
    assert found == {
        digest("t1"): live,
        digest("t2"): make_user("user-2", revoked_at=T0 + 5),
        digest("t3"): expired,
    }
    assert await store.users_for_tokens([digest("nobody")]) == {}
    assert await store.users_for_tokens([]) == {}


async def test_users_for_tokens_sees_another_instances_writes_at_once(
    request: pytest.FixtureRequest, store: KeyStore
) -> None:
    """It is how open streams learn that their token is gone: never answered from a cache."""
    await add_user(store, "user-1", digest("t1"))
    await add_user(store, "user-2", digest("t2"))
    for token in ("t1", "t2"):
        assert await store.user_for_token(digest(token)) is not None  # cached, if there is a cache
    url, namespace = request.node.stash[_WHERE]
    options = backends.StoreOptions(namespace=namespace) if namespace else None
    other = backends.open_store(url, options)  # another relay instance
    try:
        await other.revoke_token("user-1", T0 + 1)
        await other.delete_user("user-2")
    finally:
        await other.close()
    assert await store.users_for_tokens([digest("t1"), digest("t2")]) == {
        digest("t1"): make_user("user-1", revoked_at=T0 + 1)
    }


async def test_users_for_tokens_beyond_one_query(store: KeyStore) -> None:
    digests = [digest(f"tok-{i:04d}") for i in range(1200)]
    expected = {}
    for i in [*range(0, len(digests), 10), 499, 501, len(digests) - 1]:
        expected[digests[i]] = await add_user(store, f"user-{i:04d}", digests[i])
    assert await store.users_for_tokens(digests) == expected


async def test_duplicate_user_id_is_refused_and_stores_nothing(store: KeyStore) -> None:
    original = await add_user(store, "user-1", digest("t1"))
    with pytest.raises(StoreError):
        await store.create_user(make_user("user-1", app_id="intruder"), digest("t2"))
    assert await store.user_for_token(digest("t2")) is None
    assert await store.user_for_token(digest("t1")) == original


async def test_duplicate_token_hash_is_refused_and_stores_nothing(store: KeyStore) -> None:
    original = await add_user(store, "user-1", digest("t1"))
    with pytest.raises(StoreError):
        await store.create_user(make_user("user-2", app_id="intruder"), digest("t1"))
    assert await store.user_for_token(digest("t1")) == original
    # No second user is hiding behind the digest once the first is gone.
    await store.delete_user("user-1")
    assert await store.user_for_token(digest("t1")) is None
    # And the id that was refused is free: nothing was stored under it.
    await store.create_user(make_user("user-2"), digest("t3"))
    assert await store.user_for_token(digest("t3")) == make_user("user-2")


async def test_store_still_works_after_a_refused_create(store: KeyStore) -> None:
    await add_user(store, "user-1", digest("t1"))
    with pytest.raises(StoreError):
        await store.create_user(make_user("user-1"), digest("t1"))
    assert await store.put_key("user-1", "openai", b"record", T0) is False
    assert await store.get_key("user-1", "openai") == b"record"


async def test_revoke_keeps_the_first_time(store: KeyStore) -> None:
    user = await add_user(store, "user-1", digest("t1"))
    other = await add_user(store, "user-2", digest("t2"))
    await store.revoke_token("user-1", T0 + 1000)
    assert await store.user_for_token(digest("t1")) == make_user("user-1", revoked_at=T0 + 1000)
    await store.revoke_token("user-1", T0 + 2000)
    await store.revoke_token("user-1", T0 + 500)
    revoked = await store.user_for_token(digest("t1"))
    assert revoked is not None
    assert revoked.revoked_at == T0 + 1000
    assert (revoked.id, revoked.app_id, revoked.created_at, revoked.expires_at) == (
        user.id,
        user.app_id,
        user.created_at,
        user.expires_at,
    )
    # Only that user.
    assert await store.user_for_token(digest("t2")) == other


async def test_revoked_user_keeps_its_keys(store: KeyStore) -> None:
    await add_user(store)
    await store.put_key("user-1", "openai", b"record", T0)
    await store.revoke_token("user-1", T0)
    assert await store.get_key("user-1", "openai") == b"record"


async def test_revoke_missing_user_is_a_no_op(store: KeyStore) -> None:
    await store.revoke_token("nobody", T0)
    await add_user(store, "user-1", digest("t1"))
    await store.revoke_token("nobody", T0)
    assert await store.user_for_token(digest("t1")) == make_user()


async def test_delete_user_removes_the_user_and_every_key(store: KeyStore) -> None:
    await add_user(store, "user-1", digest("t1"))
    other = await add_user(store, "user-2", digest("t2"))
    for provider in ("openai", "anthropic", "google"):
        await store.put_key("user-1", provider, b"mine-" + provider.encode(), T0)
    await store.put_key("user-2", "openai", b"theirs", T0)

    await store.delete_user("user-1")

    assert await store.user_for_token(digest("t1")) is None
    assert await providers_of(store, "user-1") == []
    for provider in ("openai", "anthropic", "google"):
        assert await store.get_key("user-1", provider) is None
    # Keys are gone, not merely hidden: a new user with the same id starts empty.
    await store.create_user(make_user("user-1"), digest("t1-again"))
    assert await providers_of(store, "user-1") == []
    assert await store.get_key("user-1", "openai") is None
    # Other users are untouched.
    assert await store.user_for_token(digest("t2")) == other
    assert await store.get_key("user-2", "openai") == b"theirs"


async def test_delete_user_twice_or_missing_is_a_no_op(store: KeyStore) -> None:
    await store.delete_user("nobody")
    await add_user(store, "user-1", digest("t1"))
    await store.put_key("user-1", "openai", b"r", T0)
    await store.delete_user("user-1")
    await store.delete_user("user-1")
    assert await store.user_for_token(digest("t1")) is None
    assert await store.get_key("user-1", "openai") is None


# ---------------------------------------------------------------------------------------------
# Narrow tokens

LIMITS = '{"providers":["openai"]}'


def child(
    token_id: str, parent_id: str | None = None, user_id: str = "user-1", **changes: object
) -> ChildToken:
    made = ChildToken(
        id=token_id,
        user_id=user_id,
        parent_id=parent_id,
        name=f"name of {token_id}",
        limits=LIMITS,
        created_at=T0 + len(token_id),
        expires_at=T0 + 86_400_000,
    )
    return dataclasses.replace(made, **changes)


async def mint(store: KeyStore, made: ChildToken, most: int = 100, now: int = T0) -> bool:
    return await store.create_child_token(made, digest(f"child-{made.id}"), now, most)


async def test_a_narrow_token_finds_its_account_with_itself_as_child(store: KeyStore) -> None:
    user = await add_user(store)
    made = child("c1", limits='{"models":["gpt-4o*"],"origins":["https://a.example"]}')
    assert await mint(store, made)
    assert await store.user_for_token(digest("child-c1")) == dataclasses.replace(user, child=made)
    assert await store.users_for_tokens([digest("child-c1"), digest("user-1"), digest("x")]) == {
        digest("child-c1"): dataclasses.replace(user, child=made),
        digest("user-1"): user,
    }
    assert await store.child_tokens("user-1") == [made]
    assert await store.child_tokens("nobody") == []


@pytest.mark.parametrize("limits", ["{}", r'{"name":"\u00e9\ud83d\ude00 \"q\""}', "x" * 5000])
async def test_narrow_tokens_round_trip_exactly(store: KeyStore, limits: str) -> None:
    await add_user(store)
    made = child("c1", name='ünïcødé 😀 "quoted"', limits=limits, expires_at=None)
    assert await mint(store, made)
    assert (await store.child_tokens("user-1")) == [made]
    found = await store.user_for_token(digest("child-c1"))
    assert found is not None
    assert found.child == made


async def test_revoking_the_account_revokes_its_narrow_tokens(store: KeyStore) -> None:
    await add_user(store)
    assert await mint(store, child("c1"))
    await store.revoke_token("user-1", T0 + 5)
    found = await store.user_for_token(digest("child-c1"))
    assert found is not None
    assert (found.revoked_at, found.child) == (T0 + 5, child("c1"))


async def test_deleting_a_narrow_token_deletes_those_minted_from_it(store: KeyStore) -> None:
    await add_user(store)
    await add_user(store, "user-2")
    for made in (child("a"), child("b", "a"), child("c", "b"), child("d", "a"), child("e")):
        assert await mint(store, made)
    assert await mint(store, child("f", user_id="user-2"))
    assert sorted(await store.delete_child_token("user-1", "b")) == ["b", "c"]
    assert [c.id for c in await store.child_tokens("user-1")] == ["a", "d", "e"]
    assert sorted(await store.delete_child_token("user-1", "a")) == ["a", "d"]
    assert await store.delete_child_token("user-1", "a") == []
    assert await store.delete_child_token("user-1", "f") == []  # another account's
    found = await store.users_for_tokens([digest(f"child-{c}") for c in "abcdef"])
    assert sorted(found) == [digest("child-e"), digest("child-f")]
    assert await store.user_for_token(digest("child-c")) is None


async def test_a_refused_mint_stores_nothing(store: KeyStore) -> None:
    await add_user(store)
    await add_user(store, "user-2")
    assert await mint(store, child("a"))
    assert await mint(store, child("z", user_id="user-2"))
    refused = [
        child("b", user_id="nobody"),  # no such account
        child("b", "missing"),  # no such parent
        child("b", "z"),  # a parent of another account's
        child("a"),  # an id in use
    ]
    for made in refused:
        with pytest.raises(StoreError):
            await mint(store, made)
    for taken in (digest("user-1"), digest("child-a")):  # a digest in use
        with pytest.raises(StoreError):
            await store.create_child_token(child("b"), taken, T0, 100)
    assert [c.id for c in await store.child_tokens("user-1")] == ["a"]
    assert await mint(store, child("b", "a"))  # the store still works


async def test_at_most_so_many_live_narrow_tokens_and_expired_ones_go(store: KeyStore) -> None:
    await add_user(store)
    assert await mint(store, child("old", expires_at=T0 + 10), most=3)
    assert await mint(store, child("old-kid", "old", expires_at=T0 + 10), most=3)
    assert await mint(store, child("a"), most=3)
    assert not await mint(store, child("b"), most=3)  # three live ones
    assert [c.id for c in await store.child_tokens("user-1")] == ["a", "old", "old-kid"]
    # Past their expiry, the old ones (and what was minted from them) go at the next mint.
    assert await mint(store, child("b"), most=3, now=T0 + 10)
    assert await mint(store, child("c"), most=3, now=T0 + 10)
    assert not await mint(store, child("d"), most=3, now=T0 + 10)
    assert [c.id for c in await store.child_tokens("user-1")] == ["a", "b", "c"]
    assert await store.user_for_token(digest("child-old-kid")) is None


async def test_erasing_the_account_erases_its_narrow_tokens(store: KeyStore) -> None:
    await add_user(store)
    assert await mint(store, child("a"))
    assert await mint(store, child("b", "a"))
    await store.delete_user("user-1")
    assert await store.child_tokens("user-1") == []
    assert await store.users_for_tokens([digest("child-a"), digest("child-b")]) == {}
    await add_user(store)  # the same id again starts with none
    assert await store.child_tokens("user-1") == []


async def test_touch_child_token(store: KeyStore) -> None:
    await add_user(store)
    assert await mint(store, child("a"))
    await store.touch_child_token("user-1", "a", T0 + 7)
    await store.touch_child_token("user-1", "missing", T0 + 8)
    await store.touch_child_token("user-2", "a", T0 + 9)
    assert [c.last_used_at for c in await store.child_tokens("user-1")] == [T0 + 7]
    found = await store.users_for_tokens([digest("child-a")])
    assert found[digest("child-a")].child == child("a", last_used_at=T0 + 7)


async def test_concurrent_mints_never_pass_the_limit(store: KeyStore) -> None:
    await add_user(store)
    results: list[bool] = []

    async def one(i: int) -> None:
        results.append(await mint(store, child(f"c{i:02d}"), most=5))

    async with anyio.create_task_group() as group:
        for i in range(20):
            group.start_soon(one, i)
    assert sorted(results) == [False] * 15 + [True] * 5
    assert len(await store.child_tokens("user-1")) == 5


async def test_no_narrow_token_outlives_its_parent_deleted_meanwhile(store: KeyStore) -> None:
    await add_user(store)
    for round_ in range(10):
        parent = f"p{round_}"
        assert await mint(store, child(parent))
        outcome: dict[str, object] = {}

        async def minting(parent: str = parent, outcome: dict[str, object] = outcome) -> None:
            try:
                outcome["minted"] = await mint(store, child(f"{parent}-kid", parent))
            except StoreError:
                outcome["minted"] = False

        async with anyio.create_task_group() as group:
            group.start_soon(minting)
            group.start_soon(store.delete_child_token, "user-1", parent)
        assert await store.user_for_token(digest(f"child-{parent}-kid")) is None
        assert [c.id for c in await store.child_tokens("user-1")] == []


# ---------------------------------------------------------------------------------------------
# Spending caps


def charge(counter: str, amount: int, limit: int, expires_at: int = T0 + DAY_MS) -> Charge:
    return Charge(counter, amount, limit, expires_at)


async def test_caps_are_stored_with_the_user(store: KeyStore) -> None:
    user = await add_user(store)
    assert await mint(store, child("c1"))
    await store.set_caps("user-1", '{"caps":[]}')
    assert await store.user_for_token(digest("user-1")) == dataclasses.replace(
        user, caps='{"caps":[]}'
    )
    narrow = await store.user_for_token(digest("child-c1"))
    assert narrow is not None
    assert narrow.caps == '{"caps":[]}'  # a narrow token spends under its account's caps
    await store.set_caps("user-1", None)
    assert await store.user_for_token(digest("user-1")) == user
    await store.set_caps("nobody", "{}")  # a no-op


async def test_a_reservation_is_all_or_nothing(store: KeyStore) -> None:
    await add_user(store)
    assert await store.reserve("user-1", [charge("a", 3, 10), charge("b", 5, 5)], T0) is None
    assert await store.spent("user-1", ["a", "b", "c"], T0) == {"a": 3, "b": 5}
    # b is full: nothing is added to a either.
    assert await store.reserve("user-1", [charge("a", 1, 10), charge("b", 1, 5)], T0) == 1
    assert await store.spent("user-1", ["a", "b"], T0) == {"a": 3, "b": 5}
    # Two charges on one counter add up.
    assert await store.reserve("user-1", [charge("a", 4, 10), charge("a", 4, 10)], T0) == 1
    assert await store.reserve("user-1", [charge("a", 7, 10), charge("b", 0, 5)], T0) is None
    assert await store.spent("user-1", ["a", "b"], T0) == {"a": 10, "b": 5}
    assert await store.reserve("user-1", [], T0) is None
    with pytest.raises(StoreError):
        await store.reserve("nobody", [charge("a", 1, 10)], T0)


async def test_a_counter_at_the_largest_limit_refuses_an_amount_past_it(store: KeyStore) -> None:
    await add_user(store)
    # Every amount the relay sends is at most one past the largest limit (`caps.MOST`).
    assert await store.reserve("user-1", [charge("a", MOST, MOST)], T0) is None
    assert await store.reserve("user-1", [charge("a", MOST + 1, MOST)], T0) == 0
    assert await store.reserve("user-1", [charge("a", 1, MOST)], T0) == 0
    await store.settle("user-1", [("a", MOST + 1)])  # what a provider reported past it
    assert await store.spent("user-1", ["a"], T0) == {"a": 2 * MOST + 1}


async def test_settling_corrects_a_reservation_never_below_zero(store: KeyStore) -> None:
    await add_user(store)
    assert await store.reserve("user-1", [charge("a", 8, 10), charge("b", 2, 10)], T0) is None
    await store.settle("user-1", [("a", -5), ("b", -9), ("gone", 4)])
    assert await store.spent("user-1", ["a", "b", "gone"], T0) == {"a": 3, "b": 0}
    await store.settle("user-1", [("a", 20)])  # the real amount may pass the limit
    assert await store.spent("user-1", ["a"], T0) == {"a": 23}
    assert await store.reserve("user-1", [charge("a", 0, 10)], T0) == 0


async def test_a_counter_ends_with_its_period(store: KeyStore) -> None:
    await add_user(store)
    assert await store.reserve("user-1", [charge("a", 10, 10, expires_at=T0 + 5)], T0) is None
    assert await store.reserve("user-1", [charge("a", 1, 10, expires_at=T0 + 5)], T0 + 4) == 0
    assert await store.spent("user-1", ["a"], T0 + 5) == {}
    assert await store.reserve("user-1", [charge("a", 1, 10, expires_at=T0 + 9)], T0 + 5) is None
    assert await store.spent("user-1", ["a"], T0 + 5) == {"a": 1}


async def test_erasing_the_account_erases_its_counters(store: KeyStore) -> None:
    await add_user(store)
    assert await store.reserve("user-1", [charge("a", 4, 10)], T0) is None
    await store.delete_user("user-1")
    await add_user(store)
    assert await store.spent("user-1", ["a"], T0) == {}


async def test_concurrent_reservations_never_pass_a_limit(store: KeyStore) -> None:
    await add_user(store)
    results: list[int | None] = []

    async def one() -> None:
        results.append(
            await store.reserve("user-1", [charge("day", 1, 100), charge("n", 3, 60)], T0)
        )

    async with anyio.create_task_group() as group:
        for _ in range(60):
            group.start_soon(one)
    assert results.count(None) == 20  # 20 x 3 fills "n"
    assert await store.spent("user-1", ["day", "n"], T0) == {"day": 20, "n": 60}


# ---------------------------------------------------------------------------------------------
# Keys


async def test_missing_user_has_no_keys(store: KeyStore) -> None:
    assert await store.get_key("nobody", "openai") is None
    assert await providers_of(store, "nobody") == []
    assert await store.delete_key("nobody", "openai") is False


async def test_put_key_reports_whether_it_replaced(store: KeyStore) -> None:
    await add_user(store)
    assert await store.put_key("user-1", "openai", b"first", T0) is False
    assert await store.put_key("user-1", "openai", b"second", T0 + 1) is True
    assert await store.put_key("user-1", "openai", b"third", T0 + 2) is True
    assert await store.get_key("user-1", "openai") == b"third"
    # Another provider is another record.
    assert await store.put_key("user-1", "anthropic", b"a", T0) is False


async def test_last_write_wins(store: KeyStore) -> None:
    await add_user(store)
    records = [os.urandom(40) for _ in range(5)]
    for index, record in enumerate(records):
        await store.put_key("user-1", "openai", record, T0 + index)
    assert await store.get_key("user-1", "openai") == records[-1]
    assert await providers_of(store, "user-1") == ["openai"]


@pytest.mark.parametrize(
    "record",
    [
        ALL_BYTES,
        ALL_BYTES[::-1],
        ALL_BYTES * 4,
        b"\x00",
        b"\x00" * 32,
        b"trailing nul\x00\x00",
        b"\xff" * 100,
        "naïve 🔑".encode(),
        b"x",
        b"",
    ],
    ids=lambda r: f"{len(r)}-bytes",
)
async def test_records_round_trip_exactly(store: KeyStore, record: bytes) -> None:
    await add_user(store)
    await store.put_key("user-1", "openai", record, T0)
    stored = await store.get_key("user-1", "openai")
    assert type(stored) is bytes
    assert stored == record


async def test_large_random_record_round_trips(store: KeyStore) -> None:
    await add_user(store)
    record = os.urandom(64 * 1024)
    await store.put_key("user-1", "openai", record, T0)
    assert await store.get_key("user-1", "openai") == record


async def test_keys_are_per_user_and_provider(store: KeyStore) -> None:
    await add_user(store, "user-1", digest("t1"))
    await add_user(store, "user-2", digest("t2"))
    await store.put_key("user-1", "openai", b"u1-openai", T0)
    await store.put_key("user-1", "openai-compatible", b"u1-compatible", T0)
    await store.put_key("user-2", "openai", b"u2-openai", T0)
    assert await store.get_key("user-1", "openai") == b"u1-openai"
    assert await store.get_key("user-1", "openai-compatible") == b"u1-compatible"
    assert await store.get_key("user-2", "openai") == b"u2-openai"
    assert await store.get_key("user-2", "openai-compatible") is None
    assert await store.get_key("user-1", "OpenAI") is None
    assert await store.get_key("user-1", "openai ") is None
    assert await store.get_key("USER-1", "openai") is None


async def test_delete_key(store: KeyStore) -> None:
    await add_user(store)
    await store.put_key("user-1", "openai", b"o", T0)
    await store.put_key("user-1", "anthropic", b"a", T0)
    assert await store.delete_key("user-1", "openai") is True
    assert await store.get_key("user-1", "openai") is None
    assert await store.delete_key("user-1", "openai") is False
    assert await store.delete_key("user-1", "google") is False
    assert await store.get_key("user-1", "anthropic") == b"a"
    assert await providers_of(store, "user-1") == ["anthropic"]
    # A deleted key can be stored again, as new.
    assert await store.put_key("user-1", "openai", b"o2", T0) is False
    assert await store.get_key("user-1", "openai") == b"o2"


async def test_list_keys_is_sorted_by_provider(store: KeyStore) -> None:
    await add_user(store)
    names = [
        "openrouter",
        "anthropic",
        "openai-compatible",
        "google",
        "openai",
        "deepgram",
        "mistral",
        "elevenlabs",
        "huggingface",
        "groq",
    ]
    random.Random(7).shuffle(names)
    for name in names:
        await store.put_key("user-1", name, name.encode(), T0)
    await store.put_key("user-1", "google", b"again", T0 + 1)
    assert await providers_of(store, "user-1") == sorted(names)


async def test_ping(store: KeyStore) -> None:
    assert await store.ping() is None
    await add_user(store)
    assert await store.ping() is None


# ---------------------------------------------------------------------------------------------
# Concurrency


async def test_concurrent_writers_leave_exactly_one_record_intact(store: KeyStore) -> None:
    await add_user(store)
    records = [bytes([i]) * 64 + os.urandom(64) for i in range(50)]

    async def write(record: bytes) -> None:
        await store.put_key("user-1", "openai", record, T0)

    async with anyio.create_task_group() as group:
        for record in records:
            group.start_soon(write, record)

    stored = await store.get_key("user-1", "openai")
    assert stored in records
    assert await providers_of(store, "user-1") == ["openai"]


async def _racing_puts(store: KeyStore, provider: str, count: int) -> list[bool]:
    """`count` writers storing distinct records to one (user, provider) at once."""
    results: list[bool] = []

    async def write(index: int) -> None:
        results.append(await store.put_key("user-1", provider, bytes([index]) * 32, T0))

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(write, index)
    return results


async def test_concurrent_writers_agree_on_who_created_the_record(store: KeyStore) -> None:
    """Of many writers racing to create a record, exactly one finds none; the rest replace."""
    await add_user(store)
    # Open the store's connections first, so that the writers really do run at once.
    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(store.ping)

    for provider in ("openai", "anthropic", "google"):
        results = await _racing_puts(store, provider, 50)
        assert len(results) == 50
        assert results.count(False) == 1, f"{results.count(False)} writers saw no record"
        assert await store.put_key("user-1", provider, b"after", T0) is True


async def test_concurrent_writers_on_different_providers(store: KeyStore) -> None:
    await add_user(store)
    providers = [f"provider-{i:02d}" for i in range(30)]

    async def write(provider: str) -> None:
        assert await store.put_key("user-1", provider, provider.encode(), T0) is False

    async with anyio.create_task_group() as group:
        for provider in providers:
            group.start_soon(write, provider)

    assert await providers_of(store, "user-1") == providers
    for provider in providers:
        assert await store.get_key("user-1", provider) == provider.encode()


# ---------------------------------------------------------------------------------------------
# Lifecycle


async def test_iter_keys_yields_every_record_once(store: KeyStore) -> None:
    expected = set()
    for u in range(7):
        await add_user(store, f"user-{u}")
        for p in ("openai", "anthropic", "google")[: u % 3 + 1]:
            record = f"{u}:{p}".encode() + ALL_BYTES
            await store.put_key(f"user-{u}", p, record, T0)
            expected.add((f"user-{u}", p, record))
    seen = [item async for item in store.iter_keys()]
    assert len(seen) == len(expected)
    assert set(seen) == expected


async def test_iter_keys_pages_through_more_than_one_batch(store: KeyStore) -> None:
    await add_user(store)
    providers = [f"provider-{i:03d}" for i in range(23)]
    for p in providers:
        await store.put_key("user-1", p, p.encode(), T0)
    seen = [item async for item in store.iter_keys(batch=5)]
    assert sorted(p for _, p, _ in seen) == providers


async def test_iter_keys_of_an_empty_store(store: KeyStore) -> None:
    assert [item async for item in store.iter_keys()] == []


async def test_replace_key_is_compare_and_set(store: KeyStore) -> None:
    await add_user(store)
    await store.put_key("user-1", "openai", b"old" + ALL_BYTES, T0)
    assert await store.replace_key("user-1", "openai", b"old" + ALL_BYTES, b"new" + ALL_BYTES)
    assert await store.get_key("user-1", "openai") == b"new" + ALL_BYTES
    # A stale `old` (the user wrote meanwhile) changes nothing.
    assert not await store.replace_key("user-1", "openai", b"old" + ALL_BYTES, b"lost")
    assert await store.get_key("user-1", "openai") == b"new" + ALL_BYTES
    # A deleted record stays deleted; a missing user is no error.
    await store.delete_key("user-1", "openai")
    assert not await store.replace_key("user-1", "openai", b"new" + ALL_BYTES, b"back")
    assert await store.get_key("user-1", "openai") is None
    assert not await store.replace_key("nobody", "openai", b"x", b"y")


async def test_replace_key_keeps_the_record_a_normal_key(store: KeyStore) -> None:
    await add_user(store)
    await store.put_key("user-1", "openai", b"first", T0)
    await store.replace_key("user-1", "openai", b"first", b"second")
    assert await store.put_key("user-1", "openai", b"third", T0 + 1) is True
    assert await providers_of(store, "user-1") == ["openai"]
    assert await store.get_key("user-1", "openai") == b"third"


# ---------------------------------------------------------------------------------------------
# Key metadata


async def test_key_metadata_round_trips(store: KeyStore) -> None:
    await add_user(store)
    assert await store.list_keys("user-1") == []
    meta = KeyMeta(hint="sk-...a1b2", status="ok", verified_at=T0 + 1)
    await store.put_key("user-1", "openai", b"record", T0, meta)
    await store.put_key("user-1", "anthropic", b"other", T0 + 5)
    assert await store.list_keys("user-1") == [
        KeyInfo("anthropic", "", "unverified", T0 + 5, T0 + 5, None, None),
        KeyInfo("openai", "sk-...a1b2", "ok", T0, T0, T0 + 1, None),
    ]
    assert await store.list_keys("nobody") == []


async def test_a_new_key_starts_over_but_keeps_its_creation_time(store: KeyStore) -> None:
    await add_user(store)
    await store.put_key("user-1", "openai", b"one", T0, KeyMeta("sk-...1111", "invalid", T0))
    await store.touch_key("user-1", "openai", T0 + 3)
    await store.put_key("user-1", "openai", b"two", T0 + 10, KeyMeta("sk-...2222"))
    (info,) = await store.list_keys("user-1")
    assert info == KeyInfo("openai", "sk-...2222", "unverified", T0, T0 + 10, None, None)


async def test_set_key_status_only_for_the_record_it_saw(store: KeyStore) -> None:
    await add_user(store)
    await store.put_key("user-1", "openai", b"one", T0, KeyMeta("h", "ok", T0))
    assert await store.set_key_status("user-1", "openai", b"one", "invalid", None)
    (info,) = await store.list_keys("user-1")
    assert (info.status, info.verified_at) == ("invalid", T0)
    assert await store.set_key_status("user-1", "openai", b"one", "ok", T0 + 7)
    (info,) = await store.list_keys("user-1")
    assert (info.status, info.verified_at) == ("ok", T0 + 7)
    # The user stored a new key meanwhile: a verdict about the old one must not stick to it.
    await store.put_key("user-1", "openai", b"two", T0 + 9)
    assert not await store.set_key_status("user-1", "openai", b"one", "invalid", None)
    (info,) = await store.list_keys("user-1")
    assert info.status == "unverified"
    assert not await store.set_key_status("user-1", "mistral", b"one", "ok", None)
    assert not await store.set_key_status("nobody", "openai", b"two", "ok", None)


async def test_touch_key(store: KeyStore) -> None:
    await add_user(store)
    await store.touch_key("user-1", "openai", T0)  # no key: no-op, no error
    assert await store.list_keys("user-1") == []
    await store.put_key("user-1", "openai", b"one", T0)
    await store.touch_key("user-1", "openai", T0 + 60_000)
    (info,) = await store.list_keys("user-1")
    assert info.last_used_at == T0 + 60_000
    assert info.updated_at == T0


async def test_deleting_a_key_or_user_deletes_its_metadata(store: KeyStore) -> None:
    await add_user(store)
    await store.put_key("user-1", "openai", b"one", T0, KeyMeta("sk-...a", "ok", T0))
    await store.touch_key("user-1", "openai", T0 + 1)
    await store.delete_key("user-1", "openai")
    await store.put_key("user-1", "openai", b"two", T0 + 2)
    (info,) = await store.list_keys("user-1")
    assert info == KeyInfo("openai", "", "unverified", T0 + 2, T0 + 2, None, None)
    await store.delete_user("user-1")
    await add_user(store)
    assert await store.list_keys("user-1") == []


# ---------------------------------------------------------------------------------------------
# Usage records

DAY = 86_400_000


def usage(user_id: str, app_id: str = "app-1", **changes: object) -> UsageRecord:
    record = UsageRecord(
        user_id, app_id, "openai", "gpt-4o", 200, 120, False, 11, 7, T0,
        cost_micros=83, price_version="test-prices-1",
    )  # fmt: skip
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("odd", [{"model": "lone\ud800"}, {"input_tokens": 2**64}])
async def test_a_record_a_store_cannot_hold_is_a_store_error(
    store: KeyStore, odd: dict[str, object]
) -> None:
    """Never another exception (the recorder drops what the store refuses, record by record)."""
    await add_user(store, "user-1")
    try:
        await store.record_usage([usage("user-1", **odd)])
        held = 1  # Redis keeps records as JSON text, which can
    except StoreError:
        held = 0
    await store.record_usage([usage("user-1")])
    assert (await store.usage_stats(T0 + 1, user_id="user-1")).total == held + 1


async def test_usage_stats_add_up(store: KeyStore) -> None:
    await add_user(store, "user-1")
    await add_user(store, "user-2")
    now = T0 + 40 * DAY
    await store.record_usage(
        [
            usage("user-1", created_at=now - 1),
            usage("user-1", created_at=now - 2, status=429, model="gpt-4o-mini"),
            usage(
                "user-1",
                created_at=now - 8 * DAY,
                provider="anthropic",
                model="claude-3",
                input_tokens=None,
                output_tokens=3,
                streamed=True,
                outcome=Outcome.CLIENT_CANCELLED,
                cost_micros=None,  # tokens of a model with no price
                price_version=None,
            ),
            usage(
                "user-1",
                created_at=now - 31 * DAY,
                status=502,
                model=None,
                outcome="revoked",
                input_tokens=None,
                output_tokens=None,
                cost_micros=None,  # no tokens, nothing to price: not unpriced
            ),
            usage("user-1", created_at=now - 3, outcome=Outcome.CLIENT_CANCELLED),
            usage(
                "user-2",
                created_at=now - 1,
                provider="google",
                model="gemini-pro",
                outcome=Outcome.IDLE_TIMEOUT,
            ),
        ]
    )
    stats = await store.usage_stats(now, user_id="user-1")
    assert stats == UsageStats(
        total=5,
        last_7d=3,
        last_30d=4,
        error_count=2,
        providers={"openai": {"total": 4, "errors": 2}, "anthropic": {"total": 1, "errors": 0}},
        top_models=[("gpt-4o", 2), ("claude-3", 1), ("gpt-4o-mini", 1)],
        last_request=now - 1,
        input_tokens=33,
        output_tokens=24,
        outcomes={"completed": 2, "client_cancelled": 2, "revoked": 1},
        cost_micros=3 * 83,
        unpriced=1,
    )
    assert all(type(outcome) is str for outcome in stats.outcomes)
    app = await store.usage_stats(now, app_id="app-1")
    assert app.total == 6
    assert (app.cost_micros, app.unpriced) == (4 * 83, 1)
    assert app.providers["google"] == {"total": 1, "errors": 0}
    assert app.outcomes == {"completed": 2, "client_cancelled": 2, "revoked": 1, "idle_timeout": 1}
    assert await store.count_users("app-1") == 2
    assert await store.count_users("no-app") == 0
    empty = await store.usage_stats(now, user_id="nobody")
    assert (empty.total, empty.last_request, empty.providers, empty.top_models) == (0, None, {}, [])
    assert empty.outcomes == {}


async def test_every_token_kind_is_summed_apart_and_none_counts_nothing(store: KeyStore) -> None:
    await add_user(store, "user-1")
    await add_user(store, "user-2")
    kinds = {"cache_read_tokens": 3, "cache_write_tokens": 4, "reasoning_tokens": 5}
    await store.record_usage(
        [
            usage("user-1", **kinds),
            usage("user-1", provider="anthropic", cache_write_tokens=40, reasoning_tokens=None),
            usage("user-1", input_tokens=None, output_tokens=None),
            usage("user-2", **kinds),
        ]
    )
    mine = await store.usage_stats(T0, user_id="user-1")
    assert {kind: getattr(mine, f"{kind}_tokens") for kind in TOKEN_KINDS} == {
        "input": 22,
        "output": 14,
        "cache_read": 3,
        "cache_write": 44,
        "reasoning": 5,
    }
    app = await store.usage_stats(T0, app_id="app-1")
    assert (app.cache_read_tokens, app.cache_write_tokens, app.reasoning_tokens) == (6, 48, 10)


async def test_the_ledger_sums_a_users_own_records_in_the_span_by_group(
    store: KeyStore,
) -> None:
    await add_user(store, "user-1")
    await add_user(store, "user-2")
    day = 86_400_000
    t0 = 1_704_067_200_000  # 2024-01-01t00:00:00Z
    await store.record_usage(
        [
            usage("user-1", created_at=t0, cache_read_tokens=3),
            usage("user-1", created_at=t0 + day - 1, status=429, outcome=Outcome.COMPLETED),
            usage("user-1", created_at=t0 + day, provider="anthropic", model="claude-3",
                  app_id="app-2", cache_write_tokens=4, outcome=Outcome.CLIENT_CANCELLED),
            usage("user-1", created_at=t0 + 2 * day, model=None, input_tokens=None,
                  cost_micros=None, token_id="narrow-1"),
            usage("user-1", created_at=t0 + 3 * day),  # past the span's end
            usage("user-2", created_at=t0),  # someone else's
        ]
    )  # fmt: skip
    end = t0 + 3 * day

    by_day = await store.usage_ledger("user-1", t0, end, "day")
    assert [(r.key, r.requests, r.errors) for r in by_day] == [
        ("2024-01-01", 2, 1),
        ("2024-01-02", 1, 0),
        ("2024-01-03", 1, 0),
    ]
    first = by_day[0]
    assert first.tokens == {
        "input": 22, "output": 14, "cache_read": 3, "cache_write": 0, "reasoning": 0
    }  # fmt: skip
    assert first.outcomes == {"completed": 2}
    assert (first.cost_micros, first.unpriced) == (2 * 83, 0)
    assert (by_day[2].cost_micros, by_day[2].unpriced) == (0, 1)
    assert by_day[1].outcomes == {"client_cancelled": 1}
    assert by_day[2].tokens["input"] == 0

    by_model = await store.usage_ledger("user-1", t0, end, "model")
    assert [(r.key, r.requests) for r in by_model] == [
        ("claude-3", 1), ("gpt-4o", 2), (None, 1)
    ]  # fmt: skip
    by_app = await store.usage_ledger("user-1", t0, end, "app")
    assert [(r.key, r.requests) for r in by_app] == [("app-1", 3), ("app-2", 1)]
    by_token = await store.usage_ledger("user-1", t0, end, "token")
    assert [(r.key, r.requests) for r in by_token] == [("narrow-1", 1), (None, 3)]
    by_provider = await store.usage_ledger("user-1", t0, end, "provider")
    assert [(r.key, r.tokens["cache_write"]) for r in by_provider] == [
        ("anthropic", 4), ("openai", 0)
    ]  # fmt: skip

    assert await store.usage_ledger("user-1", t0 + day, t0 + day, "day") == []
    assert await store.usage_ledger("nobody", t0, end, "day") == []
    with pytest.raises(ValueError, match="group_by"):
        await store.usage_ledger("user-1", t0, end, "week")


async def test_pruning_deletes_every_users_records_before_a_time_in_batches(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of two, so that the loop over batches is what deletes them.
    monkeypatch.setattr(backends.sql, "_PRUNED_PER_STATEMENT", 2)
    monkeypatch.setattr(backends.redis, "_PRUNED_PER_CALL", 2)
    await add_user(store, "user-1")
    await add_user(store, "user-2")
    old = [usage(u, created_at=T0 + i) for u in ("user-1", "user-2") for i in range(5)]
    kept = [usage(u, created_at=T0 + 100 + i) for u in ("user-1", "user-2") for i in range(3)]
    await store.record_usage(old + kept)
    assert await store.prune_usage(T0 + 100) == 10
    assert (await store.usage_stats(T0, user_id="user-1")).total == 3
    assert (await store.usage_stats(T0, app_id="app-1")).total == 6
    assert await store.prune_usage(T0 + 100) == 0
    assert await store.prune_usage(T0) == 0
    assert await store.prune_usage(T0 + 200) == 6
    assert (await store.usage_stats(T0, app_id="app-1")).total == 0


async def test_top_models_are_the_ten_most_used(store: KeyStore) -> None:
    await add_user(store)
    records = [usage("user-1", model=f"m{i:02d}") for i in range(12) for _ in range(i + 1)]
    await store.record_usage(records)
    stats = await store.usage_stats(T0, user_id="user-1")
    assert stats.top_models == [(f"m{i:02d}", i + 1) for i in range(11, 1, -1)]


async def test_a_batch_larger_than_one_statement_is_recorded_whole(store: KeyStore) -> None:
    # More records than SQLite takes in one multi-row INSERT (32,766 parameters at most).
    await add_user(store)
    records = [usage("user-1", created_at=T0 + i, output_tokens=i % 3) for i in range(3300)]
    await store.record_usage(records)
    stats = await store.usage_stats(T0 + 3300, user_id="user-1")
    assert (stats.total, stats.last_request) == (3300, T0 + 3299)
    assert (stats.input_tokens, stats.output_tokens) == (11 * 3300, sum(i % 3 for i in range(3300)))


async def test_deleting_a_user_erases_their_usage(store: KeyStore) -> None:
    await add_user(store, "user-1")
    await add_user(store, "user-2")
    await store.record_usage([usage("user-1"), usage("user-2"), usage("user-1")])
    await store.delete_user("user-1")
    assert (await store.usage_stats(T0, user_id="user-1")).total == 0
    assert (await store.usage_stats(T0, app_id="app-1")).total == 1
    assert await store.count_users("app-1") == 1


async def test_records_of_a_user_who_never_existed_are_not_stored(
    store: KeyStore, usage_owners: Callable[[], Awaitable[set[str]]]
) -> None:
    await add_user(store, "user-1")
    await store.record_usage([usage("nobody"), usage("user-1"), usage("ghost"), usage("user-1")])
    await store.record_usage([usage("nobody")])
    assert (await store.usage_stats(T0, user_id="user-1")).total == 2
    assert (await store.usage_stats(T0, user_id="nobody")).total == 0
    assert (await store.usage_stats(T0, app_id="app-1")).total == 2
    assert await usage_owners() == {"user-1"}


async def test_records_sent_after_delete_user_are_not_stored(
    store: KeyStore, usage_owners: Callable[[], Awaitable[set[str]]]
) -> None:
    await add_user(store, "user-1")
    await add_user(store, "user-2")
    await store.record_usage([usage("user-1")])
    await store.delete_user("user-1")
    await store.record_usage([usage("user-1"), usage("user-2"), usage("user-1", created_at=T0 + 1)])
    assert (await store.usage_stats(T0, user_id="user-1")).total == 0
    assert (await store.usage_stats(T0, user_id="user-2")).total == 1
    assert (await store.usage_stats(T0, app_id="app-1")).total == 1
    assert await usage_owners() == {"user-2"}


async def test_records_racing_delete_user_never_outlive_it(
    store: KeyStore, usage_owners: Callable[[], Awaitable[set[str]]]
) -> None:
    """Batches written while their users are being erased: nothing of an erased user remains,
    and nothing of anyone else is lost."""
    kept = [f"kept-{i}" for i in range(5)]
    for user_id in kept:
        await add_user(store, user_id)
    rounds, batches = 3, 10
    erased: list[str] = []
    failures: list[StoreError] = []

    async def settle(call: Awaitable[None]) -> None:
        # A failure is asserted on below, not left to cancel the other calls midway.
        try:
            await call
        except StoreError as exc:
            failures.append(exc)

    for round_ in range(rounds):
        doomed = [f"erased-{round_}-{i:02d}" for i in range(50)]
        for user_id in doomed:
            await add_user(store, user_id)
        batch = [usage(user_id, created_at=T0 + round_) for user_id in doomed + kept]
        async with anyio.create_task_group() as group:
            for index, user_id in enumerate(doomed):
                if index % (len(doomed) // batches) == 0:
                    group.start_soon(settle, store.record_usage(batch))
                group.start_soon(settle, store.delete_user(user_id))
        erased += doomed

    assert failures == []
    assert await usage_owners() == set(kept)  # every erased user's records, beneath the store
    for user_id in erased[::10]:  # and a sample through it
        assert (await store.usage_stats(T0, user_id=user_id)).total == 0, user_id
    assert (await store.usage_stats(T0, app_id="app-1")).total == rounds * batches * len(kept)


async def test_records_written_before_outcomes_count_by_their_status() -> None:
    """Redis records written before outcomes existed read as the SQL migration backfills."""
    old = dataclasses.asdict(usage("user-1"))
    del old["outcome"]
    records = [{**old, "status": status} for status in (200, 499, 504, 502, 500, 429)]
    records.append({**old, "status": 502, "outcome": "revoked"})
    assert usage_stats_of(records, T0).outcomes == {
        "completed": 3,
        "client_cancelled": 1,
        "upstream_timeout": 1,
        "upstream_error": 1,
        "revoked": 1,
    }


async def test_records_written_before_the_token_kinds_count_none_of_them() -> None:
    """Redis records written before cache and reasoning tokens were counted (the SQL migration
    leaves those columns NULL for older rows)."""
    old = dataclasses.asdict(usage("user-1"))
    for kind in ("cache_read", "cache_write", "reasoning"):
        del old[f"{kind}_tokens"]
    newer = dataclasses.asdict(usage("user-1", cache_read_tokens=2, reasoning_tokens=1))
    stats = usage_stats_of([old, newer], T0)
    assert (stats.input_tokens, stats.cache_read_tokens, stats.reasoning_tokens) == (22, 2, 1)
    assert stats.cache_write_tokens == 0


async def test_close_is_idempotent(store: KeyStore) -> None:
    await add_user(store)
    await store.close()
    await store.close()


async def test_close_without_use(store: KeyStore) -> None:
    await store.close()


@pytest.mark.redis
async def test_redis_prunes_under_a_namespace_that_reads_as_a_glob(redis_url: str) -> None:
    """SCAN's MATCH is a glob: the namespace must match itself, brackets and stars included."""
    namespace = servers.new_namespace() + "[*]?"
    store = backends.open_store(redis_url, backends.StoreOptions(namespace=namespace))
    try:
        await add_user(store)
        await store.record_usage([usage("user-1", created_at=T0)])
        assert await store.prune_usage(T0 + 1) == 1
    finally:
        await store.close()
        await anyio.to_thread.run_sync(servers.drop_namespace, namespace)
