"""The orchestrators' probes and what `/health` shows whom.

`/livez` answers while the key store or Redis is frozen or stopped (a real `byok-relay serve`
over a private Postgres or Redis, as in `test_store_outage`), `/readyz` answers 503 then and
while draining, neither waits on a rate limit, and `/health` keeps its keys but shows the
configuration to the operator only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import RelayFactory
from tests.mockprovider import MockProvider
from tests.relayprocess import RelayProcess
from tests.relayserver import relay_env
from tests.servers import PrivateRedis, PrivateStore

AT_ONCE = 0.5  # seconds: an answer that waited on nothing
DEADLINE = 2.0  # DB_CONNECT_TIMEOUT of the relay processes below
OPERATOR = "operator-secret-0123456789"
ORIGIN = "https://app.example"

Server = PrivateStore


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def assert_ok(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.json() == {"ok": True}
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"


def assert_not_ready(response: httpx.Response, code: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "1"
    body = response.json()
    assert set(body) == {"error", "code"}
    assert body["code"] == code


def wait_for_status(client: httpx.Client, path: str, status: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (got := client.get(path).status_code) != status:
        assert time.monotonic() < deadline, f"{path} still {got}, not {status}"
        time.sleep(0.1)


# -- Served in process: limits, methods, draining, /health's views --------------------------------


@pytest.mark.sqlite
def test_probes_answer_ok_and_count_against_no_limit(make_relay: RelayFactory) -> None:
    server = make_relay(RATE_LIMIT_GLOBAL="3/minute")
    with server.client() as client:
        for _ in range(10):
            for path in ("/livez", "/readyz"):
                response = client.get(path)
                assert_ok(response)
                assert "ratelimit-limit" not in response.headers
        assert client.get("/version").headers["ratelimit-remaining"] == "2"
        head = client.head("/livez")
        assert (head.status_code, head.content) == (200, b"")
        refused = client.post("/readyz")
        assert refused.status_code == 405
        assert refused.json()["code"] == "method_not_allowed"


@pytest.mark.sqlite
def test_readyz_fails_while_draining_and_livez_does_not(make_relay: RelayFactory) -> None:
    server = make_relay()
    with server.client() as client:
        assert_ok(client.get("/readyz"))
        server.loop.call_soon_threadsafe(server.services.drain.begin)
        time.sleep(0.1)
        assert_not_ready(client.get("/readyz"), "relay_draining")
        assert_ok(client.get("/livez"))


@pytest.mark.sqlite
def test_health_shows_the_configuration_to_the_operator_only(make_relay: RelayFactory) -> None:
    server = make_relay(APP_SECRET=OPERATOR, ALLOWED_ORIGINS=ORIGIN, RELAY_ENV="production")
    with server.client() as client:
        anonymous = client.get("/health")
        assert anonymous.status_code == 200
        body = anonymous.json()
        keys = {"ok", "draining", "version", "uptime", "timestamp", "providers", "checks"}
        assert set(body) == keys
        assert body["checks"]["config"] == {"ok": True}
        assert body["checks"]["db"] == {"ok": True}
        assert ORIGIN not in anonymous.text
        assert "production" not in anonymous.text

        operator = client.get("/health", headers={"authorization": f"Bearer {OPERATOR}"})
        assert operator.status_code == 200
        assert operator.json()["checks"]["config"] == {
            "ok": True,
            "app_secret": True,
            "allowed_origins": [ORIGIN],
            "allowed_models": False,
            "environment": "production",
        }
        assert OPERATOR not in operator.text

        wrong = client.get("/health", headers={"authorization": "Bearer not-the-secret"})
        assert wrong.status_code == 401
        assert wrong.json()["code"] == "app_secret_required"


@pytest.mark.sqlite
def test_without_app_secret_nobody_sees_the_configuration(make_relay: RelayFactory) -> None:
    server = make_relay(ALLOWED_ORIGINS=ORIGIN)
    with server.client() as client:
        response = client.get("/health", headers={"authorization": "Bearer anything"})
    assert response.status_code == 200
    assert response.json()["checks"]["config"] == {"ok": True}
    assert ORIGIN not in response.text


# -- A real `byok-relay serve` over a store that freezes, then stops -------------------------------


def test_livez_serves_while_the_store_is_frozen_or_stopped_and_readyz_fails(
    server: Server, mock: MockProvider, tmp_path: Path
) -> None:
    on_redis = isinstance(server, PrivateRedis)
    env = relay_env(
        tmp_path / "unused.db",
        mock.url,
        DATABASE_URL=server.url,
        DB_CONNECT_TIMEOUT=str(DEADLINE),
        RATE_LIMIT_GLOBAL="1000/minute",
        # Redis as the key store and the limits' storage: a probe must wait on neither.
        **({"REDIS_URL": server.url} if on_redis else {}),
    )
    relay = RelayProcess(tmp_path, env)
    try:
        with relay.client(timeout=30) as client:
            assert_ok(client.get("/livez"))
            assert_ok(client.get("/readyz"))

            server.freeze()
            try:
                for _ in range(5):
                    response, took = timed(lambda: client.get("/livez"))
                    assert_ok(response)
                    assert took < AT_ONCE, f"/livez took {took:.2f} s on a frozen store"
                wait_for_status(client, "/readyz", 503, timeout=DEADLINE + 3)
                response, took = timed(lambda: client.get("/readyz"))
                assert_not_ready(response, "store_unavailable")
                assert took < DEADLINE + 0.5
                assert_ok(client.get("/livez"))
            finally:
                server.thaw()
            wait_for_status(client, "/readyz", 200, timeout=10)

            server.stop()
            wait_for_status(client, "/readyz", 503, timeout=DEADLINE + 3)
            for _ in range(5):
                response, took = timed(lambda: client.get("/livez"))
                assert_ok(response)
                assert took < AT_ONCE, f"/livez took {took:.2f} s on a stopped store"
            assert_not_ready(client.get("/readyz"), "store_unavailable")
        assert relay.process.poll() is None, "the relay process must not have restarted"
    finally:
        relay.stop()
    assert not [line for line in relay.lines if "Traceback" in line]


@pytest.mark.redis
def test_probes_never_wait_on_a_frozen_rate_limit_redis(mock: MockProvider, tmp_path: Path) -> None:
    """SQLite holds the keys, a frozen Redis the limits: both probes answer 200 at once."""
    limits = PrivateRedis()
    try:
        limits.start()
        env = relay_env(
            tmp_path / "relay.db",
            mock.url,
            REDIS_URL=limits.url,
            DB_CONNECT_TIMEOUT=str(DEADLINE),
            RATE_LIMIT_GLOBAL="1000/minute",
        )
        relay = RelayProcess(tmp_path, env)
        try:
            with relay.client(timeout=30) as client:
                assert_ok(client.get("/readyz"))
                limits.freeze()
                for path in ("/livez", "/readyz", "/livez", "/readyz"):
                    response, took = timed(lambda: client.get(path))  # noqa: B023
                    assert_ok(response)
                    assert took < AT_ONCE, f"{path} took {took:.2f} s on a frozen Redis"
                limits.thaw()
        finally:
            relay.stop()
    finally:
        limits.remove()
