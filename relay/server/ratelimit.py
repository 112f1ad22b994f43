"""Rate limits with `limits`: in process memory, or shared by every instance through Redis.

Four limits, each a `limits` string from the settings: `global` per client IP (every request but
CORS preflights), `relay` per token (keyed by the token's HMAC digest, never the token),
`register` per IP on `POST /users`, `health` per IP on `GET /health?deep=1`.

A check is one fixed-window hit, one round trip that also says when the window ends
(`relay.server.memorylimits`, `relay.server.redislimits`); a client refused is refused at once
until its window ends. Where the key store is on the limits' Redis, a request's hit may be
deferred (`RateLimiter.defer`) to ride its reservation's round trip.

Every response carries the draft-6 RateLimit headers, as the Node relay's express-rate-limit
sends them, of the limit checked for it that will refuse its client first (the fewest
remaining; the later reset on a tie): on a relayed answer that is usually the per-token limit,
on `POST /users` the registration limit, elsewhere the per-IP one. A 429 carries the refusing
limit's own.

While Redis is down or frozen (its `backends.breaker.Breaker` is open), no check waits for it:
the per-IP limit counts in process memory (it must not take `/health` down with Redis), and the
others follow `RATE_LIMIT_FAIL` (`closed`: 503 at once; `open`: pass, uncounted). The switch to
memory and back is logged once each.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from limits import RateLimitItem, parse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backends import Charge, StoreError, StoreUnavailable
from backends.breaker import Breaker
from relay.errors import RelayError, ServiceUnavailable, send_error
from relay.server.memorylimits import MemoryStorage
from relay.telemetry.metrics import RATE_LIMITED

if TYPE_CHECKING:  # imported only when REDIS_URL is set
    from backends.redis import RateHit
    from relay.server.redislimits import RedisCounter

    ReserveCounting = Callable[
        [str, Sequence[Charge], int, RateHit], Awaitable[tuple[int, int, int | None]]
    ]
    """`RedisStore.reserve_counting`."""

__all__ = [
    "LIMIT_NAMES",
    "Deferred",
    "GlobalLimitMiddleware",
    "Limit",
    "Quota",
    "RateLimited",
    "RateLimiter",
    "rate_limit_headers",
]

logger = logging.getLogger("relay.ratelimit")

LIMIT_NAMES: Final = ("global", "relay", "register", "health")
_LOG_EVERY: Final = 60.0
_MOST_REFUSED: Final = 10_000

WhenDown = Literal["memory", "closed", "open"]


class RateLimited(RelayError):
    status = 429
    code = "rate_limited"


@dataclasses.dataclass(frozen=True)
class Limit:
    name: str
    item: RateLimitItem
    when_down: WhenDown = "closed"
    """What a check does while Redis is unavailable: `memory` counts in this process, `closed`
    refuses (503), `open` lets the request pass uncounted."""

    @classmethod
    def parse(cls, name: str, spec: str, *, when_down: WhenDown = "closed") -> Limit:
        """`spec` in the `limits` notation (`20/minute`); ValueError when it is not one."""
        return cls(name, parse(spec), when_down)

    def key(self, identity: str) -> str:
        """`limits`' own key for `identity` under this limit (`item.key_for(name, identity)`),
        from parts built once: building it whole cost more than the rest of a hit."""
        head, tail = self._key_parts
        return head + identity + tail

    @functools.cached_property
    def _key_parts(self) -> tuple[str, str]:
        head, _, tail = self.item.key_for(self.name, "\0").partition("\0")
        return head, tail

    @functools.cached_property
    def expiry(self) -> int:
        """The window's length in seconds."""
        return self.item.get_expiry()

    @functools.cached_property
    def policy(self) -> str:
        return f"{self.item.amount};w={self.expiry}"

    @functools.cached_property
    def static_headers(self) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
        return (b"ratelimit-policy", self.policy.encode()), (
            b"ratelimit-limit",
            str(self.item.amount).encode(),
        )


class Quota(NamedTuple):
    """Where one client stands under one limit, as of its latest hit."""

    limit: Limit
    remaining: int
    resets_at: float
    """Epoch seconds at which the window ends."""


def rate_limit_headers(quotas: Sequence[Quota], now: float) -> list[tuple[bytes, bytes]]:
    """The RateLimit headers of whichever of `quotas` (one at least) refuses its client first."""
    limit, remaining, resets_at = quotas[0]
    for other in quotas:
        if other.remaining < remaining or (
            other.remaining == remaining and other.resets_at > resets_at
        ):
            limit, remaining, resets_at = other
    left = resets_at - now
    if left <= 0:  # the window ended meanwhile: a relayed answer's head can take minutes
        remaining, left = limit.item.amount, limit.expiry
    policy, amount = limit.static_headers
    return [
        policy,
        amount,
        (b"ratelimit-remaining", str(remaining).encode()),
        (b"ratelimit-reset", str(math.ceil(left)).encode()),
    ]


