"""A key store in front of another that fails at once while its server is known down.

`BreakerStore` passes every call through until one fails with `StoreUnavailable` (the server
refused the connection, dropped it, or did not answer within the call's deadline: it is down or
frozen). From then on its `Breaker` is open: every call raises `StoreUnavailable` at once,
without asking the server, and a background probe calls the store's `ping` every `PROBE_EVERY`
seconds; the first answer closes the breaker and calls pass through again. Any other failure
(`StoreError`: a constraint, a record of an unknown format) says nothing about the server and
leaves the breaker as it is. Calls already waiting when it opens keep their own deadline.

Each transition is logged once (down, with the failure's cause; up), never per call. A `Breaker`
may guard more than one client of one server (the rate limits sharing the Redis key store's
pool), so that the first timeout of either makes both fail fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Final

from .base import (
    UNVERIFIED,
    Charge,
    ChildToken,
    KeyInfo,
    KeyMeta,
    KeyStore,
    LedgerRow,
    StoreError,
    StoreUnavailable,
    UsageRecord,
    UsageStats,
    User,
)

__all__ = ["PROBE_EVERY", "Breaker", "BreakerStore"]

logger = logging.getLogger("backends.breaker")

PROBE_EVERY: Final = 1.0  # seconds between probes of a server known down


class Breaker:
    """Whether `name`'s server is known down, and the probe that finds it up again.

    Used as a context manager around a call: entering raises `StoreUnavailable` while the
    server is down; a `StoreUnavailable` leaving the block opens the breaker. `probe` must
    return or raise within a deadline of its own (a store's `ping` does).
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[None]],
        name: str = "key store",
        every: float = PROBE_EVERY,
    ) -> None:
        self.down = False
        self.name = name
        self._probe = probe
        self._every = every
        self._probing: asyncio.Task[None] | None = None

    def __enter__(self) -> None:
        if self.down:
            raise StoreUnavailable(f"{self.name} known down")

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, StoreUnavailable):
            self.trip(exc)

    def trip(self, exc: BaseException) -> None:
        """Open the breaker (if it is not already) because of `exc`, and start probing."""
        if self.down:
            return
        self.down = True
        cause = type(exc.__cause__ or exc).__name__
        logger.warning(
            "%s down: failing at once until it answers", self.name, extra={"cause": cause}
        )
        self._probing = asyncio.get_running_loop().create_task(self._wait_until_up())

    async def _wait_until_up(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                await self._probe()
            except StoreError:
                continue
            self.down = False
            logger.info("%s up: answering again", self.name)
            return

    async def close(self) -> None:
        """Stop probing. Idempotent."""
        if self._probing is not None:
            self._probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probing
            self._probing = None


class BreakerStore(KeyStore):
    """`store`, failing at once while `breaker` (by default one probing `store.ping`) is open."""

    def __init__(self, store: KeyStore, breaker: Breaker | None = None) -> None:
        self.store = store
        self.breaker = breaker or Breaker(store.ping)

    async def create_user(self, user: User, token_hash: str) -> None:
        with self.breaker:
            await self.store.create_user(user, token_hash)

    async def user_for_token(self, token_hash: str) -> User | None:
        with self.breaker:
            return await self.store.user_for_token(token_hash)

    async def users_for_tokens(self, token_hashes: Sequence[str]) -> dict[str, User]:
        with self.breaker:
            return await self.store.users_for_tokens(token_hashes)

    async def revoke_token(self, user_id: str, at: int) -> None:
        with self.breaker:
            await self.store.revoke_token(user_id, at)

    async def delete_user(self, user_id: str) -> None:
        with self.breaker:
            await self.store.delete_user(user_id)

    async def create_child_token(
        self, child: ChildToken, token_hash: str, now: int, most: int
    ) -> bool:
        with self.breaker:
            return await self.store.create_child_token(child, token_hash, now, most)

    async def child_tokens(self, user_id: str) -> list[ChildToken]:
        with self.breaker:
            return await self.store.child_tokens(user_id)

    async def delete_child_token(self, user_id: str, token_id: str) -> list[str]:
        with self.breaker:
            return await self.store.delete_child_token(user_id, token_id)

    async def touch_child_token(self, user_id: str, token_id: str, at: int) -> None:
        with self.breaker:
            await self.store.touch_child_token(user_id, token_id, at)

    async def set_caps(self, user_id: str, caps: str | None) -> None:
        with self.breaker:
            await self.store.set_caps(user_id, caps)

    async def reserve(self, user_id: str, charges: Sequence[Charge], now: int) -> int | None:
        with self.breaker:
            return await self.store.reserve(user_id, charges, now)

    async def settle(self, user_id: str, changes: Sequence[tuple[str, int]]) -> None:
        with self.breaker:
            await self.store.settle(user_id, changes)

    async def spent(self, user_id: str, counters: Sequence[str], now: int) -> dict[str, int]:
        with self.breaker:
            return await self.store.spent(user_id, counters, now)

    async def put_key(
        self, user_id: str, provider: str, record: bytes, at: int, meta: KeyMeta = UNVERIFIED
    ) -> bool:
        with self.breaker:
            return await self.store.put_key(user_id, provider, record, at, meta)

    async def get_key(self, user_id: str, provider: str) -> bytes | None:
        with self.breaker:
            return await self.store.get_key(user_id, provider)

    async def list_keys(self, user_id: str) -> list[KeyInfo]:
        with self.breaker:
            return await self.store.list_keys(user_id)

    async def set_key_status(
        self, user_id: str, provider: str, record: bytes, status: str, verified_at: int | None
    ) -> bool:
        with self.breaker:
            return await self.store.set_key_status(user_id, provider, record, status, verified_at)

    async def touch_key(self, user_id: str, provider: str, at: int) -> None:
        with self.breaker:
            await self.store.touch_key(user_id, provider, at)

    async def delete_key(self, user_id: str, provider: str) -> bool:
        with self.breaker:
            return await self.store.delete_key(user_id, provider)

    async def record_usage(self, records: Sequence[UsageRecord]) -> None:
        with self.breaker:
            await self.store.record_usage(records)

    async def usage_stats(
        self, now: int, *, user_id: str | None = None, app_id: str | None = None
    ) -> UsageStats:
        with self.breaker:
            return await self.store.usage_stats(now, user_id=user_id, app_id=app_id)

    async def usage_ledger(
        self, user_id: str, start: int, end: int, group_by: str
    ) -> list[LedgerRow]:
        with self.breaker:
            return await self.store.usage_ledger(user_id, start, end, group_by)

    async def prune_usage(self, before: int) -> int:
        with self.breaker:
            return await self.store.prune_usage(before)

    async def count_users(self, app_id: str) -> int:
        with self.breaker:
            return await self.store.count_users(app_id)

    async def iter_keys(self, batch: int = 500) -> AsyncIterator[tuple[str, str, bytes]]:
        with self.breaker:
            async for item in self.store.iter_keys(batch):
                yield item

    async def replace_key(self, user_id: str, provider: str, old: bytes, new: bytes) -> bool:
        with self.breaker:
            return await self.store.replace_key(user_id, provider, old, new)

    async def ping(self) -> None:
        with self.breaker:
            await self.store.ping()

    async def close(self) -> None:
        await self.breaker.close()
        await self.store.close()
