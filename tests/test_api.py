"""The HTTP API contract (docs/api.md), tested against real relays over TCP.

Health and version, registration and the APP_SECRET gate, token errors and expiry, key storage,
revocation, account deletion, the generic JSON errors (404, 405, 400, 413) and CORS. Relaying
itself is only touched where the contract ties it to these endpoints (401s, the stored key that
reaches the provider, the body limit); the proxy has its own test modules.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LogCapture
from tests.mockprovider import MockProvider
from tests.relayserver import TEST_SECRET, RelayServer, register, relay_env, store_key

# The provider table of the contract, in its order.
PROVIDER_NAMES = [
    "openai",
    "anthropic",
    "google",
    "groq",
    "openrouter",
    "mistral",
    "elevenlabs",
    "huggingface",
    "deepgram",
    "openai-compatible",
]
UNSUPPORTED_PROVIDER = "Unsupported provider. Supported: " + ", ".join(PROVIDER_NAMES)
TOKEN_REQUIRED = "x-relay-token header required"
INVALID_TOKEN = "Invalid or expired token"
APP_ID_REQUIRED = "app_id is required"
INVALID_KEY = "A valid API key is required"
TOO_LARGE = "Request body too large"
APP_SECRET_MESSAGE = (
    "Unauthorized: valid Authorization: Bearer <APP_SECRET> header required to register."
)
NINETY_DAYS_MS = 90 * 86_400_000
CHAT_PATH = "/relay/openai/v1/chat/completions"
CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
A_VALID_KEY = "sk-valid-key-0123456789"

# Every endpoint that needs a token: (method, path, JSON body).
AUTHENTICATED: list[tuple[str, str, Any]] = [
    ("GET", "/keys", None),
    ("POST", "/keys/openai", {"key": A_VALID_KEY}),
    ("DELETE", "/keys/openai", None),
    ("POST", "/tokens/revoke", None),
    ("DELETE", "/users", None),
    ("POST", CHAT_PATH, CHAT_BODY),
]
AUTHENTICATED_IDS = [f"{method} {path}" for method, path, _ in AUTHENTICATED]

ALLOWED_ORIGIN = "https://app.example"
EXPOSED = [
    "retry-after",
    "x-request-id",
    "ratelimit-remaining",
    "x-ratelimit-remaining-requests",
    "anthropic-ratelimit-requests-remaining",  # the Anthropic SDK reads its own
    "anthropic-ratelimit-output-tokens-reset",
    "content-disposition",
]


# ---- helpers -------------------------------------------------------------------------------


def assert_json(response: httpx.Response, status: int = 200) -> Any:
    """`status`, a JSON content type, and the parsed body."""
    assert response.status_code == status, (response.status_code, response.text)
    content_type = response.headers.get("content-type", "")
    assert content_type.split(";")[0].strip() == "application/json", content_type
    return response.json()


def assert_error(response: httpx.Response, status: int, error: str | None = None) -> dict[str, Any]:
    """An error in the contract's shape: `{"error": <message>, "code": <snake_case>}` as JSON."""
    body = assert_json(response, status)
    assert isinstance(body, dict), body
    if error is None:
        assert isinstance(body.get("error"), str), body
        assert body["error"], body
    else:
        assert body.get("error") == error, body
    assert re.fullmatch(r"[a-z][a-z0-9_]*", str(body.get("code"))), body
    assert "<html" not in response.text.lower()
    assert "Traceback" not in response.text
    return body


def auth(token: str) -> dict[str, str]:
    return {"x-relay-token": token}


