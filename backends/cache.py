"""A key store in front of another: the request path's two reads served from memory.

Every relayed request looks up its token and fetches one key record. `CachedStore` answers
those two reads from process memory for at most `ttl` seconds after the store said so, and
passes every other call through. Within one process a write is seen at once (the writer drops
what it changes before returning); a write made by another process (another relay instance,
`byok-relay rotate-keys`) is seen here within `ttl` seconds, because no entry outlives it. That
is the whole cross-instance protocol: no messages between instances, nothing to lose.

Only answers that found something are kept (a flood of made-up tokens cannot fill memory or
hide a token registered a moment later), and concurrent misses on one entry share a single
read. An entry read in the second half of its life is refreshed in the background while it
is still served, so a token or key in steady use is never waited for; the refreshed entry
again lives `ttl` from the moment its read began.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

from .base import (
    UNVERIFIED,
    Charge,
    ChildToken,
    KeyInfo,
    KeyMeta,
    KeyStore,
    LedgerRow,
    UsageRecord,
    UsageStats,
    User,
)

__all__ = ["CachedStore"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Entries(Generic[K, V]):
    """Values by key, each dying `ttl` seconds after the read that produced it began."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._values: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Future[V | None]] = {}
        self._epoch = 0

    async def get(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        entry = self._values.get(key)
        if entry is not None:
            left = entry[0] - time.monotonic()
            if left > 0:
                if left < self._ttl / 2 and key not in self._loading:
                    self._start(key, load)  # refreshed ahead: a key in use never misses
                return entry[1]
            del self._values[key]
        future = self._loading.get(key) or self._start(key, load)
        # Shielded: a caller that goes away must not cancel the read the others wait for.
        return await asyncio.shield(future)

    def _start(self, key: K, load: Callable[[], Awaitable[V | None]]) -> asyncio.Future[V | None]:
        future = asyncio.ensure_future(self._load(key, load))
        future.add_done_callback(_retrieve)
        self._loading[key] = future
        return future

    async def _load(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        epoch, started = self._epoch, time.monotonic()
        try:
            value = await load()
        finally:
            if self._loading.get(key) is asyncio.current_task():
                del self._loading[key]
        # A write that landed while this read ran may or may not be in `value`: use it once,
        # keep it never.
        if epoch == self._epoch:
            self._values.pop(key, None)  # re-inserted last: the eviction order is by age
            if value is not None:
                if len(self._values) >= self._max_entries:
                    del self._values[next(iter(self._values))]  # the oldest
                self._values[key] = (started + self._ttl, value)
        return value

    def drop(self, key: K) -> None:
        """Forget `key`; reads in flight finish for their own callers but are not kept."""
        self._invalidate()
        self._values.pop(key, None)

    def drop_where(self, stale: Callable[[K, V], bool]) -> None:
        """Forget every entry for which `stale(key, value)` is true, as `drop` does."""
        self._invalidate()
        self._values = {k: e for k, e in self._values.items() if not stale(k, e[1])}

    def _invalidate(self) -> None:
        self._epoch += 1
        self._loading.clear()


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Every waiter may have left before a failed read finished; its error is theirs, not a
    # "never retrieved" warning's.
    if not future.cancelled():
        future.exception()


class CachedStore(KeyStore):
    """`store`, with `user_for_token` and `get_key` remembered for `ttl` seconds (> 0)."""

    def __init__(self, store: KeyStore, ttl: float, max_entries: int = 100_000) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive; use the store itself for no cache")
        self.store = store
        self.ttl = ttl
        self._users: _Entries[str, User] = _Entries(ttl, max_entries)
        self._keys: _Entries[tuple[str, str], bytes] = _Entries(ttl, max_entries)

    def _forget_user(self, user_id: str) -> None:
        self._users.drop_where(lambda _, user: user.id == user_id)
        self._keys.drop_where(lambda key, _: key[0] == user_id)

    async def user_for_token(self, token_hash: str) -> User | None:
        return await self._users.get(token_hash, lambda: self.store.user_for_token(token_hash))

    async def get_key(self, user_id: str, provider: str) -> bytes | None:
        return await self._keys.get(
            (user_id, provider), lambda: self.store.get_key(user_id, provider)
        )

    # Writes forget what they change once the store has answered (or failed: the write may
    # have landed anyway). A read that overlapped the write is not kept, so from then on this
    # process only serves what it read after the write.

    async def revoke_token(self, user_id: str, at: int) -> None:
        try:
            await self.store.revoke_token(user_id, at)
        finally:
            self._forget_user(user_id)

    async def delete_user(self, user_id: str) -> None:
        try:
            await self.store.delete_user(user_id)
        finally:
            self._forget_user(user_id)

    async def set_caps(self, user_id: str, caps: str | None) -> None:
        try:
            await self.store.set_caps(user_id, caps)
        finally:
            self._users.drop_where(lambda _, user: user.id == user_id)

    async def delete_child_token(self, user_id: str, token_id: str) -> list[str]:
        try:
            return await self.store.delete_child_token(user_id, token_id)
        finally:
            # Every narrow token of the user's: a deleted one takes those minted from it.
            self._users.drop_where(lambda _, user: user.id == user_id and user.child is not None)

    async def put_key(
        self, user_id: str, provider: str, record: bytes, at: int, meta: KeyMeta = UNVERIFIED
    ) -> bool:
        try:
            return await self.store.put_key(user_id, provider, record, at, meta)
        finally:
            self._keys.drop((user_id, provider))

    async def replace_key(self, user_id: str, provider: str, old: bytes, new: bytes) -> bool:
        try:
            return await self.store.replace_key(user_id, provider, old, new)
        finally:
            self._keys.drop((user_id, provider))

    async def delete_key(self, user_id: str, provider: str) -> bool:
        try:
            return await self.store.delete_key(user_id, provider)
        finally:
            self._keys.drop((user_id, provider))

    # Everything else passes through.

    async def users_for_tokens(self, token_hashes: Sequence[str]) -> dict[str, User]:
        # Never from memory: it is how open streams learn that their token is gone.
        return await self.store.users_for_tokens(token_hashes)

    async def create_user(self, user: User, token_hash: str) -> None:
        await self.store.create_user(user, token_hash)

    async def create_child_token(
        self, child: ChildToken, token_hash: str, now: int, most: int
    ) -> bool:
        return await self.store.create_child_token(child, token_hash, now, most)

    async def child_tokens(self, user_id: str) -> list[ChildToken]:
        return await self.store.child_tokens(user_id)

    async def touch_child_token(self, user_id: str, token_id: str, at: int) -> None:
        await self.store.touch_child_token(user_id, token_id, at)

    async def reserve(self, user_id: str, charges: Sequence[Charge], now: int) -> int | None:
        return await self.store.reserve(user_id, charges, now)

    async def settle(self, user_id: str, changes: Sequence[tuple[str, int]]) -> None:
        await self.store.settle(user_id, changes)

    async def spent(self, user_id: str, counters: Sequence[str], now: int) -> dict[str, int]:
        return await self.store.spent(user_id, counters, now)

    async def list_keys(self, user_id: str) -> list[KeyInfo]:
        return await self.store.list_keys(user_id)

    async def set_key_status(
        self, user_id: str, provider: str, record: bytes, status: str, verified_at: int | None
    ) -> bool:
        return await self.store.set_key_status(user_id, provider, record, status, verified_at)

    async def touch_key(self, user_id: str, provider: str, at: int) -> None:
        await self.store.touch_key(user_id, provider, at)

    async def record_usage(self, records: Sequence[UsageRecord]) -> None:
        await self.store.record_usage(records)

    async def usage_stats(
        self, now: int, *, user_id: str | None = None, app_id: str | None = None
    ) -> UsageStats:
        return await self.store.usage_stats(now, user_id=user_id, app_id=app_id)

    async def usage_ledger(
        self, user_id: str, start: int, end: int, group_by: str
    ) -> list[LedgerRow]:
        return await self.store.usage_ledger(user_id, start, end, group_by)

    async def prune_usage(self, before: int) -> int:
        return await self.store.prune_usage(before)

    async def count_users(self, app_id: str) -> int:
        return await self.store.count_users(app_id)

    def iter_keys(self, batch: int = 500) -> AsyncIterator[tuple[str, str, bytes]]:
        return self.store.iter_keys(batch)

    async def ping(self) -> None:
        await self.store.ping()

    async def close(self) -> None:
        await self.store.close()
