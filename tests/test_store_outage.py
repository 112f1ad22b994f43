"""A frozen key store or Redis (SIGSTOP: its connections stay open and nothing answers) under a
running relay: the first request that needs it fails within one deadline, the next ones at once,
what needs no store keeps serving with its per-IP limit counted in memory, and the relay is back
by itself after SIGCONT. Then the parts on their own: a store call's deadline, the breaker, the
limiter without Redis, and the RateLimit headers every response carries."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

import backends
from backends import StoreError, StoreOptions, StoreUnavailable, User
from backends.breaker import Breaker, BreakerStore
from backends.redis import connect
from relay.errors import ServiceUnavailable
from relay.server.ratelimit import Limit, Quota, RateLimiter, rate_limit_headers
from relay.server.redislimits import RedisCounter
from tests.conftest import RelayFactory
from tests.mockprovider import MockProvider
from tests.relayprocess import RelayProcess
from tests.relayserver import register, relay_env, store_key
from tests.servers import PrivateRedis, PrivateStore, drop_namespace, new_namespace

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
ORIGIN = "https://app.example"
DEADLINE = 2.0  # DB_CONNECT_TIMEOUT of the relays below
UNIT_DEADLINE = 0.5  # connect_timeout of the stores and counters built here
AT_ONCE = 0.5  # seconds: a request that must not wait for the store

Server = PrivateStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def relay_call(client: httpx.Client, token: str) -> httpx.Response:
    return client.post(
        "/relay/openai/v1/chat/completions",
        json=CHAT,
        headers={"x-relay-token": token, "origin": ORIGIN},
    )


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def assert_unavailable(response: httpx.Response, *codes: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "1"
    assert response.json()["code"] in (codes or ("store_unavailable",))


def limit_headers(response: httpx.Response) -> tuple[str, int, int, str]:
    """(limit, remaining, reset, policy) of a response's RateLimit headers."""
    headers = response.headers
    return (
        headers["ratelimit-limit"],
        int(headers["ratelimit-remaining"]),
        int(headers["ratelimit-reset"]),
        headers["ratelimit-policy"],
    )


def count_lines(lines: list[str], text: str) -> int:
    return sum(text in line for line in lines)


