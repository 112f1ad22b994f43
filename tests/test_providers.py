"""`relay.providers.table`: the provider table against the contract, and the headers sent
upstream."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from relay.providers.table import PROVIDERS, Provider, forwarded_request_headers
from relay.proxy.prepare import _query

KEY = "sk-stored-key-0123456789"

# (upstream base URL, header carrying the key, prefix before the key, allowed path prefixes),
# as the contract's provider table gives them.
_COMPATIBLE = tuple(
    prefix + endpoint
    for prefix in ("", "/api", "/openai")
    for endpoint in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/responses",
    )
)
CONTRACT = {
    "openai": (
        "https://api.openai.com",
        "authorization",
        "Bearer ",
        ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"),
    ),
    "anthropic": (
        "https://api.anthropic.com",
        "x-api-key",
        "",
        ("/v1/messages", "/v1/complete"),
    ),
    "google": (
        "https://generativelanguage.googleapis.com",
        "x-goog-api-key",
        "",
        ("/v1beta/models", "/v1/models"),
    ),
    "groq": (
        "https://api.groq.com",
        "authorization",
        "Bearer ",
        ("/openai/v1/chat/completions", "/openai/v1/completions", "/openai/v1/embeddings"),
    ),
    "openrouter": (
        "https://openrouter.ai",
        "authorization",
        "Bearer ",
        ("/api/v1/chat/completions", "/api/v1/completions", "/api/v1/embeddings"),
    ),
    "mistral": (
        "https://api.mistral.ai",
        "authorization",
        "Bearer ",
        ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/fim/completions"),
    ),
    "elevenlabs": (
        "https://api.elevenlabs.io",
        "xi-api-key",
        "",
        (
            "/v1/text-to-speech",
            "/v1/speech-to-speech",
            "/v1/sound-generation",
            "/v1/audio-isolation",
            "/v1/voice-generation",
            "/v1/voices",
        ),
    ),
    "huggingface": (
        "https://api-inference.huggingface.co",
        "authorization",
        "Bearer ",
        ("/models",),
    ),
    "deepgram": (
        "https://api.deepgram.com",
        "authorization",
        "Token ",
        ("/v1/listen", "/v1/speak", "/v1/read"),
    ),
    "openai-compatible": ("", "authorization", "Bearer ", _COMPATIBLE),
}

ALL = sorted(CONTRACT)


def forwarded(provider: Provider, client: Mapping[str, str], key: str) -> list[tuple[str, str]]:
    """`forwarded_request_headers`, as text: names ASCII, values the bytes sent (latin-1)."""
    return [
        (name.decode(), value.decode("latin-1"))
        for name, value in forwarded_request_headers(provider, client, key)
    ]


def test_the_ten_providers_of_the_contract() -> None:
    assert sorted(PROVIDERS) == ALL
    assert len(PROVIDERS) == 10
    for name, provider in PROVIDERS.items():
        assert provider.name == name


@pytest.mark.parametrize("name", ALL)
def test_base_url(name: str) -> None:
    assert PROVIDERS[name].base_url == CONTRACT[name][0]


@pytest.mark.parametrize("name", ALL)
def test_auth_header_scheme(name: str) -> None:
    _, header, prefix, _ = CONTRACT[name]
    sent = forwarded(PROVIDERS[name], {}, KEY)
    assert sorted(sent) == sorted([(header, prefix + KEY), *_defaults(name)])


# What the contract sends in a header the client left out.
DEFAULT_REFERER = "https://github.com/byok-relay/byok-relay"
CONTRACT_DEFAULTS = {
    "anthropic": [("anthropic-version", "2023-06-01")],
    "openrouter": [("http-referer", DEFAULT_REFERER)],
}


def _defaults(name: str) -> list[tuple[str, str]]:
    return CONTRACT_DEFAULTS.get(name, [])


# Beyond the contract: what the official SDKs' everyday calls ask (audio, images, moderations).
BEYOND_CONTRACT: Mapping[str, tuple[str, ...]] = {
    # Their OpenAI-compatible chat endpoints, for `/relay/v1/chat/completions`.
    "anthropic": ("/v1/chat/completions",),
    "google": ("/v1beta/openai/chat/completions",),
    "openai": (
        "/v1/audio/speech",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/images/generations",
        "/v1/moderations",
    ),
    "groq": (
        "/openai/v1/audio/speech",
        "/openai/v1/audio/transcriptions",
        "/openai/v1/audio/translations",
    ),
}
# The model listings (GET alone), beyond the contract too.
LISTINGS: Mapping[str, tuple[str, ...]] = {
    "openai": ("/v1/models",),
    "anthropic": ("/v1/models",),
    "google": ("/v1beta/models", "/v1/models", "/v1beta/openai/models"),
    "groq": ("/openai/v1/models",),
    "openrouter": ("/api/v1/models",),
    "mistral": ("/v1/models",),
    "openai-compatible": ("/v1/models", "/api/v1/models", "/openai/v1/models"),
}


@pytest.mark.parametrize("name", ALL)
def test_allowed_prefixes(name: str) -> None:
    expected = CONTRACT[name][3] + BEYOND_CONTRACT.get(name, ())
    assert sorted(PROVIDERS[name].allowed_paths) == sorted(expected)


@pytest.mark.parametrize("name", ALL)
def test_listing_paths(name: str) -> None:
    assert sorted(PROVIDERS[name].listing_paths) == sorted(LISTINGS.get(name, ()))
    for path in PROVIDERS[name].listing_paths:
        assert PROVIDERS[name].allows_listing(path + "/some-model")
        assert not PROVIDERS[name].allows_listing(path + "X")


def _allowlist_cases() -> list[tuple[str, str]]:
    return [(name, prefix) for name in ALL for prefix in CONTRACT[name][3]]


@pytest.mark.parametrize(("name", "prefix"), _allowlist_cases())
def test_allowlist_accepts_a_prefix_and_its_continuations(name: str, prefix: str) -> None:
    provider = PROVIDERS[name]
    assert provider.allows(prefix)
    assert provider.allows(prefix + "/")
    assert provider.allows(prefix + "/x")
    assert provider.allows(prefix + "/x/y:generateContent")


@pytest.mark.parametrize(("name", "prefix"), _allowlist_cases())
def test_allowlist_refuses_near_misses(name: str, prefix: str) -> None:
    provider = PROVIDERS[name]
    for path in (
        prefix + "X",
        prefix + "-x",
        prefix + ".json",
        prefix + ":x",
        prefix[:-1],
        prefix.upper(),
        prefix.rsplit("/", 1)[0] or "/",
        prefix.lstrip("/"),
        "/x" + prefix,
        "/" + prefix,
        prefix + "%2Fx",
        "",
    ):
        assert not provider.allows(path), path


@pytest.mark.parametrize(
    ("name", "path", "allowed"),
    [
        ("openai", "/v1/chat/completions", True),
        ("openai", "/v1/chat/completions/x", True),
        ("openai", "/v1/chat/completionsX", False),
        ("openai", "/v1/files", False),
        ("openai", "/v1/models", False),
        ("openai", "/v1/fine_tuning/jobs", False),
        ("openai", "/v1/responses/resp_123", True),
        ("openai", "/v1/messages", False),
        ("anthropic", "/v1/messages", True),
        ("anthropic", "/v1/messages/batches", True),
        ("anthropic", "/v1/complete", True),
        ("anthropic", "/v1/completions", False),
        ("anthropic", "/v1/models", False),
        ("google", "/v1beta/models/gemini-pro:generateContent", True),
        ("google", "/v1beta/models/gemini-pro:streamGenerateContent", True),
        ("google", "/v1/models/gemini-pro:generateContent", True),
        ("google", "/v1beta/modelsX", False),
        ("google", "/v1beta/files", False),
        ("google", "/v1beta/tunedModels", False),
        ("groq", "/openai/v1/chat/completions", True),
        ("groq", "/v1/chat/completions", False),
        ("groq", "/openai/v1/models", False),
        ("openrouter", "/api/v1/chat/completions", True),
        ("openrouter", "/api/v1/keys", False),
        ("openrouter", "/v1/chat/completions", False),
        ("mistral", "/v1/fim/completions", True),
        ("mistral", "/v1/fim", False),
        ("mistral", "/v1/files", False),
        ("elevenlabs", "/v1/text-to-speech/voice123", True),
        ("elevenlabs", "/v1/text-to-speech/voice123/stream", True),
        ("elevenlabs", "/v1/voices", True),
        ("elevenlabs", "/v1/user", False),
        ("elevenlabs", "/v1/history", False),
        ("huggingface", "/models/gpt2", True),
        ("huggingface", "/modelsX", False),
        ("huggingface", "/api/whoami", False),
        ("deepgram", "/v1/listen", True),
        ("deepgram", "/v1/speak", True),
        ("deepgram", "/v1/read", True),
        ("deepgram", "/v1/projects", False),
        ("openai-compatible", "/v1/chat/completions", True),
        ("openai-compatible", "/api/v1/messages", True),
        ("openai-compatible", "/openai/v1/responses/resp_1", True),
        ("openai-compatible", "/api/tags", False),
        ("openai-compatible", "/v1/models", False),
        ("openai-compatible", "/ollama/v1/chat/completions", False),
    ],
)
def test_allowlist_examples(name: str, path: str, allowed: bool) -> None:
    assert PROVIDERS[name].allows(path) is allowed


# ---------------------------------------------------------------------------------------------
# Reads: GET only for ElevenLabs voices and OpenAI responses.

READS = {"elevenlabs": ("/v1/voices",), "openai": ("/v1/responses",)}


@pytest.mark.parametrize("name", ALL)
def test_read_paths(name: str) -> None:
    provider = PROVIDERS[name]
    assert provider.read_paths == READS.get(name, ())
    for path in provider.read_paths:
        assert provider.allows(path), "a read path must also pass the allowlist"


@pytest.mark.parametrize(
    ("name", "path", "readable"),
    [
        ("elevenlabs", "/v1/voices", True),
        ("elevenlabs", "/v1/voices/voice123", True),
        ("elevenlabs", "/v1/voices/voice123/settings", True),
        ("elevenlabs", "/v1/voicesX", False),
        ("elevenlabs", "/v1/text-to-speech/voice123", False),
        ("elevenlabs", "/v1/voice-generation", False),
        ("openai", "/v1/responses/resp_123", True),
        ("openai", "/v1/responses/resp_123/input_items", True),
        ("openai", "/v1/responsesX", False),
        ("openai", "/v1/chat/completions", False),
        ("openai", "/v1/embeddings", False),
        ("openai-compatible", "/v1/responses/resp_123", False),
        ("anthropic", "/v1/messages", False),
        ("google", "/v1beta/models/gemini-pro", False),
        ("huggingface", "/models/gpt2", False),
        ("deepgram", "/v1/listen", False),
    ],
)
def test_allows_read(name: str, path: str, readable: bool) -> None:
    assert PROVIDERS[name].allows_read(path) is readable


# ---------------------------------------------------------------------------------------------
# Headers sent upstream

# Everything a browser may send that must never reach a provider.
NEVER_FORWARDED = {
    "authorization": "Bearer client-supplied",
    "x-relay-token": "relay-token-value",
    "cookie": "session=abc",
    "proxy-authorization": "Basic eA==",
    "host": "relay.example",
    "connection": "keep-alive, x-relay-token",
    "keep-alive": "timeout=5",
    "transfer-encoding": "chunked",
    "te": "trailers",
    "trailer": "x",
    "upgrade": "websocket",
    "content-length": "12",
    "origin": "https://app.example",
    "x-forwarded-for": "10.0.0.1",
    "x-relay-base-url": "https://llm.example",
    "x-api-key": "client-anthropic-key",
    "x-goog-api-key": "client-google-key",
    "xi-api-key": "client-elevenlabs-key",
}


@pytest.mark.parametrize("name", ALL)
def test_client_credentials_and_hop_by_hop_headers_are_never_forwarded(name: str) -> None:
    provider = PROVIDERS[name]
    sent = forwarded(provider, NEVER_FORWARDED, KEY)
    assert sorted(sent) == sorted(
        [(provider.auth_header, provider.auth_prefix + KEY), *_defaults(name)]
    )
    values = " ".join(value for _, value in sent)
    for secret in ("client-supplied", "relay-token-value", "session=abc", "client-"):
        assert secret not in values


@pytest.mark.parametrize("name", ALL)
def test_exactly_one_auth_header_carrying_the_stored_key(name: str) -> None:
    provider = PROVIDERS[name]
    client = {provider.auth_header: "client-value", "content-type": "application/json"}
    sent = forwarded(provider, client, KEY)
    auth = [value for header, value in sent if header == provider.auth_header]
    assert auth == [provider.auth_prefix + KEY]
    names = [header for header, _ in sent]
    assert len(names) == len(set(names))
    assert all(header == header.lower() for header in names)


@pytest.mark.parametrize("name", ALL)
def test_common_headers_are_forwarded(name: str) -> None:
    client = {
        "content-type": "application/json; charset=utf-8",
        "accept": "text/event-stream",
        "accept-language": "en",
    }
    sent = dict(forwarded(PROVIDERS[name], client, KEY))
    for header, value in client.items():
        assert sent[header] == value


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", ["\r", "\n", "\0", "\r\n", "\r\n\r\n", "\0\r\n"])
def test_cr_lf_nul_are_stripped_from_forwarded_values(name: str, bad: str) -> None:
    client = {
        "content-type": f"application/json{bad}x-injected: 1",
        "anthropic-version": f"2023-06-01{bad}x-injected: 1",
        "anthropic-beta": f"tools{bad}",
        "openai-organization": f"{bad}org-1",
        "openai-project": f"proj{bad}1",
        "http-referer": f"https://app.example/{bad}x",
        "x-title": f"My{bad}App",
    }
    sent = forwarded(PROVIDERS[name], client, KEY)
    headers = dict(sent)
    assert headers["content-type"] == "application/jsonx-injected: 1"
    for header, value in sent:
        assert not set(value) & {"\r", "\n", "\0"}, header
        assert not set(header) & {"\r", "\n", "\0", ":", " "}, header
    if "anthropic-version" in headers:
        assert headers["anthropic-version"] == "2023-06-01x-injected: 1"
    if "x-title" in headers:
        assert headers["x-title"] == "MyApp"
    if "openai-organization" in headers:
        assert headers["openai-organization"] == "org-1"


def test_anthropic_version_defaults_only_when_the_client_sent_none() -> None:
    anthropic = PROVIDERS["anthropic"]
    assert dict(forwarded(anthropic, {}, KEY))["anthropic-version"] == "2023-06-01"
    sent = forwarded(anthropic, {"anthropic-version": "2024-10-22", "anthropic-beta": "b1"}, KEY)
    assert [v for h, v in sent if h == "anthropic-version"] == ["2024-10-22"]
    assert dict(sent)["anthropic-beta"] == "b1"
    assert dict(sent)["x-api-key"] == KEY


@pytest.mark.parametrize("name", [n for n in ALL if n != "anthropic"])
def test_no_anthropic_version_default_elsewhere(name: str) -> None:
    sent = dict(forwarded(PROVIDERS[name], {}, KEY))
    assert "anthropic-version" not in sent


def test_openai_compatible_forwards_anthropic_and_openai_headers_without_defaults() -> None:
    compatible = PROVIDERS["openai-compatible"]
    client = {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "b",
        "openai-organization": "org",
        "openai-project": "proj",
        "http-referer": "https://app.example",
        "x-title": "T",
    }
    sent = dict(forwarded(compatible, client, KEY))
    assert sent == {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "b",
        "openai-organization": "org",
        "openai-project": "proj",
        "authorization": "Bearer " + KEY,
    }


def test_openai_forwards_organization_and_project_only() -> None:
    client = {
        "openai-organization": "org",
        "openai-project": "proj",
        "anthropic-version": "2023-06-01",
        "http-referer": "https://app.example",
        "x-title": "T",
    }
    sent = dict(forwarded(PROVIDERS["openai"], client, KEY))
    assert sent == {
        "openai-organization": "org",
        "openai-project": "proj",
        "authorization": "Bearer " + KEY,
    }


@pytest.mark.parametrize(
    ("client", "referer"),
    [
        ({"http-referer": "https://a.example"}, "https://a.example"),
        ({"x-relay-referer": "https://b.example"}, "https://b.example"),
        (
            {"http-referer": "https://a.example", "x-relay-referer": "https://b.example"},
            "https://a.example",
        ),
        ({}, DEFAULT_REFERER),
    ],
)
def test_openrouter_referer(client: dict[str, str], referer: str) -> None:
    sent = forwarded(PROVIDERS["openrouter"], client, KEY)
    referers = [value for header, value in sent if header == "http-referer"]
    assert referers == [referer]
    assert all(header != "x-relay-referer" for header, _ in sent)


def test_the_operators_default_replaces_the_tables_and_the_client_still_wins() -> None:
    openrouter = PROVIDERS["openrouter"]
    operator = {"http-referer": "https://relay.example"}

    def referers(client: dict[str, str]) -> list[bytes]:
        sent = forwarded_request_headers(openrouter, client, KEY, operator)
        return [value for header, value in sent if header == b"http-referer"]

    assert referers({}) == [b"https://relay.example"]
    assert referers({"x-relay-referer": "https://b.example"}) == [b"https://b.example"]
    # A default the operator did not set keeps the table's value.
    anthropic = dict(forwarded_request_headers(PROVIDERS["anthropic"], {}, KEY, operator))
    assert anthropic[b"anthropic-version"] == b"2023-06-01"
    assert b"http-referer" not in anthropic


def test_openrouter_title() -> None:
    sent = dict(
        forwarded(
            PROVIDERS["openrouter"], {"x-title": "My App", "x-relay-referer": "https://b"}, KEY
        )
    )
    assert sent == {
        "http-referer": "https://b",
        "x-title": "My App",
        "authorization": "Bearer " + KEY,
    }


@pytest.mark.parametrize("name", [n for n in ALL if n != "openrouter"])
def test_referer_and_title_are_openrouter_only(name: str) -> None:
    client = {"http-referer": "https://a", "x-relay-referer": "https://b", "x-title": "T"}
    sent = dict(forwarded(PROVIDERS[name], client, KEY))
    assert not {"http-referer", "x-relay-referer", "x-title"} & set(sent)


# ---------------------------------------------------------------------------------------------
# `_query`: the client's query string, less the credentials Google would read from it, plus
# `alt=sse` for Google's streaming action

STREAM = "/v1beta/models/gemini-pro:streamGenerateContent"
GENERATE = "/v1beta/models/gemini-pro:generateContent"


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        (STREAM, b"", "?alt=sse"),
        (STREAM, b"foo=1", "?foo=1&alt=sse"),
        (STREAM, b"salt=1", "?salt=1&alt=sse"),
        (STREAM, b"x=alt", "?x=alt&alt=sse"),
        (STREAM, b"alt=json", "?alt=json"),
        (STREAM, b"alt=sse", "?alt=sse"),
        (STREAM, b"a=1&alt=proto&b=2", "?a=1&alt=proto&b=2"),
        (STREAM, b"alt", "?alt"),
        (STREAM, b"alt=", "?alt="),
        ("/v1/models/gemini-pro:streamGenerateContent", b"", "?alt=sse"),
        ("/v1beta/models/gemini-pro:generateContent", b"", ""),
        ("/v1beta/models/gemini-pro:generateContent", b"foo=1", "?foo=1"),
        ("/v1beta/models/gemini-pro:streamGenerateContent/x", b"", ""),
        # The client's own credentials never reach Google, however the name is spelled.
        (GENERATE, b"key=attacker&alt=json", "?alt=json"),
        (GENERATE, b"alt=json&key=attacker&x=%20y", "?alt=json&x=%20y"),
        (GENERATE, b"key=a&key=b", ""),
        (GENERATE, b"key", ""),
        (GENERATE, b"key=", ""),
        (GENERATE, b"%6Bey=a&k%65y=b&%6b%65%79=c&KEY=d&Key=e", ""),
        (GENERATE, b"$key=a&%24key=b&%24KEY=c", ""),
        (GENERATE, b"access_token=a&oauth_token=b&access%5Ftoken=c&a=1", "?a=1"),
        (
            GENERATE,
            b"keys=1&monkey=2&apikey=3&a=key&b=key%3D1",
            "?keys=1&monkey=2&apikey=3&a=key&b=key%3D1",
        ),
        (GENERATE, b"%256Bey=a", "?%256Bey=a"),  # decoded once, as Google does: not `key`
        (STREAM, b"key=attacker", "?alt=sse"),
        (STREAM, b"key=attacker&alt=json", "?alt=json"),
    ],
)
def test_query_for_google(path: str, query: bytes, expected: str) -> None:
    assert _query(PROVIDERS["google"], path, query) == expected


def test_only_google_withholds_query_parameters() -> None:
    withholding = {name for name, p in PROVIDERS.items() if p.withheld_query}
    assert withholding == {"google"}
    assert {"key", "$key"} <= set(PROVIDERS["google"].withheld_query)


@pytest.mark.parametrize("name", [n for n in ALL if n != "google"])
@pytest.mark.parametrize("query", [b"", b"stream=true&x=%20y", b"alt=json", b"key=mine&%6Bey=x"])
def test_query_is_untouched_for_other_providers(name: str, query: bytes) -> None:
    expected = "?" + query.decode() if query else ""
    assert _query(PROVIDERS[name], "/v1/chat/completions:streamGenerateContent", query) == expected
    assert _query(PROVIDERS[name], "/v1/chat/completions", query) == expected


@pytest.mark.parametrize(
    ("offered", "forwarded_value"),
    [
        ("gzip, deflate, br, zstd", "gzip, deflate"),
        ("br;q=1.0, gzip;q=0.8", "gzip;q=0.8"),
        ("br", "identity"),
        ("identity", "identity"),
    ],
)
def test_only_encodings_the_usage_meter_reads_are_offered_upstream(
    offered: str, forwarded_value: str
) -> None:
    sent = dict(forwarded(PROVIDERS["openai"], {"accept-encoding": offered}, KEY))
    assert sent["accept-encoding"] == forwarded_value


@pytest.mark.parametrize("name", [n for n, p in PROVIDERS.items() if p.openai_base])
def test_an_openai_compatible_base_is_on_the_allowlists(name: str) -> None:
    """What `/relay/v1` sends to (chat) and lists (models) passes the provider's own lists."""
    provider = PROVIDERS[name]
    assert provider.allows(provider.openai_base + "/chat/completions")
    assert provider.allows_listing(provider.openai_base + "/models")
