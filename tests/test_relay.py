"""The streaming proxy, end to end: real relay, real sockets, the mock provider upstream."""

from __future__ import annotations

import gc
import gzip
import hashlib
import json
import socket
import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest

from relay.providers.table import PROVIDERS
from relay.security.tokens import TokenHasher
from tests.conftest import RelayFactory
from tests.mockprovider import AUDIO_BYTES, IMAGE_BYTES, MockProvider
from tests.relayserver import TEST_SECRET, RelayServer, register, store_key

pytestmark = pytest.mark.sqlite

Token = tuple[str, dict[str, str]]

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

# One inference path per provider, and how its key must reach the provider.
KEY_SCHEMES = [
    ("openai", "/v1/chat/completions", "authorization", "Bearer {}"),
    ("anthropic", "/v1/messages", "x-api-key", "{}"),
    ("google", "/v1beta/models/gemini-1.5-flash:generateContent", "x-goog-api-key", "{}"),
    ("groq", "/openai/v1/chat/completions", "authorization", "Bearer {}"),
    ("openrouter", "/api/v1/chat/completions", "authorization", "Bearer {}"),
    ("mistral", "/v1/chat/completions", "authorization", "Bearer {}"),
    ("elevenlabs", "/v1/text-to-speech/voice123", "xi-api-key", "{}"),
    ("huggingface", "/models/gpt2", "authorization", "Bearer {}"),
    ("deepgram", "/v1/listen", "authorization", "Token {}"),
    ("openai-compatible", "/v1/chat/completions", "authorization", "Bearer {}"),
]


def relay_headers(token: str, **extra: str) -> dict[str, str]:
    return {"x-relay-token": token, **{k.replace("_", "-"): v for k, v in extra.items()}}


def sse_frames(lines: Iterator[str]) -> list[str]:
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def assert_error(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == message


def test_all_ten_providers_are_covered() -> None:
    assert {row[0] for row in KEY_SCHEMES} == set(PROVIDERS)


@pytest.mark.parametrize(("provider", "path", "header", "scheme"), KEY_SCHEMES)
def test_stored_key_reaches_provider_in_its_scheme(
    client: httpx.Client,
    mock: MockProvider,
    user: Token,
    provider: str,
    path: str,
    header: str,
    scheme: str,
) -> None:
    token, keys = user
    headers = relay_headers(token, authorization="Bearer client-own-secret", cookie="session=abc")
    if provider == "openai-compatible":
        headers["x-relay-base-url"] = mock.url + "/ignored/path"
    response = client.post(f"/relay/{provider}{path}", json=CHAT, headers=headers)
    assert response.status_code == 200, response.text
    received = mock.last()
    assert received.path == path
    assert received.header(header) == scheme.format(keys[provider])
    assert received.header_values("authorization") in ([], [scheme.format(keys[provider])])
    assert received.header("x-relay-token") is None
    assert received.header("cookie") is None
    assert keys[provider] not in received.query_string.decode()


def test_request_body_is_forwarded_byte_for_byte(
    client: httpx.Client, mock: MockProvider, user: Token
) -> None:
    body = (
        b'{ "model" : "gpt-4o",\n  "messages":'
        b'[{"content":"caf\\u00e9 \xe2\x98\x95","role":"user"}],"z":1.50}'
    )
    response = client.post(
        "/relay/openai/v1/chat/completions",
        content=body,
        headers=relay_headers(user[0], content_type="application/json"),
    )
    assert response.status_code == 200
    assert mock.last().body == body
    assert mock.last().header("content-type") == "application/json"


def test_request_body_arriving_slowly_is_forwarded_whole(
    client: httpx.Client, mock: MockProvider, user: Token
) -> None:
    # The body is still arriving when the disconnect watcher starts (20 ms in): its messages
    # must all reach the body, none the watcher, and the request must not look abandoned.
    parts = [b'{"model":"gpt-4o-mini",', b'"messages":[{"role":"user",', b'"content":"hi"}]}']

    def trickle() -> Iterator[bytes]:
        for part in parts:
            time.sleep(0.05)
            yield part

    response = client.post(
        "/relay/openai/v1/chat/completions",
        content=trickle(),
        headers=relay_headers(user[0], content_type="application/json"),
    )
    assert response.status_code == 200, response.text
    assert mock.last().body == b"".join(parts)
    stats = client.get("/stats", headers=relay_headers(user[0])).json()
    assert (stats["total"], stats["error_count"]) == (1, 0)


def test_response_body_is_relayed_unchanged(
    client: httpx.Client, mock: MockProvider, user: Token
) -> None:
    response = client.post(
        "/relay/anthropic/v1/messages",
        json={"model": "claude-3-5-haiku", "max_tokens": 5},
        headers=relay_headers(user[0]),
    )
    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "message"
    assert body["usage"]["input_tokens"] == 12
    assert body["usage"]["output_tokens"] == 6
    assert mock.last().header("anthropic-version") == "2023-06-01"


def test_sse_chunks_arrive_in_order_and_before_the_stream_ends(
    client: httpx.Client, user: Token
) -> None:
    arrivals: list[tuple[float, str]] = []
    started = time.monotonic()
    with client.stream(
        "POST",
        "/relay/openai/v1/chat/completions?interval_ms=200&chunks=5",
        json={**CHAT, "stream": True},
        headers=relay_headers(user[0]),
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-length" not in response.headers
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic() - started, line.removeprefix("data: ")))
    frames = [frame for _, frame in arrivals]
    assert frames[-1] == "[DONE]"
    contents = [
        c["delta"].get("content")
        for frame in frames[:-1]
        for c in json.loads(frame)["choices"]
        if c["delta"].get("content")
    ]
    assert contents == [f"tok{i} " for i in range(5)]
    # Frames are 200 ms apart upstream: the first must reach us long before the last is sent.
    first, last = arrivals[0][0], arrivals[-1][0]
    assert last - first >= 0.6, arrivals


