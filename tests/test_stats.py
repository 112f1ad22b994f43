"""Usage records: one per relayed request, with the token counts the provider reported, read
as the answer passes; `/stats` adds them up; a deleted user leaves none behind."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import RelayFactory
from tests.mockprovider import ANTHROPIC_USAGE, GEMINI_USAGE, OPENAI_USAGE
from tests.relayserver import RelayServer, register, store_key

pytestmark = pytest.mark.sqlite

APP_SECRET = "stats-operator-secret"


@pytest.fixture
def server(make_relay: RelayFactory) -> RelayServer:
    return make_relay(APP_SECRET=APP_SECRET)


def user(client: httpx.Client, app_id: str) -> str:
    token = register(client, app_id, authorization=f"Bearer {APP_SECRET}")
    for provider in ("openai", "anthropic", "google"):
        store_key(client, token, provider, f"test-{provider}-key-stats-check")
    return token


def relay_all(client: httpx.Client, token: str) -> None:
    headers = {"x-relay-token": token}
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    assert (
        client.post("/relay/openai/v1/chat/completions", json=chat, headers=headers).status_code
        == 200
    )
    with client.stream(
        "POST",
        "/relay/anthropic/v1/messages",
        json={"model": "claude-3-5-haiku", "stream": True, "max_tokens": 9},
        headers=headers,
    ) as response:
        response.read()
    with client.stream(
        "POST",
        "/relay",
        headers=headers,
        json={"model": "gemini-1.5-flash", "stream": True, "contents": []},
    ) as r:
        r.read()
    assert (
        client.post(
            "/relay/openai/v1/chat/completions?scenario=ratelimited", json=chat, headers=headers
        ).status_code
        == 429
    )


def test_stats_add_up_what_providers_reported(server: RelayServer) -> None:
    with server.client() as client:
        token = user(client, "stats-app")
        relay_all(client, token)
        stats = client.get("/stats", headers={"x-relay-token": token}).json()
    assert stats["total"] == 4
    assert stats["last_7d"] == stats["last_30d"] == 4
    assert stats["error_count"] == 1
    assert stats["error_rate"] == 0.25
    assert stats["providers"] == {
        "openai": {"total": 2, "errors": 1},
        "anthropic": {"total": 1, "errors": 0},
        "google": {"total": 1, "errors": 0},
    }
    # OpenAI JSON; Anthropic SSE, input and cache in message_start, output in message_delta;
    # Gemini SSE usageMetadata. Each kind as the provider reported it.
    openai, anthropic, gemini = OPENAI_USAGE, ANTHROPIC_USAGE, GEMINI_USAGE
    assert stats["tokens"] == {
        "input": openai["prompt_tokens"] + anthropic["input_tokens"] + gemini["promptTokenCount"],
        "output": openai["completion_tokens"]
        + anthropic["output_tokens"]
        + gemini["candidatesTokenCount"],
        "cache_read": openai["prompt_tokens_details"]["cached_tokens"]
        + anthropic["cache_read_input_tokens"]
        + gemini["cachedContentTokenCount"],
        "cache_write": anthropic["cache_creation_input_tokens"],
        "reasoning": openai["completion_tokens_details"]["reasoning_tokens"]
        + gemini["thoughtsTokenCount"],
    }
    assert all(n > 0 for n in stats["tokens"].values()), "the mock reports every kind"
    models = {m["model"]: m["total"] for m in stats["top_models"]}
    assert models["gemini-1.5-flash"] == 1
    assert models["gpt-4o-mini"] >= 1
    assert stats["last_request"] is not None


def test_app_stats_are_for_the_operator(server: RelayServer, make_relay: RelayFactory) -> None:
    with server.client() as client:
        first, second = user(client, "operator-app"), user(client, "operator-app")
        relay_all(client, first)
        relay_all(client, second)
        operator = {"authorization": f"Bearer {APP_SECRET}"}
        stats = client.get("/stats/operator-app", headers=operator).json()
        assert (stats["total"], stats["user_count"]) == (8, 2)
        assert client.get("/stats/operator-app").status_code == 401
        assert (
            client.get("/stats/operator-app", headers={"authorization": "Bearer wrong"}).status_code
            == 401
        )
        # Deleting a user erases every record about them.
        assert client.delete("/users", headers={"x-relay-token": first}).status_code == 200
        after = client.get("/stats/operator-app", headers=operator).json()
        assert (after["total"], after["user_count"]) == (4, 1)
        for impossible in ("%00", "x" * 129, "tab%09app"):  # no app is registered so
            odd = client.get(f"/stats/{impossible}", headers=operator)
            assert (odd.status_code, odd.json()["code"]) == (400, "invalid_app_id")
    open_relay = make_relay()
    with open_relay.client() as client:
        refused = client.get("/stats/any-app")
    assert refused.status_code == 503
    assert refused.json()["code"] == "app_secret_not_configured"


def test_failed_and_abandoned_requests_are_recorded(
    make_relay: RelayFactory,
) -> None:
    server = make_relay(RELAY_UPSTREAM_TIMEOUT="0.3")
    with server.client() as client:
        token = register(client)
        store_key(client, token, "openai", "test-openai-key-stats-fails")
        response = client.post(
            "/relay/openai/v1/chat/completions?scenario=slow_headers&delay_ms=2000",
            json={"model": "gpt-4o"},
            headers={"x-relay-token": token},
        )
        assert response.status_code == 504
        stats = client.get("/stats", headers={"x-relay-token": token}).json()
    assert stats["total"] == 1
    assert stats["error_count"] == 1
