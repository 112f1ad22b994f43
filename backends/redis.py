"""The Redis key store (redis-py asyncio), every key under one namespace.

Layout, for namespace `ns`:

    ns:token:<token digest>   user record (hash: v, id, app_id, created_at, expires_at?,
                              revoked_at?): found by its token in one HGETALL
    ns:user:<user id>         the user's token digest, to reach the record above by id
    ns:keys:<user id>         hash: provider -> key entry
    ns:keyinfo:<user id>      hash: "<provider>:hint|status|verified_at|last_used_at" -> value
    ns:usage:<user id>        list of usage records (JSON, "v": 1; "outcome" only in those
                              written since it exists), the newest 10 000 kept
    ns:app:<app id>           set of the app's user ids

A key entry is `0x01 | created_at (8 bytes) | updated_at (8 bytes) | record`. Every write that
touches more than one key is one Lua script, so it is atomic; the store needs no migrations,
and the version byte and `"v"` field let a later format be read beside this one.
Redis Cluster is not supported (the scripts touch keys of several hash slots).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import struct
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import (
    UNVERIFIED,
    KeyInfo,
    KeyMeta,
    KeyStore,
    StoreError,
    StoreOptions,
    StoreUnavailable,
    UsageRecord,
    UsageStats,
    User,
)

__all__ = ["RedisStore", "connect"]

RECORD_VERSION: Final = 1
_USAGE_KEPT: Final = 10_000
_USAGE_PER_CALL: Final = 1_000  # a bound on how long one script holds the server
_DAY_MS: Final = 86_400_000
# The ending of a record written before outcomes were stored, as the SQL migration 0004 reads it.
_OUTCOME_OF_STATUS: Final = {
    499: "client_cancelled",
    504: "upstream_timeout",
    502: "upstream_error",
}
_ENTRY: Final = struct.Struct(">BQQ")

# KEYS: token key, user key, app set. ARGV: token digest, user id, the record's field/values.
_CREATE_USER: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""
# KEYS: user key. ARGV: token key prefix, revoked_at.
_REVOKE: Final = """
local digest = redis.call('GET', KEYS[1])
if not digest then return 0 end
return redis.call('HSETNX', ARGV[1] .. digest, 'revoked_at', ARGV[2])
"""
# KEYS: user key, keys hash, key info hash, usage list. ARGV: token key prefix, app set
# prefix, user id.
_DELETE_USER: Final = """
local digest = redis.call('GET', KEYS[1])
if digest then
  local token_key = ARGV[1] .. digest
  local app = redis.call('HGET', token_key, 'app_id')
  if app then redis.call('SREM', ARGV[2] .. app, ARGV[3]) end
  redis.call('DEL', token_key)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return 1
"""
# KEYS: per user, the user key then the usage list. ARGV: records kept a list, then per user the
# number of its records and the records. A user's records land only while their user key exists:
# the delete-user script removes it with the list, so nothing lands after an erasure.
_RECORD_USAGE: Final = """
local at = 2
for i = 1, #KEYS, 2 do
  local n = tonumber(ARGV[at])
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('RPUSH', KEYS[i + 1], unpack(ARGV, at + 1, at + n))
    redis.call('LTRIM', KEYS[i + 1], -tonumber(ARGV[1]), -1)
  end
  at = at + n + 1
