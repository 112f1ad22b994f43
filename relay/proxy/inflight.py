"""The exchanges in progress in one process, so that they can be ended from outside.

A revoked token or an erased account must not keep spending the key on a stream that started
before: the instance that revoked or erased ends its exchanges at once (`end_user`), and every
instance checks the tokens of its open exchanges every `interval` seconds (one store round trip
for all of them, `KeyStore.users_for_tokens`) and ends those whose token is gone or revoked. A
drain ends whatever is still open when its window closes (`end_all`). A token that merely
expires mid-stream is left to finish: it was good when the request was made.

While the store cannot be reached, open exchanges go on (saying so once in the log): the check
is a guard on spending, not a reason to cut every stream when the store blinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from backends import KeyStore, Outcome, StoreError, User

__all__ = ["InFlight"]

logger = logging.getLogger("relay")


class Endable(Protocol):
    @property
    def token(self) -> str:
        """The digest of the token the exchange was authorised with."""

    @property
    def user(self) -> User: ...

    def end(self, outcome: Outcome) -> None: ...


class InFlight:
    def __init__(self, store: KeyStore, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._open: set[Endable] = set()
        self._task: asyncio.Task[None] | None = None
        self._store_down = False

    def __len__(self) -> int:
        return len(self._open)

    def add(self, exchange: Endable) -> None:
        self._open.add(exchange)

    def discard(self, exchange: Endable) -> None:
        self._open.discard(exchange)

    def end_user(self, user_id: str, outcome: Outcome = Outcome.REVOKED) -> int:
        """End every exchange of `user_id`; how many there were."""
        ending = [exchange for exchange in self._open if exchange.user.id == user_id]
        for exchange in ending:
            exchange.end(outcome)
        return len(ending)

    def end_children(self, user_id: str, token_ids: frozenset[str]) -> int:
        """End every exchange of `user_id` made with one of the narrow tokens `token_ids`."""
        ending = [
            exchange
            for exchange in self._open
            if exchange.user.id == user_id
            and exchange.user.child is not None
            and exchange.user.child.id in token_ids
        ]
        for exchange in ending:
            exchange.end(Outcome.REVOKED)
        return len(ending)

    def end_all(self, outcome: Outcome) -> int:
        ending = list(self._open)
        for exchange in ending:
            exchange.end(outcome)
        return len(ending)

    async def check(self) -> None:
        """End the exchanges whose token is no longer live in the store."""
        if not self._open:
            return
        by_token: dict[str, list[Endable]] = {}
        for exchange in self._open:
            by_token.setdefault(exchange.token, []).append(exchange)
        try:
            users = await self._store.users_for_tokens(list(by_token))
        except StoreError as exc:
            if not self._store_down:
                logger.warning("open streams' tokens cannot be checked: %s", exc)
                self._store_down = True
            return
        if self._store_down:
            logger.info("open streams' tokens are checked again")
            self._store_down = False
        for digest, exchanges in by_token.items():
            user = users.get(digest)
            if user is None or user.revoked_at is not None:
                for exchange in exchanges:
                    exchange.end(Outcome.REVOKED)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except Exception:  # never let the watch die: a bug here must not disarm it
                logger.exception("checking open streams' tokens failed")
