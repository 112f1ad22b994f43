"""The Redis key store (redis-py asyncio), every key under one namespace.

Its layout and record formats are `backends.redis_layout`'s, its atomic writes the Lua scripts
of `backends.redis_scripts`; this module holds the connection and the store's operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Sequence
from typing import Final, NamedTuple

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import redis_scripts as scripts
from .base import (
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
from .ledger import check_group, rows_of
from .redis_layout import (
    ENTRY,
    RECORD_VERSION,
    child_entry,
    child_fields,
    child_from_entry,
    info_field,
    info_fields,
    key_info,
    ledger_part,
    meta_fields,
    redis_key,
    text,
    usage_stats_of,
    user_fields,
    user_from_lookup,
)

__all__ = ["RateHit", "RedisStore", "connect", "redis_key"]

_USAGE_KEPT: Final = 10_000
_USAGE_PER_CALL: Final = 1_000  # a bound on how long one script holds the server
_PRUNED_PER_CALL: Final = 1_000
_TOKENS_PER_CALL: Final = 500


class RateHit(NamedTuple):
    """A rate-limit hit for `RedisStore.reserve_counting` to count in its round trip."""

    key: str
    """The counter's whole Redis key."""
    window_ms: int
    most: int
    """The limit: a hit that takes the count past it reserves nothing."""


