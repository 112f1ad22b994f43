"""`POST /relay` and `GET /models`: one endpoint for every model, routed by name."""

from __future__ import annotations

import json

import httpx
import pytest

from relay.errors import BadRequest
from relay.providers.routing import ROUTES, route_model
from tests.conftest import RelayFactory
from tests.mockprovider import MockProvider

pytestmark = pytest.mark.sqlite

Token = tuple[str, dict[str, str]]

GROQ_CHAT = "/openai/v1/chat/completions"
# The Node relay's `providerPrefixes`: bare names, in its order (ours follow them).
NODE_PREFIXES = ["openai", "anthropic", "google", "groq", "openrouter", "mistral"]


@pytest.mark.parametrize(
    ("model", "stream", "provider", "name", "path"),
    [
        ("gpt-4o-mini", False, "openai", "gpt-4o-mini", "/v1/chat/completions"),
        ("GPT-4o", False, "openai", "GPT-4o", "/v1/chat/completions"),
        ("chatgpt-4o-latest", False, "openai", "chatgpt-4o-latest", "/v1/chat/completions"),
        ("o1", False, "openai", "o1", "/v1/chat/completions"),
        ("o1-mini", False, "openai", "o1-mini", "/v1/chat/completions"),
        ("o3-mini", False, "openai", "o3-mini", "/v1/chat/completions"),
        ("o4-mini-2025", False, "openai", "o4-mini-2025", "/v1/chat/completions"),
        ("text-embedding-3-small", False, "openai", "text-embedding-3-small", "/v1/embeddings"),
        ("claude-3-5-haiku-latest", True, "anthropic", "claude-3-5-haiku-latest", "/v1/messages"),
        (
            "gemini-1.5-flash",
            False,
            "google",
            "gemini-1.5-flash",
            "/v1beta/models/gemini-1.5-flash:generateContent",
        ),
        (
            "gemini-1.5-flash",
            True,
            "google",
            "gemini-1.5-flash",
            "/v1beta/models/gemini-1.5-flash:streamGenerateContent",
        ),
        ("mistral-large-latest", False, "mistral", "mistral-large-latest", "/v1/chat/completions"),
        ("codestral-latest", False, "mistral", "codestral-latest", "/v1/chat/completions"),
        ("open-mistral-nemo", False, "mistral", "open-mistral-nemo", "/v1/chat/completions"),
        (
            "llama-3.1-8b-instant",
            False,
            "groq",
            "llama-3.1-8b-instant",
            "/openai/v1/chat/completions",
        ),
        ("llama3-70b-8192", False, "groq", "llama3-70b-8192", "/openai/v1/chat/completions"),
        ("mixtral-8x7b-32768", False, "groq", "mixtral-8x7b-32768", "/openai/v1/chat/completions"),
        ("gemma-7b-it", False, "groq", "gemma-7b-it", "/openai/v1/chat/completions"),
        ("qwen-2.5-32b", False, "groq", "qwen-2.5-32b", "/openai/v1/chat/completions"),
        ("openai/gpt-4o", False, "openai", "gpt-4o", "/v1/chat/completions"),
        # A prefixed name goes where its provider's own pattern says, else to its chat path.
        (
            "openai/text-embedding-3-small",
            False,
            "openai",
            "text-embedding-3-small",
            "/v1/embeddings",
        ),
        (
            "OpenAI/Text-Embedding-3-Large",
            False,
            "openai",
            "Text-Embedding-3-Large",
            "/v1/embeddings",
        ),
        ("openai/o3-mini", False, "openai", "o3-mini", "/v1/chat/completions"),
        ("groq/text-embedding-3-small", False, "groq", "text-embedding-3-small", GROQ_CHAT),
        ("mistral/gpt-4o", False, "mistral", "gpt-4o", "/v1/chat/completions"),
        ("Anthropic/claude-3-opus", False, "anthropic", "claude-3-opus", "/v1/messages"),
        (
            "google/gemini-pro",
            True,
            "google",
            "gemini-pro",
            "/v1beta/models/gemini-pro:streamGenerateContent",
        ),
        (
            "openrouter/meta-llama/llama-3-70b",
            False,
            "openrouter",
            "meta-llama/llama-3-70b",
            "/api/v1/chat/completions",
        ),
        ("groq/whatever-model", False, "groq", "whatever-model", "/openai/v1/chat/completions"),
        ("mistral/custom", False, "mistral", "custom", "/v1/chat/completions"),
        (
            "openai-compatible/deepseek-chat",
            False,
            "openai-compatible",
            "deepseek-chat",
            "/v1/chat/completions",
        ),
    ],
)
def test_routes(model: str, stream: bool, provider: str, name: str, path: str) -> None:
    routed = route_model(model, stream)
    assert (routed.provider, routed.model, routed.path) == (provider, name, path)


