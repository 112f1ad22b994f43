"""Usage records older than `USAGE_RETENTION_DAYS` are deleted in the background.

Every instance prunes (deleting what is already gone deletes nothing), first a few seconds
after it starts, at a random moment so that instances started together spread out, then every
hour. A store that is down is tried again at the next hour.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Final

from backends import DAY_MS, KeyStore, StoreError

__all__ = ["PRUNE_EVERY", "Retention"]

logger = logging.getLogger("relay")

PRUNE_EVERY: Final = 3600.0
FIRST_PRUNE_WITHIN: Final = (1.0, 10.0)  # seconds after start


class Retention:
    def __init__(self, store: KeyStore, days: float) -> None:
        self.store = store
        self.days = days

    async def run(self) -> None:
        await asyncio.sleep(random.uniform(*FIRST_PRUNE_WITHIN))
        while True:
            await self.prune_once()
            await asyncio.sleep(PRUNE_EVERY)

    async def prune_once(self) -> int:
        """Delete what is past retention now; how many records went."""
        before = int(time.time() * 1000 - self.days * DAY_MS)
        try:
            deleted = await self.store.prune_usage(before)
        except StoreError as exc:
            logger.warning("usage: pruning failed (%s); tried again in an hour", type(exc).__name__)
            return 0
        if deleted:
            logger.info("usage: %d records older than %g days pruned", deleted, self.days)
        return deleted
