"""Narrow tokens through a real relay: minted, limited, listed, revoked, never broader.

The store's side (cascades, limits, races) is the contract's (`test_store_contract.py`); two
instances are `test_instances.py`'s and `test_endings.py`'s.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.conftest import RelayFactory
from tests.mockprovider import MockProvider
from tests.relayserver import register, store_key

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
CLAUDE = {
    "model": "claude-3-5-haiku-latest",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}
ORIGIN = "https://app.example"


def auth(token: str, **more: str) -> dict[str, str]:
    return {"x-relay-token": token, **more}


def mint(client: httpx.Client, token: str, **limits: Any) -> dict[str, Any]:
    response = client.post("/tokens", json=limits, headers=auth(token))
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


@pytest.fixture
def account(client: httpx.Client) -> str:
    """A new account with an OpenAI and an Anthropic key."""
    token = register(client)
    store_key(client, token, "openai", "test-openai-key-narrow-0001")
    store_key(client, token, "anthropic", "test-anthropic-key-narrow-0001")
    return token


def chat(client: httpx.Client, token: str, body: Any = CHAT, **headers: str) -> httpx.Response:
    return client.post(
        "/relay/openai/v1/chat/completions", json=body, headers=auth(token, **headers)
    )


def test_a_narrow_token_relays_with_the_accounts_key_and_is_listed_without_itself(
    client: httpx.Client, account: str, mock: MockProvider
) -> None:
    minted = mint(client, account, name="my page", providers=["openai"], expires_in=600)
    assert minted["token"] != account
    assert minted["providers"] == ["openai"]
    assert (minted["models"], minted["origins"], minted["parent_id"]) == (None, None, None)
    assert 0 < minted["expires_at"] - time.time() * 1000 <= 600_000
    response = chat(client, minted["token"])
    assert response.status_code == 200, response.text
    assert mock.last().header("authorization") == "Bearer test-openai-key-narrow-0001"
    assert mock.last().header("x-relay-token") is None

    listed = client.get("/tokens", headers=auth(account)).json()["tokens"]
    assert [t["id"] for t in listed] == [minted["id"]]
    assert "token" not in listed[0]
    assert minted["token"] not in client.get("/tokens", headers=auth(account)).text
    assert listed[0]["name"] == "my page"
    assert listed[0]["last_used_at"] is not None  # it was just used (written off the path)


def test_a_request_outside_the_tokens_provider_is_refused_naming_the_limit(
    client: httpx.Client, account: str, mock: MockProvider
) -> None:
    narrow = mint(client, account, providers=["openai"])["token"]
    mock.clear()
    body = refused(
        client.post("/relay/anthropic/v1/messages", json=CLAUDE, headers=auth(narrow)),
        403,
        "token_limit",
    )
    assert body["limit"] == "providers"
    assert "anthropic" in body["error"]
    by_model = client.post(
        "/relay", json={**CLAUDE, "model": "anthropic/claude-3-5-haiku"}, headers=auth(narrow)
    )
    assert refused(by_model, 403, "token_limit")["limit"] == "providers"
    assert mock.requests == []


def test_a_model_outside_the_tokens_patterns_is_refused_on_both_relay_routes(
    client: httpx.Client, account: str, mock: MockProvider
) -> None:
    narrow = mint(client, account, models=["gpt-4o-mini*", "anthropic/claude-3-5-haiku*"])["token"]
    assert chat(client, narrow).status_code == 200
    assert chat(client, narrow, {**CHAT, "stream": True}).status_code == 200
    routed = client.post("/relay", json=CLAUDE, headers=auth(narrow))
    assert routed.status_code == 200, routed.text
    mock.clear()
    for response in (
        chat(client, narrow, {**CHAT, "model": "gpt-4o"}),
        client.post("/relay", json={**CHAT, "model": "gpt-4o"}, headers=auth(narrow)),
        client.post(
            "/relay/v1/chat/completions", json={**CHAT, "model": "o3"}, headers=auth(narrow)
        ),
        chat(client, narrow, {"messages": []}),  # no model to check
    ):
        assert refused(response, 403, "token_limit")["limit"] == "models"
    assert mock.requests == []


def test_an_origin_limited_token_works_only_from_its_origins(
    client: httpx.Client, account: str
) -> None:
    narrow = mint(client, account, origins=[ORIGIN.upper() + "/"])
    assert narrow["origins"] == [ORIGIN]
    token = narrow["token"]
    assert chat(client, token, origin=ORIGIN).status_code == 200
    for headers in ({}, {"origin": "https://evil.example"}, {"origin": "null"}):
        body = refused(chat(client, token, **headers), 403, "token_limit")
        assert body["limit"] == "origins"
        assert ORIGIN in body["error"]


def test_an_expired_narrow_token_is_refused_naming_its_expiry(
    client: httpx.Client, account: str
) -> None:
    expires_at = int(time.time() * 1000) + 2000  # minted and used once well inside it
    token = mint(client, account, expires_at=expires_at)["token"]
    assert chat(client, token).status_code == 200
    time.sleep(max(0.0, expires_at / 1000 - time.time()) + 0.05)
    body = refused(chat(client, token), 401, "invalid_token")
    assert (body["error"], body["limit"]) == ("Invalid or expired token", "expires_at")
    assert client.get("/tokens", headers=auth(account)).json()["tokens"] == []  # not listed
    assert chat(client, account).status_code == 200  # the account's own goes on


def test_a_token_mints_narrower_ones_inheriting_what_it_leaves_out(
    client: httpx.Client, account: str
) -> None:
    parent = mint(
        client,
        account,
        providers=["openai", "anthropic"],
        models=["gpt-*"],
        origins=[ORIGIN],
        expires_in=3600,
    )
    child = mint(client, parent["token"], providers=["openai"], models=["gpt-4o-mini"])
    assert child["parent_id"] == parent["id"]
    assert (child["providers"], child["models"]) == (["openai"], ["gpt-4o-mini"])
    assert (child["origins"], child["expires_at"]) == (parent["origins"], parent["expires_at"])
    assert chat(client, child["token"], origin=ORIGIN).status_code == 200
    # The parent lists what it minted; the account lists both.
    assert [
        t["id"] for t in client.get("/tokens", headers=auth(parent["token"])).json()["tokens"]
    ] == [child["id"]]
    ids = [t["id"] for t in client.get("/tokens", headers=auth(account)).json()["tokens"]]
    assert ids == [parent["id"], child["id"]]


@pytest.mark.parametrize(
    ("broader", "limit"),
    [
        ({"providers": ["openai", "mistral"]}, "providers"),
        ({"models": ["gpt-*", "o3"]}, "models"),
        ({"models": ["*"]}, "models"),
        ({"models": ["gpt*"]}, "models"),  # matches "gpt4", which "gpt-*" does not
        ({"models": ["*-mini"]}, "models"),
        ({"origins": ["https://other.example"]}, "origins"),
        ({"expires_in": 7200}, "expires_at"),
    ],
)
def test_a_token_cannot_mint_a_broader_one(
    client: httpx.Client, account: str, broader: dict[str, Any], limit: str
) -> None:
    parent = mint(
        client, account, providers=["openai"], models=["gpt-*"], origins=[ORIGIN], expires_in=3600
    )["token"]
    body = refused(client.post("/tokens", json=broader, headers=auth(parent)), 403, "token_limit")
    assert body["limit"] == limit
    assert client.get("/tokens", headers=auth(parent)).json()["tokens"] == []


@pytest.mark.parametrize(
    "asked",
    [
        {"budget": 5},  # not a limit this relay has: never silently ignored
        {"provider": "openai"},  # a typo must not mint an unlimited token
        {"providers": ["nope"]},
        {"providers": "openai"},
        {"models": [""]},
        {"models": ["x"] * 65},
        {"origins": ["app.example"]},
        {"origins": ["https://app.example/path"]},
        {"origins": ["https://app.example:99999"]},
        {"expires_in": 0},
        {"expires_at": 1},
        {"expires_at": 2**63},  # past any store's 64 bits: refused, not the store's error
        {"expires_at": 4_000_000_000_000, "expires_in": 60},
        {"name": "x" * 129},
        {"name": "a\u0000b"},  # no store holds it: refused, not a 401 or 500 from the store
        {"name": "tab\there"},
        [],
        '{"name": "\\ud800"}',  # a lone surrogate, which JSON's escapes can spell
        '{"budget": [{"period": "day", "requests": 1, "app": "\\udfff"}]}',
    ],
)
def test_malformed_limits_are_refused(client: httpx.Client, account: str, asked: Any) -> None:
    sent = {"content": asked} if isinstance(asked, str) else {"json": asked}
    refused(
        client.post(
            "/tokens", **sent, headers={**auth(account), "content-type": "application/json"}
        ),
        400,
        "invalid_limits" if isinstance(asked, dict) else "invalid_json",
    )
    assert client.get("/tokens", headers=auth(account)).json()["tokens"] == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/keys", None),
        ("POST", "/keys/openai", {"key": "test-openai-key-takeover-01"}),
        ("POST", "/keys/openai/rotate", {"key": "test-openai-key-takeover-01"}),
        ("DELETE", "/keys/openai", None),
        ("DELETE", "/users", None),
        ("GET", "/stats", None),
        ("GET", "/usage", None),
        ("GET", "/usage.csv", None),
    ],
)
def test_a_narrow_token_cannot_manage_the_account(
    client: httpx.Client, account: str, mock: MockProvider, method: str, path: str, body: Any
) -> None:
    narrow = mint(client, account)["token"]  # no limits at all: still not the account's own
    response = client.request(method, path, json=body, headers=auth(narrow))
    refused(response, 403, "account_token_required")
    assert client.get("/keys", headers=auth(account)).json()["providers"] == ["anthropic", "openai"]
    assert chat(client, account).status_code == 200
    assert mock.last().header("authorization") == "Bearer test-openai-key-narrow-0001"


def test_revoking_a_narrow_token_ends_it_and_every_token_minted_from_it(
    client: httpx.Client, account: str
) -> None:
    parent = mint(client, account)
    child = mint(client, parent["token"])
    grandchild = mint(client, child["token"])
    sibling = mint(client, account)
    # A narrow token revokes only what it minted.
    refused(
        client.delete(f"/tokens/{sibling['id']}", headers=auth(child["token"])),
        404,
        "token_not_found",
    )
    refused(client.delete("/tokens/nope", headers=auth(account)), 404, "token_not_found")
    revoked = client.delete(f"/tokens/{parent['id']}", headers=auth(account))
    assert revoked.status_code == 200, revoked.text
    assert sorted(revoked.json()["revoked"]) == sorted(t["id"] for t in (parent, child, grandchild))
    for gone in (parent, child, grandchild):
        refused(chat(client, gone["token"]), 401, "invalid_token")
    assert chat(client, sibling["token"]).status_code == 200
    assert chat(client, account).status_code == 200


@pytest.mark.postgres
def test_names_no_token_can_have_are_refused_before_the_store_sees_them(
    make_relay: RelayFactory, postgres_url: str
) -> None:
    # Postgres's text refuses a NUL, which SQLite's keeps: the store's error was a 500 or a 401.
    with make_relay(DATABASE_URL=postgres_url).client() as client:
        owner = register(client)
        minted = client.post("/tokens", json={"name": "a\u0000b"}, headers=auth(owner))
        refused(minted, 400, "invalid_limits")
        for token_id in ("%00", "x" * 300, "A" * 32, "%C0%AF"):
            gone = client.delete(f"/tokens/{token_id}", headers=auth(owner))
            refused(gone, 404, "token_not_found")


def test_a_narrow_token_revokes_itself_and_its_own_not_the_account(
    client: httpx.Client, account: str
) -> None:
    narrow = mint(client, account)
    child = mint(client, narrow["token"])
    assert client.post("/tokens/revoke", headers=auth(narrow["token"])).status_code == 200
    for gone in (narrow, child):
        refused(chat(client, gone["token"]), 401, "invalid_token")
    assert chat(client, account).status_code == 200


@pytest.mark.parametrize(("method", "path"), [("POST", "/tokens/revoke"), ("DELETE", "/users")])
def test_revoking_or_erasing_the_account_ends_its_narrow_tokens(
    client: httpx.Client, account: str, method: str, path: str
) -> None:
    narrow = mint(client, account)
    child = mint(client, narrow["token"])
    assert client.request(method, path, headers=auth(account)).status_code == 200
    for token in (account, narrow["token"], child["token"]):
        refused(chat(client, token), 401, "invalid_token")
        refused(client.post("/tokens", json={}, headers=auth(token)), 401, "invalid_token")


def test_an_account_holds_at_most_so_many_narrow_tokens(client: httpx.Client) -> None:
    token = register(client)
    first = mint(client, token)
    for _ in range(99):
        mint(client, token)
    refused(client.post("/tokens", json={}, headers=auth(token)), 409, "too_many_tokens")
    assert client.delete(f"/tokens/{first['id']}", headers=auth(token)).status_code == 200
    mint(client, token)


def test_the_model_listing_shows_a_narrow_token_only_what_it_may_use(
    client: httpx.Client, account: str
) -> None:
    everything = client.get("/relay/v1/models", headers=auth(account)).json()["data"]
    assert {m["owned_by"] for m in everything} == {"openai", "anthropic"}
    narrow = mint(client, account, providers=["openai"], models=["gpt-4o*"])["token"]
    listed = client.get("/relay/v1/models", headers=auth(narrow)).json()["data"]
    assert listed
    assert all(m["id"].startswith("openai/gpt-4o") for m in listed), listed


def test_the_owners_ledger_says_which_narrow_token_spent_what(
    client: httpx.Client, account: str
) -> None:
    narrow = mint(client, account, name="widget")
    assert chat(client, narrow["token"]).status_code == 200
    assert chat(client, narrow["token"]).status_code == 200
    assert chat(client, account).status_code == 200
    rows = client.get("/usage", params={"group_by": "token"}, headers=auth(account)).json()["rows"]
    assert [(row["key"], row["requests"]) for row in rows] == [(narrow["id"], 2), (None, 1)]
