"""`POST /keys/{p}/rotate` and `POST /keys/{p}?verify=true`: shape, then the provider's own
word, then an atomic replace; the old key untouched on any failure."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from relay.providers.table import PROVIDERS
from tests.conftest import RelayFactory
from tests.mockprovider import MockProvider
from tests.relayserver import RelayServer, register, store_key

pytestmark = pytest.mark.sqlite

OLD = "sk-oldkey-" + "a" * 24
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def openai_key(tag: str) -> str:
    return f"sk-{tag}-" + "b" * 24


@pytest.fixture
def relay_with_key(make_relay: RelayFactory) -> tuple[RelayServer, str]:
    # Long beside a key check on a loaded machine, short beside `mockslow`'s 5 s.
    server = make_relay(RELAY_UPSTREAM_TIMEOUT="2")
    with server.client() as client:
        token = register(client)
        store_key(client, token, "openai", OLD)
    return server, token


def entry(client: httpx.Client, token: str) -> dict[str, Any]:
    (key,) = client.get("/keys", headers={"x-relay-token": token}).json()["keys"]
    return key  # type: ignore[no-any-return]


def key_in_use(client: httpx.Client, mock: MockProvider, token: str) -> str:
    response = client.post(
        "/relay/openai/v1/chat/completions", json=CHAT, headers={"x-relay-token": token}
    )
    assert response.status_code == 200
    return (mock.last().header("authorization") or "").removeprefix("Bearer ")


def rotate(client: httpx.Client, token: str, key: str) -> httpx.Response:
    return client.post("/keys/openai/rotate", json={"key": key}, headers={"x-relay-token": token})


def test_a_good_key_replaces_the_old_one(
    relay_with_key: tuple[RelayServer, str], mock: MockProvider
) -> None:
    server, token = relay_with_key
    new = openai_key("fresh")
    with server.client() as client:
        before = int(time.time() * 1000)
        response = rotate(client, token, new)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "ok": True,
            "provider": "openai",
            "rotated": True,
            "status": "ok",
        }
        assert mock.last().path == "/v1/models"
        assert mock.last().header("authorization") == f"Bearer {new}"
        info = entry(client, token)
        assert info["status"] == "ok"
        assert info["verified_at"] >= before - 1000
        assert info["hint"] == new[:3] + "..." + new[-4:]
        assert key_in_use(client, mock, token) == new


@pytest.mark.parametrize(
    ("tag", "key_status", "detail"),
    [
        ("mock401", "invalid", "401"),
        ("mock403", "invalid", "403"),
        ("mock402", "no_credit", "402"),
        ("mockquota", "no_credit", ""),
        ("mock429", "rate_limited", "429"),
    ],
)
def test_a_refused_key_changes_nothing(
    relay_with_key: tuple[RelayServer, str],
    mock: MockProvider,
    tag: str,
    key_status: str,
    detail: str,
) -> None:
    server, token = relay_with_key
    with server.client() as client:
        before = entry(client, token)
        response = rotate(client, token, openai_key(tag))
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["error"].startswith("New key was rejected by OpenAI (")
        assert body["error"].endswith("). Your existing key was not changed.")
        assert detail in body["error"]
        assert body["key_status"] == key_status
        assert openai_key(tag) not in response.text
        assert entry(client, token) == before
        assert key_in_use(client, mock, token) == OLD


@pytest.mark.parametrize("tag", ["mock500", "mockslow"])
def test_an_inconclusive_check_stores_the_key_unverified(
    relay_with_key: tuple[RelayServer, str], mock: MockProvider, tag: str
) -> None:
    server, token = relay_with_key
    with server.client() as client:
        started = time.monotonic()
        response = rotate(client, token, openai_key(tag))
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "unverified"
        assert time.monotonic() - started < 4  # the check gave up; it did not wait 5 s
        assert entry(client, token)["status"] == "unverified"
        assert key_in_use(client, mock, token) == openai_key(tag)


def test_a_key_of_the_wrong_shape_is_refused_with_a_hint(
    relay_with_key: tuple[RelayServer, str], mock: MockProvider
) -> None:
    server, token = relay_with_key
    anthropic_key = "sk-ant-api00-" + "c" * 30
    with server.client() as client:
        mock.clear()
        response = rotate(client, token, anthropic_key)
        assert response.status_code == 400
        body = response.json()
        assert body["code"] == "invalid_key_format"
        assert "anthropic" in body["hint"].lower()
        assert anthropic_key not in response.text
        assert mock.requests == []  # the provider was never asked
        assert key_in_use(client, mock, token) == OLD


def test_first_save_with_verify(client: httpx.Client, mock: MockProvider) -> None:
    token = register(client)
    headers = {"x-relay-token": token}
    refused = client.post(
        "/keys/openai?verify=true", json={"key": openai_key("mock401")}, headers=headers
    )
    assert refused.status_code == 422
    assert client.get("/keys", headers=headers).json()["providers"] == []
    saved = client.post(
        "/keys/openai?verify=true", json={"key": openai_key("first")}, headers=headers
    )
    assert saved.status_code == 200
    assert saved.json() == {"ok": True, "provider": "openai", "status": "ok"}
    # Without ?verify nothing is asked and nothing is refused.
    mock.clear()
    plain = client.post("/keys/openai", json={"key": openai_key("mock401")}, headers=headers)
    assert plain.json() == {"ok": True, "provider": "openai"}
    assert mock.requests == []


def test_rotation_heals_a_key_the_provider_refused(
    relay_with_key: tuple[RelayServer, str], mock: MockProvider
) -> None:
    server, token = relay_with_key
    with server.client() as client:
        client.post(
            "/relay/openai/v1/chat/completions?scenario=status&status=401",
            json=CHAT,
            headers={"x-relay-token": token},
        )
        deadline = time.monotonic() + 3
        while entry(client, token)["status"] != "invalid":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert rotate(client, token, openai_key("healed")).status_code == 200
        assert entry(client, token)["status"] == "ok"
        first = rotate(client, token, openai_key("again"))
        assert first.json()["rotated"] is True


def test_rotate_without_an_earlier_key(client: httpx.Client) -> None:
    token = register(client)
    response = client.post(
        "/keys/anthropic/rotate",
        json={"key": "sk-ant-api03-" + "d" * 40},
        headers={"x-relay-token": token},
    )
    assert response.status_code == 200, response.text
    assert response.json()["rotated"] is False


# ---- key shapes: a hint, not a gate ---------------------------------------------------------


def save(client: httpx.Client, token: str, provider: str, key: str, how: str) -> httpx.Response:
    """Store `key` with a check: by rotation, or a first save with `?verify=true`."""
    path = f"/keys/{provider}/rotate" if how == "rotate" else f"/keys/{provider}?verify=true"
    return client.post(path, json={"key": key}, headers={"x-relay-token": token})


def stored(client: httpx.Client, token: str) -> list[str]:
    listed = client.get("/keys", headers={"x-relay-token": token}).json()
    return listed["providers"]  # type: ignore[no-any-return]


HOW = ["rotate", "verify"]


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize(
    ("provider", "key", "owner"),
    [
        ("openai", "sk-ant-api03-" + "c" * 40, "anthropic"),
        ("anthropic", "sk-or-v1-" + "c" * 40, "openrouter"),
        ("mistral", "gsk_" + "c" * 40, "groq"),
        ("deepgram", "AIza" + "c" * 35, "google"),
        ("elevenlabs", "hf_" + "c" * 30, "huggingface"),
        ("google", "sk_" + "c" * 48, "elevenlabs"),
        ("groq", "sk-proj-" + "c" * 40, "openai"),
    ],
)
def test_another_providers_prefix_is_refused_before_asking(
    client: httpx.Client, mock: MockProvider, provider: str, key: str, owner: str, how: str
) -> None:
    token = register(client)
    mock.clear()
    response = save(client, token, provider, key, how)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_key_format"
    assert f"POST /keys/{owner}" in body["hint"]
    assert key not in response.text
    assert mock.requests == []  # the provider was never asked
    assert stored(client, token) == []


# Keys of no shape the relay knows for the provider, and no other provider's prefix (not hex
# either: the mock's letter markers decide their check's answer).
UNFAMILIAR = {
    "openai": "org-key-{}-" + "a" * 24,
    "anthropic": "ant-admin-{}-" + "a" * 24,
    "google": "ya29.{}-" + "a" * 24,
    "mistral": "mistral-{}-" + "a" * 24,
    "elevenlabs": "xi-{}-" + "a" * 24,  # neither sk_... nor 32 hex digits
    "deepgram": "dg-{}-" + "a" * 24,
}


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("provider", sorted(UNFAMILIAR))
def test_an_unfamiliar_key_the_provider_accepts_is_stored_with_a_hint(
    client: httpx.Client, mock: MockProvider, provider: str, how: str
) -> None:
    token = register(client)
    key = UNFAMILIAR[provider].format("fresh")
    mock.clear()
    response = save(client, token, provider, key, how)
    assert response.status_code == 200, response.text
    hint = PROVIDERS[provider].key_shape.expected
    expected = {"ok": True, "provider": provider, "status": "ok", "hint": hint}
    if how == "rotate":
        expected["rotated"] = False
    assert response.json() == expected
    (probe,) = mock.requests
    assert probe.method == "GET"
    assert key in " ".join(value for _, value in probe.headers)
    assert stored(client, token) == [provider]


@pytest.mark.parametrize(
    ("provider", "marker", "key_status"),
    [
        ("openai", "mock401", "invalid"),
        ("anthropic", "mockquota", "no_credit"),
        ("google", "mock403", "invalid"),
        ("mistral", "mock429", "rate_limited"),
        ("elevenlabs", "mock401", "invalid"),
        ("deepgram", "mock402", "no_credit"),
    ],
)
def test_an_unfamiliar_key_the_provider_refuses_is_refused_with_the_hint(
    relay_with_key: tuple[RelayServer, str],
    mock: MockProvider,
    provider: str,
    marker: str,
    key_status: str,
) -> None:
    server, token = relay_with_key
    key = UNFAMILIAR[provider].format(marker)
    with server.client() as client:
        store_key(client, token, provider, OLD)
        before = client.get("/keys", headers={"x-relay-token": token}).json()
        response = save(client, token, provider, key, "rotate")
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["code"] == "key_rejected"
        assert body["key_status"] == key_status
        assert body["hint"] == PROVIDERS[provider].key_shape.expected
        assert key not in response.text
        assert client.get("/keys", headers={"x-relay-token": token}).json() == before


@pytest.mark.parametrize("provider", ["mistral", "huggingface"])
def test_an_unfamiliar_key_that_cannot_be_checked_is_stored_unverified_with_the_hint(
    client: httpx.Client, mock: MockProvider, provider: str
) -> None:
    """The provider failed (Mistral: 500) or offers no check (Hugging Face): inconclusive, so
    the key is stored, and the hint still says what keys usually look like."""
    token = register(client)
    key = "custom-mock500-" + "a" * 24
    response = save(client, token, provider, key, "verify")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "ok": True,
        "provider": provider,
        "status": "unverified",
        "hint": PROVIDERS[provider].key_shape.expected,
    }
    assert stored(client, token) == [provider]


def test_a_key_of_the_known_shape_gets_no_hint(client: httpx.Client) -> None:
    token = register(client)
    for provider, key in (("openai", openai_key("shaped")), ("deepgram", "ab12" * 10)):
        response = save(client, token, provider, key, "verify")
        assert response.status_code == 200, response.text
        assert "hint" not in response.json()
