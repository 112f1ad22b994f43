"""What the relay learns about a stored key from using it, written off the request path.

A provider answering 401 means the key is dead (`invalid`), 402 that its account cannot pay
(`no_credit`): the app can ask its user for a new key. `last_used_at` is written at most once
a minute per key and process. Each status is set only if the key was not replaced meanwhile.
"""

from __future__ import annotations

from typing import Final

from backends import KeyStore
from relay.usage.background import Background
from relay.usage.lastuse import LastUse

__all__ = ["KeyHealth"]

_STATUS_BY_ANSWER: Final = {401: "invalid", 402: "no_credit"}


class KeyHealth:
    def __init__(self, store: KeyStore, background: Background) -> None:
        self._store = store
        self._background = background
        self._used = LastUse(background, "key use")

    def observe(self, user_id: str, provider: str, record: bytes, status_code: int) -> None:
        """The provider answered `status_code` to a request made with this key."""
        status = _STATUS_BY_ANSWER.get(status_code)
        if status is not None:
            self._background.spawn(
                self._store.set_key_status(user_id, provider, record, status, None),
                "key status",
            )
        self._used.note(
            (user_id, provider), lambda at: self._store.touch_key(user_id, provider, at)
        )