end
return 1
"""
# KEYS: user key, keys hash, key info hash. ARGV: provider, entry, hint, status, verified_at
# ('' for none). Keeps the first created_at (bytes 2-9 of the entry).
_PUT_KEY: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local p = ARGV[1]
local old = redis.call('HGET', KEYS[2], p)
local entry = ARGV[2]
if old then entry = string.sub(entry, 1, 1) .. string.sub(old, 2, 9) .. string.sub(entry, 10) end
redis.call('HSET', KEYS[2], p, entry)
redis.call('HSET', KEYS[3], p .. ':hint', ARGV[3], p .. ':status', ARGV[4])
redis.call('HDEL', KEYS[3], p .. ':last_used_at', p .. ':verified_at')
if ARGV[5] ~= '' then redis.call('HSET', KEYS[3], p .. ':verified_at', ARGV[5]) end
if old then return 1 end
return 0
"""
# KEYS: keys hash, key info hash. ARGV: provider.
_DELETE_KEY: Final = """
local p = ARGV[1]
redis.call('HDEL', KEYS[2], p .. ':hint', p .. ':status', p .. ':verified_at', p .. ':last_used_at')
return redis.call('HDEL', KEYS[1], p)
"""
# KEYS: keys hash, key info hash. ARGV: provider, record, status, verified_at ('' to keep).
_SET_STATUS: Final = """
local p = ARGV[1]
local entry = redis.call('HGET', KEYS[1], p)
if not entry or string.sub(entry, 18) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], p .. ':status', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], p .. ':verified_at', ARGV[4]) end
return 1
"""
# KEYS: keys hash, key info hash. ARGV: provider, at.
_TOUCH: Final = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1] .. ':last_used_at', ARGV[2])
end
return 1
"""


# KEYS: keys hash. ARGV: provider, old record, new record. Keeps the entry's header.
_REPLACE_KEY: Final = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry or string.sub(entry, 18) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], string.sub(entry, 1, 17) .. ARGV[3])
return 1
"""


def _user_fields(user: User) -> list[str | int]:
    fields: list[str | int] = [
        "v",
        RECORD_VERSION,
        "id",
        user.id,
        "app_id",
        user.app_id,
        "created_at",
        user.created_at,
    ]
    if user.expires_at is not None:
        fields += ["expires_at", user.expires_at]
    if user.revoked_at is not None:
        fields += ["revoked_at", user.revoked_at]
    return fields


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _user_from_hash(data: dict[str, str]) -> User:
    if data.get("v") != str(RECORD_VERSION):
        raise StoreError("user record of unknown format version")

    def optional_int(name: str) -> int | None:
        value = data.get(name)
        return None if value is None else int(value)

    return User(
        id=data["id"],
        app_id=data["app_id"],
        created_at=int(data["created_at"]),
        expires_at=optional_int("expires_at"),
        revoked_at=optional_int("revoked_at"),
    )


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