def test_a_frozen_store_fails_fast_and_the_rest_keeps_serving(
    server: Server, mock: MockProvider, tmp_path: Path
) -> None:
    on_redis = isinstance(server, PrivateRedis)
    env = relay_env(
        tmp_path / "unused.db",
        mock.url,
        DATABASE_URL=server.url,
        DB_CONNECT_TIMEOUT=str(DEADLINE),
        CACHE_TTL="0.2",
        LOG_LEVEL="info",
        RATE_LIMIT_GLOBAL="1000/minute",
        # Redis as the key store and the limits' storage: one pool, one breaker.
        **({"REDIS_URL": server.url} if on_redis else {}),
    )
    # With Redis the relay limit fails closed, its 503 coming first when the token is cached.
    codes = ("store_unavailable", "rate_limiter_unavailable") if on_redis else ()
    relay = RelayProcess(tmp_path, env)
    try:
        with relay.client(timeout=30) as client:
            token = register(client, "frozen")
            store_key(client, token, "openai", "test-openai-key-frozen")
            assert relay_call(client, token).status_code == 200
            time.sleep(0.3)  # past CACHE_TTL: the next relayed request asks the store

            server.freeze()
            try:
                first, took = timed(lambda: relay_call(client, token))
                assert_unavailable(first, *codes)
                assert took < DEADLINE + 0.5, f"the first request took {took:.2f} s"
                for call in (
                    lambda: relay_call(client, token),
                    lambda: client.get("/health"),
                    lambda: client.post("/users", json={"app_id": "frozen"}),
                    lambda: client.get("/keys", headers={"x-relay-token": token}),
                ):
                    response, took = timed(call)
                    assert response.status_code == 503, response.text
                    assert took < AT_ONCE, f"{response.request.url.path} took {took:.2f} s"
                health = client.get("/health")
                assert health.json()["checks"]["db"]["ok"] is False
                # What needs no store is served at once, its per-IP limit counted in memory.
                remaining = []
                for _ in range(3):
                    version, took = timed(lambda: client.get("/version"))
                    assert version.status_code == 200
                    assert took < AT_ONCE, f"/version took {took:.2f} s"
                    limit, left, reset, policy = limit_headers(version)
                    assert (limit, policy) == ("1000", "1000;w=60")
                    assert 1 <= reset <= 60
                    remaining.append(left)
                assert remaining == [remaining[0], remaining[0] - 1, remaining[0] - 2]
            finally:
                server.thaw()

            deadline = time.monotonic() + 10
            while (status := relay_call(client, token).status_code) != 200:
                assert time.monotonic() < deadline, f"still {status} after the store came back"
                time.sleep(0.1)
            assert mock.last().header("authorization") == "Bearer test-openai-key-frozen"
            assert client.get("/health").status_code == 200
            assert client.post("/users", json={"app_id": "after"}).status_code == 200
        assert relay.process.poll() is None, "the relay process must not have restarted"
    finally:
        relay.stop()
    lines = relay.lines
    assert count_lines(lines, "down: failing at once until it answers") == 1, lines
    assert count_lines(lines, "up: answering again") == 1, lines
    if on_redis:
        assert count_lines(lines, "the global limit counts in process memory") == 1, lines
        assert count_lines(lines, "rate limits: counting in Redis again") == 1, lines
    assert not [line for line in lines if "Traceback" in line]
    assert count_lines(lines, "key store error") == 0, "no error line per request"


# -- A store call's deadline -------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_store_call_on_a_frozen_server_takes_one_deadline(server: Server) -> None:
    store = backends.open_store(server.url, StoreOptions(connect_timeout=UNIT_DEADLINE))
    try:
        await store.ping()  # a pooled connection, then a frozen server behind it
        server.freeze()
        try:
            for call in (store.ping, lambda: store.revoke_token("nobody", 1), store.ping):
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await call()
                took = time.monotonic() - started
                # No retry of the timed-out read, no polite close of the dead connection.
                assert took < UNIT_DEADLINE * 1.5, f"a call took {took:.2f} s"
        finally:
            server.thaw()
        await store.ping()
    finally:
        await store.close()


# -- The breaker -------------------------------------------------------------------------------


def breaker_lines(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.name == "backends.breaker")