def call(
    client: httpx.Client,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return client.request(method, path, json=body, headers=headers)


def header_tokens(response: httpx.Response, name: str) -> set[str]:
    """The comma-separated values of every `name` header, lower-cased."""
    return {
        item.strip().lower()
        for value in response.headers.get_list(name)
        for item in value.split(",")
        if item.strip()
    }


def upstream_authorization(client: httpx.Client, mock: MockProvider, token: str) -> str | None:
    """Relay one OpenAI chat request and return the `Authorization` the provider received."""
    mock.clear()
    assert_json(client.post(CHAT_PATH, json=CHAT_BODY, headers=auth(token)))
    assert len(mock.requests) == 1, mock.requests
    return mock.requests[0].header("authorization")


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    """A generator body: httpx sends it chunked, with no content-length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def json_of_length(length: int, **fields: Any) -> bytes:
    """A JSON object with `fields`, padded to exactly `length` bytes."""
    base = json.dumps({**fields, "pad": ""}).encode()
    padded = json.dumps({**fields, "pad": "x" * (length - len(base))}).encode()
    assert len(padded) == length
    return padded


def raw_request(url: str, request: bytes, *, finish: bool = True) -> int:
    """Send bytes httpx would refuse to send; the status code of the answer.

    With `finish=False` the connection stays open for writing, as if more body were coming.
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        if finish:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status_line = received.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), received[:200]
    return int(status_line.split()[1])


def start_relay(
    mock: MockProvider, tmp_path_factory: pytest.TempPathFactory, **env: str
) -> RelayServer:
    """A module-wide relay variant (what `make_relay` does, shared by several tests)."""
    db: Path = tmp_path_factory.mktemp("relay-variant") / "relay.db"
    return RelayServer.from_env(relay_env(db, mock.url, **env))


@pytest.fixture(scope="module")
def client(relay: RelayServer) -> Iterator[httpx.Client]:
    """Overrides conftest's per-test `client` (and so serves `user` too): one client for the
    module, since building an httpx client's TLS context costs ~25 ms and nothing here uses TLS.
    """
    with relay.client(verify=False) as c:
        yield c


@pytest.fixture(scope="module")
def restricted_client(restricted: RelayServer) -> Iterator[httpx.Client]:
    with restricted.client(verify=False) as c:
        yield c


@pytest.fixture(scope="module")
def limited(
    mock: MockProvider, tmp_path_factory: pytest.TempPathFactory, captured_logs: LogCapture
) -> Iterator[RelayServer]:
    """A relay with `REQUEST_BODY_LIMIT_BYTES=1000`."""
    server = start_relay(mock, tmp_path_factory, REQUEST_BODY_LIMIT_BYTES="1000")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def restricted(
    mock: MockProvider, tmp_path_factory: pytest.TempPathFactory, captured_logs: LogCapture
) -> Iterator[RelayServer]:
    """A relay with `ALLOWED_ORIGINS=https://app.example`."""
    server = start_relay(mock, tmp_path_factory, ALLOWED_ORIGINS=ALLOWED_ORIGIN)
    yield server
    server.stop()


# ---- health and version --------------------------------------------------------------------


def test_health_shape(client: httpx.Client) -> None:
    before = time.time() * 1000
    response = client.get("/health")
    body = assert_json(response)
    assert body["ok"] is True
    assert isinstance(body["version"], str)
    assert body["version"]
    assert isinstance(body["uptime"], int | float)
    assert body["uptime"] >= 0
    assert isinstance(body["timestamp"], int)
    assert before - 5000 <= body["timestamp"] <= time.time() * 1000 + 5000
    assert body["providers"] == PROVIDER_NAMES
    assert body["checks"]["db"]["ok"] is True
    assert isinstance(body["checks"]["config"], dict)
    assert TEST_SECRET not in response.text


def test_version_shape(client: httpx.Client) -> None:
    body = assert_json(client.get("/version"))
    assert set(body) == {"version", "commit", "buildTime"}
    assert all(isinstance(value, str) and value for value in body.values()), body
    assert body["version"] == assert_json(client.get("/health"))["version"]


# ---- POST /users ---------------------------------------------------------------------------


def test_register_returns_token_expiring_in_90_days(client: httpx.Client) -> None:
    before = int(time.time() * 1000)
    response = client.post("/users", json={"app_id": "my-app"})
    after = int(time.time() * 1000)
    body = assert_json(response)
    assert set(body) == {"token", "expires_at"}
    assert isinstance(body["token"], str)
    assert len(body["token"]) >= 43  # at least 32 random bytes
    assert isinstance(body["expires_at"], int)
    assert before + NINETY_DAYS_MS - 5000 <= body["expires_at"] <= after + NINETY_DAYS_MS + 5000
    assert "no-store" in response.headers.get("cache-control", "")
    assert "set-cookie" not in response.headers  # the token is never a cookie
    assert assert_json(client.get("/keys", headers=auth(body["token"])))["providers"] == []


