"""Self-test of the mock provider, talking to it directly over real sockets."""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.mockprovider import AUDIO_BYTES, IMAGE_BYTES, MockProvider, start_mock


@pytest.fixture(scope="module")
def server() -> Iterator[MockProvider]:
    with start_mock() as mock:
        yield mock


@pytest.fixture
def mock(server: MockProvider) -> MockProvider:
    server.clear()
    return server


@pytest.fixture
def client(mock: MockProvider) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mock.url, timeout=5) as c:
        yield c


def _sse_json(frame: bytes) -> Any:
    assert frame.startswith(b"data: ")
    assert frame.endswith(b"\n\n")
    return json.loads(frame[len(b"data: ") : -2])


def test_openai_sse_frames_arrive_separately_in_order(
    mock: MockProvider, client: httpx.Client
) -> None:
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}],
    }
    params = {"interval_ms": "30", "chunks": "3"}
    with client.stream("POST", "/v1/chat/completions", params=params, json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert "content-length" not in resp.headers
        reads = list(resp.iter_raw())
    assert len(reads) == 6, reads  # 3 deltas, finish, usage, [DONE]
    chunks = [_sse_json(r) for r in reads[:-1]]
    assert reads[-1] == b"data: [DONE]\n\n"
    deltas = [c["choices"][0]["delta"] for c in chunks[:3]]
    assert deltas[0]["role"] == "assistant"
    assert [d["content"] for d in deltas] == ["tok0 ", "tok1 ", "tok2 "]
    assert chunks[3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[4]["choices"] == []
    assert chunks[4]["usage"]["total_tokens"] == 18
    assert all(c["model"] == "gpt-4o-mini" for c in chunks)


def test_openai_json_and_not_found(client: httpx.Client) -> None:
    resp = client.post("/openai/v1/chat/completions", json={"model": "llama-3", "messages": []})
    assert resp.headers["content-type"] == "application/json"
    data = resp.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "llama-3"
    assert data["choices"][0]["message"]["content"] == "Hello from mock"
    missing = client.get("/v1/nowhere")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"


def test_audio_bytes_arrive_identical(client: httpx.Client) -> None:
    assert len(AUDIO_BYTES) == 200_000
    assert len(set(AUDIO_BYTES)) == 256
    resp = client.post("/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM", json={"text": "hello"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "audio/mpeg"
    assert resp.headers["content-length"] == str(len(AUDIO_BYTES))
    assert resp.content == AUDIO_BYTES
    with client.stream("POST", "/v1/text-to-speech/abc/stream", json={"text": "x"}) as streamed:
        assert "content-length" not in streamed.headers
        assert b"".join(streamed.iter_bytes()) == AUDIO_BYTES
    image = client.post("/models/stabilityai/sdxl", json={"inputs": "a cat"})
    assert image.headers["content-type"] == "image/png"
    assert image.content == IMAGE_BYTES


def _drain(resp: httpx.Response, into: bytearray) -> None:
    for piece in resp.iter_bytes():
        into += piece


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "m", "stream": True}),
        ("/v1/text-to-speech/voice/stream", {"text": "hi"}),
    ],
)
def test_break_aborts_mid_stream(
    mock: MockProvider, client: httpx.Client, path: str, body: dict[str, object]
) -> None:
    received = bytearray()
    with client.stream("POST", path, params={"scenario": "break"}, json=body) as resp:
        assert resp.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            _drain(resp, received)
    assert received  # some of the body came through before the abort
    assert mock.disconnects == []  # a deliberate abort is not a client disconnect


def test_slow_headers_notices_client_giving_up(mock: MockProvider) -> None:
    with httpx.Client(base_url=mock.url, timeout=0.3) as short:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            short.post("/v1/chat/completions?scenario=slow_headers&delay_ms=3000", json={})
    seen = mock.wait_for_disconnect(timeout=1)
    assert seen is not None
    assert seen - started < 1
    assert mock.disconnects == [seen]


