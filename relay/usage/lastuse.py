"""When something was last used, written off the request path at most once a minute per thing
and process: a key's `last_used_at`, a narrow token's."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Final

from relay.usage.background import Background

__all__ = ["LastUse"]

_EVERY: Final = 60.0
_REMEMBERED: Final = 100_000


class LastUse:
    def __init__(self, background: Background, what: str) -> None:
        self._background = background
        self._what = what
        self._written: dict[Hashable, float] = {}

    def note(self, thing: Hashable, write: Callable[[int], Coroutine[Any, Any, None]]) -> None:
        """`thing` was used now: `write(epoch ms)` unless it was written within the minute."""
        now = time.monotonic()
        last = self._written.get(thing)
        if last is not None and now - last < _EVERY:
            return
        if len(self._written) >= _REMEMBERED:
            self._written.clear()
        self._written[thing] = now
        self._background.spawn(write(int(time.time() * 1000)), self._what)