def test_register_gives_a_new_token_each_time(client: httpx.Client) -> None:
    assert register(client) != register(client)


@pytest.mark.parametrize("app_id", ["a" * 128, "アプリ", "app with spaces"])
def test_register_accepts_valid_app_ids(client: httpx.Client, app_id: str) -> None:
    assert_json(client.post("/users", json={"app_id": app_id}))


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"app": "x"},
        {"app_id": ""},
        {"app_id": 123},
        {"app_id": 1.5},
        {"app_id": True},
        {"app_id": None},
        {"app_id": {"name": "x"}},
        {"app_id": ["x"]},
        {"app_id": "a" * 129},
        {"app_id": "line\nbreak"},
        {"app_id": "nul\x00byte"},
        {"app_id": "tab\there"},
        {"app_id": "del\x7f"},
        {"app_id": "esc\x1b[31m"},
    ],
    ids=repr,
)
def test_register_rejects_invalid_app_id(client: httpx.Client, body: dict[str, Any]) -> None:
    assert_error(client.post("/users", json=body), 400, APP_ID_REQUIRED)


def test_register_with_empty_body_needs_app_id(client: httpx.Client) -> None:
    assert_error(client.post("/users"), 400, APP_ID_REQUIRED)


@pytest.mark.parametrize(
    "content",
    [
        b'{"app_id": "x"',
        b"{app_id: x}",
        b"not json",
        b'{"app_id": "\xff\xfe"}',
        b"[" * 60_000,  # deeper than any recursion limit, under the 64 KiB JSON cap
        b'["app_id", "x"]',
        b'[{"app_id": "x"}]',
        b'"app_id"',
        b"null",
        b"42",
    ],
    ids=lambda c: repr(c[:20]),
)
def test_register_rejects_a_body_that_is_not_a_json_object(
    client: httpx.Client, content: bytes
) -> None:
    response = client.post("/users", content=content, headers={"content-type": "application/json"})
    assert_error(response, 400)


def test_app_secret_gates_registration(make_relay: Callable[..., RelayServer]) -> None:
    secret = "s3cret-app-value"
    server = make_relay(APP_SECRET=secret)
    wrong = {
        "no header": {},
        "wrong secret": {"authorization": "Bearer not-the-secret"},
        "secret with suffix": {"authorization": f"Bearer {secret}x"},
        "secret prefix": {"authorization": f"Bearer {secret[:-1]}"},
        "bare scheme": {"authorization": "Bearer"},
        "basic scheme": {"authorization": f"Basic {secret}"},
        "token scheme": {"authorization": f"Token {secret}"},
        "no scheme": {"authorization": secret},
        "relay token header": {"x-relay-token": secret},
    }
    with server.client(verify=False) as c:
        failures = []
        for name, headers in wrong.items():
            response = c.post("/users", json={"app_id": "x"}, headers=headers)
            try:
                assert_error(response, 401, APP_SECRET_MESSAGE)
            except AssertionError as exc:
                failures.append(f"{name}: {exc}")
        assert not failures, failures
        token = register(c, authorization=f"Bearer {secret}")
        assert assert_json(c.get("/keys", headers=auth(token)))["providers"] == []
        # The gate is only on registration.
        assert_json(c.get("/health"))


def test_token_expiry_zero_means_no_expiry(make_relay: Callable[..., RelayServer]) -> None:
    with make_relay(TOKEN_EXPIRY_DAYS="0").client(verify=False) as c:
        body = assert_json(c.post("/users", json={"app_id": "x"}))
        assert body["expires_at"] is None
        assert_json(c.get("/keys", headers=auth(body["token"])))