def usage_stats_of(records: Sequence[dict[str, Any]], now: int) -> UsageStats:
    """The totals `usage_stats` reports, from usage records as stored."""
    errors = [r for r in records if r["status"] >= 400]
    providers: dict[str, dict[str, int]] = {}
    models: collections.Counter[str] = collections.Counter()
    outcomes: collections.Counter[str] = collections.Counter()
    for r in records:
        counts = providers.setdefault(r["provider"], {"total": 0, "errors": 0})
        counts["total"] += 1
        counts["errors"] += r["status"] >= 400
        if r["model"] is not None:
            models[r["model"]] += 1
        outcome = r.get("outcome")
        outcomes[outcome or _OUTCOME_OF_STATUS.get(r["status"], "completed")] += 1
    return UsageStats(
        total=len(records),
        last_7d=sum(r["created_at"] >= now - 7 * _DAY_MS for r in records),
        last_30d=sum(r["created_at"] >= now - 30 * _DAY_MS for r in records),
        error_count=len(errors),
        providers=providers,
        top_models=sorted(models.items(), key=lambda item: (-item[1], item[0]))[:10],
        last_request=max((r["created_at"] for r in records), default=None),
        input_tokens=sum(r["input_tokens"] or 0 for r in records),
        output_tokens=sum(r["output_tokens"] or 0 for r in records),
        outcomes=dict(outcomes),
    )


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
        self._create_user = client.register_script(_CREATE_USER)
        self._revoke = client.register_script(_REVOKE)
        self._delete_user = client.register_script(_DELETE_USER)
        self._put_key = client.register_script(_PUT_KEY)
        self._replace_key = client.register_script(_REPLACE_KEY)
        self._delete_key = client.register_script(_DELETE_KEY)
        self._set_status = client.register_script(_SET_STATUS)
        self._touch = client.register_script(_TOUCH)
        self._record_usage = client.register_script(_RECORD_USAGE)

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

    def _token_key(self, token_hash: str) -> str:
        return f"{self._ns}:token:{token_hash}"

    def _user_key(self, user_id: str) -> str:
        return f"{self._ns}:user:{user_id}"

    def _keys_key(self, user_id: str) -> str:
        return f"{self._ns}:keys:{user_id}"

    def _key_hashes(self, user_id: str) -> list[str]:
        return [f"{self._ns}:keys:{user_id}", f"{self._ns}:keyinfo:{user_id}"]

    def _usage_key(self, user_id: str) -> str:
        return f"{self._ns}:usage:{user_id}"

    async def create_user(self, user: User, token_hash: str) -> None:
        async with self._call("create_user"):
            created = await self._create_user(
                keys=[
                    self._token_key(token_hash),
                    self._user_key(user.id),
                    f"{self._ns}:app:{user.app_id}",
                ],
                args=[token_hash, user.id, *_user_fields(user)],
            )
        if not created:
            raise StoreError("create_user: user id or token digest already exists")

    async def user_for_token(self, token_hash: str) -> User | None:
        async with self._call("user_for_token"):
            raw = await self._redis.hgetall(self._token_key(token_hash))
        return _user_from_hash({_text(k): _text(v) for k, v in raw.items()}) if raw else None

    async def users_for_tokens(self, token_hashes: Sequence[str]) -> dict[str, User]:
        if not token_hashes:
            return {}
        async with (
            self._call("users_for_tokens"),
            self._redis.pipeline(transaction=False) as pipe,
        ):
            for token_hash in token_hashes:
                pipe.hgetall(self._token_key(token_hash))
            found = await pipe.execute()
        return {
            token_hash: _user_from_hash({_text(k): _text(v) for k, v in raw.items()})
            for token_hash, raw in zip(token_hashes, found, strict=True)
            if raw
        }

    async def revoke_token(self, user_id: str, at: int) -> None:
        async with self._call("revoke_token"):
            await self._revoke(keys=[self._user_key(user_id)], args=[f"{self._ns}:token:", at])

    async def delete_user(self, user_id: str) -> None:
        async with self._call("delete_user"):
            await self._delete_user(
                keys=[
                    self._user_key(user_id),
                    *self._key_hashes(user_id),
                    self._usage_key(user_id),
                ],
                args=[f"{self._ns}:token:", f"{self._ns}:app:", user_id],
            )

    async def put_key(
        self, user_id: str, provider: str, record: bytes, at: int, meta: KeyMeta = UNVERIFIED
    ) -> bool:
        entry = _ENTRY.pack(RECORD_VERSION, at, at) + record
        verified = "" if meta.verified_at is None else str(meta.verified_at)
        async with self._call("put_key"):
            result = await self._put_key(
                keys=[self._user_key(user_id), *self._key_hashes(user_id)],
                args=[provider, entry, meta.hint, meta.status, verified],
            )
        if result == -1:
            raise StoreError("put_key: no such user")
        return bool(result)

    async def get_key(self, user_id: str, provider: str) -> bytes | None:
        async with self._call("get_key"):
            entry = await self._redis.hget(self._keys_key(user_id), provider)
        if entry is None:
            return None
        if isinstance(entry, str):  # only with decode_responses, which this store never sets
            raise StoreError("get_key: the Redis client decodes responses")
        if len(entry) < _ENTRY.size or entry[0] != RECORD_VERSION:
            raise StoreError("get_key: key entry of unknown format")
        return entry[_ENTRY.size :]

    async def list_keys(self, user_id: str) -> list[KeyInfo]:
        entries_key, info_key = self._key_hashes(user_id)
        async with self._call("list_keys"), self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(entries_key)
            pipe.hgetall(info_key)
            entries, info = await pipe.execute()
        fields = {_text(k): _text(v) for k, v in info.items()}

        def number(provider: str, name: str) -> int | None:
            value = fields.get(f"{provider}:{name}")
            return None if value is None else int(value)

        found = []
        for raw_provider, entry in entries.items():
            provider = _text(raw_provider)
            _, created_at, updated_at = _ENTRY.unpack_from(entry)
            found.append(
                KeyInfo(
                    provider=provider,
                    hint=fields.get(f"{provider}:hint", ""),
                    status=fields.get(f"{provider}:status", "unverified"),
                    created_at=created_at,
                    updated_at=updated_at,
                    verified_at=number(provider, "verified_at"),
                    last_used_at=number(provider, "last_used_at"),
                )
            )
        return sorted(found, key=lambda k: k.provider)

    async def set_key_status(
        self, user_id: str, provider: str, record: bytes, status: str, verified_at: int | None
    ) -> bool:
        verified = "" if verified_at is None else str(verified_at)
        async with self._call("set_key_status"):
            return bool(
                await self._set_status(
                    keys=self._key_hashes(user_id), args=[provider, record, status, verified]
                )
            )

    async def touch_key(self, user_id: str, provider: str, at: int) -> None:
        async with self._call("touch_key"):
            await self._touch(keys=self._key_hashes(user_id), args=[provider, at])

    async def delete_key(self, user_id: str, provider: str) -> bool:
        async with self._call("delete_key"):
            return bool(await self._delete_key(keys=self._key_hashes(user_id), args=[provider]))

    async def record_usage(self, records: Sequence[UsageRecord]) -> None:
        for start in range(0, len(records), _USAGE_PER_CALL):
            by_user: dict[str, list[str]] = {}
            for record in records[start : start + _USAGE_PER_CALL]:
                entry = json.dumps({"v": 1, **dataclasses.asdict(record)})
                by_user.setdefault(record.user_id, []).append(entry)
            keys: list[str] = []
            args: list[str | int] = [_USAGE_KEPT]
            for user_id, entries in by_user.items():
                keys += [self._user_key(user_id), self._usage_key(user_id)]
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
                owners = [_text(u) for u in await self._redis.smembers(f"{self._ns}:app:{app_id}")]
            async with self._redis.pipeline(transaction=False) as pipe:
                for owner in owners:
                    pipe.lrange(self._usage_key(owner), 0, -1)
                lists = await pipe.execute()
        records = [json.loads(raw) for raw_list in lists for raw in raw_list]
        return usage_stats_of(records, now)

    async def count_users(self, app_id: str) -> int:
        async with self._call("count_users"):
            return int(await self._redis.scard(f"{self._ns}:app:{app_id}"))

    async def iter_keys(self, batch: int = 500) -> AsyncIterator[tuple[str, str, bytes]]:
        prefix = f"{self._ns}:keys:"
        names: list[str] = []
        cursor: int | None = None
        while cursor != 0:  # a deadline per round trip: the whole scan may take longer
            async with self._call("iter_keys"):
                cursor, found = await self._redis.scan(cursor or 0, match=prefix + "*", count=batch)
            names += [_text(n) for n in found]
        for name in names:
            async with self._call("iter_keys"):
                entries = await self._redis.hgetall(name)
            for provider, entry in entries.items():
                if isinstance(entry, bytes) and len(entry) >= _ENTRY.size:
                    yield name.removeprefix(prefix), _text(provider), entry[_ENTRY.size :]

    async def replace_key(self, user_id: str, provider: str, old: bytes, new: bytes) -> bool:
        async with self._call("replace_key"):
            return bool(
                await self._replace_key(keys=[self._keys_key(user_id)], args=[provider, old, new])
            )

    async def ping(self) -> None:
        async with self._call("ping"):
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()
        if self._owns_pool:
            await self._redis.connection_pool.disconnect()