def test_relayed_exchanges_leave_no_garbage_cycles(make_relay: RelayFactory) -> None:
    """What a relayed exchange allocates is freed by reference counting as it ends. A cycle
    through it (a cancelled watcher task's traceback, a closed connection and its parser)
    would keep the whole stream's objects, uvicorn's and httpx's with them, until the cycle
    collector runs, which a busy relay makes rare on purpose (`relay.server.gcsettings`)."""
    server = make_relay()
    with server.client() as client:
        token = register(client)
        store_key(client, token, "openai", "sk-cycles-0123456789")
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(3):  # long enough that the disconnect watcher starts
                with client.stream(
                    "POST",
                    "/relay/openai/v1/chat/completions?interval_ms=30&chunks=3",
                    json={**CHAT, "stream": True},
                    headers=relay_headers(token),
                ) as response:
                    assert response.status_code == 200
                    response.read()
            plain = client.post(
                "/relay/openai/v1/chat/completions", json=CHAT, headers=relay_headers(token)
            )
            assert plain.status_code == 200
            server.stop()  # closes the pooled upstream connections
            gc.collect()
            left = [
                type(item).__qualname__
                for item in gc.garbage
                if type(item).__module__.startswith("relay.")
            ]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert left == []


def test_gemini_stream_gets_alt_sse(client: httpx.Client, mock: MockProvider, user: Token) -> None:
    path = "/relay/google/v1beta/models/gemini-1.5-flash:streamGenerateContent"
    with client.stream(
        "POST",
        path,
        json={"contents": [{"parts": [{"text": "hi"}]}]},
        headers=relay_headers(user[0]),
    ) as response:
        assert response.status_code == 200
        frames = [json.loads(f) for f in sse_frames(response.iter_lines())]
    assert mock.last().query_string == b"alt=sse"
    assert frames[-1]["usageMetadata"]["totalTokenCount"] > 0
    assert all(frame["candidates"] for frame in frames)


GEMINI = "/relay/google/v1beta/models/gemini-1.5-flash"
GEMINI_BODY = {"contents": [{"parts": [{"text": "hi"}]}]}