def test_token_expires(make_relay: Callable[..., RelayServer]) -> None:
    server = make_relay(TOKEN_EXPIRY_DAYS="0.00002")  # 1,728 ms: used once, well inside it
    with server.client(verify=False) as c:
        body = assert_json(c.post("/users", json={"app_id": "x"}))
        assert isinstance(body["expires_at"], int)
        assert 0 < body["expires_at"] - time.time() * 1000 <= 1728
        assert_json(c.get("/keys", headers=auth(body["token"])))
        time.sleep(max(0.0, body["expires_at"] / 1000 - time.time()) + 0.1)
        assert_error(c.get("/keys", headers=auth(body["token"])), 401, INVALID_TOKEN)
        response = c.post(CHAT_PATH, json=CHAT_BODY, headers=auth(body["token"]))
        assert_error(response, 401, INVALID_TOKEN)


# ---- token errors --------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), AUTHENTICATED, ids=AUTHENTICATED_IDS)
def test_missing_token(
    client: httpx.Client, mock: MockProvider, method: str, path: str, body: Any
) -> None:
    assert_error(call(client, method, path, body), 401, TOKEN_REQUIRED)
    assert mock.requests == []


@pytest.mark.parametrize(
    "token",
    ["not-a-real-token", "x" * 43, "t" * 10_000],
    ids=["unknown", "token-shaped", "10000-chars"],
)
@pytest.mark.parametrize(("method", "path", "body"), AUTHENTICATED, ids=AUTHENTICATED_IDS)
def test_invalid_token(
    client: httpx.Client, mock: MockProvider, method: str, path: str, body: Any, token: str
) -> None:
    assert_error(call(client, method, path, body, auth(token)), 401, INVALID_TOKEN)
    assert mock.requests == []


def test_token_only_travels_in_a_header(client: httpx.Client) -> None:
    """`x-relay-token`, or an SDK's API-key header; never a query parameter or a cookie."""
    token = register(client)
    assert_error(client.get("/keys", params={"x-relay-token": token}), 401, TOKEN_REQUIRED)
    assert_error(client.get("/keys", params={"token": token, "key": token}), 401, TOKEN_REQUIRED)
    cookie = {"cookie": f"x-relay-token={token}; token={token}"}
    assert_error(client.get("/keys", headers=cookie), 401, TOKEN_REQUIRED)
    for sdk in ({"authorization": f"Bearer {token}"}, {"x-api-key": token}):
        assert_json(client.get("/keys", headers=sdk))
    assert_json(client.get("/keys", headers={"x-goog-api-key": token}))


# ---- keys ----------------------------------------------------------------------------------


def test_store_and_list_keys(client: httpx.Client) -> None:
    token = register(client)
    for provider in ("openai", "deepgram", "anthropic", "openai-compatible", "groq"):
        response = client.post(f"/keys/{provider}", json={"key": A_VALID_KEY}, headers=auth(token))
        assert assert_json(response) == {"ok": True, "provider": provider}
    listed = assert_json(client.get("/keys", headers=auth(token)))
    assert listed["providers"] == ["anthropic", "deepgram", "groq", "openai", "openai-compatible"]


def test_list_keys_of_user_with_every_provider(
    client: httpx.Client, user: tuple[str, dict[str, str]]
) -> None:
    token, keys = user
    listed = assert_json(client.get("/keys", headers=auth(token)))
    assert listed["providers"] == sorted(PROVIDER_NAMES)
    assert [k["provider"] for k in listed["keys"]] == sorted(PROVIDER_NAMES)
    for entry in listed["keys"]:
        key = keys[entry["provider"]]
        assert set(entry) == {
            "provider",
            "hint",
            "status",
            "created_at",
            "updated_at",
            "verified_at",
            "last_used_at",
        }
        assert entry["hint"] == f"{key[:3]}...{key[-4:]}"  # the hint, and nothing more
        assert entry["status"] == "unverified"
        assert entry["created_at"] == entry["updated_at"]


