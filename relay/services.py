"""The long-lived objects of one relay process, created in the lifespan and closed in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

import httpx

from backends import KeyStore, StoreOptions, open_store
from backends.breaker import Breaker, BreakerStore
from backends.cache import CachedStore
from relay.api.bodies import BodyBudget
from relay.config import Settings
from relay.pricing.table import PriceTable, bundled_prices
from relay.proxy.idle import IdleWheel
from relay.proxy.inflight import InFlight
from relay.proxy.leases import Leases
from relay.security.crypto import KeyCipher
from relay.security.tokens import TokenHasher
from relay.server.drain import Drain
from relay.server.ratelimit import Limit, RateLimiter, WhenDown
from relay.telemetry import metrics
from relay.telemetry.storecalls import observed, observed_call
from relay.upstream.client import new_http_client, new_transport
from relay.upstream.egress import parse_proxy
from relay.upstream.pool import ConnectionPool
from relay.upstream.transport import HTTPTransport
from relay.usage.background import Background
from relay.usage.keyhealth import KeyHealth
from relay.usage.lastuse import LastUse
from relay.usage.recorder import UsageRecorder
from relay.usage.retention import Retention

if TYPE_CHECKING:  # imported only when traces are configured
    from relay.telemetry.traces import Tracer

__all__ = ["Services", "open_services", "store_options", "upstream_transport"]

logger = logging.getLogger("relay")

# Seconds between checks of the open streams' tokens when CACHE_TTL is 0 (else CACHE_TTL: a
# revocation reaches every instance's open streams as soon as its new requests).
TOKEN_CHECK_FLOOR: Final = 0.25
# Seconds between samples of a worker's gauges when several share the metrics (one process
# samples its own as it is scraped).
GAUGES_EVERY: Final = 1.0


@dataclasses.dataclass(frozen=True)
class Services:
    settings: Settings
    store: KeyStore
    cipher: KeyCipher
    tokens: TokenHasher
    http: httpx.AsyncClient
    """For the relay's own calls (key verification, deep health); closes `transport`."""
    transport: httpx.AsyncBaseTransport
    """The upstream connection pool: relayed requests go straight to it."""
    pool: ConnectionPool
    limiter: RateLimiter
    background: Background
    key_health: KeyHealth
    prices: PriceTable
    """What each relayed request cost (`relay.pricing`)."""
    leases: Leases
    """The owners' spending caps, reserved through what this process holds ahead."""
    token_use: LastUse
    """When each narrow token was last used."""
    usage: UsageRecorder
    deadlines: IdleWheel
    """Where every open stream's idle deadline waits (one timer per bucket, not per stream)."""
    inflight: InFlight
    """The exchanges in progress, ended on a revocation or at the end of a drain."""
    bodies: BodyBudget
    """The request bodies held whole, in all."""
    drain: Drain
    started_at: float

    def sample_gauges(self) -> None:
        """Set this process's gauges (`relay.telemetry.metrics`) to its figures now."""
        pool = self.pool
        metrics.sample(len(self.inflight), pool.open_connections, pool.idle_connections)


def store_options(settings: Settings) -> StoreOptions:
    return StoreOptions(
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout,
        connect_timeout=settings.db_connect_timeout,
        namespace=settings.redis_namespace,
        statement_cache=settings.db_statement_cache,
    )


def upstream_transport(settings: Settings) -> HTTPTransport:
    """The one upstream connection pool, of the relayed requests and the key checks alike, with
    the operator's egress proxy and CAs."""
    for scheme, proxy in (("https", settings.https_proxy), ("http", settings.http_proxy)):
        if proxy is not None:  # where to, never who as: the URL may hold a password
            netloc = parse_proxy(str(proxy)).netloc
            logger.info("%s upstreams: through the egress proxy %s", scheme, netloc)
    return new_transport(
        https_proxy=str(settings.https_proxy) if settings.https_proxy else None,
        http_proxy=str(settings.http_proxy) if settings.http_proxy else None,
        no_proxy=settings.no_proxy,
        ca_files=settings.ca_files,
        ca_dirs=settings.ca_dirs,
    )