@pytest.mark.parametrize(
    ("query", "forwarded"),
    [
        ("key=attacker&alt=json", b"alt=json"),
        ("alt=json&%6Bey=a&KEY=b&$key=c&%24key=d&access_token=e&x=%20y", b"alt=json&x=%20y"),
        ("monkey=1&keys=2", b"monkey=1&keys=2"),
    ],
)
def test_a_clients_key_parameter_never_reaches_google(
    client: httpx.Client, mock: MockProvider, user: Token, query: str, forwarded: bytes
) -> None:
    """Google takes a `key` in the query over the `x-goog-api-key` header: the stored key is
    the only one sent."""
    token, keys = user
    response = client.post(
        f"{GEMINI}:generateContent?{query}", json=GEMINI_BODY, headers=relay_headers(token)
    )
    assert response.status_code == 200, response.text
    received = mock.last()
    assert received.query_string == forwarded
    assert received.header_values("x-goog-api-key") == [keys["google"]]
    assert response.headers["x-relay-key-hint"] == keys["google"][:3] + "..." + keys["google"][-4:]

    with client.stream(
        "POST",
        f"{GEMINI}:streamGenerateContent?key=attacker",
        json=GEMINI_BODY,
        headers=relay_headers(token),
    ) as streamed:
        assert streamed.status_code == 200
        streamed.read()
    assert mock.last().query_string == b"alt=sse"
    assert mock.last().header_values("x-goog-api-key") == [keys["google"]]