@pytest.mark.parametrize("field", ["key", "apiKey", "api_key"])
def test_store_key_field_aliases(client: httpx.Client, mock: MockProvider, field: str) -> None:
    token = register(client)
    key = f"sk-{field}-0123456789"
    assert_json(client.post("/keys/openai", json={field: key}, headers=auth(token)))
    assert upstream_authorization(client, mock, token) == f"Bearer {key}"


def test_stored_key_is_trimmed(client: httpx.Client, mock: MockProvider) -> None:
    token = register(client)
    store_key(client, token, "openai", " \t sk-trimmed-0123456789 \n ")
    assert upstream_authorization(client, mock, token) == "Bearer sk-trimmed-0123456789"


def test_storing_again_replaces_the_key(client: httpx.Client, mock: MockProvider) -> None:
    token = register(client)
    store_key(client, token, "openai", "sk-first-0123456789")
    store_key(client, token, "openai", "sk-second-0123456789")
    assert upstream_authorization(client, mock, token) == "Bearer sk-second-0123456789"
    assert assert_json(client.get("/keys", headers=auth(token)))["providers"] == ["openai"]


def test_ten_character_key_is_enough(client: httpx.Client, mock: MockProvider) -> None:
    token = register(client)
    store_key(client, token, "openai", "  0123456789  ")
    assert upstream_authorization(client, mock, token) == "Bearer 0123456789"


@pytest.mark.parametrize("provider", ["nope", "OpenAI", "openai_compatible", "anthropic%20"])
def test_store_key_for_unsupported_provider(client: httpx.Client, provider: str) -> None:
    token = register(client)
    response = client.post(f"/keys/{provider}", json={"key": A_VALID_KEY}, headers=auth(token))
    assert_error(response, 400, UNSUPPORTED_PROVIDER)
    assert assert_json(client.get("/keys", headers=auth(token)))["providers"] == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"token": A_VALID_KEY},
        {"key": None},
        {"key": 12345678901234},
        {"key": True},
        {"key": [A_VALID_KEY]},
        {"key": {"value": A_VALID_KEY}},
        {"key": ""},
        {"key": "123456789"},
        {"key": "   123456789   "},
        {"key": " " * 20},
        {"key": "\t\n " * 5},
        {"apiKey": "short"},
    ],
    ids=repr,
)
def test_store_invalid_key(client: httpx.Client, mock: MockProvider, body: dict[str, Any]) -> None:
    token = register(client)
    store_key(client, token, "openai", "sk-original-0123456789")
    assert_error(client.post("/keys/openai", json=body, headers=auth(token)), 400, INVALID_KEY)
    # The stored key is untouched by a rejected one.
    assert upstream_authorization(client, mock, token) == "Bearer sk-original-0123456789"


def test_delete_key_is_idempotent(client: httpx.Client) -> None:
    token = register(client)
    store_key(client, token, "openai", A_VALID_KEY)
    store_key(client, token, "groq", A_VALID_KEY)
    for _ in range(2):
        assert assert_json(client.delete("/keys/openai", headers=auth(token))) == {"ok": True}
        assert assert_json(client.get("/keys", headers=auth(token)))["providers"] == ["groq"]
    # A provider that never had a key.
    assert assert_json(client.delete("/keys/mistral", headers=auth(token))) == {"ok": True}
    response = client.post(CHAT_PATH, json=CHAT_BODY, headers=auth(token))
    assert_error(response, 400, 'No API key stored for provider "openai". POST /keys/openai first.')


def test_keys_never_leave_the_relay(relay: RelayServer, mock: MockProvider) -> None:
    seen: list[tuple[str, httpx.Headers, bytes]] = []

    def record(response: httpx.Response) -> None:
        response.read()
        seen.append((str(response.url), response.headers, response.content))

    keys = {name: f"sk-secret-{name}-{time.time_ns()}" for name in PROVIDER_NAMES}
    with relay.client(verify=False, event_hooks={"response": [record]}) as c:
        token = register(c)
        for name, key in keys.items():
            store_key(c, token, name, f"  {key}  ")
        store_key(c, token, "openai", keys["openai"])  # replace
        c.post("/keys/anthropic", json={"apiKey": keys["anthropic"]}, headers=auth(token))
        c.post("/keys/nope", json={"key": keys["openai"]}, headers=auth(token))
        c.post("/keys/openai", json={"key": [keys["openai"]]}, headers=auth(token))
        c.get("/keys", headers=auth(token))
        c.post(CHAT_PATH, json=CHAT_BODY, headers=auth(token))
        c.delete("/keys/groq", headers=auth(token))
        c.get("/health")
        c.get("/version")
    assert len(seen) >= 20
    for url, headers, content in seen:
        for key in keys.values():
            assert key.encode() not in content, url
            assert all(key not in value for value in headers.values()), url
    assert mock.requests[0].header("authorization") == f"Bearer {keys['openai']}"


