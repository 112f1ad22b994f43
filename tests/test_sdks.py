"""The official OpenAI and Anthropic SDKs, used unchanged, talk to providers through the relay."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from tests.conftest import RelayFactory, provider_key
from tests.mockprovider import AUDIO_BYTES, MockProvider
from tests.relayserver import RelayServer, register, store_key

pytestmark = pytest.mark.sqlite

Token = tuple[str, dict[str, str]]
MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def openai_client(relay: RelayServer, user: Token) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{relay.url}/relay/openai/v1",
        api_key="sdk-placeholder-not-a-key",
        default_headers={"x-relay-token": user[0]},
        max_retries=0,
    )


@pytest.fixture
def anthropic_client(relay: RelayServer, user: Token) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=f"{relay.url}/relay/anthropic",
        api_key="sdk-placeholder-not-a-key",
        default_headers={"x-relay-token": user[0]},
        max_retries=0,
    )


def test_openai_sdk_chat(openai_client: openai.OpenAI, mock: MockProvider, user: Token) -> None:
    with openai_client:
        completion = openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello from mock"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 18
    assert mock.last().header("authorization") == f"Bearer {user[1]['openai']}"


def test_openai_sdk_streamed_chat(openai_client: openai.OpenAI, user: Token) -> None:
    with openai_client:
        stream = openai_client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f"tok{i} " for i in range(5))
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 18


def test_openai_sdk_sees_provider_errors(openai_client: openai.OpenAI) -> None:
    with openai_client, pytest.raises(openai.RateLimitError):
        openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_query={"scenario": "ratelimited"}
        )


def test_anthropic_sdk_message(
    anthropic_client: anthropic.Anthropic, mock: MockProvider, user: Token
) -> None:
    with anthropic_client:
        message = anthropic_client.messages.create(
            model="claude-3-5-haiku-latest", max_tokens=32, messages=MESSAGES
        )
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from mock"
    assert mock.last().header("x-api-key") == user[1]["anthropic"]
    assert mock.last().header("authorization") is None


def test_anthropic_sdk_streamed_message(anthropic_client: anthropic.Anthropic) -> None:
    with (
        anthropic_client,
        anthropic_client.messages.stream(
            model="claude-3-5-haiku-latest", max_tokens=32, messages=MESSAGES
        ) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "".join(f"tok{i} " for i in range(5))
    assert final.usage.output_tokens > 0


# -- The relay token as the SDK's API key, and the SDKs' everyday calls ----------------------


@pytest.fixture
def openai_keyed(relay: RelayServer, user: Token) -> openai.OpenAI:
    """The SDK as its docs show it: a base URL and a key (the relay token), nothing else."""
    return openai.OpenAI(base_url=f"{relay.url}/relay/openai/v1", api_key=user[0], max_retries=0)


def nothing_of(token: str, mock: MockProvider) -> None:
    """The token reached the provider in no header of any request."""
    for request in mock.requests:
        assert token not in str(request.headers)


def test_the_openai_sdk_works_with_the_token_as_its_api_key(
    openai_keyed: openai.OpenAI, mock: MockProvider, user: Token
) -> None:
    with openai_keyed:
        completion = openai_keyed.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        listed = openai_keyed.models.list()
        model = openai_keyed.models.retrieve("gpt-4o-mini")
    assert completion.choices[0].message.content == "Hello from mock"
    assert "gpt-4o-mini" in [m.id for m in listed.data]
    assert model.id == "gpt-4o-mini"
    assert mock.last().header("authorization") == f"Bearer {user[1]['openai']}"
    nothing_of(user[0], mock)


def test_the_anthropic_sdk_works_with_the_token_as_its_api_key(
    relay: RelayServer, mock: MockProvider, user: Token
) -> None:
    with anthropic.Anthropic(
        base_url=f"{relay.url}/relay/anthropic", api_key=user[0], max_retries=0
    ) as client:
        message = client.messages.create(
            model="claude-3-5-haiku-latest", max_tokens=32, messages=MESSAGES
        )
        counted = client.messages.count_tokens(model="claude-3-5-haiku-latest", messages=MESSAGES)
        listed = client.models.list()
    assert message.content[0].type == "text"
    assert counted.input_tokens == 12
    assert listed.data
    assert mock.last().header("x-api-key") == user[1]["anthropic"]
    nothing_of(user[0], mock)


def test_the_token_as_googles_api_key(relay: RelayServer, mock: MockProvider, user: Token) -> None:
    with httpx.Client(base_url=relay.url) as client:
        answer = client.post(
            "/relay/google/v1beta/models/gemini-1.5-flash:generateContent",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
            headers={"x-goog-api-key": user[0]},
        )
        listed = client.get("/relay/google/v1beta/models", headers={"x-goog-api-key": user[0]})
    assert answer.status_code == 200, answer.text
    assert listed.status_code == 200, listed.text
    assert mock.last().header("x-goog-api-key") == user[1]["google"]
    nothing_of(user[0], mock)


def test_x_relay_token_wins_over_an_sdk_key(relay: RelayServer, user: Token) -> None:
    with httpx.Client(base_url=relay.url) as client:
        answer = client.get(
            "/keys", headers={"x-relay-token": user[0], "authorization": "Bearer not-a-token"}
        )
        wrong = client.get("/keys", headers={"x-relay-token": "nope", "x-api-key": user[0]})
        missing = client.get("/keys", headers={"authorization": "Basic dXNlcjpwdw=="})
    assert answer.status_code == 200
    assert (wrong.status_code, wrong.json()["code"]) == (401, "invalid_token")
    assert (missing.status_code, missing.json()["code"]) == (401, "token_required")
    assert missing.json()["error"] == "x-relay-token header required"  # the Node relay's words


def test_the_openai_sdks_audio_image_and_moderation_calls(
    openai_keyed: openai.OpenAI, mock: MockProvider
) -> None:
    with openai_keyed:
        speech = openai_keyed.audio.speech.create(model="tts-1", voice="alloy", input="Hello")
        transcript = openai_keyed.audio.transcriptions.create(
            model="whisper-1", file=("hello.mp3", b"ID3 not really audio", "audio/mpeg")
        )
        image = openai_keyed.images.generate(model="dall-e-3", prompt="a relay")
        moderation = openai_keyed.moderations.create(model="omni-moderation-latest", input="hello")
    assert speech.content == AUDIO_BYTES
    assert transcript.text == "hello from mock"
    assert image.data
    assert image.data[0].b64_json
    assert moderation.results[0].flagged is False
    paths = [request.path for request in mock.requests]
    for path in (
        "/v1/audio/speech",
        "/v1/audio/transcriptions",
        "/v1/images/generations",
        "/v1/moderations",
    ):
        assert path in paths


def test_the_everyday_calls_stay_behind_allowed_models(
    make_relay: RelayFactory, mock: MockProvider
) -> None:
    relay = make_relay(ALLOWED_MODELS="gpt-4o-mini,whisper-1")
    with httpx.Client(base_url=relay.url) as client:
        token, _ = _user_with(client, "openai")
    with openai.OpenAI(
        base_url=f"{relay.url}/relay/openai/v1", api_key=token, max_retries=0
    ) as sdk:
        with pytest.raises(openai.PermissionDeniedError):
            sdk.audio.speech.create(model="tts-1", voice="alloy", input="Hello")
        with pytest.raises(openai.PermissionDeniedError):
            sdk.images.generate(model="dall-e-3", prompt="a relay")
        transcript = sdk.audio.transcriptions.create(
            model="whisper-1", file=("a.mp3", b"ID3", "audio/mpeg")
        )
        listed = sdk.models.list()  # names no model: never refused by the allowlist
    assert transcript.text == "hello from mock"
    assert listed.data


def test_a_listing_path_takes_get_alone(relay: RelayServer, user: Token) -> None:
    with httpx.Client(base_url=relay.url, headers={"x-relay-token": user[0]}) as client:
        posted = client.post("/relay/openai/v1/models", json={})
        deleted = client.delete("/relay/openai/v1/models/gpt-4o-mini")
    assert (posted.status_code, posted.json()["code"]) == (403, "path_not_permitted")
    assert deleted.status_code == 405


def _user_with(client: httpx.Client, provider: str) -> Token:
    token = register(client)
    key = provider_key(provider)
    store_key(client, token, provider, key)
    return token, {provider: key}


# -- One base URL for every model ---------------------------------------------------------------

COMPATIBLE_MODELS = [
    ("gpt-4o-mini", "openai", "/v1/chat/completions", "authorization"),
    ("groq/llama-3.1-8b-instant", "groq", "/openai/v1/chat/completions", "authorization"),
    ("mistral-small-latest", "mistral", "/v1/chat/completions", "authorization"),
    ("gemini-2.0-flash", "google", "/v1beta/openai/chat/completions", "x-goog-api-key"),
    ("claude-3-5-haiku-latest", "anthropic", "/v1/chat/completions", "x-api-key"),
    ("openrouter/meta-llama/llama-3-8b", "openrouter", "/api/v1/chat/completions", "authorization"),
]


@pytest.mark.parametrize(("model", "provider", "path", "key_header"), COMPATIBLE_MODELS)
def test_the_openai_sdk_at_relay_v1_reaches_every_provider(
    relay: RelayServer,
    mock: MockProvider,
    user: Token,
    model: str,
    provider: str,
    path: str,
    key_header: str,
) -> None:
    """`/relay/v1` as the SDK's base URL: the model picks the provider, whose own
    OpenAI-compatible endpoint gets the body (the model less its prefix) and the stored key."""
    with openai.OpenAI(base_url=f"{relay.url}/relay/v1", api_key=user[0], max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
        streamed = list(sdk.chat.completions.create(model=model, messages=MESSAGES, stream=True))
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from mock"
    assert raw.headers["x-relay-provider"] == provider
    assert streamed
    sent = mock.last()
    assert sent.path == path
    assert sent.json()["model"] == model.removeprefix(f"{provider}/")
    assert sent.json()["stream"] is True
    expected = user[1][provider]
    assert (sent.header(key_header) or "").removeprefix("Bearer ") == expected
    nothing_of(user[0], mock)


def test_relay_v1_refuses_what_it_cannot_route(relay: RelayServer, user: Token) -> None:
    with httpx.Client(base_url=relay.url, headers={"x-relay-token": user[0]}) as client:
        unknown = client.post("/relay/v1/chat/completions", json={"model": "no-such-model"})
        missing = client.post("/relay/v1/chat/completions", json={"messages": []})
        other = client.post("/relay/v1/embeddings", json={"model": "text-embedding-3-small"})
    assert (unknown.status_code, unknown.json()["code"]) == (400, "unroutable_model")
    assert (missing.status_code, missing.json()["code"]) == (400, "model_required")
    assert (other.status_code, other.json()["code"]) == (400, "unsupported_provider")


def test_the_openai_sdk_at_relay_v1_lists_the_models_of_every_key_held(
    relay: RelayServer, mock: MockProvider, user: Token
) -> None:
    """Each id is `provider/id`, and goes back to that provider through `/relay/v1`."""
    with openai.OpenAI(base_url=f"{relay.url}/relay/v1", api_key=user[0], max_retries=0) as sdk:
        ids = [model.id for model in sdk.models.list()]
        chosen = "google/gemini-2.0-flash"
        assert chosen in ids
        answer = sdk.chat.completions.with_raw_response.create(model=chosen, messages=MESSAGES)
    assert {model.split("/", 1)[0] for model in ids} == {
        "openai",
        "anthropic",
        "google",
        "groq",
        "openrouter",
        "mistral",
    }
    assert "openai/gpt-4o-mini" in ids
    assert answer.headers["x-relay-provider"] == "google"
    assert mock.last().json()["model"] == "gemini-2.0-flash"
    nothing_of(user[0], mock)


def test_a_provider_that_fails_its_listing_is_left_out_and_named(relay: RelayServer) -> None:
    with httpx.Client(base_url=relay.url) as client:
        token = register(client)
        store_key(client, token, "openai", provider_key("openai"))
        store_key(client, token, "anthropic", "sk-ant-mock401-0123456789abcdefghij")
        store_key(client, token, "elevenlabs", provider_key("elevenlabs"))  # lists no models here
        listed = client.get("/relay/v1/models", headers={"authorization": f"Bearer {token}"})
        nobody = client.get("/relay/v1/models")
    assert listed.status_code == 200
    body = listed.json()
    assert body["unavailable"] == ["anthropic"]
    assert {model["owned_by"] for model in body["data"]} == {"openai"}
    assert (nobody.status_code, nobody.json()["code"]) == (401, "token_required")