def test_binary_audio_is_byte_identical(client: httpx.Client, user: Token) -> None:
    response = client.post(
        "/relay/elevenlabs/v1/text-to-speech/voice123",
        json={"text": "hello"},
        headers=relay_headers(user[0], accept="audio/mpeg"),
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/mpeg"
    assert response.content == AUDIO_BYTES


def test_binary_image_is_byte_identical(client: httpx.Client, user: Token) -> None:
    response = client.post(
        "/relay/huggingface/models/stabilityai/sdxl",
        json={"inputs": "cat"},
        headers=relay_headers(user[0]),
    )
    assert response.status_code == 200
    assert response.content == IMAGE_BYTES


def test_raw_audio_upload_and_query_string_reach_deepgram(
    client: httpx.Client, mock: MockProvider, user: Token
) -> None:
    audio = AUDIO_BYTES[:150_000]
    query = "model=nova-2&smart_format=true&keywords=a%20b&keywords=c"
    response = client.post(
        f"/relay/deepgram/v1/listen?{query}",
        content=audio,
        headers=relay_headers(user[0], content_type="audio/wav"),
    )
    assert response.status_code == 200, response.text
    assert mock.last().query_string.decode() == query
    assert mock.last().header("content-type") == "audio/wav"
    metadata = response.json()["metadata"]
    assert metadata["received_bytes"] == len(audio)
    assert metadata["received_sha256"] == hashlib.sha256(audio).hexdigest()


def test_allowlisted_headers_are_forwarded_and_others_are_not(
    client: httpx.Client, mock: MockProvider, user: Token
) -> None:
    client.post(
        "/relay/anthropic/v1/messages",
        json={"model": "claude-3"},
        headers=relay_headers(
            user[0],
            anthropic_version="2024-01-01",
            anthropic_beta="tools-2024",
            x_custom="nope",
            x_forwarded_for="1.2.3.4",
        ),
    )
    received = mock.last()
    assert received.header("anthropic-version") == "2024-01-01"
    assert received.header("anthropic-beta") == "tools-2024"
    assert received.header("x-custom") is None
    assert received.header("x-forwarded-for") is None

    client.post(
        "/relay/openrouter/api/v1/chat/completions",
        json=CHAT,
        headers=relay_headers(user[0], x_relay_referer="https://app.example", x_title="My App"),
    )
    assert mock.last().header("http-referer") == "https://app.example"
    assert mock.last().header("x-title") == "My App"

    client.post(
        "/relay/openai/v1/chat/completions",
        json=CHAT,
        headers=relay_headers(user[0], openai_organization="org-1", openai_project="proj-1"),
    )
    assert mock.last().header("openai-organization") == "org-1"
    assert mock.last().header("openai-project") == "proj-1"


DEFAULT_REFERER = "https://github.com/byok-relay/byok-relay"


@pytest.mark.parametrize(
    ("sent", "referer"),
    [
        ({}, DEFAULT_REFERER),
        ({"http-referer": "https://app.example/page"}, "https://app.example/page"),
        ({"x-relay-referer": "https://b.example"}, "https://b.example"),
    ],
)
def test_openrouter_requests_carry_a_referer(
    client: httpx.Client, mock: MockProvider, user: Token, sent: dict[str, str], referer: str
) -> None:
    """OpenRouter credits a request to the app its `HTTP-Referer` names: the client's, else the
    relay's project, as the Node relay did."""
    headers = {**relay_headers(user[0]), **sent}
    response = client.post("/relay/openrouter/api/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 200, response.text
    assert mock.last().header_values("http-referer") == [referer]
    assert mock.last().header("x-relay-referer") is None
    routed = client.post(
        "/relay", json={**CHAT, "model": "openrouter/openai/gpt-4o-mini"}, headers=headers
    )
    assert routed.status_code == 200, routed.text
    assert mock.last().path == "/api/v1/chat/completions"
    assert mock.last().header_values("http-referer") == [referer]


def test_the_operators_openrouter_referer_replaces_the_default(
    make_relay: RelayFactory, mock: MockProvider
) -> None:
    server = make_relay(RELAY_OPENROUTER_REFERER="https://relay.example/app")
    with server.client() as c:
        token = register(c)
        store_key(c, token, "openrouter", "test-openrouter-key-referer")
        path = "/relay/openrouter/api/v1/chat/completions"
        assert c.post(path, json=CHAT, headers=relay_headers(token)).status_code == 200
        assert mock.last().header_values("http-referer") == ["https://relay.example/app"]
        own = {**relay_headers(token), "x-relay-referer": "https://mine.example"}
        assert c.post(path, json=CHAT, headers=own).status_code == 200
        assert mock.last().header_values("http-referer") == ["https://mine.example"]


def test_upstream_rate_limit_answer_is_returned_with_its_headers(
    client: httpx.Client, user: Token
) -> None:
    response = client.post(
        "/relay/openai/v1/chat/completions?scenario=ratelimited",
        json=CHAT,
        headers=relay_headers(user[0], origin="https://app.example"),
    )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.headers["x-ratelimit-limit-requests"] == "60"
    assert response.headers["x-request-id"] == "req_mock_429"
    assert response.json()["error"]["type"] == "rate_limit_exceeded"
    exposed = response.headers["access-control-expose-headers"]
    assert "retry-after" in exposed
    assert "x-ratelimit-remaining-requests" in exposed


def test_provider_headers_are_filtered(client: httpx.Client, user: Token) -> None:
    response = client.post(
        "/relay/openai/v1/chat/completions?scenario=headers",
        json=CHAT,
        headers=relay_headers(user[0]),
    )
    assert response.status_code == 200
    assert response.headers["x-ratelimit-remaining-requests"] == "99"
    assert response.headers["x-request-id"] == "req_mock_1"
    assert response.headers["content-disposition"] == "inline"
    assert "set-cookie" not in response.headers


def test_compressed_answer_passes_through_intact(client: httpx.Client, user: Token) -> None:
    with client.stream(
        "POST",
        "/relay/openai/v1/chat/completions?scenario=gzip",
        json=CHAT,
        headers=relay_headers(user[0]),
    ) as response:
        raw = b"".join(response.iter_raw())
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert "content-length" not in response.headers
    assert json.loads(gzip.decompress(raw))["choices"][0]["message"]["content"]


def test_provider_error_before_the_stream_stays_json(client: httpx.Client, user: Token) -> None:
    response = client.post(
        "/relay/openai/v1/chat/completions?scenario=status&status=401",
        json={**CHAT, "stream": True},
        headers=relay_headers(user[0]),
    )
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    assert "error" in response.json()


def test_get_is_allowed_only_on_read_paths(
    client: httpx.Client, mock: MockProvider, user: Token
) -> None:
    response = client.get("/relay/elevenlabs/v1/voices", headers=relay_headers(user[0]))
    assert response.status_code == 200
    assert "voices" in response.json()
    response = client.get("/relay/openai/v1/responses/resp_123", headers=relay_headers(user[0]))
    assert response.status_code == 200
    assert mock.last().method == "GET"
    mock.clear()
    assert_error(
        client.get("/relay/openai/v1/chat/completions", headers=relay_headers(user[0])),
        405,
        "Method not allowed",
    )
    for method in ("PUT", "PATCH", "DELETE"):
        response = client.request(
            method, "/relay/openai/v1/chat/completions", json=CHAT, headers=relay_headers(user[0])
        )
        assert_error(response, 405, "Method not allowed")
    assert mock.requests == []


def test_client_disconnect_mid_stream_cancels_upstream(
    client: httpx.Client, mock: MockProvider, user: Token
) -> None:
    with client.stream(
        "POST",
        "/relay/openai/v1/chat/completions?scenario=endless&interval_ms=50",
        json={**CHAT, "stream": True},
        headers=relay_headers(user[0]),
    ) as response:
        lines = response.iter_lines()
        assert sum(1 for _, line in zip(range(6), lines, strict=False) if line) >= 2
    left = time.monotonic()
    seen = mock.wait_for_disconnect(timeout=2)
    assert seen is not None, "upstream never saw the client leave"
    assert seen - left < 1.0


def test_client_disconnect_before_headers_cancels_upstream(
    relay: RelayServer, mock: MockProvider, user: Token
) -> None:
    with (
        relay.client(timeout=httpx.Timeout(5, read=0.3)) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.post(
            "/relay/openai/v1/chat/completions?scenario=slow_headers&delay_ms=5000",
            json=CHAT,
            headers=relay_headers(user[0]),
        )
    left = time.monotonic()
    seen = mock.wait_for_disconnect(timeout=2)
    assert seen is not None, "upstream request kept running after the client left"
    assert seen - left < 1.0
    with relay.client() as client:
        # The cancellation stayed inside that exchange: the next request is served, and the
        # abandoned one is counted as a 499 (an error) in the user's usage.
        response = client.post(
            "/relay/openai/v1/chat/completions", json=CHAT, headers=relay_headers(user[0])
        )
        assert response.status_code == 200
        stats = client.get("/stats", headers=relay_headers(user[0])).json()
        assert (stats["total"], stats["error_count"]) == (2, 1)


@pytest.fixture
def slow_relay(make_relay: RelayFactory) -> tuple[RelayServer, str]:
    server = make_relay(RELAY_UPSTREAM_TIMEOUT="1", RELAY_STREAM_IDLE_TIMEOUT="1")
    with server.client() as c:
        token = register(c)
        store_key(c, token, "openai", "test-openai-key-timeouts")
        store_key(c, token, "elevenlabs", "test-eleven-key-timeouts")
    return server, token


@pytest.mark.parametrize(
    "env",
    [
        {"RELAY_UPSTREAM_TIMEOUT": "0.5", "RELAY_STREAM_IDLE_TIMEOUT": "0.5"},
        {"RELAY_UPSTREAM_TIMEOUT": "0.3"},  # shorter than the idle timeout's default of 120 s
    ],
    ids=["both-short", "idle-at-default"],
)
def test_first_byte_timeout_is_504(make_relay: RelayFactory, env: dict[str, str]) -> None:
    server = make_relay(**env)
    with server.client() as c:
        token = register(c)
        store_key(c, token, "openai", "test-openai-key-first-byte")
        started = time.monotonic()
        response = c.post(
            "/relay/openai/v1/chat/completions?scenario=slow_headers&delay_ms=3000",
            json=CHAT,
            headers=relay_headers(token),
        )
    assert_error(response, 504, "AI provider timed out")
    assert time.monotonic() - started < 2


def test_idle_stream_ends_with_error_event(slow_relay: tuple[RelayServer, str]) -> None:
    server, token = slow_relay
    with (
        server.client() as c,
        c.stream(
            "POST",
            "/relay/openai/v1/chat/completions?scenario=stall&delay_ms=5000",
            json={**CHAT, "stream": True},
            headers=relay_headers(token),
        ) as response,
    ):
        assert response.status_code == 200
        text = response.read().decode()
    assert text.count("data: {") == 3
    assert text.endswith('event: error\ndata: {"error":"Stream interrupted by provider"}\n\n')


def test_provider_breaking_mid_stream_ends_with_error_event(
    client: httpx.Client, user: Token
) -> None:
    with client.stream(
        "POST",
        "/relay/openai/v1/chat/completions?scenario=break",
        json={**CHAT, "stream": True},
        headers=relay_headers(user[0]),
    ) as response:
        text = response.read().decode()
    assert response.status_code == 200
    assert text.startswith("data: {")
    assert text.endswith('event: error\ndata: {"error":"Stream interrupted by provider"}\n\n')


def test_binary_cut_short_upstream_is_cut_short_downstream(
    client: httpx.Client, user: Token
) -> None:
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream(
            "POST",
            "/relay/elevenlabs/v1/text-to-speech/voice123?scenario=break",
            json={"text": "hi"},
            headers=relay_headers(user[0]),
        ) as response,
    ):
        response.read()


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    """A listening port whose accept queue is full: connecting to it hangs until a timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    yield port
    for s in (*fillers, server):
        s.close()


def test_connect_timeout_is_504(make_relay: RelayFactory, blackhole_port: int) -> None:
    server = make_relay(
        RELAY_CONNECT_TIMEOUT="0.3", RELAY_OPENAI_BASE_URL=f"http://127.0.0.1:{blackhole_port}"
    )
    with server.client() as c:
        token = register(c)
        store_key(c, token, "openai", "test-openai-key-connect")
        started = time.monotonic()
        response = c.post(
            "/relay/openai/v1/chat/completions", json=CHAT, headers=relay_headers(token)
        )
    assert_error(response, 504, "AI provider timed out")
    assert time.monotonic() - started < 2


def test_unreachable_provider_is_502(make_relay: RelayFactory) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    server = make_relay(RELAY_OPENAI_BASE_URL=f"http://127.0.0.1:{port}")
    with server.client() as c:
        token = register(c)
        store_key(c, token, "openai", "test-openai-key-unreachable")
        response = c.post(
            "/relay/openai/v1/chat/completions", json=CHAT, headers=relay_headers(token)
        )
    assert_error(response, 502, "Failed to reach AI provider")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/files",
        "/v1/chat/completions/../../files",
        "/v1/chat/completions/%2e%2e/%2e%2e/files",
        "/v1/chat/completions%2F..%2F..%2Ffiles",
        "/v1/chat/completionsX",
        "/v1/models",
        "/",
    ],
)
def test_paths_outside_the_allowlist_are_403(
    client: httpx.Client, mock: MockProvider, user: Token, path: str
) -> None:
    response = client.post("/relay/openai" + path, json=CHAT, headers=relay_headers(user[0]))
    assert response.status_code == 403, response.text
    assert response.json()["error"].endswith(
        'is not permitted for provider "openai". Only inference endpoints are allowed.'
    )
    assert mock.requests == []


def test_dot_segments_resolve_before_forwarding(
    client: httpx.Client, mock: MockProvider, user: Token
) -> None:
    response = client.post(
        "/relay/openai/v1/embeddings/../chat/completions", json=CHAT, headers=relay_headers(user[0])
    )
    assert response.status_code == 200
    assert mock.last().path == "/v1/chat/completions"


def test_relay_error_paths(client: httpx.Client, mock: MockProvider) -> None:
    token = register(client)
    assert_error(
        client.post("/relay/openai/v1/chat/completions", json=CHAT),
        401,
        "x-relay-token header required",
    )
    assert_error(
        client.post(
            "/relay/openai/v1/chat/completions", json=CHAT, headers=relay_headers("not-a-token")
        ),
        401,
        "Invalid or expired token",
    )
    response = client.post("/relay/nope/v1/chat", json=CHAT, headers=relay_headers(token))
    assert response.status_code == 400
    assert response.json()["error"].startswith("Unsupported provider. Supported: openai, ")
    assert_error(
        client.post("/relay/anthropic/v1/messages", json=CHAT, headers=relay_headers(token)),
        400,
        'No API key stored for provider "anthropic". POST /keys/anthropic first.',
    )
    store_key(client, token, "openai-compatible", "test-compatible-key-errors")
    assert_error(
        client.post(
            "/relay/openai-compatible/v1/chat/completions", json=CHAT, headers=relay_headers(token)
        ),
        400,
        "x-relay-base-url header is required for openai-compatible provider",
    )
    for hostile in (
        "https://10.0.0.1",
        "https://127.0.0.1:1",
        "https://user:pw@api.example.com",
        "http://localhost:8080",
        "ftp://files.example.com",
        "not a url",
        "https://[::1]",
        "https://2130706433",
    ):
        response = client.post(
            "/relay/openai-compatible/v1/chat/completions",
            json=CHAT,
            headers=relay_headers(token, x_relay_base_url=hostile),
        )
        assert response.status_code == 400, hostile
        assert response.json()["code"] == "invalid_base_url"
    assert mock.requests == []


def test_body_limit_is_checked_after_the_token(
    make_relay: RelayFactory, mock: MockProvider
) -> None:
    server = make_relay(REQUEST_BODY_LIMIT_BYTES="2000")
    big = b"x" * 5000
    with server.client() as c:
        token = register(c)
        store_key(c, token, "openai", "test-openai-key-limits")
        assert_error(
            c.post("/relay/openai/v1/chat/completions", content=big),
            401,
            "x-relay-token header required",
        )
        assert_error(
            c.post("/relay/openai/v1/chat/completions", content=big, headers=relay_headers(token)),
            413,
            "Request body too large",
        )

        def chunked() -> Iterator[bytes]:
            for _ in range(10):
                yield b"y" * 500

        assert_error(
            c.post(
                "/relay/openai/v1/chat/completions", content=chunked(), headers=relay_headers(token)
            ),
            413,
            "Request body too large",
        )
        ok = c.post("/relay/openai/v1/chat/completions", json=CHAT, headers=relay_headers(token))
        assert ok.status_code == 200
    assert all(len(r.body) <= 2000 for r in mock.requests)


def test_undecryptable_key_fails_only_its_request(
    client: httpx.Client, relay: RelayServer, user: Token
) -> None:
    token = user[0]
    database = str(relay.settings.database_url).removeprefix("sqlite:///")
    token_hash = TokenHasher(TEST_SECRET).hash(token)
    with sqlite3.connect(database) as db:
        db.execute(
            "UPDATE keys SET record = ? WHERE provider = 'mistral' AND user_id = "
            "(SELECT id FROM users WHERE token_hash = ?)",
            (b"\x01" + b"\x00" * 40, token_hash),
        )
        assert db.total_changes == 1
    response = client.post(
        "/relay/mistral/v1/chat/completions", json=CHAT, headers=relay_headers(token)
    )
    assert response.status_code == 500
    assert response.json()["code"] == "key_unreadable"
    assert "could not be decrypted" in response.json()["error"]
    assert client.get("/health").json()["ok"] is True
    ok = client.post("/relay/openai/v1/chat/completions", json=CHAT, headers=relay_headers(token))
    assert ok.status_code == 200


def test_no_key_or_token_ever_reaches_a_log_line_or_response(
    client: httpx.Client, captured_logs: object, mock: MockProvider
) -> None:
    canary = "sk-CANARY-" + "7" * 40
    token = register(client)
    responses: list[httpx.Response] = []
    for provider in ("openai", "anthropic", "google"):
        store_key(client, token, provider, canary)
    responses.append(client.get("/keys", headers=relay_headers(token)))
    for scenario in ("default", "ratelimited", "break", "stall&delay_ms=10", "headers"):
        responses.append(
            client.post(
                f"/relay/openai/v1/chat/completions?scenario={scenario}",
                json={**CHAT, "stream": True},
                headers=relay_headers(token),
            )
        )
    responses.append(
        client.post(
            "/relay/anthropic/v1/messages?scenario=status&status=500",
            json=CHAT,
            headers=relay_headers(token),
        )
    )
    responses.append(
        client.post(
            "/relay/google/v1beta/models/gemini-pro:generateContent",
            json={},
            headers=relay_headers(token),
        )
    )
    responses.append(client.post("/relay/openai/v1/files", headers=relay_headers(token)))
    assert mock.requests, "the relay should have called the mock"
    for response in responses:
        assert canary not in response.text
        assert canary not in str(response.headers)
        assert token not in response.text
    lines = captured_logs.lines  # type: ignore[attr-defined]
    assert lines, "the relay logged nothing at debug level"
    assert not [line for line in lines if canary in line]
    assert not [line for line in lines if token in line]