# ---- revocation and deletion ---------------------------------------------------------------


def assert_token_dead(client: httpx.Client, token: str) -> None:
    failures = []
    for method, path, body in AUTHENTICATED:
        response = call(client, method, path, body, auth(token))
        try:
            assert_error(response, 401, INVALID_TOKEN)
        except AssertionError as exc:
            failures.append(f"{method} {path}: {exc}")
    assert not failures, failures


def test_revoke_token(
    client: httpx.Client, mock: MockProvider, user: tuple[str, dict[str, str]]
) -> None:
    token, _ = user
    other = register(client)
    store_key(client, other, "openai", "sk-other-user-0123456789")
    body = assert_json(client.post("/tokens/revoke", headers=auth(token)))
    assert set(body) == {"ok", "message"}
    assert body["ok"] is True
    assert isinstance(body["message"], str)
    assert body["message"]
    mock.clear()
    assert_token_dead(client, token)
    assert mock.requests == []
    # Other users are unaffected.
    assert assert_json(client.get("/keys", headers=auth(other)))["providers"] == ["openai"]
    assert upstream_authorization(client, mock, other) == "Bearer sk-other-user-0123456789"


def test_delete_user(
    client: httpx.Client, mock: MockProvider, user: tuple[str, dict[str, str]]
) -> None:
    token, _ = user
    other = register(client)
    store_key(client, other, "openai", "sk-other-user-0123456789")
    assert assert_json(client.delete("/users", headers=auth(token))) == {
        "ok": True,
        "message": "Account and all stored keys deleted.",
    }
    mock.clear()
    assert_token_dead(client, token)
    assert mock.requests == []
    assert assert_json(client.get("/keys", headers=auth(other)))["providers"] == ["openai"]
    assert upstream_authorization(client, mock, other) == "Bearer sk-other-user-0123456789"


# ---- generic errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/index.html"),
        ("GET", "/sdk/other.js"),
        ("GET", "/nope"),
        ("POST", "/nope"),
        ("GET", "/keys/openai/extra"),
        ("DELETE", "/tokens/a/b"),
    ],
)
def test_unknown_route_is_404_json(client: httpx.Client, method: str, path: str) -> None:
    # A browser navigating there asks for HTML; it still gets JSON.
    response = client.request(method, path, headers={"accept": "text/html"})
    assert_error(response, 404)


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/health/"), ("POST", "/users/"), ("GET", "/keys/")]
)
def test_trailing_slash_is_404_json_not_a_redirect(
    client: httpx.Client, method: str, path: str
) -> None:
    # Not a route: a 404 JSON error, not an empty-bodied redirect built from the Host header.
    response = client.request(method, path, headers={"host": "evil.example"})
    assert "location" not in response.headers
    assert_error(response, 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/users"),
        ("GET", "/users"),
        ("PATCH", "/keys/openai"),
        ("PUT", "/keys/openai"),
        ("DELETE", "/keys"),
        ("POST", "/health"),
        ("GET", "/tokens/revoke"),
        ("OPTIONS", "/users"),  # not a preflight: no access-control-request-method
        ("PATCH", CHAT_PATH),
        ("PUT", CHAT_PATH),
    ],
)
def test_wrong_method_is_405_json(
    client: httpx.Client, mock: MockProvider, method: str, path: str
) -> None:
    response = client.request(method, path, headers={"accept": "text/html"})
    assert_error(response, 405)
    assert mock.requests == []