def connect(url: str, options: StoreOptions) -> aioredis.Redis:
    """A client on a pool of its own for `url`, with the store's pool size and timeouts (also
    used by the relay for rate limits, so that one pool serves both). Each of its waits is
    bounded by `connect_timeout`; a whole call is bounded by the caller's deadline."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=options.pool_size,
        timeout=options.pool_timeout,
        socket_connect_timeout=options.connect_timeout,
        socket_timeout=options.connect_timeout,
        health_check_interval=30,
        # One immediate retry on a fresh connection heals a pool whose server restarted. A
        # timeout is never retried: the server may be frozen, and the call's deadline is spent.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return aioredis.Redis(connection_pool=pool)


class RedisStore(KeyStore):
    def __init__(
        self,
        client: aioredis.Redis,
        namespace: str = "byok-relay",
        *,
        owns_pool: bool = False,
        deadline: float | None = None,
    ) -> None:
        """A store on `client`, whose connection pool it closes only when it `owns_pool`; each
        call takes at most `deadline` seconds in all (None: as long as the client's waits)."""
        self._redis = client
        self._owns_pool = owns_pool
        self._deadline = deadline
        self._ns = namespace
        self._create_user = client.register_script(scripts.CREATE_USER)
        self._revoke = client.register_script(scripts.REVOKE)
        self._delete_user = client.register_script(scripts.DELETE_USER)
        self._put_key = client.register_script(scripts.PUT_KEY)
        self._replace_key = client.register_script(scripts.REPLACE_KEY)
        self._delete_key = client.register_script(scripts.DELETE_KEY)
        self._set_status = client.register_script(scripts.SET_STATUS)
        self._touch = client.register_script(scripts.TOUCH)
        self._record_usage = client.register_script(scripts.RECORD_USAGE)
        self._prune_usage = client.register_script(scripts.PRUNE_USAGE)
        self._users_for_tokens = client.register_script(scripts.USERS_FOR_TOKENS)
        self._create_child = client.register_script(scripts.CREATE_CHILD)
        self._delete_child = client.register_script(scripts.DELETE_CHILD)
        self._touch_child = client.register_script(scripts.TOUCH_CHILD)
        self._set_caps = client.register_script(scripts.SET_CAPS)
        self._reserve = client.register_script(scripts.RESERVE)
        self._hit_reserve = client.register_script(scripts.HIT_RESERVE)
        self._settle = client.register_script(scripts.SETTLE)

    @classmethod
    def from_url(cls, url: str, options: StoreOptions | None = None) -> RedisStore:
        options = options or StoreOptions()
        return cls(
            connect(url, options),
            options.namespace,
            owns_pool=True,
            deadline=options.connect_timeout,
        )

    @contextlib.asynccontextmanager
    async def _call(self, operation: str) -> AsyncIterator[None]:
        """One store call: cut off at the deadline whatever it waits on (a pooled connection, a
        connect, every answer), its driver errors translated."""
        try:
            async with asyncio.timeout(self._deadline):
                yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:  # TimeoutError too
            raise StoreUnavailable(f"key store unavailable during {operation}") from exc
        except RedisError as exc:
            raise StoreError(f"key store failed during {operation}") from exc
        except (UnicodeEncodeError, OverflowError) as exc:  # a value the driver cannot send
            raise StoreError(f"key store refused a value during {operation}") from exc

    def _key(self, kind: str, name: str = "") -> str:
        """The key of `kind` for `name`; without a name, the prefix of every key of `kind`."""
        return redis_key(self._ns, kind, name)

    def _key_hashes(self, user_id: str) -> list[str]:
        return [self._key("keys", user_id), self._key("keyinfo", user_id)]

    async def create_user(self, user: User, token_hash: str) -> None:
        async with self._call("create_user"):
            created = await self._create_user(
                keys=[
                    self._key("token", token_hash),
                    self._key("user", user.id),
                    self._key("app", user.app_id),
                ],
                args=[token_hash, user.id, *user_fields(user)],
            )
        if not created:
            raise StoreError("create_user: user id or token digest already exists")

    async def _lookup(self, operation: str, token_hashes: Sequence[str]) -> list[User | None]:
        keys = [self._key("token", token_hash) for token_hash in token_hashes]
        async with self._call(operation):
            found = await self._users_for_tokens(
                keys=keys, args=[self._key("token"), self._key("children")]
            )
        return [user_from_lookup(each) for each in found]

    async def user_for_token(self, token_hash: str) -> User | None:
        return (await self._lookup("user_for_token", [token_hash]))[0]

    async def users_for_tokens(self, token_hashes: Sequence[str]) -> dict[str, User]:
        found: dict[str, User] = {}
        # A bounded script at a time: none holds the server for long.
        for start in range(0, len(token_hashes), _TOKENS_PER_CALL):
            chunk = token_hashes[start : start + _TOKENS_PER_CALL]
            users = await self._lookup("users_for_tokens", chunk)
            found.update((d, u) for d, u in zip(chunk, users, strict=True) if u is not None)
        return found

    async def revoke_token(self, user_id: str, at: int) -> None:
        async with self._call("revoke_token"):
            await self._revoke(keys=[self._key("user", user_id)], args=[self._key("token"), at])

    async def delete_user(self, user_id: str) -> None:
        async with self._call("delete_user"):
            await self._delete_user(
                keys=[
                    self._key("user", user_id),
                    *self._key_hashes(user_id),
                    self._key("usage", user_id),
                    self._key("children", user_id),
                    *self._spend_keys(user_id),
                ],
                args=[self._key("token"), self._key("app"), user_id],
            )

    def _spend_keys(self, user_id: str) -> list[str]:
        return [self._key("spend", user_id), self._key("spendexp", user_id)]

    async def set_caps(self, user_id: str, caps: str | None) -> None:
        async with self._call("set_caps"):
            await self._set_caps(
                keys=[self._key("user", user_id)], args=[self._key("token"), caps or ""]
            )

    async def reserve(self, user_id: str, charges: Sequence[Charge], now: int) -> int | None:
        if not charges:
            return None
        async with self._call("reserve"):
            result = await self._reserve(
                keys=self._reserve_keys(user_id), args=self._reserve_args(charges, now)
            )
        return self._reserved(int(result))

    async def reserve_counting(
        self, user_id: str, charges: Sequence[Charge], now: int, hit: RateHit
    ) -> tuple[int, int, int | None]:
        """Count `hit`, then, unless that takes its count past `hit.most`, `reserve` the
        charges, in one round trip: the count, the milliseconds left in its window and what
        `reserve` answered (None, also when it was not tried)."""
        args = [hit.window_ms, hit.most, *self._reserve_args(charges, now)]
        async with self._call("reserve"):
            count, left, result = await self._hit_reserve(
                keys=[*self._reserve_keys(user_id), hit.key], args=args
            )
        return int(count), int(left), None if result == -3 else self._reserved(int(result))

    def _reserve_keys(self, user_id: str) -> list[str]:
        return [self._key("user", user_id), *self._spend_keys(user_id)]

    @staticmethod
    def _reserve_args(charges: Sequence[Charge], now: int) -> list[str | int]:
        args: list[str | int] = [now, len(charges)]
        for charge in charges:
            args += [charge.counter, charge.amount, charge.limit, charge.expires_at]
        return args

    @staticmethod
    def _reserved(result: int) -> int | None:
        if result == -1:
            raise StoreError("reserve: no such user")
        return None if result == -2 else result

    async def settle(self, user_id: str, changes: Sequence[tuple[str, int]]) -> None:
        args = [item for name, amount in changes if amount for item in (name, amount)]
        if args:
            async with self._call("settle"):
                await self._settle(keys=[self._key("spend", user_id)], args=args)

    async def spent(self, user_id: str, counters: Sequence[str], now: int) -> dict[str, int]:
        if not counters:
            return {}
        amounts_key, expiries_key = self._spend_keys(user_id)
        async with self._call("spent"), self._redis.pipeline(transaction=True) as pipe:
            pipe.hmget(amounts_key, list(counters))
            pipe.hmget(expiries_key, list(counters))
            amounts, expiries = await pipe.execute()
        return {
            name: int(amount)
            for name, amount, at in zip(counters, amounts, expiries, strict=True)
            if amount is not None and at is not None and int(at) > now
        }

    async def create_child_token(
        self, child: ChildToken, token_hash: str, now: int, most: int
    ) -> bool:
        user_key = self._key("user", child.user_id)
        entry = child_entry(child, token_hash)
        async with self._call("create_child_token"):
            owner = await self._redis.get(user_key)
            if owner is None:
                raise StoreError("create_child_token: no such user")
            # The script checks the user again: one erased since is refused there.
            fields = child_fields(child, text(owner), entry)
            result = await self._create_child(
                keys=[
                    user_key,
                    self._key("children", child.user_id),
                    self._key("token", token_hash),
                ],
                args=[
                    self._key("token"),
                    now,
                    most,
                    child.id,
                    child.parent_id or "",
                    entry,
                    *fields,
                ],
            )
        if result < 0:
            raise StoreError(
                "create_child_token: "
                + {-1: "no such user", -2: "no such parent token"}.get(
                    result, "id or digest in use"
                )
            )
        return bool(result)

    async def child_tokens(self, user_id: str) -> list[ChildToken]:
        async with self._call("child_tokens"):
            raw = await self._redis.hgetall(self._key("children", user_id))
        fields = {text(k): text(v) for k, v in raw.items()}
        found = [
            child_from_entry(entry, fields.get(f"{name}:used"))
            for name, entry in fields.items()
            if ":" not in name
        ]
        return sorted(found, key=lambda child: (child.created_at, child.id))

    async def delete_child_token(self, user_id: str, token_id: str) -> list[str]:
        async with self._call("delete_child_token"):
            deleted = await self._delete_child(
                keys=[self._key("children", user_id)], args=[self._key("token"), token_id]
            )
        return [text(token_id) for token_id in deleted]

    async def touch_child_token(self, user_id: str, token_id: str, at: int) -> None:
        async with self._call("touch_child_token"):
            await self._touch_child(keys=[self._key("children", user_id)], args=[token_id, at])

    async def put_key(
        self, user_id: str, provider: str, record: bytes, at: int, meta: KeyMeta = UNVERIFIED
    ) -> bool:
        entry = ENTRY.pack(RECORD_VERSION, at, at) + record
        # A new key's info is its meta alone: whatever was known of the key before is cleared.
        cleared = info_fields(provider)
        args = [provider, entry, len(cleared), *cleared, *meta_fields(provider, meta)]
        async with self._call("put_key"):
            result = await self._put_key(
                keys=[self._key("user", user_id), *self._key_hashes(user_id)], args=args
            )
        if result == -1:
            raise StoreError("put_key: no such user")
        return bool(result)

    async def get_key(self, user_id: str, provider: str) -> bytes | None:
        async with self._call("get_key"):
            entry = await self._redis.hget(self._key("keys", user_id), provider)
        if entry is None:
            return None
        if isinstance(entry, str):  # only with decode_responses, which this store never sets
            raise StoreError("get_key: the Redis client decodes responses")
        if len(entry) < ENTRY.size or entry[0] != RECORD_VERSION:
            raise StoreError("get_key: key entry of unknown format")
        return entry[ENTRY.size :]

    async def list_keys(self, user_id: str) -> list[KeyInfo]:
        entries_key, info_key = self._key_hashes(user_id)
        async with self._call("list_keys"), self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(entries_key)
            pipe.hgetall(info_key)
            entries, info = await pipe.execute()
        fields = {text(k): text(v) for k, v in info.items()}
        found = [key_info(text(provider), entry, fields) for provider, entry in entries.items()]
        return sorted(found, key=lambda k: k.provider)

    async def set_key_status(
        self, user_id: str, provider: str, record: bytes, status: str, verified_at: int | None
    ) -> bool:
        verified = "" if verified_at is None else str(verified_at)
        args: list[str | bytes] = [provider, record, info_field(provider, "status"), status]
        args += [info_field(provider, "verified_at"), verified]
        async with self._call("set_key_status"):
            return bool(await self._set_status(keys=self._key_hashes(user_id), args=args))

    async def touch_key(self, user_id: str, provider: str, at: int) -> None:
        args: list[str | int] = [provider, info_field(provider, "last_used_at"), at]
        async with self._call("touch_key"):
            await self._touch(keys=self._key_hashes(user_id), args=args)

    async def delete_key(self, user_id: str, provider: str) -> bool:
        args = [provider, *info_fields(provider)]
        async with self._call("delete_key"):
            return bool(await self._delete_key(keys=self._key_hashes(user_id), args=args))

    async def record_usage(self, records: Sequence[UsageRecord]) -> None:
        for start in range(0, len(records), _USAGE_PER_CALL):
            by_user: dict[str, list[str]] = {}
            for record in records[start : start + _USAGE_PER_CALL]:
                entry = json.dumps({"v": 1, **dataclasses.asdict(record)})
                by_user.setdefault(record.user_id, []).append(entry)
            keys: list[str] = []
            args: list[str | int] = [_USAGE_KEPT]
            for user_id, entries in by_user.items():
                keys += [self._key("user", user_id), self._key("usage", user_id)]
                args += [len(entries), *entries]
            async with self._call("record_usage"):
                await self._record_usage(keys=keys, args=args)

    async def usage_stats(
        self, now: int, *, user_id: str | None = None, app_id: str | None = None
    ) -> UsageStats:
        if (user_id is None) == (app_id is None):
            raise ValueError("usage_stats: give exactly one of user_id and app_id")
        async with self._call("usage_stats"):
            if user_id is not None:
                owners = [user_id]
            else:
                assert app_id is not None
                owners = [text(u) for u in await self._redis.smembers(self._key("app", app_id))]
            async with self._redis.pipeline(transaction=False) as pipe:
                for owner in owners:
                    pipe.lrange(self._key("usage", owner), 0, -1)
                lists = await pipe.execute()
        records = [json.loads(raw) for raw_list in lists for raw in raw_list]
        return usage_stats_of(records, now)

    async def usage_ledger(
        self, user_id: str, start: int, end: int, group_by: str
    ) -> list[LedgerRow]:
        check_group(group_by)
        async with self._call("usage_ledger"):
            raw = await self._redis.lrange(self._key("usage", user_id), 0, -1)
        records = (json.loads(entry) for entry in raw)
        return rows_of(
            (ledger_part(r, group_by) for r in records if start <= r["created_at"] < end),
            group_by,
        )

    async def prune_usage(self, before: int) -> int:
        deleted = 0
        cursor: int = 0
        # SCAN's MATCH is a glob: the namespace is matched as it is written.
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self._key("usage", "")) + "*"
        while True:
            async with self._call("prune_usage"):
                cursor, names = await self._redis.scan(cursor, match=pattern, count=500)
            for name in names:
                # A list at a time, a bounded number of pops a call: no call holds the server.
                while True:
                    async with self._call("prune_usage"):
                        popped = int(
                            await self._prune_usage(keys=[name], args=[before, _PRUNED_PER_CALL])
                        )
                    deleted += popped
                    if popped < _PRUNED_PER_CALL:
                        break
            if cursor == 0:
                return deleted

    async def count_users(self, app_id: str) -> int:
        async with self._call("count_users"):
            return int(await self._redis.scard(self._key("app", app_id)))

    async def iter_keys(self, batch: int = 500) -> AsyncIterator[tuple[str, str, bytes]]:
        prefix = self._key("keys")
        names: list[str] = []
        cursor: int | None = None
        while cursor != 0:  # a deadline per round trip: the whole scan may take longer
            async with self._call("iter_keys"):
                cursor, found = await self._redis.scan(cursor or 0, match=prefix + "*", count=batch)
            names += [text(n) for n in found]
        for name in names:
            async with self._call("iter_keys"):
                entries = await self._redis.hgetall(name)
            for provider, entry in entries.items():
                if isinstance(entry, bytes) and len(entry) >= ENTRY.size:
                    yield name.removeprefix(prefix), text(provider), entry[ENTRY.size :]

    async def replace_key(self, user_id: str, provider: str, old: bytes, new: bytes) -> bool:
        keys = [self._key("keys", user_id)]
        async with self._call("replace_key"):
            return bool(await self._replace_key(keys=keys, args=[provider, old, new]))

    async def ping(self) -> None:
        async with self._call("ping"):
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()
        if self._owns_pool:
            await self._redis.connection_pool.disconnect()