@pytest.mark.parametrize(
    ("model", "code"),
    [
        ("o1x", "unroutable_model"),
        ("o5-mini", "unroutable_model"),
        ("gpt4", "unroutable_model"),
        ("xgpt-4", "unroutable_model"),
        ("davinci", "unroutable_model"),
        ("nope/gpt-4o", "unroutable_model"),
        ("google/../x", "invalid_model"),
        ("google/a/b", "invalid_model"),
        ("google/gemini:evil", "invalid_model"),
        ("openai/", "invalid_model"),
        ("openrouter/a/../../v1/files", "invalid_model"),
        ("gpt-4o\n", "invalid_model"),
        ("gpt-4o mini", "invalid_model"),
        ("", "model_required"),
        ("   ", "model_required"),
        (None, "model_required"),
        (42, "model_required"),
    ],
)
def test_names_that_must_not_route(model: object, code: str) -> None:
    with pytest.raises(BadRequest) as refused:
        route_model(model, stream=False)
    assert refused.value.code == code


def test_every_route_pattern_is_exercised_above() -> None:
    assert {r.provider for r in ROUTES} == {"openai", "anthropic", "google", "mistral", "groq"}


CHAT = [{"role": "user", "content": "hi"}]


def relay(
    client: httpx.Client, token: str, body: bytes | dict[str, object], **headers: str
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(
        "/relay",
        content=content,
        headers={"x-relay-token": token, "content-type": "application/json", **headers},
    )


def test_routed_request_reaches_the_provider_byte_for_byte(
    client: httpx.Client, mock: MockProvider, user: Token
) -> None:
    token, keys = user
    body = b'{ "model":"gpt-4o-mini" ,"messages":[{"role":"user","content":"caf\\u00e9"}]}'
    response = relay(client, token, body)
    assert response.status_code == 200, response.text
    assert mock.last().path == "/v1/chat/completions"
    assert mock.last().body == body
    assert mock.last().header("authorization") == f"Bearer {keys['openai']}"
    assert response.headers["x-relay-provider"] == "openai"
    hint = response.headers["x-relay-key-hint"]
    assert hint == keys["openai"][:3] + "..." + keys["openai"][-4:]
    assert keys["openai"] not in str(response.headers)


def test_a_prefix_is_stripped_and_nothing_else_changes(
    client: httpx.Client, mock: MockProvider, user: Token
) -> None:
    body = b'{"messages": [], "model" : "Anthropic/claude-3-5-haiku-latest", "max_tokens": 5}'
    response = relay(client, user[0], body)
    assert response.status_code == 200, response.text
    assert mock.last().path == "/v1/messages"
    assert mock.last().body == (
        b'{"messages": [], "model" : "claude-3-5-haiku-latest", "max_tokens": 5}'
    )
    assert mock.last().header("x-api-key") == user[1]["anthropic"]
    assert response.headers["x-relay-provider"] == "anthropic"


def test_gemini_streams_from_the_path_and_drops_model_and_stream(
    client: httpx.Client, mock: MockProvider, user: Token
) -> None:
    body = {"model": "gemini-1.5-flash", "stream": True, "contents": [{"parts": [{"text": "hi"}]}]}
    with client.stream("POST", "/relay", json=body, headers={"x-relay-token": user[0]}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert frames
    received = mock.last()
    assert received.path == "/v1beta/models/gemini-1.5-flash:streamGenerateContent"
    assert received.query_string == b"alt=sse"
    assert received.json() == {"contents": [{"parts": [{"text": "hi"}]}]}
    assert received.header("x-goog-api-key") == user[1]["google"]


def test_embeddings_route_to_the_embeddings_endpoint(
    client: httpx.Client, mock: MockProvider, user: Token
) -> None:
    response = relay(client, user[0], {"model": "text-embedding-3-small", "input": "hi"})
    assert response.status_code == 200, response.text
    assert mock.last().path == "/v1/embeddings"


def test_a_prefixed_embedding_model_goes_to_the_embeddings_endpoint(
    client: httpx.Client, mock: MockProvider, user: Token
) -> None:
    response = relay(client, user[0], {"model": "openai/text-embedding-3-small", "input": "hi"})
    assert response.status_code == 200, response.text
    received = mock.last()
    assert received.path == "/v1/embeddings"
    assert received.json() == {"model": "text-embedding-3-small", "input": "hi"}
    answer = response.json()
    assert answer["object"] == "list"
    assert answer["data"][0]["object"] == "embedding"


def test_openai_sse_streams_through_the_model_route(client: httpx.Client, user: Token) -> None:
    with client.stream(
        "POST",
        "/relay",
        json={"model": "gpt-4o-mini", "stream": True, "messages": CHAT},
        headers={"x-relay-token": user[0]},
    ) as response:
        text = response.read().decode()
    assert text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize(
    ("body", "status", "start"),
    [
        (b'{"messages": []}', 400, "model field is required."),
        (b'{"model": "davinci-002"}', 400, 'Cannot route model "davinci-002".'),
        (b'{"model": "google/../x"}', 400, '"google/../x" is not a valid model name.'),
        (b'{"model": "gpt-4o", "model": "claude-3"}', 400, "model and stream may each"),
        (b"[1, 2]", 400, "Request body must be a JSON object"),
        (b"not json", 400, "Request body must be a JSON object"),
    ],
)
def test_routing_errors(
    client: httpx.Client, mock: MockProvider, user: Token, body: bytes, status: int, start: str
) -> None:
    response = relay(client, user[0], body)
    assert response.status_code == status, response.text
    assert response.json()["error"].startswith(start)
    assert mock.requests == []


def test_the_model_route_needs_a_token_and_a_stored_key(
    client: httpx.Client, mock: MockProvider
) -> None:
    assert client.post("/relay", json={"model": "gpt-4o"}).status_code == 401
    token = client.post("/users", json={"app_id": "routing"}).json()["token"]
    response = relay(client, token, {"model": "claude-3-5-haiku-latest"})
    assert response.status_code == 400
    assert response.json()["code"] == "no_key"
    assert client.get("/relay").status_code == 405
    assert mock.requests == []


def test_the_allowlist_applies_to_routed_names(
    make_relay: RelayFactory, mock: MockProvider
) -> None:
    server = make_relay(ALLOWED_MODELS="claude-*")
    with server.client() as c:
        token = c.post("/users", json={"app_id": "routing"}).json()["token"]
        for provider in ("openai", "anthropic"):
            assert (
                c.post(
                    f"/keys/{provider}",
                    json={"key": f"test-{provider}-key-routing"},
                    headers={"x-relay-token": token},
                ).status_code
                == 200
            )
        refused = relay(c, token, {"model": "openai/gpt-4o"})
        assert refused.status_code == 403
        assert refused.json()["error"] == 'Model "gpt-4o" is not permitted on this relay.'
        assert relay(c, token, {"model": "anthropic/claude-3-opus"}).status_code == 200
        models = c.get("/models").json()
    assert models["restricted"] is True
    assert models["allowed_models"] == ["claude-*"]
    assert mock.last().path == "/v1/messages"


def test_models_lists_the_routing_table(client: httpx.Client) -> None:
    body = client.get("/models").json()
    assert body["restricted"] is False
    assert "allowed_models" not in body
    assert "openai" in body["providers"]
    prefixes = body["providerPrefixes"]
    assert prefixes[: len(NODE_PREFIXES)] == NODE_PREFIXES
    for prefix in prefixes:
        assert route_model(f"{prefix}/some-model", stream=False).provider == prefix
    assert {"pattern": "^claude-", "flags": "i", "provider": "anthropic"} in body["patterns"]
    assert len(body["patterns"]) == len(ROUTES)


def test_provider_route_shows_which_key_paid(client: httpx.Client, user: Token) -> None:
    response = client.post(
        "/relay/mistral/v1/chat/completions",
        json={"model": "x"},
        headers={"x-relay-token": user[0], "origin": "https://a.example"},
    )
    assert response.headers["x-relay-provider"] == "mistral"
    assert response.headers["x-relay-key-hint"].endswith(user[1]["mistral"][-4:])
    exposed = response.headers["access-control-expose-headers"]
    assert "x-relay-provider" in exposed
    assert "x-relay-key-hint" in exposed
