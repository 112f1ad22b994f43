"""The official OpenAI and Anthropic SDKs, used unchanged, talk to providers through the relay."""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.mockprovider import MockProvider
from tests.relayserver import RelayServer

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
