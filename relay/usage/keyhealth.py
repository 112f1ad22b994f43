"""What the relay learns about a stored key from using it, written off the request path.

A provider answering 401 means the key is dead (`invalid`), 402 that its account cannot pay
(`no_credit`): the app can ask its user for a new key. `last_used_at` is written at most once
a minute per key and process. Each status is set only if the key was not replaced meanwhile.
"""

from __future__ import annotations

import time
from typing import Final

from backends import KeyStore
from relay.usage.background import Background

__all__ = ["KeyHealth"]

_STATUS_BY_ANSWER: Final = {401: "invalid", 402: "no_credit"}
_TOUCH_EVERY: Final = 60.0
_REMEMBERED: Final = 100_000


class KeyHealth:
    def __init__(self, store: KeyStore, background: Background) -> None:
        self._store = store
        self._background = background
        self._touched: dict[tuple[str, str], float] = {}

    def observe(self, user_id: str, provider: str, record: bytes, status_code: int) -> None:
        """The provider answered `status_code` to a request made with this key."""
        status = _STATUS_BY_ANSWER.get(status_code)
        if status is not None:
            self._background.spawn(
                self._store.set_key_status(user_id, provider, record, status, None),
                "key status",
            )
        now = time.monotonic()
        last = self._touched.get((user_id, provider))
        if last is None or now - last >= _TOUCH_EVERY:
            if len(self._touched) >= _REMEMBERED:
                self._touched.clear()
            self._touched[user_id, provider] = now
            at = int(time.time() * 1000)
            self._background.spawn(self._store.touch_key(user_id, provider, at), "key use")