# The quotas checked while serving the current request, for its response's headers. A context
# variable because the per-token check is made deep in the proxy, which has no way to hand it
# back; the middleware below sets it for each request.
_CHECKED: contextvars.ContextVar[list[Quota] | None] = contextvars.ContextVar(
    "relay_rate_limit_quotas", default=None
)


class RateLimiter:
    def __init__(
        self,
        limits: Mapping[str, Limit],
        redis: RedisCounter | None = None,
        breaker: Breaker | None = None,
        reserve_counting: ReserveCounting | None = None,
    ) -> None:
        """Limits counted in process memory, or in `redis` while `breaker`, which watches that
        Redis, says it is up. `reserve_counting`: the reservation of a key store on that same
        Redis, which counts a deferred hit in its own round trip."""
        if (redis is None) != (breaker is None):
            raise ValueError("a Redis counter needs the breaker that watches its server")
        if reserve_counting is not None and redis is None:
            raise ValueError("only a key store on the limits' Redis can count their hits")
        self.limits = dict(limits)
        self.memory = MemoryStorage()
        self._redis = redis
        self._breaker = breaker
        self._reserve = reserve_counting
        self._refused: dict[str, Quota] = {}
        """Keys refused, with the quota that refused them, until their windows end."""
        self._in_memory = False
        self._last_failure_log = -math.inf

    async def check(self, name: str, identity: str) -> Quota | None:
        """Count one request of `identity` against limit `name`: where it stands now, or None
        when it passed uncounted (Redis unavailable, the limit failing open). Raises
        `RateLimited` (429) when it is over, `ServiceUnavailable` (503) when Redis is
        unavailable and the limit fails closed. Once refused, `identity` is refused at once,
        uncounted, until the window ends."""
        limit = self.limits[name]
        key = limit.key(identity)
        self._still_refused(key)
        if self._redis is None or self._breaker is None:
            count, resets_at = self.memory.hit(key, limit.expiry)
        else:
            try:
                with self._breaker:
                    count, resets_at = await self._redis.hit(key, limit.expiry)
            except StoreError as exc:
                counted = self._without_redis(limit, key, exc)
                if counted is None:
                    return None
                count, resets_at = counted
            else:
                self._answered()
        return self._counted(limit, key, count, resets_at)

    def defer(self, name: str, identity: str) -> Deferred | None:
        """The hit of `check(name, identity)`, to count later, in the round trip of a
        reservation; None when the key store does not share the limits' Redis. Raises as
        `check` when `identity` is refused already."""
        if self._reserve is None:
            return None
        self._still_refused(self.limits[name].key(identity))
        return Deferred(self, name, identity)

    async def _reserve_counting(
        self, name: str, identity: str, user_id: str, charges: Sequence[Charge], now: int
    ) -> int | None:
        assert self._reserve is not None  # only `defer` makes a `Deferred`, and only then
        assert self._redis is not None
        assert self._breaker is not None
        limit = self.limits[name]
        key = limit.key(identity)
        hit = self._redis.hit_of(key, limit.expiry, limit.item.amount)
        # Redis down: the reservation cannot be made either, whatever the limit does meanwhile.
        with self._breaker:
            count, left, refused = await self._reserve(user_id, charges, now, hit)
        self._answered()
        self._counted(limit, key, count, time.time() + left / 1000)  # over: nothing was tried
        return refused

    def _still_refused(self, key: str) -> None:
        quota = self._refused.get(key)
        if quota is not None:
            if quota.resets_at > time.time():
                raise _refusal(quota)
            del self._refused[key]

    def _counted(self, limit: Limit, key: str, count: int, resets_at: float) -> Quota:
        quota = Quota(limit, max(0, limit.item.amount - count), resets_at)
        if count > limit.item.amount:
            self._remember(key, quota)
            raise _refusal(quota)
        checked = _CHECKED.get()
        if checked is not None:
            checked.append(quota)
        return quota

    def _remember(self, key: str, quota: Quota) -> None:
        refused = self._refused
        if len(refused) >= _MOST_REFUSED:
            # The oldest goes, unscanned: forgotten, its next request is only counted again.
            del refused[next(iter(refused))]
        refused[key] = quota

    def _answered(self) -> None:
        if self._in_memory:
            self._in_memory = False
            logger.info("rate limits: counting in Redis again")

    def _without_redis(self, limit: Limit, key: str, exc: StoreError) -> tuple[int, float] | None:
        if not isinstance(exc, StoreUnavailable):
            self._log_failure(exc)  # Redis answered, with an error: its breaker stays closed
        if limit.when_down == "closed":
            RATE_LIMITED.labels(limit.name, "503").inc()
            raise ServiceUnavailable(
                "Rate limiter unavailable, try again shortly",
                code="rate_limiter_unavailable",
                headers={"retry-after": "1"},
            ) from None
        if limit.when_down == "open":
            return None
        if not self._in_memory:
            self._in_memory = True
            logger.warning(
                "rate limits: Redis unavailable; the %s limit counts in process memory "
                "until it answers",
                limit.name,
            )
        return self.memory.hit(key, limit.expiry)

    def _log_failure(self, exc: StoreError) -> None:
        now = time.monotonic()
        if now - self._last_failure_log >= _LOG_EVERY:
            self._last_failure_log = now
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "unknown"
            logger.warning("rate-limit storage failed", extra={"cause": cause})


