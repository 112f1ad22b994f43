"""Rate limits with `limits`: in process memory, or shared by every instance through Redis.

Four limits, each a `limits` string from the settings: `global` per client IP (every request but
CORS preflights), `relay` per token (keyed by the token's HMAC digest, never the token),
`register` per IP on `POST /users`, `health` per IP on `GET /health?deep=1`.

A check is one round trip to the storage (a fixed-window increment); only a refused request
costs a second one, to tell the client when to come back. When the storage is unreachable,
`RATE_LIMIT_FAIL` decides: `closed` (the default) refuses the relay and registration limits with
a 503, `open` lets them pass; the global limit always lets requests pass (it must not take
`/health` down with Redis), and either way the failure is logged, at most once a minute.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from typing import Final

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import RelayError, ServiceUnavailable, send_error
from .memorylimits import MemoryStorage

__all__ = ["LIMIT_NAMES", "GlobalLimitMiddleware", "Limit", "RateLimited", "RateLimiter"]

logger = logging.getLogger("relay.ratelimit")

LIMIT_NAMES: Final = ("global", "relay", "register", "health")
_LOG_EVERY: Final = 60.0


class RateLimited(RelayError):
    status = 429
    code = "rate_limited"


@dataclasses.dataclass(frozen=True)
class Limit:
    name: str
    item: RateLimitItem
    fail_closed: bool

    @classmethod
    def parse(cls, name: str, spec: str, *, fail_closed: bool) -> Limit:
        """`spec` in the `limits` notation (`20/minute`); ValueError when it is not one."""
        return cls(name, parse(spec), fail_closed)

    @property
    def policy(self) -> str:
        return f"{self.item.amount};w={self.item.get_expiry()}"


class RateLimiter:
    def __init__(self, storage: Storage, limits: Mapping[str, Limit]) -> None:
        self.storage = storage
        self.limits = dict(limits)
        self._strategy = FixedWindowRateLimiter(storage)
        self._last_failure_log = -math.inf

    @classmethod
    def in_memory(cls, limits: Mapping[str, Limit]) -> RateLimiter:
        return cls(MemoryStorage(), limits)

    async def check(self, name: str, identity: str) -> None:
        """Count one request of `identity` against limit `name`; raise `RateLimited` (429) when
        it is over, `ServiceUnavailable` (503) when the storage is down and the limit fails
        closed."""
        limit = self.limits[name]
        try:
            if await self._strategy.hit(limit.item, name, identity):
                return
            reset, _ = await self._strategy.get_window_stats(limit.item, name, identity)
        except StorageError as exc:
            self._log_failure(exc)
            if limit.fail_closed:
                raise ServiceUnavailable(
                    "Rate limiter unavailable, try again shortly",
                    code="rate_limiter_unavailable",
                    headers={"retry-after": "1"},
                ) from None
            return
        retry_after = max(1, math.ceil(reset - time.time()))
        raise RateLimited(
            f"Too many requests. Try again in {retry_after} seconds.",
            headers={
                "retry-after": str(retry_after),
                "ratelimit-limit": str(limit.item.amount),
                "ratelimit-remaining": "0",
                "ratelimit-reset": str(retry_after),
                "ratelimit-policy": limit.policy,
            },
            limit=name,
        )

    def _log_failure(self, exc: StorageError) -> None:
        now = time.monotonic()
        if now - self._last_failure_log >= _LOG_EVERY:
            self._last_failure_log = now
            cause = type(exc.storage_error).__name__ if exc.storage_error else "unknown"
            logger.warning("rate-limit storage unavailable", extra={"cause": cause})


def client_ip(scope: Scope) -> str:
    """The client's address: the socket's, or what a trusted proxy said (the proxy-headers
    middleware has already rewritten `client` by then)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class GlobalLimitMiddleware:
    """The per-IP limit on every request, as pure ASGI (it sits on the streaming path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            limiter: RateLimiter = scope["state"]["services"].limiter
            try:
                await limiter.check("global", client_ip(scope))
            except RelayError as error:
                await send_error(send, error)
                return
        await self.app(scope, receive, send)
