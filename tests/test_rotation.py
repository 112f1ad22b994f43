"""`byok-relay rotate-keys`: every stored key moves to the newest secret; nothing else changes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.mockprovider import MockProvider
from tests.relayprocess import run_cli
from tests.relayserver import TEST_SECRET, RelayServer, register, relay_env, store_key

pytestmark = pytest.mark.sqlite

NEW_SECRET = "rotated-encryption-secret-fedcba9876543210"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
KEYS = {
    "openai": "test-openai-key-rotation",
    "anthropic": "test-anthropic-key-rotation",
    "google": "test-google-key-rotation",
}


def records(database: Path) -> dict[tuple[str, str], bytes]:
    with sqlite3.connect(database) as db:
        return {
            (u, p): bytes(r) for u, p, r in db.execute("SELECT user_id, provider, record FROM keys")
        }


def rotate(tmp_path: Path, database: Path, *args: str) -> tuple[int, str, str]:
    result = run_cli(
        tmp_path,
        "rotate-keys",
        *args,
        DATABASE_URL=f"sqlite:///{database}",
        ENCRYPTION_SECRET=f"{NEW_SECRET},{TEST_SECRET}",
        TOKEN_HMAC_SECRET=TEST_SECRET,
    )
    return result.returncode, result.stdout.strip(), result.stderr


def test_rotation_moves_every_key_to_the_newest_secret(tmp_path: Path, mock: MockProvider) -> None:
    database = tmp_path / "relay.db"
    old = RelayServer.from_env(relay_env(database, mock.url))
    try:
        with old.client() as client:
            token = register(client)
            for provider, key in KEYS.items():
                store_key(client, token, provider, key)
    finally:
        old.stop()
    before = records(database)

    code, out, _ = rotate(tmp_path, database, "--dry-run")
    assert (code, out) == (
        0,
        "dry run: keys: 3 found, 3 would be re-encrypted, 0 already "
        "current, 0 changed meanwhile, 0 unreadable",
    )
    assert records(database) == before

    code, out, _ = rotate(tmp_path, database)
    assert (code, out) == (
        0,
        "keys: 3 found, 3 re-encrypted, 0 already current, 0 changed meanwhile, 0 unreadable",
    )
    after = records(database)
    assert after.keys() == before.keys()
    assert all(after[k] != before[k] for k in before)

    code, out, _ = rotate(tmp_path, database)
    assert out.startswith("keys: 3 found, 0 re-encrypted, 3 already current")

    # The old secret can go: the same token still works, and the provider gets the same keys.
    new = RelayServer.from_env(
        relay_env(database, mock.url, ENCRYPTION_SECRET=NEW_SECRET, TOKEN_HMAC_SECRET=TEST_SECRET)
    )
    try:
        with new.client() as client:
            for provider, path in (
                ("openai", "/v1/chat/completions"),
                ("anthropic", "/v1/messages"),
            ):
                response = client.post(
                    f"/relay/{provider}{path}", json=CHAT, headers={"x-relay-token": token}
                )
                assert response.status_code == 200, response.text
            assert mock.last().header("x-api-key") == KEYS["anthropic"]
            assert mock.requests[-2].header("authorization") == f"Bearer {KEYS['openai']}"
    finally:
        new.stop()


def test_unreadable_records_are_reported_and_the_rest_rotated(
    tmp_path: Path, mock: MockProvider
) -> None:
    database = tmp_path / "relay.db"
    old = RelayServer.from_env(relay_env(database, mock.url))
    try:
        with old.client() as client:
            token = register(client)
            store_key(client, token, "openai", KEYS["openai"])
            store_key(client, token, "mistral", "test-mistral-key-rotation")
            assert client.get("/keys", headers={"x-relay-token": token}).status_code == 200
    finally:
        old.stop()
    with sqlite3.connect(database) as db:
        db.execute("UPDATE keys SET record = ? WHERE provider = 'mistral'", (b"\x01" + b"0" * 40,))

    code, out, err = rotate(tmp_path, database)
    assert code == 1
    assert out == (
        "keys: 2 found, 1 re-encrypted, 0 already current, 0 changed meanwhile, 1 unreadable"
    )
    assert "provider mistral" in err
    assert KEYS["openai"] not in out + err