def _limits(settings: Settings) -> dict[str, Limit]:
    fail: WhenDown = "closed" if settings.rate_limit_fail == "closed" else "open"
    return {
        "global": Limit.parse("global", settings.rate_limit_global, when_down="memory"),
        "relay": Limit.parse("relay", settings.rate_limit_relay, when_down=fail),
        "register": Limit.parse("register", settings.rate_limit_register, when_down=fail),
        "health": Limit.parse("health", settings.rate_limit_health, when_down=fail),
    }


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, store: KeyStore | None = None, tracer: Tracer | None = None
) -> AsyncIterator[Services]:
    cipher = KeyCipher([str(s) for s in settings.encryption_secrets], settings.encryption_salt)
    tokens = TokenHasher(str(settings.token_hmac_secret))
    database_url = str(settings.database_url)
    store_span = tracer.store_span if tracer is not None else None
    async with contextlib.AsyncExitStack() as stack:
        shared_breaker: Breaker | None = None
        if settings.redis_url is None:
            limiter = RateLimiter(_limits(settings))
            logger.info("rate limits: in process memory (set REDIS_URL to share them)")
        else:
            from backends.redis import RedisStore, connect, redis_key
            from relay.server.redislimits import RedisCounter

            redis_url = str(settings.redis_url)
            redis = connect(redis_url, store_options(settings))
            stack.push_async_callback(redis.connection_pool.disconnect)
            stack.push_async_callback(redis.aclose)
            prefix = redis_key(settings.redis_namespace, "limits")
            counter = RedisCounter(redis, prefix, settings.db_connect_timeout)
            reserve_counting = None
            if store is None and database_url == redis_url:
                # The Redis key store and the limits share one pool, and one breaker: the first
                # timeout of either makes both fail fast. A capped request's per-token hit is
                # counted in its reservation's round trip.
                store = RedisStore(
                    redis, settings.redis_namespace, deadline=settings.db_connect_timeout
                )
                shared_breaker = Breaker(store.ping, "Redis (key store and rate limits)")
                breaker = shared_breaker
                reserve_counting = store.reserve_counting
                if settings.metrics or tracer is not None:
                    reserve_counting = observed_call("reserve", reserve_counting, store_span)
            else:
                breaker = Breaker(counter.ping, "rate-limit Redis")
            stack.push_async_callback(breaker.close)
            limiter = RateLimiter(_limits(settings), counter, breaker, reserve_counting)
            logger.info(
                "rate limits: shared through Redis; while it is unavailable the per-IP limit "
                "counts in process memory and the relay and registration limits fail %s",
                settings.rate_limit_fail,
            )
        if store is None:
            store = open_store(database_url, store_options(settings))
            stack.push_async_callback(store.close)
        # Inside the cache: a token or key it holds is still served while the store is down.
        guarded = BreakerStore(store, shared_breaker)
        stack.push_async_callback(guarded.breaker.close)
        store = guarded
        if settings.metrics or tracer is not None:
            store = observed(store, store_span)
        if settings.cache_ttl > 0:
            store = CachedStore(store, settings.cache_ttl)
        pool_transport = upstream_transport(settings)
        transport: httpx.AsyncBaseTransport = pool_transport
        if tracer is not None:
            transport = tracer.transport(transport)
        http = await stack.enter_async_context(
            new_http_client(
                transport,
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.upstream_timeout,
            )
        )
        background = Background()
        stack.push_async_callback(background.close)
        leases = Leases(store, background)
        leases.start()
        stack.push_async_callback(leases.close)  # before the background's last tasks, and the store
        if settings.app_secret is None:
            logger.warning("APP_SECRET is not set: anyone can register with POST /users")
        key_health = KeyHealth(store, background)
        usage = UsageRecorder(store)
        await usage.start()
        stack.push_async_callback(usage.close)
        if settings.usage_retention_days > 0:
            pruning = asyncio.get_running_loop().create_task(
                Retention(store, settings.usage_retention_days).run()
            )
            stack.callback(pruning.cancel)
        inflight = InFlight(store, settings.cache_ttl or TOKEN_CHECK_FLOOR)
        await inflight.start()
        stack.push_async_callback(inflight.close)
        drain = Drain(inflight, settings.drain_seconds)
        stack.callback(drain.close)
        services = Services(
            settings,
            store,
            cipher,
            tokens,
            http,
            transport,
            pool_transport.pool,
            limiter,
            background,
            key_health,
            bundled_prices(),
            leases,
            LastUse(background, "token use"),
            usage,
            IdleWheel(),
            inflight,
            BodyBudget(settings.body_memory_limit),
            drain,
            time.time(),
        )
        if settings.metrics and metrics.multiprocess_dir() is not None:
            # Out last: what the final requests tallied reaches the files before the worker goes.
            stack.callback(services.sample_gauges)
            sampling = asyncio.get_running_loop().create_task(_sample_gauges(services))
            stack.callback(sampling.cancel)
        yield services


async def _sample_gauges(services: Services) -> None:
    while True:
        services.sample_gauges()
        await asyncio.sleep(GAUGES_EVERY)
