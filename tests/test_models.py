"""ALLOWED_MODELS: the patterns, where each provider names its model, and the relay refusing
every request that names a model outside the list, or none it can read."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import Forbidden
from relay.providers.allowlist import ModelPolicy
from relay.providers.table import PROVIDERS
from relay.proxy.modelname import model_of
from tests.conftest import RelayFactory
from tests.mockprovider import MockProvider
from tests.relayserver import RelayServer, register, store_key

pytestmark = pytest.mark.sqlite

ALLOWED = "gpt-4o-mini,claude-3-5-*,google/gemini-1.5-*,eleven_*,nova-2,openrouter/meta/*"


@pytest.mark.parametrize(
    ("model", "provider", "allowed"),
    [
        ("gpt-4o-mini", "openai", True),
        ("GPT-4o-MINI", "openai", True),
        ("gpt-4o-mini-2024", "openai", False),  # whole-string match
        ("xgpt-4o-mini", "openai", False),
        ("gpt-4o", "openai", False),
        ("claude-3-5-haiku-latest", "anthropic", True),
        ("claude-3-opus", "anthropic", False),
        ("gemini-1.5-flash", "google", True),  # matched as google/gemini-1.5-flash
        ("gemini-1.5-flash", "groq", False),
        ("eleven_multilingual_v2", "elevenlabs", True),
        ("meta/llama-3", "openrouter", True),
        ("meta/llama-3", "groq", False),
        ("", "openai", False),
    ],
)
def test_patterns(model: str, provider: str, allowed: bool) -> None:
    assert ModelPolicy(ALLOWED.split(",")).allows(model, provider) is allowed


def test_an_empty_list_allows_everything() -> None:
    policy = ModelPolicy([])
    assert not policy.enabled
    assert policy.allows("anything at all", "openai")


def test_refusals_carry_the_contract_message() -> None:
    policy = ModelPolicy(["gpt-4o-mini"])
    with pytest.raises(Forbidden) as refused:
        policy.check("gpt-4o", "openai")
    assert refused.value.message == 'Model "gpt-4o" is not permitted on this relay.'
    assert refused.value.extra["allowed_models"] == ["gpt-4o-mini"]
    with pytest.raises(Forbidden):
        policy.check(None, "openai")


pattern_text = st.text(alphabet="abc-.*/", min_size=1, max_size=8)
model_text = st.text(alphabet="abc-./", max_size=10)


@settings(max_examples=500, deadline=None)
@given(st.lists(pattern_text, min_size=1, max_size=3), model_text)
def test_patterns_agree_with_shell_wildcards(patterns: list[str], model: str) -> None:
    """`*` is the only wildcard, the match is whole-string and case-insensitive."""
    expected = any(
        fnmatch.fnmatchcase(name.lower(), p.lower())
        for p in patterns
        for name in (model, f"openai/{model}")
    )
    assert ModelPolicy(patterns).allows(model, "openai") is expected


def body_model(provider: str, body: bytes, content_type: str = "application/json") -> str | None:
    return model_of(PROVIDERS[provider], "/v1/chat/completions", b"", content_type, body)


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b'{"model": "gpt-4o"}', "application/json", "gpt-4o"),
        (b'{"model": "gpt-4o"}', "text/plain", "gpt-4o"),  # whatever the content type says
        (b'{"model": "a", "model": "b"}', "application/json", None),  # duplicates: refused
        (b'{"messages": [{"model": "gpt-4o"}]}', "application/json", None),  # nested only
        (b'[["model", "gpt-4o"]]', "application/json", None),  # not an object
        (b'{"model": 4}', "application/json", None),
        (b'{"model": ""}', "application/json", None),
        (b"model=gpt-4o&x=1", "application/x-www-form-urlencoded", "gpt-4o"),
        (b"model=a&model=b", "application/x-www-form-urlencoded", None),
        (b"not json at all", "application/json", None),
        (b"", "application/json", None),
    ],
)
def test_model_from_the_body(body: bytes, content_type: str, expected: str | None) -> None:
    assert body_model("openai", body, content_type) == expected


def test_model_from_a_multipart_form() -> None:
    boundary = "XyZ"
    body = (
        f'--{boundary}\r\ncontent-disposition: form-data; name="model_id"\r\n\r\n'
        f'eleven_turbo_v2\r\n--{boundary}\r\ncontent-disposition: form-data; name="audio"; '
        f'filename="a.wav"\r\ncontent-type: audio/wav\r\n\r\nRIFF....\r\n--{boundary}--\r\n'
    ).encode()
    provider = PROVIDERS["elevenlabs"]
    content_type = f"multipart/form-data; boundary={boundary}"
    assert model_of(provider, "/v1/speech-to-speech/v", b"", content_type, body) == (
        "eleven_turbo_v2"
    )
    doubled = body.replace(b'name="audio"', b'name="model_id"')
    assert model_of(provider, "/v1/speech-to-speech/v", b"", content_type, doubled) is None


@pytest.mark.parametrize(
    ("provider", "path", "query", "expected"),
    [
        ("google", "/v1beta/models/gemini-1.5-flash:generateContent", b"", "gemini-1.5-flash"),
        ("google", "/v1/models/gemini-pro:streamGenerateContent", b"alt=sse", "gemini-pro"),
        ("google", "/v1beta/models", b"", None),
        ("huggingface", "/models/stabilityai/sdxl", b"", "stabilityai/sdxl"),
        ("deepgram", "/v1/listen", b"model=nova-2&smart_format=true", "nova-2"),
        ("deepgram", "/v1/listen", b"model=nova-2&model=whisper", None),
        ("deepgram", "/v1/listen", b"", None),
    ],
)
def test_model_from_the_path_or_query(
    provider: str, path: str, query: bytes, expected: str | None
) -> None:
    assert model_of(PROVIDERS[provider], path, query, "application/json", b"{}") == expected


json_values = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8))
models = st.sampled_from(["gpt-4o-mini", "gpt-4o", "GPT-4O-MINI", "o1", "", "gpt-4o-mini "])


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["model", "messages", "stream", "Model"]),
            st.one_of(models, json_values),
        ),
        max_size=5,
    )
)
def test_no_body_that_passes_names_a_forbidden_model(pairs: list[tuple[str, object]]) -> None:
    """Whatever a provider's JSON parser keeps of duplicate keys (first or last), a body the
    policy lets through names only allowed models."""
    body = ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}").encode()
    policy = ModelPolicy(["gpt-4o-mini"])
    model = body_model("openai", body)
    if model is None or not policy.allows(model, "openai"):
        return
    named = [v for k, v in pairs if k == "model"]
    assert named, "a body without a model must not pass"
    for value in (named[0], named[-1]):
        assert isinstance(value, str)
        assert policy.allows(value, "openai")


# Through a real relay -------------------------------------------------------------------


@pytest.fixture
def restricted(make_relay: RelayFactory) -> tuple[RelayServer, str]:
    server = make_relay(ALLOWED_MODELS=ALLOWED)
    with server.client() as client:
        token = register(client)
        for provider in ("openai", "anthropic", "google", "elevenlabs", "deepgram"):
            store_key(client, token, provider, f"test-{provider}-key-models")
    return server, token


def post(
    server: RelayServer, token: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
) -> httpx.Response:
    with server.client() as client:
        return client.post(path, headers={"x-relay-token": token, **(headers or {})}, **kwargs)


def assert_refused(response: httpx.Response, model: str | None) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["code"] == "model_not_permitted"
    assert body["allowed_models"] == ALLOWED.split(",")
    if model is not None:
        assert body["error"] == f'Model "{model}" is not permitted on this relay.'


def test_allowed_models_pass_byte_for_byte(
    restricted: tuple[RelayServer, str], mock: MockProvider
) -> None:
    server, token = restricted
    body = b'{ "model": "gpt-4o-mini",  "messages": [] }'
    response = post(
        server,
        token,
        "/relay/openai/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert mock.last().body == body
    assert (
        post(
            server, token, "/relay/anthropic/v1/messages", json={"model": "claude-3-5-haiku-latest"}
        ).status_code
        == 200
    )
    assert (
        post(
            server, token, "/relay/google/v1beta/models/gemini-1.5-flash:generateContent", json={}
        ).status_code
        == 200
    )
    assert (
        post(
            server,
            token,
            "/relay/elevenlabs/v1/text-to-speech/v1",
            json={"text": "hi", "model_id": "eleven_turbo_v2"},
        ).status_code
        == 200
    )
    assert (
        post(
            server,
            token,
            "/relay/deepgram/v1/listen?model=nova-2",
            content=b"RIFF",
            headers={"content-type": "audio/wav"},
        ).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("path", "kwargs", "model"),
    [
        ("/relay/openai/v1/chat/completions", {"json": {"model": "gpt-4o"}}, "gpt-4o"),
        ("/relay/openai/v1/chat/completions", {"json": {"messages": []}}, None),
        (
            "/relay/openai/v1/chat/completions",
            {"content": b'{"model":"gpt-4o","model":"gpt-4o-mini"}'},
            None,
        ),
        (
            "/relay/openai/v1/chat/completions",
            {"content": b'{"model":"gpt-4o"}', "headers": {"content-type": "text/plain"}},
            "gpt-4o",
        ),
        ("/relay/openai/v1/embeddings", {"content": b"\x00\x01binary"}, None),
        ("/relay/anthropic/v1/messages", {"json": {"model": "claude-3-opus"}}, "claude-3-opus"),
        (
            "/relay/google/v1beta/models/gemini-2.0-pro:generateContent",
            {"json": {}},
            "gemini-2.0-pro",
        ),
        (
            "/relay/google/v1beta/models/gemini-1.5-flash/../gemini-ultra:generateContent",
            {"json": {}},
            "gemini-ultra",
        ),
        ("/relay/elevenlabs/v1/text-to-speech/v1", {"json": {"text": "no model"}}, None),
        ("/relay/deepgram/v1/listen?model=whisper", {"content": b"RIFF"}, "whisper"),
        ("/relay/deepgram/v1/listen", {"content": b"RIFF"}, None),
    ],
)
def test_forbidden_or_unreadable_models_never_reach_the_provider(
    restricted: tuple[RelayServer, str],
    mock: MockProvider,
    path: str,
    kwargs: dict[str, object],
    model: str | None,
) -> None:
    server, token = restricted
    assert_refused(post(server, token, path, **kwargs), model)
    assert mock.requests == []


def test_reads_need_no_model(restricted: tuple[RelayServer, str]) -> None:
    server, token = restricted
    with server.client() as client:
        voices = client.get("/relay/elevenlabs/v1/voices", headers={"x-relay-token": token})
    assert voices.status_code == 200