@pytest.mark.parametrize(
    "content", [b'{"key": "sk-0123456789"', b"key=sk-0123456789", b"[1, 2]", b'"sk-0123456789"']
)
def test_store_key_malformed_json(client: httpx.Client, content: bytes) -> None:
    token = register(client)
    headers = {**auth(token), "content-type": "application/json"}
    assert_error(client.post("/keys/openai", content=content, headers=headers), 400)
    assert assert_json(client.get("/keys", headers=auth(token)))["providers"] == []


# ---- body limit ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited_user(limited_client: httpx.Client) -> str:
    token = register(limited_client)
    store_key(limited_client, token, "openai", A_VALID_KEY)
    return token


@pytest.fixture(scope="module")
def limited_client(limited: RelayServer) -> Iterator[httpx.Client]:
    with limited.client(verify=False) as c:
        yield c


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_register_body_limit(limited_client: httpx.Client, chunked: bool) -> None:
    def post(content: bytes) -> httpx.Response:
        body = chunks(content, 300) if chunked else content
        return limited_client.post(
            "/users", content=body, headers={"content-type": "application/json"}
        )

    assert_json(post(json_of_length(1000, app_id="x")))
    assert_error(post(json_of_length(1001, app_id="x")), 413, TOO_LARGE)
    assert_error(post(json_of_length(5000, app_id="x")), 413, TOO_LARGE)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_store_key_body_limit(
    limited_client: httpx.Client, limited_user: str, chunked: bool
) -> None:
    def post(content: bytes, headers: dict[str, str]) -> httpx.Response:
        body = chunks(content, 300) if chunked else content
        headers = {**headers, "content-type": "application/json"}
        return limited_client.post("/keys/mistral", content=body, headers=headers)

    big = json_of_length(1001, key=A_VALID_KEY)
    assert_error(post(big, auth(limited_user)), 413, TOO_LARGE)
    assert_error(post(big, {}), 401, TOKEN_REQUIRED)  # the token is checked first
    assert_json(post(json_of_length(1000, key=A_VALID_KEY), auth(limited_user)))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_relay_body_limit(
    limited_client: httpx.Client, limited_user: str, mock: MockProvider, chunked: bool
) -> None:
    def post(content: bytes, headers: dict[str, str]) -> httpx.Response:
        body = chunks(content, 300) if chunked else content
        headers = {**headers, "content-type": "application/json"}
        return limited_client.post(CHAT_PATH, content=body, headers=headers)

    big = json_of_length(1001, **CHAT_BODY)
    assert_error(post(big, {}), 401, TOKEN_REQUIRED)  # the token is checked first
    assert_error(post(big, auth("not-a-token")), 401, INVALID_TOKEN)
    assert_error(post(big, auth(limited_user)), 413, TOO_LARGE)
    if not chunked:
        assert mock.requests == []
    assert all(len(r.body) <= 1000 for r in mock.requests)
    mock.clear()
    assert_json(post(json_of_length(1000, **CHAT_BODY), auth(limited_user)))
    assert len(mock.requests) == 1


@pytest.mark.parametrize("path", ["/users", "/keys/openai", CHAT_PATH])
def test_declared_length_over_limit_is_refused_before_the_body(
    limited: RelayServer, limited_user: str, path: str
) -> None:
    # A client announcing 10 GB gets its 413 at once, without having to send any of it.
    request = (
        f"POST {path} HTTP/1.1\r\nhost: relay\r\nx-relay-token: {limited_user}\r\n"
        "content-type: application/json\r\ncontent-length: 10000000000\r\n"
        "connection: close\r\n\r\n{"
    ).encode()
    assert raw_request(limited.url, request, finish=False) == 413


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", "0x10", "5, 5", "9" * 30])
@pytest.mark.parametrize("path", ["/users", "/keys/openai", CHAT_PATH])
def test_invalid_content_length_is_a_client_error(
    limited: RelayServer, limited_user: str, path: str, length: str
) -> None:
    request = (
        f"POST {path} HTTP/1.1\r\nhost: relay\r\nx-relay-token: {limited_user}\r\n"
        f"content-type: application/json\r\ncontent-length: {length}\r\n"
        "connection: close\r\n\r\n{}"
    ).encode()
    status = raw_request(limited.url, request)
    assert 400 <= status < 500, status


