"""Rate limits: per IP, per token, on registration and deep health; in memory and shared by
real relay processes through Redis; and what a Redis outage does."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis import asyncio as aioredis

from backends import Charge, StoreError, StoreOptions, User
from backends.redis import RateHit, RedisStore
from relay.security.tokens import TokenHasher
from tests.conftest import RelayFactory
from tests.mockprovider import MockProvider
from tests.relayprocess import RelayProcess
from tests.relayserver import TEST_SECRET, RelayServer, register, relay_env, store_key
from tests.servers import PrivateRedis, drop_namespace, new_namespace

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
ORIGIN = "https://app.example"


def relay_call(client: httpx.Client, token: str) -> httpx.Response:
    return client.post(
        "/relay/openai/v1/chat/completions",
        json=CHAT,
        headers={"x-relay-token": token, "origin": ORIGIN},
    )


def assert_limited(response: httpx.Response, limit: str, amount: int) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == "rate_limited"
    assert body["limit"] == limit
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 3600
    assert response.headers["ratelimit-limit"] == str(amount)
    assert response.headers["ratelimit-remaining"] == "0"
    assert int(response.headers["ratelimit-reset"]) == retry_after
    assert response.headers["ratelimit-policy"].startswith(f"{amount};w=")


def auth(token: str) -> dict[str, str]:
    return {"x-relay-token": token}


def user_with_key(client: httpx.Client) -> str:
    token = register(client)
    store_key(client, token, "openai", "test-openai-key-limits")
    return token


@pytest.mark.sqlite
def test_relay_limit_is_per_token(make_relay: RelayFactory, mock: MockProvider) -> None:
    server = make_relay(RATE_LIMIT_RELAY="3/minute")
    with server.client() as client:
        first, second = user_with_key(client), user_with_key(client)
        for _ in range(3):
            assert relay_call(client, first).status_code == 200
        mock.clear()
        refused = relay_call(client, first)
        assert_limited(refused, "relay", 3)
        assert mock.requests == [], "a refused request must not reach the provider"
        # Browsers may read the limit headers.
        exposed = refused.headers["access-control-expose-headers"]
        assert "retry-after" in exposed
        assert "ratelimit-remaining" in exposed
        assert relay_call(client, second).status_code == 200
        # Key management is not a relay call.
        assert client.get("/keys", headers={"x-relay-token": first}).status_code == 200


@pytest.mark.sqlite
def test_global_limit_is_per_ip_and_preflights_never_count(make_relay: RelayFactory) -> None:
    server = make_relay(RATE_LIMIT_GLOBAL="5/minute")
    with server.client() as client:
        preflight = {
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "x-relay-token",
        }
        for _ in range(10):
            assert (
                client.options("/relay/openai/v1/chat/completions", headers=preflight).status_code
                == 204
            )
        for _ in range(5):
            assert client.get("/version").status_code == 200
        assert_limited(client.get("/health"), "global", 5)
        assert_limited(client.post("/users", json={"app_id": "x"}), "global", 5)


@pytest.mark.sqlite
def test_trusted_proxies_give_each_client_its_own_limit(make_relay: RelayFactory) -> None:
    trusting = make_relay(RATE_LIMIT_GLOBAL="2/minute", FORWARDED_ALLOW_IPS="127.0.0.1")
    with trusting.client() as client:
        for client_ip in ("203.0.113.1", "203.0.113.2"):
            headers = {"x-forwarded-for": client_ip}
            assert client.get("/version", headers=headers).status_code == 200
            assert client.get("/version", headers=headers).status_code == 200
            assert_limited(client.get("/version", headers=headers), "global", 2)

    untrusting = make_relay(RATE_LIMIT_GLOBAL="2/minute")
    with untrusting.client() as client:
        assert client.get("/version", headers={"x-forwarded-for": "203.0.113.1"}).is_success
        assert client.get("/version", headers={"x-forwarded-for": "203.0.113.2"}).is_success
        # The header is not believed: both came from 127.0.0.1, so the third is refused.
        assert_limited(
            client.get("/version", headers={"x-forwarded-for": "203.0.113.3"}), "global", 2
        )


@pytest.mark.sqlite
def test_registration_limit(make_relay: RelayFactory) -> None:
    server = make_relay(RATE_LIMIT_REGISTER="2/hour", APP_SECRET="registration-gate-secret")
    with server.client() as client:
        gate = {"authorization": "Bearer registration-gate-secret"}
        assert client.post("/users", json={"app_id": "a"}, headers=gate).status_code == 200
        # A wrong secret counts too: guessing APP_SECRET is what the limit is for.
        assert client.post("/users", json={"app_id": "a"}).status_code == 401
        response = client.post("/users", json={"app_id": "a"}, headers=gate)
        assert_limited(response, "register", 2)
        assert int(response.headers["retry-after"]) > 60


@pytest.mark.sqlite
def test_deep_health_probes_the_provider_under_its_own_limit(
    make_relay: RelayFactory, mock: MockProvider
) -> None:
    server = make_relay(RATE_LIMIT_HEALTH="2/minute")
    with server.client() as client:
        for _ in range(2):
            body = client.get("/health", params={"deep": "1", "provider": "openai"}).json()
            assert body["checks"]["upstream"]["ok"] is True
            assert body["checks"]["upstream"]["provider"] == "openai"
        assert mock.last().header("authorization") is None, "a probe never sends a key"
        assert_limited(
            client.get("/health", params={"deep": "1", "provider": "openai"}), "health", 2
        )
        assert client.get("/health").status_code == 200  # the plain check is not limited
        bad = client.get("/health", params={"deep": "1", "provider": "openai-compatible"})
        assert bad.status_code in (400, 429)


@pytest.fixture
def redis_namespace(redis_url: str) -> Iterator[str]:
    namespace = new_namespace()
    yield namespace
    drop_namespace(namespace)


@pytest.mark.redis
def test_the_relay_limit_holds_across_two_instances_sharing_redis(
    redis_url: str, redis_namespace: str, mock: MockProvider, tmp_path: Path
) -> None:
    env = relay_env(
        tmp_path / "shared.db",
        mock.url,
        LOG_LEVEL="info",
        REDIS_URL=redis_url,
        REDIS_NAMESPACE=redis_namespace,
        RATE_LIMIT_RELAY="6/minute",
    )
    first = RelayProcess(tmp_path, env)
    second = RelayProcess(tmp_path, env)
    try:
        with first.client() as a, second.client() as b:
            token = user_with_key(a)
            statuses = [
                relay_call(c, token).status_code
                for c in itertools.islice(itertools.cycle((a, b)), 6)
            ]
            assert statuses == [200] * 6
            assert_limited(relay_call(a, token), "relay", 6)
            assert_limited(relay_call(b, token), "relay", 6)
    finally:
        first.stop()
        second.stop()
    assert any("rate limits: shared through Redis" in line for line in first.lines)

    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k.decode() for k in client.scan_iter(match=f"{redis_namespace}:*")]
        values = [client.get(k) for k in keys]
    finally:
        client.close()
    assert keys, "the counters should live in Redis"
    assert all(k.startswith(f"{redis_namespace}:limits") for k in keys)
    assert not [k for k in keys if token in k]
    assert not [v for v in values if v and token.encode() in v]
    assert any(TokenHasher(TEST_SECRET).hash(token) in k for k in keys)


class Commands:
    """The Redis commands an in-process relay sends, each with the task that sent it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[tuple[asyncio.Task[Any] | None, list[str]]] = []
        real = aioredis.Redis.execute_command

        async def execute_command(client: aioredis.Redis, *args: Any, **options: Any) -> Any:
            self.sent.append((asyncio.current_task(), [str(a) for a in args]))
            return await real(client, *args, **options)

        monkeypatch.setattr(aioredis.Redis, "execute_command", execute_command)

    def of_request(self) -> list[list[str]]:
        """What the task that served the one request sent meanwhile: its round trips (the
        lookups it waits on run as tasks of their own, and are the same for every request)."""
        tasks = {task for task, args in self.sent if any("LIMITER/global/" in a for a in args)}
        assert len(tasks) == 1, self.sent
        return [args for task, args in self.sent if task in tasks]


