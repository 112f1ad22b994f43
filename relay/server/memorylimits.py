"""The rate limits' in-process storage: `limits`' MemoryStorage, without a task per hit.

`limits.aio.storage.MemoryStorage.incr` takes a lock and, whenever its previous sweep is done
(under steady traffic: at every hit), creates a task that walks every key it holds looking for
expired ones: a task and O(keys) work per hit. The relay checks two limits on every relayed
request, which made the limiter the largest cost of its own on a relayed request.

`MemoryStorage` here counts fixed windows in the same dictionaries, so everything else of
limits' storage (get, get_expiry, clear, reset) works on it unchanged. A hit is a few dictionary
operations: no lock (nothing awaits between reading a count and writing it, so on one event
loop a hit is atomic) and no task; expired keys are swept at most once every `SWEEP_EVERY`
seconds, in the hit that finds the sweep due. `hit` is the relay's own call: synchronous, and
with the window's end beside the count, which every response's RateLimit headers need.
"""

from __future__ import annotations

import time
from typing import Final

from limits.aio.storage import MemoryStorage as _LimitsMemoryStorage

__all__ = ["SWEEP_EVERY", "MemoryStorage"]

SWEEP_EVERY: Final = 10.0  # seconds


class MemoryStorage(_LimitsMemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self._next_sweep = time.time() + SWEEP_EVERY

    def hit(self, key: str, expiry: float, amount: int = 1) -> tuple[int, float]:
        """Count `amount` hits of `key` in its fixed window of `expiry` seconds: the count so
        far, these hits included, and when the window ends (epoch seconds)."""
        now = time.time()
        if now >= self._next_sweep:
            self._sweep(now)
        counts, expirations = self.storage, self.expirations
        ends = expirations.get(key, 0.0)
        if ends <= now:  # a new window
            ends = expirations[key] = now + expiry
            counts[key] = amount
            return amount, ends
        count = counts[key] = counts[key] + amount
        return count, ends

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        return self.hit(key, expiry, amount)[0]

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_EVERY
        for key in [key for key, expires in self.expirations.items() if expires <= now]:
            del self.expirations[key]
            self.storage.pop(key, None)
            self.locks.pop(key, None)
