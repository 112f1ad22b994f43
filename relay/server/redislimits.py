"""The rate limits' Redis storage: a fixed-window hit in one round trip, its window's end with it.

`limits`' own Redis storage counts a hit with one script and needs a second round trip (a TTL)
to say when the window ends. Every response tells its client both, so `RedisCounter.hit` is one
script that returns the count and the window's remaining milliseconds (`backends.redis_scripts`
holds it, for a key store on the same Redis to count a hit in a reservation's round trip:
`hit_of`). Keys are `limits`' own (`<prefix>:<item key>`, the same INCRBY counter with an
expiry).

Each call is cut off at `deadline` seconds, whatever it waits on; a failure is translated as the
key stores translate theirs: `StoreUnavailable` when Redis is down or frozen (refused, dropped,
no answer in time), `StoreError` for anything else it reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from redis import asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from backends import StoreError, StoreUnavailable
from backends.redis import RateHit
from backends.redis_scripts import HIT

__all__ = ["RedisCounter"]


@contextlib.contextmanager
def _translate(operation: str) -> Iterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:  # TimeoutError too
        raise StoreUnavailable(f"rate-limit storage unavailable during {operation}") from exc
    except RedisError as exc:
        raise StoreError(f"rate-limit storage failed during {operation}") from exc


class RedisCounter:
    def __init__(self, client: aioredis.Redis, prefix: str, deadline: float) -> None:
        self._client = client
        self._prefix = prefix + ":"
        self._deadline = deadline
        self._hit = client.register_script(HIT)

    async def hit(self, key: str, expiry: float) -> tuple[int, float]:
        """Count one hit of `key` in its fixed window of `expiry` seconds: the count so far, this
        hit included, and when the window ends (epoch seconds)."""
        with _translate("hit"):
            async with asyncio.timeout(self._deadline):
                count, left = await self._hit(
                    keys=[self._prefix + key], args=[round(expiry * 1000)]
                )
        return int(count), time.time() + int(left) / 1000

    def hit_of(self, key: str, expiry: float, most: int) -> RateHit:
        """`key`'s hit, for a key store on this Redis to count in a round trip of its own."""
        return RateHit(self._prefix + key, round(expiry * 1000), most)

    async def ping(self) -> None:
        """Return when Redis answers; raise `StoreUnavailable` otherwise."""
        with _translate("ping"):
            async with asyncio.timeout(self._deadline):
                await self._client.ping()