def on_one_redis(
    make_relay: RelayFactory, redis_url: str, namespace: str, **env: str
) -> RelayServer:
    """A relay whose key store and limits are one Redis."""
    return make_relay(DATABASE_URL=redis_url, REDIS_URL=redis_url, REDIS_NAMESPACE=namespace, **env)


def capped_user(client: httpx.Client) -> str:
    token = user_with_key(client)
    caps = {"caps": [{"period": "day", "requests": 100}]}
    assert client.put("/limits", json=caps, headers=auth(token)).status_code == 200
    return token


@pytest.mark.redis
def test_on_one_redis_a_capped_requests_token_hit_rides_its_reservations_round_trip(
    make_relay: RelayFactory, redis_url: str, redis_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = on_one_redis(make_relay, redis_url, redis_namespace)
    commands = Commands(monkeypatch)
    sent = {}
    with server.client() as client:
        for capped in (False, True):
            token = capped_user(client) if capped else user_with_key(client)
            assert relay_call(client, token).status_code == 200
            time.sleep(1.5)  # the user's first requests' pace: reserved exactly, in the store
            commands.sent.clear()
            assert relay_call(client, token).status_code == 200
            sent[capped] = commands.of_request()
    assert len(sent[True]) == len(sent[False]) == 2  # the per-IP hit, and the per-token one
    counted = [args for args in sent[True] if any("LIMITER/relay/" in a for a in args)]
    assert len(counted) == 1
    assert any(":spend:" in a for a in counted[0])  # ...which reserved the request too


@pytest.mark.redis
def test_on_one_redis_every_capped_request_counts_against_its_tokens_limit(
    make_relay: RelayFactory, redis_url: str, redis_namespace: str, mock: MockProvider
) -> None:
    server = on_one_redis(make_relay, redis_url, redis_namespace, RATE_LIMIT_RELAY="3/minute")
    with server.client() as client:
        token = capped_user(client)
        first = relay_call(client, token)
        assert first.status_code == 200
        assert (first.headers["ratelimit-limit"], first.headers["ratelimit-remaining"]) == (
            "3",
            "2",
        )
        # Refused before its reservation (no key stored for it), and counted all the same.
        no_key = client.post(
            "/relay/anthropic/v1/messages", json={"model": "claude-3-5-haiku"}, headers=auth(token)
        )
        assert no_key.json()["code"] == "no_key"
        assert relay_call(client, token).status_code == 200
        mock.clear()
        assert_limited(relay_call(client, token), "relay", 3)
        assert mock.requests == []
        time.sleep(0.2)  # the settling, off the request path
        limits = client.get("/limits", headers=auth(token)).json()
    assert limits["caps"][0]["spent"] == {"requests": 2}  # the refused one reserved nothing


@pytest.mark.redis
def test_on_one_redis_a_narrow_token_refused_for_its_origin_counts_against_its_limit(
    make_relay: RelayFactory, redis_url: str, redis_namespace: str
) -> None:
    server = on_one_redis(make_relay, redis_url, redis_namespace, RATE_LIMIT_RELAY="3/minute")
    with server.client() as client:
        owner = capped_user(client)
        minted = client.post("/tokens", json={"origins": [ORIGIN]}, headers=auth(owner))
        narrow = minted.json()["token"]
        elsewhere = {**auth(narrow), "origin": "https://elsewhere.example"}
        url = "/relay/openai/v1/chat/completions"
        codes = [client.post(url, json=CHAT, headers=elsewhere).status_code for _ in range(3)]
        assert codes == [403] * 3
        assert_limited(relay_call(client, narrow), "relay", 3)


@pytest.mark.redis
def test_once_refused_a_token_is_refused_at_once_until_its_window_ends(
    make_relay: RelayFactory, redis_url: str, redis_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = on_one_redis(make_relay, redis_url, redis_namespace, RATE_LIMIT_RELAY="2/minute")
    commands = Commands(monkeypatch)
    with server.client() as client:
        for capped in (False, True):
            token = capped_user(client) if capped else user_with_key(client)
            assert [relay_call(client, token).status_code for _ in range(2)] == [200, 200]
            assert_limited(relay_call(client, token), "relay", 2)
            commands.sent.clear()
            again = relay_call(client, token)
            assert_limited(again, "relay", 2)
            assert 55 <= int(again.headers["retry-after"]) <= 60
            # The per-IP hit alone: no per-token hit, no lookup of the key, no reservation.
            assert len(commands.of_request()) == 1, commands.of_request()


@pytest.mark.redis
@pytest.mark.anyio
async def test_a_reservation_counting_a_hit_past_its_limit_reserves_nothing(
    redis_url: str, redis_namespace: str
) -> None:
    store = RedisStore.from_url(redis_url, StoreOptions(namespace=redis_namespace))
    try:
        await store.create_user(User(id="u1", app_id="app", created_at=1), "digest")
        hit = RateHit(f"{redis_namespace}:limits:hit", 60_000, 2)
        day = Charge("day", 5, 8, 2**41)
        answers = [await store.reserve_counting("u1", [day], 1, hit) for _ in range(3)]
        assert [(count, refused) for count, _, refused in answers] == [(1, None), (2, 0), (3, None)]
        assert all(0 < left <= 60_000 for _, left, _ in answers)
        assert await store.spent("u1", ["day"], 1) == {"day": 5}  # the second passed the cap
        with pytest.raises(StoreError):
            await store.reserve_counting("nobody", [day], 1, hit._replace(most=10))
    finally:
        await store.close()


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["closed", "open"])
def test_a_redis_outage_fails_as_configured(
    make_relay: RelayFactory, private_redis: PrivateRedis, mode: str
) -> None:
    server = make_relay(REDIS_URL=private_redis.url, RATE_LIMIT_FAIL=mode, DB_CONNECT_TIMEOUT="0.5")
    with server.client() as client:
        token = user_with_key(client)
        assert relay_call(client, token).status_code == 200
        private_redis.stop()
        response = relay_call(client, token)
        if mode == "closed":
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "rate_limiter_unavailable"
            assert client.post("/users", json={"app_id": "x"}).status_code == 503
        else:
            assert response.status_code == 200, response.text
            assert client.post("/users", json={"app_id": "x"}).status_code == 200
        # The per-IP limit never takes the relay down with Redis.
        assert client.get("/health").status_code == 200
        assert client.get("/keys", headers={"x-relay-token": token}).status_code == 200
        private_redis.start()
        # Redis is known down until its breaker's probe (about once a second) finds it back.
        deadline = time.monotonic() + 5
        while (status := relay_call(client, token).status_code) != 200:
            assert time.monotonic() < deadline, f"still {status} after Redis came back"
            time.sleep(0.1)
