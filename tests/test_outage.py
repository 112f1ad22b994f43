"""The key store's server dies under a running relay, then comes back: 503s, then recovery,
with no restart of the relay."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.mockprovider import MockProvider
from tests.relayprocess import RelayProcess
from tests.relayserver import relay_env
from tests.servers import PrivateStore

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

Server = PrivateStore


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == "store_unavailable"


def wait_until_ok(client: httpx.Client, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError("the relay did not recover")


def test_store_outage_gives_503_and_the_relay_recovers_by_itself(
    server: Server, mock: MockProvider, tmp_path: Path
) -> None:
    env = relay_env(
        tmp_path / "unused.db",
        mock.url,
        DATABASE_URL=server.url,
        DB_CONNECT_TIMEOUT="1",
        DB_POOL_TIMEOUT="1",
    )
    relay = RelayProcess(tmp_path, env)
    try:
        with relay.client() as client:
            token = client.post("/users", json={"app_id": "outage"}).json()["token"]
            headers = {"x-relay-token": token}
            stored = client.post(
                "/keys/openai", json={"key": "test-openai-key-outage"}, headers=headers
            )
            assert stored.status_code == 200

            server.stop()
            started = time.monotonic()
            assert_unavailable(
                client.post("/relay/openai/v1/chat/completions", json=CHAT, headers=headers)
            )
            assert_unavailable(client.post("/users", json={"app_id": "outage"}))
            assert_unavailable(client.get("/keys", headers=headers))
            health = client.get("/health")
            assert health.status_code == 503
            assert health.json()["ok"] is False
            assert health.json()["checks"]["db"]["ok"] is False
            assert time.monotonic() - started < 10, "each failure must come quickly"

            server.start()
            wait_until_ok(client)
            response = client.post("/relay/openai/v1/chat/completions", json=CHAT, headers=headers)
            assert response.status_code == 200, response.text
            assert mock.last().header("authorization") == "Bearer test-openai-key-outage"
            assert client.post("/users", json={"app_id": "after"}).status_code == 200
        assert relay.process.poll() is None, "the relay process must not have restarted"
    finally:
        relay.stop()
    assert not [line for line in relay.lines if "Traceback" in line]