async def wait_until_up(breaker: Breaker, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while breaker.down:
        assert time.monotonic() < deadline, "the probe never closed the breaker"
        await asyncio.sleep(0.05)


@pytest.mark.redis
@pytest.mark.anyio
async def test_a_timeout_opens_the_breaker_and_its_probe_closes_it(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backends.breaker")
    inner = backends.open_store(private_redis.url, StoreOptions(connect_timeout=UNIT_DEADLINE))
    store = BreakerStore(inner)
    try:
        assert await store.user_for_token("nobody") is None
        private_redis.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.user_for_token("nobody")
            assert time.monotonic() - started < UNIT_DEADLINE * 1.5
            assert store.breaker.down
            for _ in range(20):  # known down: no call waits for the server
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await store.get_key("nobody", "openai")
                assert time.monotonic() - started < UNIT_DEADLINE / 2
            with pytest.raises(StoreUnavailable):
                await store.ping()
        finally:
            private_redis.thaw()
        await wait_until_up(store.breaker)
        assert await store.user_for_token("nobody") is None  # the first call after succeeds
        assert breaker_lines(caplog, "down: failing at once") == 1
        assert breaker_lines(caplog, "up: answering again") == 1
    finally:
        await store.close()


@pytest.mark.redis
@pytest.mark.anyio
async def test_a_refused_connection_opens_the_breaker(private_redis: PrivateRedis) -> None:
    store = BreakerStore(
        backends.open_store(private_redis.url, StoreOptions(connect_timeout=UNIT_DEADLINE))
    )
    try:
        await store.ping()
        private_redis.stop()
        with pytest.raises(StoreUnavailable):
            await store.count_users("app")
        assert store.breaker.down
        private_redis.start()  # the same port
        await wait_until_up(store.breaker)
        assert await store.count_users("app") == 0
    finally:
        await store.close()


@pytest.mark.redis
@pytest.mark.anyio
async def test_ordinary_errors_leave_the_breaker_closed(private_redis: PrivateRedis) -> None:
    store = BreakerStore(backends.open_store(private_redis.url))
    try:
        user = User(id="u1", app_id="app", created_at=1)
        await store.create_user(user, "digest-1")
        with pytest.raises(StoreError) as raised:  # the id is taken: an answer, not an outage
            await store.create_user(user, "digest-2")
        assert not isinstance(raised.value, StoreUnavailable)
        with pytest.raises(StoreError):  # no such user
            await store.put_key("nobody", "openai", b"record", 1)
        assert not store.breaker.down
        assert await store.user_for_token("digest-1") == user
    finally:
        await store.close()


# -- The limiter without Redis -----------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.anyio
async def test_the_per_ip_limit_counts_in_memory_while_redis_is_frozen(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.ratelimit")
    client = connect(private_redis.url, StoreOptions(connect_timeout=UNIT_DEADLINE))
    counter = RedisCounter(client, "test:limits", UNIT_DEADLINE)
    breaker = Breaker(counter.ping, "rate-limit Redis")
    limiter = RateLimiter(
        {
            "global": Limit.parse("global", "10/minute", when_down="memory"),
            "relay": Limit.parse("relay", "10/minute", when_down="closed"),
            "register": Limit.parse("register", "10/minute", when_down="open"),
        },
        counter,
        breaker,
    )
    try:
        first = await limiter.check("global", "203.0.113.1")
        assert first is not None
        assert first.remaining == 9
        private_redis.freeze()
        try:
            started = time.monotonic()
            in_memory = await limiter.check("global", "203.0.113.1")
            assert time.monotonic() - started < UNIT_DEADLINE * 1.5
            assert breaker.down
            assert in_memory is not None
            assert in_memory.remaining == 9
            started = time.monotonic()
            for remaining in (8, 7, 6):
                quota = await limiter.check("global", "203.0.113.1")
                assert quota is not None
                assert quota.remaining == remaining
            with pytest.raises(ServiceUnavailable):
                await limiter.check("relay", "digest")
            assert await limiter.check("register", "203.0.113.1") is None
            assert time.monotonic() - started < UNIT_DEADLINE / 2, "no check waits for Redis"
        finally:
            private_redis.thaw()
        await wait_until_up(breaker)
        back = await limiter.check("global", "203.0.113.1")
        assert back is not None
        # Redis's count, where it was; the hit that timed out may have landed on its resuming.
        assert back.remaining in (7, 8)
        messages = [r.getMessage() for r in caplog.records if r.name == "relay.ratelimit"]
        assert sum("counts in process memory" in m for m in messages) == 1
        assert sum("counting in Redis again" in m for m in messages) == 1
    finally:
        await breaker.close()
        await client.aclose()
        await client.connection_pool.disconnect()


# -- The RateLimit headers ---------------------------------------------------------------------


def test_the_headers_show_the_limit_that_refuses_first() -> None:
    per_ip = Limit.parse("global", "100/minute")
    per_token = Limit.parse("relay", "20/minute")
    now = 1_700_000_000.0
    loose, tight = Quota(per_ip, 60, now + 30), Quota(per_token, 3, now + 10)
    assert rate_limit_headers([loose, tight], now) == [
        (b"ratelimit-policy", b"20;w=60"),
        (b"ratelimit-limit", b"20"),
        (b"ratelimit-remaining", b"3"),
        (b"ratelimit-reset", b"10"),
    ]
    # As many left under each: the one whose window ends later holds the client back longer.
    even = Quota(per_ip, 3, now + 45.2)
    assert dict(rate_limit_headers([tight, even], now))[b"ratelimit-reset"] == b"46"
    # A window that ended while the answer was on its way: a new one starts at the next hit.
    ended = dict(rate_limit_headers([Quota(per_token, 0, now - 1)], now))
    assert (ended[b"ratelimit-remaining"], ended[b"ratelimit-reset"]) == (b"20", b"60")


def test_a_limit_key_is_the_one_limits_builds() -> None:
    limit = Limit.parse("relay", "20 per 2 minutes")
    assert limit.key("digest") == limit.item.key_for("relay", "digest")


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.sqlite),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def limits_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    if request.param == "memory":
        yield {}
        return
    namespace = new_namespace()
    yield {"REDIS_URL": request.getfixturevalue("redis_url"), "REDIS_NAMESPACE": namespace}
    drop_namespace(namespace)


def test_every_response_carries_the_rate_limit_headers(
    make_relay: RelayFactory, limits_env: dict[str, str]
) -> None:
    server = make_relay(
        RATE_LIMIT_GLOBAL="50/minute",
        RATE_LIMIT_RELAY="5/minute",
        RATE_LIMIT_REGISTER="3/hour",
        **limits_env,
    )
    with server.client(headers={"origin": ORIGIN}) as client:
        versions = [client.get("/version") for _ in range(3)]
        assert [v.status_code for v in versions] == [200] * 3
        seen = [limit_headers(v) for v in versions]
        assert [s[1] for s in seen] == [49, 48, 47]
        assert all(s[0] == "50" and s[3] == "50;w=60" and 1 <= s[2] <= 60 for s in seen)
        exposed = versions[0].headers["access-control-expose-headers"]
        for name in (
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "ratelimit-policy",
        ):
            assert name in exposed

        token = register(client)  # the registration limit is the tighter one here
        registered = client.post("/users", json={"app_id": "x"})
        assert limit_headers(registered)[:2] == ("3", 1)
        assert registered.headers["ratelimit-policy"] == "3;w=3600"
        store_key(client, token, "openai", "test-openai-key-headers")

        relayed = [relay_call(client, token) for _ in range(2)]  # the per-token limit's
        assert [r.status_code for r in relayed] == [200, 200]
        seen = [limit_headers(r) for r in relayed]
        assert [(s[0], s[1], s[3]) for s in seen] == [("5", 4, "5;w=60"), ("5", 3, "5;w=60")]
        assert all(1 <= s[2] <= 60 for s in seen)
        assert len(relayed[0].headers.get_list("ratelimit-limit")) == 1


@pytest.mark.redis
def test_a_hit_is_one_redis_round_trip(
    make_relay: RelayFactory, private_redis: PrivateRedis
) -> None:
    server = make_relay(REDIS_URL=private_redis.url, RATE_LIMIT_GLOBAL="50/minute")
    admin = redis.Redis(port=private_redis.port)
    try:
        with server.client() as client:
            assert client.get("/version").status_code == 200  # the script is loaded once
            admin.config_resetstat()
            remaining = [limit_headers(client.get("/version"))[1] for _ in range(5)]
        assert remaining == [48, 47, 46, 45, 44]
        stats = admin.info("commandstats")
        inside_the_script = {"cmdstat_incrby", "cmdstat_pttl", "cmdstat_pexpire"}
        sent = {
            name: entry["calls"]
            for name, entry in stats.items()
            if name not in inside_the_script and not name.startswith("cmdstat_config")
        }
        assert sent == {"cmdstat_evalsha": 5}
    finally:
        admin.close()