def test_endless_stream_records_disconnect(mock: MockProvider, client: httpx.Client) -> None:
    body = {"model": "claude", "stream": True, "max_tokens": 10, "messages": []}
    params = {"scenario": "endless", "interval_ms": "10"}
    with client.stream("POST", "/v1/messages", params=params, json=body) as resp:
        frames = resp.iter_bytes()
        first = next(frames)
        assert first.startswith(b"event: message_start\n")
        closed_at = time.monotonic()
    seen = mock.wait_for_disconnect(timeout=1)
    assert seen is not None
    assert 0 <= seen - closed_at < 1


def test_deepgram_echoes_query(client: httpx.Client) -> None:
    audio = b"RIFF" + bytes(range(256)) * 4
    resp = client.post(
        "/v1/listen?model=nova-2&smart_format=true&keywords=a&keywords=b",
        content=audio,
        headers={"content-type": "audio/wav"},
    )
    meta = resp.json()["metadata"]
    assert meta["query"] == {"model": "nova-2", "smart_format": "true", "keywords": ["a", "b"]}
    assert meta["received_bytes"] == len(audio)
    assert meta["received_sha256"] == hashlib.sha256(audio).hexdigest()
    transcript = resp.json()["results"]["channels"][0]["alternatives"][0]["transcript"]
    assert transcript == "hello from mock"


def test_recording_captures_request(mock: MockProvider, client: httpx.Client) -> None:
    client.post(
        "/v1/messages?beta=true",
        content=b'{"model": "claude-x", "max_tokens": 5}',
        headers={"X-Api-Key": "sk-test", "Anthropic-Version": "2023-06-01"},
    )
    mock.wait_for_request(1)
    rec = mock.last()
    assert rec.method == "POST"
    assert rec.path == "/v1/messages"
    assert rec.raw_path == b"/v1/messages"
    assert rec.query_string == b"beta=true"
    assert rec.header("x-api-key") == "sk-test"
    assert rec.header("ANTHROPIC-VERSION") == "2023-06-01"
    assert ("x-api-key", "sk-test") in rec.headers
    assert rec.json() == {"model": "claude-x", "max_tokens": 5}
    assert len(mock.requests) == 1


def test_ratelimited_gzip_and_headers(client: httpx.Client) -> None:
    limited = client.post("/v1/chat/completions", json={"model": "mock-ratelimited"})
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert limited.headers["x-request-id"] == "req_mock_429"
    assert limited.json()["error"]["type"] == "rate_limit_exceeded"
    anthropic = client.post("/v1/messages?scenario=ratelimited", json={})
    assert anthropic.json()["error"]["type"] == "rate_limit_error"

    raw = client.post("/v1/chat/completions?scenario=gzip", json={"model": "m"})
    assert raw.headers["content-encoding"] == "gzip"
    assert raw.json()["object"] == "chat.completion"  # httpx decoded it
    with client.stream("POST", "/v1/chat/completions?scenario=gzip", json={}) as resp:
        compressed = b"".join(resp.iter_raw())
    assert int(resp.headers["content-length"]) == len(compressed)
    assert json.loads(gzip.decompress(compressed))["object"] == "chat.completion"

    extra = client.post("/v1/chat/completions?scenario=headers", json={})
    assert extra.headers["set-cookie"] == "tracking=1"
    assert extra.headers["openai-processing-ms"] == "12"


def test_gemini_sse_uses_crlf(client: httpx.Client) -> None:
    resp = client.post(
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&chunks=2", json={}
    )
    assert resp.headers["content-type"] == "text/event-stream"
    frames = resp.content.split(b"\r\n\r\n")
    assert frames[-1] == b""
    last = json.loads(frames[-2].removeprefix(b"data: "))
    assert last["candidates"][0]["finishReason"] == "STOP"
    usage = last["usageMetadata"]
    # Gemini's total counts the thoughts too, which candidatesTokenCount leaves out.
    assert usage["totalTokenCount"] == (
        usage["promptTokenCount"] + usage["candidatesTokenCount"] + usage["thoughtsTokenCount"]
    )
    assert len(frames) == 4