class Deferred:
    """One request's hit of a limit, counted at most once, later: in the round trip of the
    key store's reservation (`reserve`), or on its own (`count`)."""

    __slots__ = ("_identity", "_limiter", "_name")

    def __init__(self, limiter: RateLimiter, name: str, identity: str) -> None:
        self._limiter = limiter
        self._name = name
        self._identity: str | None = identity

    @property
    def pending(self) -> bool:
        return self._identity is not None

    async def count(self) -> None:
        """As `RateLimiter.check`; nothing once counted."""
        identity = self._identity
        if identity is not None:
            self._identity = None
            await self._limiter.check(self._name, identity)

    async def reserve(self, user_id: str, charges: Sequence[Charge], now: int) -> int | None:
        """Count the hit and, unless it is refused, `KeyStore.reserve` the charges, in one
        round trip. Raises as `RateLimiter.check` (nothing reserved), and as the store."""
        identity = self._identity
        if identity is None:
            raise RuntimeError("this hit was counted already")
        self._identity = None
        return await self._limiter._reserve_counting(self._name, identity, user_id, charges, now)


def _refusal(quota: Quota) -> RateLimited:
    """The 429 of `quota`, counted in the metrics."""
    RATE_LIMITED.labels(quota.limit.name, "429").inc()
    now = time.time()
    retry_after = max(1, math.ceil(quota.resets_at - now))
    headers = {k.decode(): v.decode() for k, v in rate_limit_headers([quota], now)}
    return RateLimited(
        f"Too many requests. Try again in {retry_after} seconds.",
        headers={"retry-after": str(retry_after), **headers},
        limit=quota.limit.name,
    )


def client_ip(scope: Scope) -> str:
    """The client's address: the socket's, or what a trusted proxy said (the proxy-headers
    middleware has already rewritten `client` by then)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class GlobalLimitMiddleware:
    """The per-IP limit on every request, and the RateLimit headers on every response, as pure
    ASGI (it sits on the streaming path)."""

    def __init__(self, app: ASGIApp, unlimited: Collection[str] = ()) -> None:
        """`unlimited`: paths never counted nor made to wait on the limiter (the probes)."""
        self.app = app
        self.unlimited = frozenset(unlimited)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.unlimited:
            await self.app(scope, receive, send)
            return
        limiter: RateLimiter = scope["state"]["services"].limiter
        try:
            quota = await limiter.check("global", client_ip(scope))
        except RelayError as error:
            await send_error(send, error)
            return
        checked = [] if quota is None else [quota]
        reset = _CHECKED.set(checked)
        try:
            await self.app(scope, receive, _SendWithLimits(send, checked))
        finally:
            _CHECKED.reset(reset)


class _SendWithLimits:
    """The server's `send`, adding the RateLimit headers to the response's start. Not a coroutine
    function (like `relay.server.bypass`'s): a streamed chunk costs no extra coroutine."""

    __slots__ = ("checked", "send")

    def __init__(self, send: Send, checked: list[Quota]) -> None:
        self.send = send
        self.checked = checked

    def __call__(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start" and self.checked:
            headers = message.get("headers", ())
            for name, _ in headers:
                if name == b"ratelimit-limit":  # a 429's own, or the provider's: left as they are
                    break
            else:
                message["headers"] = [*headers, *rate_limit_headers(self.checked, time.time())]
        return self.send(message)
