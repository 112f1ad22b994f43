"""Work that follows a request but must not slow it: bookkeeping writes, run as tasks.

A failure is logged and dropped (bookkeeping never fails a relay call); on shutdown the
pending tasks get a few seconds to finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["Background"]

logger = logging.getLogger("relay")

_SHUTDOWN_GRACE = 5.0


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, object], what: str) -> None:
        task = asyncio.get_running_loop().create_task(self._run(work, what))
        self._tasks.add(task)  # a strong reference until it is done
        task.add_done_callback(self._tasks.discard)

    async def _run(self, work: Coroutine[Any, Any, object], what: str) -> None:
        try:
            await work
        except Exception as exc:
            logger.warning("background %s failed: %s", what, type(exc).__name__)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=_SHUTDOWN_GRACE)
