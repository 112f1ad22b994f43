"""Usage records, written in batches by one task, never on a request's path.

`UsageRecorder.add` only appends to a queue; a background task writes what has queued at
least once a second, or as soon as `BATCH` records wait. A write that fails is logged and its
batch dropped (a batch the store refused is written again a record at a time, so that only the
records it refuses are): bookkeeping never fails or slows a relay call. On shutdown the queue
is flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from backends import KeyStore, StoreError, StoreUnavailable, UsageRecord

__all__ = ["UsageRecorder"]

logger = logging.getLogger("relay")

BATCH: Final = 200
INTERVAL: Final = 1.0
MAX_QUEUED: Final = 100_000


class UsageRecorder:
    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._queue: list[UsageRecord] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # One flush at a time: a flush that finds another writing waits for it, so that what was
        # queued before it began is stored when it returns, whoever wrote it.
        self._writing = asyncio.Lock()

    def add(self, record: UsageRecord) -> None:
        if len(self._queue) >= MAX_QUEUED:  # the store has been down a long while
            return
        self._queue.append(record)
        if len(self._queue) >= BATCH:
            self._wake.set()

    def forget(self, user_id: str) -> None:
        """Drop the queued records of a user who was just erased."""
        self._queue = [record for record in self._queue if record.user_id != user_id]

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def flush(self) -> None:
        """Write what is queued now, and return once it, and any write under way, is stored;
        records added meanwhile wait for the next round, so that steady traffic is written in
        full batches, not a few records per write."""
        async with self._writing:
            queued, self._queue = self._queue, []
            for start in range(0, len(queued), BATCH):
                batch = queued[start : start + BATCH]
                try:
                    await self._store.record_usage(batch)
                except StoreUnavailable as exc:
                    logger.warning("usage records dropped: %s", exc, extra={"records": len(batch)})
                except StoreError:  # it refused the batch: one record must not cost the others
                    await self._one_by_one(batch)

    async def _one_by_one(self, batch: list[UsageRecord]) -> None:
        refused = 0
        for at, record in enumerate(batch):
            try:
                await self._store.record_usage([record])
            except StoreUnavailable as exc:  # gone meanwhile: the rest is dropped, as above
                logger.warning(
                    "usage records dropped: %s", exc, extra={"records": refused + len(batch) - at}
                )
                return
            except StoreError:
                refused += 1
        if refused:
            logger.warning("usage records the store refused dropped", extra={"records": refused})

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(INTERVAL):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:  # a store's error untranslated: the records go, not the task
                logger.error("usage records dropped: %s", type(exc).__name__)
