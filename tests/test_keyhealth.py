"""What the relay learns about a key by using it: refused keys are marked, use is recorded."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.relayserver import register, store_key

pytestmark = pytest.mark.sqlite

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def key_entry(client: httpx.Client, token: str, provider: str) -> dict[str, Any]:
    listed = client.get("/keys", headers={"x-relay-token": token}).json()
    (entry,) = [k for k in listed["keys"] if k["provider"] == provider]
    return entry


def wait_for(client: httpx.Client, token: str, provider: str, field: str, value: object) -> None:
    """Bookkeeping is written off the request path: give it a moment."""
    deadline = time.monotonic() + 3
    while key_entry(client, token, provider)[field] != value:
        assert time.monotonic() < deadline, key_entry(client, token, provider)
        time.sleep(0.05)


@pytest.mark.parametrize(("answer", "status"), [(401, "invalid"), (402, "no_credit")])
def test_a_refusing_provider_marks_the_key(client: httpx.Client, answer: int, status: str) -> None:
    token = register(client)
    store_key(client, token, "openai", "test-openai-key-health-check")
    assert key_entry(client, token, "openai")["status"] == "unverified"
    response = client.post(
        f"/relay/openai/v1/chat/completions?scenario=status&status={answer}",
        json=CHAT,
        headers={"x-relay-token": token},
    )
    assert response.status_code == answer
    wait_for(client, token, "openai", "status", status)
    # A new key starts over.
    store_key(client, token, "openai", "test-openai-key-health-fresh")
    assert key_entry(client, token, "openai")["status"] == "unverified"


def test_other_answers_leave_the_status_alone(client: httpx.Client) -> None:
    token = register(client)
    store_key(client, token, "openai", "test-openai-key-health-other")
    for query in ("scenario=status&status=500", "scenario=ratelimited", "scenario=default"):
        client.post(
            f"/relay/openai/v1/chat/completions?{query}",
            json=CHAT,
            headers={"x-relay-token": token},
        )
    # Once the request's bookkeeping has visibly run, the status must not have moved.
    deadline = time.monotonic() + 3
    while key_entry(client, token, "openai")["last_used_at"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.2)
    assert key_entry(client, token, "openai")["status"] == "unverified"


def test_use_is_recorded(client: httpx.Client) -> None:
    token = register(client)
    store_key(client, token, "anthropic", "test-anthropic-key-health-use")
    entry = key_entry(client, token, "anthropic")
    assert entry["last_used_at"] is None
    before = int(time.time() * 1000)
    client.post(
        "/relay/anthropic/v1/messages", json={"model": "claude-3"}, headers={"x-relay-token": token}
    )
    deadline = time.monotonic() + 3
    while key_entry(client, token, "anthropic")["last_used_at"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert key_entry(client, token, "anthropic")["last_used_at"] >= before - 1000