# ---- CORS ----------------------------------------------------------------------------------


def preflight(
    client: httpx.Client,
    origin: str,
    path: str = "/keys/openai",
    request_headers: str = "x-relay-token, content-type, anthropic-version, x-stainless-os",
    **extra: str,
) -> httpx.Response:
    headers = {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": request_headers,
        **extra,
    }
    return client.options(path, headers=headers)


def assert_headers_granted(response: httpx.Response, requested: str) -> None:
    granted = header_tokens(response, "access-control-allow-headers")
    wanted = {h.strip().lower() for h in requested.split(",")}
    assert wanted <= granted or "*" in granted, (wanted - granted, granted)


@pytest.mark.parametrize("path", ["/keys/openai", "/users", "/keys", CHAT_PATH, "/health"])
def test_preflight_any_origin(client: httpx.Client, mock: MockProvider, path: str) -> None:
    origin = "https://anywhere.example"
    requested = "x-relay-token, content-type, anthropic-version, x-stainless-os"
    # An unknown token (the store is never asked about it).
    response = preflight(client, origin, path, requested, **{"x-relay-token": "unknown-token"})
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert response.headers.get("access-control-allow-origin") in ("*", origin)
    assert_headers_granted(response, requested)
    methods = header_tokens(response, "access-control-allow-methods")
    assert {"get", "post", "delete"} <= methods or "*" in methods, methods
    assert mock.requests == []


def test_preflight_grants_every_contract_header(client: httpx.Client) -> None:
    requested = (
        "content-type, authorization, x-relay-token, x-relay-base-url, anthropic-version, "
        "anthropic-beta, x-title, http-referer, x-relay-referer, xi-api-key"
    )
    response = preflight(client, "https://anywhere.example", request_headers=requested)
    assert response.status_code == 204, response.text
    assert_headers_granted(response, requested)


@pytest.mark.parametrize("path", ["/health", "/keys", "/nope"])
def test_responses_expose_headers_any_origin(client: httpx.Client, path: str) -> None:
    response = client.get(path, headers={"origin": "https://anywhere.example"})
    assert response.headers.get("access-control-allow-origin") in ("*", "https://anywhere.example")
    assert set(EXPOSED) <= header_tokens(response, "access-control-expose-headers")


def test_preflight_allowed_origin(restricted_client: httpx.Client) -> None:
    requested = "x-relay-token, content-type, anthropic-version, x-stainless-os"
    response = preflight(
        restricted_client,
        ALLOWED_ORIGIN,
        request_headers=requested,
        **{"x-relay-token": "unknown-token"},
    )
    assert response.status_code == 204, response.text
    assert response.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN
    assert "origin" in header_tokens(response, "vary")
    assert_headers_granted(response, requested)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://app.example",
        "https://app.example.evil.example",
        "https://sub.app.example",
        "null",
    ],
)
def test_preflight_other_origin_is_refused(restricted_client: httpx.Client, origin: str) -> None:
    response = preflight(restricted_client, origin)
    assert_error(response, 403)
    assert "access-control-allow-origin" not in response.headers
    simple = restricted_client.get("/health", headers={"origin": origin})
    assert_json(simple)
    assert "access-control-allow-origin" not in simple.headers
    assert "access-control-expose-headers" not in simple.headers


@pytest.mark.parametrize(
    ("path", "status"), [("/health", 200), ("/version", 200), ("/keys", 401), ("/nope", 404)]
)
def test_allowed_origin_response_headers(
    restricted_client: httpx.Client, path: str, status: int
) -> None:
    response = restricted_client.get(path, headers={"origin": ALLOWED_ORIGIN})
    assert_json(response, status)
    assert response.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN
    assert "origin" in header_tokens(response, "vary")
    assert set(EXPOSED) <= header_tokens(response, "access-control-expose-headers")
