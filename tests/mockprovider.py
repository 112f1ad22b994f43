"""A local mock AI provider speaking each provider's real wire format.

One server stands in for api.openai.com, api.anthropic.com, generativelanguage.googleapis.com,
api.elevenlabs.io, api.deepgram.com, api-inference.huggingface.co, api.groq.com, openrouter.ai,
api.mistral.ai and any openai-compatible server at once: paths alone tell the providers apart
(overlapping paths such as ``/v1/chat/completions`` answer in OpenAI format).

It runs as a real uvicorn server on 127.0.0.1 (random free port) in a daemon thread and records
every request it receives. It is a pure ASGI app so it controls framing exactly: it can abort a
connection mid-stream and it notices client disconnects.

Scenario selection, first match wins:

1. query parameter ``scenario=<name>``;
2. request header ``x-mock-scenario: <name>``;
3. a model name starting with ``mock-`` (``mock-ratelimited`` -> ``ratelimited``) taken from the
   JSON body's ``"model"`` or ``"model_id"``, or from the path (Gemini ``/v1beta/models/<m>:...``,
   HuggingFace ``/models/<m>``);
4. ``default``.

Tuning query parameters: ``delay_ms``, ``interval_ms``, ``chunks``, ``status``, ``after`` (pieces
sent before ``stall`` or ``break``, default 2; 0: right after the head).
See ``SCENARIOS`` for the list of scenario names.

Key checks. The requests a relay sends to check a key (``GET`` of a models listing:
``/v1/models``, ``/openai/v1/models``, ``/v1beta/models``; OpenRouter ``/api/v1/key``; Deepgram
``/v1/projects``; ElevenLabs ``/v1/user`` and ``/v1/models`` with ``xi-api-key``) carry no scenario
of the test's, so when none is given their answer is chosen by the key they carry (in
``authorization``, ``x-api-key``, ``x-goog-api-key``, ``xi-api-key`` or ``?key=``), in each
provider's own shape; see ``KEY_MARKERS``. A key containing ``mock401``, ``mock403``,
``mock402`` or ``mock500`` gets that status; ``mock429`` a 429 with ``retry-after``;
``mockquota`` the provider's own way of saying the account cannot pay (OpenAI 429
``insufficient_quota``, Anthropic 400 "credit balance is too low", Google 429 "prepayment credits
are depleted", ElevenLabs 401 ``quota_exceeded``, Deepgram 402, OpenRouter 200 with
``limit_remaining: 0``); ``mockinvalid`` the provider's real answer to a bad key (Google: 400
``API_KEY_INVALID``, elsewhere as ``mock401``); ``mockscoped`` a genuine key lacking the
permission to list (OpenAI 401 "Missing scopes", ElevenLabs 401 ``missing_permissions``);
``mockslow`` waits 5 s before answering normally (and notices the client giving up). Keys that
may only hold hexadecimal digits (Deepgram, ElevenLabs) use ``deadbeef401``, ``deadbeef402``,
``deadbeef403``, ``deadbeef429``, ``deadbeef500``, ``deadbeef0402`` (quota), ``deadbeef0504``
(slow), ``deadbeef0400`` (invalid) and ``deadbeef0403`` (scoped). Any other key gets a realistic
200.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import itertools
import json
import logging
import random
import re
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

import uvicorn

__all__ = [
    "ANTHROPIC_USAGE",
    "AUDIO_BYTES",
    "GEMINI_USAGE",
    "IMAGE_BYTES",
    "KEY_MARKERS",
    "OPENAI_USAGE",
    "SCENARIOS",
    "MockApp",
    "MockProvider",
    "Recorded",
    "start_mock",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

AUDIO_BYTES: bytes = random.Random(1234).randbytes(200_000)
"""What every audio endpoint returns (audio/mpeg); contains every byte value."""

IMAGE_BYTES: bytes = random.Random(99).randbytes(50_000)
"""What HuggingFace ``POST /models/...`` returns (image/png)."""

SCENARIOS: tuple[str, ...] = (
    "default",
    "ratelimited",
    "status",
    "headers",
    "slow_headers",
    "endless",
    "stall",
    "break",
    "gzip",
    "echo",
)

MOCK_TEXT = "Hello from mock"

# Sizes the binary bodies are cut into (cycled), so a relay sees uneven chunks.
_BINARY_CHUNK_SIZES = (1, 4096, 17, 65_536, 333, 16_384, 8191, 50_000, 2, 30_000)

_SSE_OPENAI = "text/event-stream; charset=utf-8"
_SSE_GEMINI = "text/event-stream"
_JSON = "application/json"

_ENDLESS_SAFETY_S = 60.0


# --------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """One request as the mock received it."""

    method: str
    path: str
    raw_path: bytes
    query_string: bytes
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order received."""
        wanted = name.lower()
        return [value for key, value in self.headers if key == wanted]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def query(self) -> dict[str, str | list[str]]:
        """Parsed query string: a str per single-valued key, a list for repeated keys."""
        return _flatten_query(_parse_query(self.query_string))


class _Exchange:
    """State of one in-flight request, shared between the loop thread and test threads."""

    __slots__ = ("disconnected_at", "finished", "generation", "wake")

    def __init__(self, generation: int) -> None:
        self.generation = generation  # MockProvider.clear() starts a new one
        # Set when the client goes away, or when the server is stopping.
        self.wake = asyncio.Event()
        # The mock completed (or deliberately aborted) its response; a later disconnect is
        # then just the connection closing, not the client giving up.
        self.finished = False
        self.disconnected_at: float | None = None


class _MockAbort(Exception):
    """Raised inside the ASGI app to make uvicorn drop the connection mid-response."""


class _ClientGone(Exception):
    """``send`` failed: the client is gone."""


class _DropMockAbort(logging.Filter):
    """Keep uvicorn from logging the deliberate aborts of the ``break`` scenario."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _MockAbort)


_log_filter_lock = threading.Lock()
_log_filter_installed = False


def _install_log_filter() -> None:
    global _log_filter_installed
    with _log_filter_lock:
        if not _log_filter_installed:
            logging.getLogger("uvicorn.error").addFilter(_DropMockAbort())
            _log_filter_installed = True


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _parse_query(query_string: bytes) -> dict[str, list[str]]:
    return parse_qs(query_string.decode("latin-1"), keep_blank_values=True)


def _flatten_query(query: dict[str, list[str]]) -> dict[str, str | list[str]]:
    return {k: (v[0] if len(v) == 1 else list(v)) for k, v in query.items()}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _split(data: bytes) -> list[bytes]:
    pieces: list[bytes] = []
    pos = 0
    for size in itertools.cycle(_BINARY_CHUNK_SIZES):
        if pos >= len(data):
            break
        pieces.append(data[pos : pos + size])
        pos += size
    return pieces


def _sse(data: Any, event: str | None = None, crlf: bool = False) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    nl = "\r\n" if crlf else "\n"
    head = f"event: {event}{nl}" if event else ""
    return f"{head}data: {payload}{nl}{nl}".encode()


@dataclass
class _Reply:
    """A response: its body is ``head``, then ``item(i)`` for i < count, then ``tail``.

    ``chunked`` replies carry no content-length; every piece goes out as its own ASGI body
    message. ``item`` can be repeated forever (the ``endless`` scenario).
    """

    status: int
    content_type: str | None
    head: list[bytes] = field(default_factory=list)
    item: Callable[[int], bytes] | None = None
    count: int = 0
    tail: list[bytes] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunked: bool = False

    def pieces(self) -> list[bytes]:
        items = [self.item(i) for i in range(self.count)] if self.item else []
        return [*self.head, *items, *self.tail]

    def endless(self) -> Iterator[bytes]:
        yield from self.head
        if self.item is None:
            yield from self.tail
            return
        for i in itertools.count():
            yield self.item(i)


def _json_reply(
    obj: Any, status: int = 200, headers: list[tuple[str, str]] | None = None
) -> _Reply:
    return _Reply(status, _JSON, head=[_dumps(obj)], headers=list(headers or []))


def _binary_reply(data: bytes, content_type: str, chunked: bool) -> _Reply:
    pieces = _split(data)
    return _Reply(
        200,
        content_type,
        item=lambda i: pieces[i % len(pieces)],
        count=len(pieces),
        chunked=chunked,
    )


# --------------------------------------------------------------------------------------------
# Routing
# --------------------------------------------------------------------------------------------

_GEMINI_RE = re.compile(r"^/(?:v1beta|v1|v1alpha)/((?:models|tunedModels)/[^:]+):(\w+)$")
_GEMINI_MODEL_RE = re.compile(r"^/(?:v1beta|v1|v1alpha)/(models/[^:/]+)$")
_GEMINI_MODELS_RE = re.compile(r"^/(?:v1beta|v1alpha)/models$")
_ELEVEN_TTS_RE = re.compile(r"^/v1/text-to-speech/([^/]+)(/stream)?$")
_ELEVEN_STS_RE = re.compile(r"^/v1/speech-to-speech/([^/]+)(/stream)?$")
_HF_RE = re.compile(r"^(?:/hf-inference)?/models/(.+)$")
_RESPONSES_ID_RE = re.compile(r"^.*/responses/([^/]+)$")

_BINARY_KINDS = frozenset({"eleven_tts", "eleven_sts", "eleven_sfx", "deepgram_speak", "hf_model"})


@dataclass(frozen=True)
class _Route:
    kind: str
    family: str  # error format: openai, anthropic, gemini, elevenlabs, deepgram, huggingface
    path_model: str | None = None
    arg: str | None = None  # gemini action, responses id, ...
    streaming_path: bool = False  # e.g. ElevenLabs ``/stream``


def _route(method: str, path: str, headers: list[tuple[str, str]]) -> _Route:
    # Anthropic
    if method == "POST" and path.endswith("/v1/messages"):
        return _Route("anthropic_messages", "anthropic")
    if method == "POST" and path.endswith("/v1/messages/count_tokens"):
        return _Route("anthropic_count_tokens", "anthropic")
    # Gemini
    if m := _GEMINI_RE.match(path):
        model = m.group(1).split("/", 1)[1]
        action = m.group(2)
        kinds = {
            "generateContent": "gemini_generate",
            "streamGenerateContent": "gemini_stream",
            "countTokens": "gemini_count_tokens",
            "embedContent": "gemini_embed",
            "batchEmbedContents": "gemini_batch_embed",
        }
        if method == "POST" and action in kinds:
            return _Route(kinds[action], "gemini", path_model=model, arg=action)
        return _Route("not_found", "gemini")
    if method == "GET" and path == "/v1beta/openai/models":
        return _Route("gemini_openai_models", "gemini")
    if method == "GET" and _GEMINI_MODELS_RE.match(path):
        return _Route("gemini_models", "gemini")
    if method == "GET" and (m := _GEMINI_MODEL_RE.match(path)):
        if any(k == "authorization" for k, _ in headers):  # OpenAI's models.retrieve
            return _Route("openai_model", "openai", arg=m.group(1).split("/", 1)[1])
        return _Route("gemini_model", "gemini", arg=m.group(1))
    # ElevenLabs
    if method == "POST" and (m := _ELEVEN_TTS_RE.match(path)):
        return _Route("eleven_tts", "elevenlabs", arg=m.group(1), streaming_path=bool(m.group(2)))
    if method == "POST" and (m := _ELEVEN_STS_RE.match(path)):
        return _Route("eleven_sts", "elevenlabs", arg=m.group(1), streaming_path=bool(m.group(2)))
    if method == "POST" and path == "/v1/sound-generation":
        return _Route("eleven_sfx", "elevenlabs")
    if method == "POST" and path == "/v1/speech-to-text":
        return _Route("eleven_stt", "elevenlabs")
    if method == "GET" and path in ("/v1/voices", "/v2/voices"):
        return _Route("eleven_voices", "elevenlabs")
    if method == "GET" and path == "/v1/user":
        return _Route("eleven_user", "elevenlabs")
    # Deepgram
    if method == "GET" and path == "/v1/projects":
        return _Route("deepgram_projects", "deepgram")
    # OpenRouter's key information
    if method == "GET" and path == "/api/v1/key":
        return _Route("openrouter_key", "openrouter")
    if method == "POST" and path == "/v1/listen":
        return _Route("deepgram_listen", "deepgram")
    if method == "POST" and path == "/v1/speak":
        return _Route("deepgram_speak", "deepgram")
    if method == "POST" and path == "/v1/read":
        return _Route("deepgram_read", "deepgram")
    # OpenAI and openai-compatible (groq /openai/v1, openrouter /api/v1, mistral /v1, ...)
    if method == "POST" and path.endswith("/audio/speech"):
        return _Route("openai_speech", "openai")
    if method == "POST" and path.endswith(("/audio/transcriptions", "/audio/translations")):
        return _Route("openai_transcription", "openai")
    if method == "POST" and path.endswith("/images/generations"):
        return _Route("openai_images", "openai")
    if method == "POST" and path.endswith("/moderations"):
        return _Route("openai_moderations", "openai")
    if method == "POST" and path.endswith("/chat/completions"):
        return _Route("openai_chat", "openai")
    if method == "POST" and path.endswith("/completions"):
        return _Route("openai_completions", "openai")
    if method == "POST" and path.endswith("/embeddings"):
        return _Route("openai_embeddings", "openai")
    if method == "POST" and path.endswith("/responses"):
        return _Route("openai_responses", "openai")
    if method in ("GET", "DELETE") and (m := _RESPONSES_ID_RE.match(path)):
        kind = "openai_responses_get" if method == "GET" else "openai_responses_delete"
        return _Route(kind, "openai", arg=m.group(1))
    if method == "GET" and path.endswith("/v1/models"):
        if any(k == "anthropic-version" for k, _ in headers):
            return _Route("anthropic_models", "anthropic")
        if any(k == "xi-api-key" for k, _ in headers):
            return _Route("eleven_models", "elevenlabs")
        return _Route("openai_models", "openai")
    # HuggingFace inference API
    if method == "POST" and (m := _HF_RE.match(path)):
        return _Route("hf_model", "huggingface", path_model=m.group(1))
    return _Route("not_found", "openai")


# --------------------------------------------------------------------------------------------
# Wire formats
# --------------------------------------------------------------------------------------------


class _Ctx:
    """Everything a reply builder needs to know about one request."""

    def __init__(self, rec: Recorded, route: _Route, seq: int) -> None:
        self.rec = rec
        self.route = route
        self.seq = seq
        self.query = _parse_query(rec.query_string)
        self.body_json: Any = None
        if rec.body[:1] in (b"{", b"["):
            with contextlib.suppress(ValueError):
                self.body_json = json.loads(rec.body)
        self.created = int(time.time())

    def q(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def qint(self, name: str, default: int) -> int:
        raw = self.q(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            return default

    def body_get(self, key: str) -> Any:
        return self.body_json.get(key) if isinstance(self.body_json, dict) else None

    @property
    def model(self) -> str:
        model = self.body_get("model") or self.body_get("model_id") or self.route.path_model
        return model if isinstance(model, str) and model else "mock-model"

    @property
    def wants_stream(self) -> bool:
        return self.body_get("stream") is True

    @property
    def chunks(self) -> int:
        return max(0, self.qint("chunks", 5))

    def scenario(self) -> str:
        explicit = self.q("scenario") or self.rec.header("x-mock-scenario")
        if explicit:
            return explicit
        for candidate in (self.body_get("model"), self.body_get("model_id"), self.route.path_model):
            if isinstance(candidate, str) and candidate.startswith("mock-"):
                return candidate.removeprefix("mock-")
        return "default"


# ---- OpenAI -------------------------------------------------------------------------------

# Each provider's usage in its own shape, every token kind the relay counts among it.
OPENAI_USAGE = {
    "prompt_tokens": 11,
    "completion_tokens": 7,
    "total_tokens": 18,
    "prompt_tokens_details": {"cached_tokens": 3, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0},
}
ANTHROPIC_USAGE = {
    "input_tokens": 12,
    "output_tokens": 6,
    "cache_creation_input_tokens": 4,
    "cache_read_input_tokens": 5,
}


def _openai_chat(ctx: _Ctx) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-mock{ctx.seq}",
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.model,
        "system_fingerprint": "fp_mock",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": MOCK_TEXT, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": dict(OPENAI_USAGE),
    }


def _openai_chat_stream(ctx: _Ctx) -> _Reply:
    opts = ctx.body_get("stream_options")
    include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    cid = f"chatcmpl-mock{ctx.seq}"

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        obj: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": ctx.created,
            "model": ctx.model,
            "system_fingerprint": "fp_mock",
            "choices": choices,
        }
        if include_usage:
            obj["usage"] = usage
        return _sse(obj)

    def item(i: int) -> bytes:
        delta: dict[str, Any] = {"content": f"tok{i} "}
        if i == 0:
            delta = {"role": "assistant", "content": "tok0 ", "refusal": None}
        return chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    tail = [chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])]
    if include_usage:
        tail.append(chunk([], dict(OPENAI_USAGE)))
    tail.append(_sse("[DONE]"))
    return _Reply(200, _SSE_OPENAI, item=item, count=ctx.chunks, tail=tail, chunked=True)


def _openai_completion(ctx: _Ctx) -> dict[str, Any]:
    return {
        "id": f"cmpl-mock{ctx.seq}",
        "object": "text_completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [{"text": MOCK_TEXT, "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": dict(OPENAI_USAGE),
    }


def _openai_completion_stream(ctx: _Ctx) -> _Reply:
    def chunk(text: str, finish: str | None) -> bytes:
        return _sse(
            {
                "id": f"cmpl-mock{ctx.seq}",
                "object": "text_completion",
                "created": ctx.created,
                "model": ctx.model,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            }
        )

    return _Reply(
        200,
        _SSE_OPENAI,
        item=lambda i: chunk(f"tok{i} ", None),
        count=ctx.chunks,
        tail=[chunk("", "stop"), _sse("[DONE]")],
        chunked=True,
    )


def _embedding_values(index: int) -> list[float]:
    return [round(0.125 * (index + 1) * (k + 1) - 0.5, 6) for k in range(8)]


def _openai_embeddings(ctx: _Ctx) -> dict[str, Any]:
    raw_input = ctx.body_get("input")
    n = len(raw_input) if isinstance(raw_input, list) and raw_input else 1
    if isinstance(raw_input, list) and raw_input and isinstance(raw_input[0], int):
        n = 1  # a single token list
    as_base64 = ctx.body_get("encoding_format") == "base64"
    data: list[dict[str, Any]] = []
    for i in range(n):
        values = _embedding_values(i)
        embedding: Any = values
        if as_base64:
            embedding = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": ctx.model,
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }


def _openai_models() -> dict[str, Any]:
    names = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
    return {
        "object": "list",
        "data": [
            {"id": n, "object": "model", "created": 1_700_000_000, "owned_by": "mock"}
            for n in names
        ],
    }


def _response_obj(ctx: _Ctx, rid: str, text: str, completed: bool) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if completed:
        output = [
            {
                "type": "message",
                "id": f"msg_mock{ctx.seq}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
    return {
        "id": rid,
        "object": "response",
        "created_at": ctx.created,
        "status": "completed" if completed else "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": ctx.model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": (
            {
                "input_tokens": 11,
                "input_tokens_details": {"cached_tokens": 3},
                "output_tokens": 7,
                "output_tokens_details": {"reasoning_tokens": 2},
                "total_tokens": 18,
            }
            if completed
            else None
        ),
        "user": None,
        "metadata": {},
    }


def _openai_responses_stream(ctx: _Ctx) -> _Reply:
    rid = f"resp_mock{ctx.seq}"
    item_id = f"msg_mock{ctx.seq}"
    n = ctx.chunks
    text = "".join(f"tok{i} " for i in range(n))

    def ev(kind: str, seq: int, **fields: Any) -> bytes:
        return _sse({"type": kind, "sequence_number": seq, **fields}, event=kind)

    in_progress = _response_obj(ctx, rid, "", completed=False)
    msg_item: dict[str, Any] = {
        "type": "message",
        "id": item_id,
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    part_empty = {"type": "output_text", "text": "", "annotations": []}
    part_full = {"type": "output_text", "text": text, "annotations": []}
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    head = [
        ev("response.created", 0, response=in_progress),
        ev("response.in_progress", 1, response=in_progress),
        ev("response.output_item.added", 2, output_index=0, item=msg_item),
        ev("response.content_part.added", 3, part=part_empty, **where),
    ]
    base = len(head)
    done_item = {**msg_item, "status": "completed", "content": [part_full]}
    tail = [
        ev("response.output_text.done", base + n, text=text, **where),
        ev("response.content_part.done", base + n + 1, part=part_full, **where),
        ev("response.output_item.done", base + n + 2, output_index=0, item=done_item),
        ev(
            "response.completed",
            base + n + 3,
            response=_response_obj(ctx, rid, text, completed=True),
        ),
    ]
    return _Reply(
        200,
        _SSE_OPENAI,
        head=head,
        item=lambda i: ev("response.output_text.delta", base + i, delta=f"tok{i} ", **where),
        count=n,
        tail=tail,
        chunked=True,
    )


# ---- Anthropic ----------------------------------------------------------------------------


def _anthropic_message(ctx: _Ctx) -> dict[str, Any]:
    return {
        "id": f"msg_mock{ctx.seq:06d}",
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": [{"type": "text", "text": MOCK_TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": dict(ANTHROPIC_USAGE),
    }


def _anthropic_stream(ctx: _Ctx) -> _Reply:
    message: dict[str, Any] = {
        "id": f"msg_mock{ctx.seq:06d}",
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**ANTHROPIC_USAGE, "output_tokens": 1},
    }
    head = [
        _sse({"type": "message_start", "message": message}, event="message_start"),
        _sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            event="content_block_start",
        ),
        _sse({"type": "ping"}, event="ping"),
    ]

    def item(i: int) -> bytes:
        delta = {"type": "text_delta", "text": f"tok{i} "}
        return _sse(
            {"type": "content_block_delta", "index": 0, "delta": delta},
            event="content_block_delta",
        )

    tail = [
        _sse({"type": "content_block_stop", "index": 0}, event="content_block_stop"),
        _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 6},
            },
            event="message_delta",
        ),
        _sse({"type": "message_stop"}, event="message_stop"),
    ]
    return _Reply(200, _SSE_OPENAI, head=head, item=item, count=ctx.chunks, tail=tail, chunked=True)


def _anthropic_models() -> dict[str, Any]:
    ids = ("claude-3-5-sonnet-20241022", "claude-3-5-haiku-20241022")
    data = [
        {"type": "model", "id": i, "display_name": i, "created_at": "2024-10-22T00:00:00Z"}
        for i in ids
    ]
    return {"data": data, "has_more": False, "first_id": ids[0], "last_id": ids[-1]}


# ---- Gemini -------------------------------------------------------------------------------

GEMINI_USAGE = {
    "promptTokenCount": 10,
    "candidatesTokenCount": 5,
    "totalTokenCount": 18,
    "cachedContentTokenCount": 2,
    "thoughtsTokenCount": 3,
}


def _gemini_response(ctx: _Ctx, text: str, final: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {
        "content": {"parts": [{"text": text}], "role": "model"},
        "index": 0,
    }
    obj: dict[str, Any] = {"candidates": [candidate], "modelVersion": ctx.model}
    if final:
        candidate["finishReason"] = "STOP"
        obj["usageMetadata"] = dict(GEMINI_USAGE)
    return obj


def _gemini_stream_parts(ctx: _Ctx) -> tuple[Callable[[int], dict[str, Any]], dict[str, Any]]:
    return (lambda i: _gemini_response(ctx, f"tok{i} ", final=False)), _gemini_response(
        ctx, "", final=True
    )


def _gemini_sse(ctx: _Ctx) -> _Reply:
    item, last = _gemini_stream_parts(ctx)
    return _Reply(
        200,
        _SSE_GEMINI,
        item=lambda i: _sse(item(i), crlf=True),
        count=ctx.chunks,
        tail=[_sse(last, crlf=True)],
        chunked=True,
    )


def _gemini_models() -> dict[str, Any]:
    def model(name: str, methods: list[str]) -> dict[str, Any]:
        return {
            "name": f"models/{name}",
            "version": "001",
            "displayName": name,
            "inputTokenLimit": 1_048_576,
            "outputTokenLimit": 8192,
            "supportedGenerationMethods": methods,
        }

    gen = ["generateContent", "countTokens"]
    return {
        "models": [
            model("gemini-2.0-flash", gen),
            model("gemini-1.5-pro", gen),
            model("text-embedding-004", ["embedContent"]),
        ]
    }


# ---- ElevenLabs / Deepgram / HuggingFace --------------------------------------------------


def _eleven_voices() -> dict[str, Any]:
    def voice(voice_id: str, name: str) -> dict[str, Any]:
        return {
            "voice_id": voice_id,
            "name": name,
            "category": "premade",
            "labels": {"accent": "american", "gender": "female"},
            "preview_url": f"https://example.invalid/{voice_id}.mp3",
        }

    return {
        "voices": [voice("21m00Tcm4TlvDq8ikWAM", "Rachel"), voice("EXAVITQu4vr4xnSDxMaL", "Sarah")],
        "has_more": False,
    }


def _deepgram_listen(ctx: _Ctx) -> dict[str, Any]:
    words = [
        {"word": w, "start": 0.4 * i, "end": 0.4 * (i + 1), "confidence": 0.99}
        for i, w in enumerate(("hello", "from", "mock"))
    ]
    body = ctx.rec.body
    return {
        "metadata": {
            "transaction_key": "deprecated",
            "request_id": f"00000000-0000-4000-8000-{ctx.seq:012d}",
            "sha256": hashlib.sha256(body).hexdigest(),
            "created": "2024-01-01T00:00:00.000Z",
            "duration": 1.2,
            "channels": 1,
            "models": ["mock-model-uuid"],
            "model_info": {
                "mock-model-uuid": {"name": "nova-2", "version": "mock", "arch": "mock"}
            },
            "query": _flatten_query(ctx.query),
            "received_bytes": len(body),
            "received_sha256": hashlib.sha256(body).hexdigest(),
        },
        "results": {
            "channels": [
                {
                    "alternatives": [
                        {"transcript": "hello from mock", "confidence": 0.99, "words": words}
                    ]
                }
            ]
        },
    }


def _deepgram_read(ctx: _Ctx) -> dict[str, Any]:
    return {
        "metadata": {
            "request_id": f"00000000-0000-4000-8000-{ctx.seq:012d}",
            "created": "2024-01-01T00:00:00.000Z",
            "language": "en",
            "query": _flatten_query(ctx.query),
            "received_bytes": len(ctx.rec.body),
        },
        "results": {"summary": {"text": "Mock summary."}},
    }


# ---- Errors -------------------------------------------------------------------------------

_OPENAI_ERR: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    402: ("insufficient_quota", "insufficient_quota"),
    403: ("permission_denied", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_exceeded", "rate_limit_exceeded"),
}
_ANTHROPIC_ERR = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_DEEPGRAM_ERR = {
    400: "Bad Request",
    401: "INVALID_AUTH",
    402: "ASR_PAYMENT_REQUIRED",
    403: "INSUFFICIENT_PERMISSIONS",
    429: "TOO_MANY_REQUESTS",
}
_ELEVEN_ERR = {401: "invalid_api_key", 402: "payment_required", 429: "too_many_requests"}


def _error_body(family: str, status: int, message: str) -> dict[str, Any]:
    if family == "anthropic":
        kind = _ANTHROPIC_ERR.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    if family == "gemini":
        google = _GOOGLE_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        return {"error": {"code": status, "message": message, "status": google}}
    if family == "elevenlabs":
        return {"detail": {"status": _ELEVEN_ERR.get(status, "error"), "message": message}}
    if family == "deepgram":
        code = _DEEPGRAM_ERR.get(status, "INTERNAL_SERVER_ERROR" if status >= 500 else "ERROR")
        return {"err_code": code, "err_msg": message, "request_id": f"mock-{status}"}
    if family == "huggingface":
        return {"error": message}
    kind, err_code = _OPENAI_ERR.get(status, ("server_error" if status >= 500 else "error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": err_code}}


def _error_reply(
    route: _Route, status: int, message: str, headers: list[tuple[str, str]] | None = None
) -> _Reply:
    return _json_reply(_error_body(route.family, status, message), status, headers)


# --------------------------------------------------------------------------------------------
# Key checks: answers chosen by the key
# --------------------------------------------------------------------------------------------

_PROBE_KINDS = frozenset(
    {
        "openai_models",
        "anthropic_models",
        "gemini_models",
        "openrouter_key",
        "deepgram_projects",
        "eleven_user",
        "eleven_models",
    }
)
_KEY_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "xi-api-key")
_SLOW_PROBE_S = 5.0

KEY_MARKERS: tuple[tuple[str, str], ...] = (
    ("mockquota", "quota"),
    ("mockslow", "slow"),
    ("mockinvalid", "invalid"),
    ("mockscoped", "scoped"),
    ("mock401", "401"),
    ("mock402", "402"),
    ("mock403", "403"),
    ("mock429", "429"),
    ("mock500", "500"),
    ("deadbeef0402", "quota"),
    ("deadbeef0504", "slow"),
    ("deadbeef0400", "invalid"),
    ("deadbeef0403", "scoped"),
    ("deadbeef401", "401"),
    ("deadbeef402", "402"),
    ("deadbeef403", "403"),
    ("deadbeef429", "429"),
    ("deadbeef500", "500"),
)
"""(substring of the key, lower-cased; what the key checks answer), first match wins."""


def _sent_keys(rec: Recorded) -> list[str]:
    keys = [v for k, v in rec.headers if k in _KEY_HEADERS]
    keys += _parse_query(rec.query_string).get("key", [])
    return [k.lower() for k in keys]


def _key_verdict(rec: Recorded) -> str | None:
    keys = _sent_keys(rec)
    for marker, verdict in KEY_MARKERS:
        if any(marker in k for k in keys):
            return verdict
    return None


def _masked(rec: Recorded) -> str:
    """The key as providers quote it back in errors: a few characters of each end."""
    keys = [v for k, v in rec.headers if k in _KEY_HEADERS]
    key = keys[0].split(" ", 1)[-1] if keys else ""
    return f"{key[:8]}{'*' * 20}{key[-4:]}" if len(key) > 12 else "****"


def _eleven_models() -> list[dict[str, Any]]:
    def model(model_id: str, name: str) -> dict[str, Any]:
        return {
            "model_id": model_id,
            "name": name,
            "can_be_finetuned": False,
            "can_do_text_to_speech": True,
            "can_do_voice_conversion": False,
            "token_cost_factor": 1.0,
            "languages": [{"language_id": "en", "name": "English"}],
        }

    return [
        model("eleven_multilingual_v2", "Eleven Multilingual v2"),
        model("eleven_flash_v2_5", "Eleven Flash v2.5"),
    ]


def _eleven_user(ctx: _Ctx) -> dict[str, Any]:
    return {
        "user_id": "mockuser0000000000000000000",
        "subscription": {
            "tier": "creator",
            "character_count": 1234,
            "character_limit": 100_000,
            "can_extend_character_limit": True,
            "status": "active",
        },
        "is_new_user": False,
        "xi_api_key": _masked(ctx.rec),
        "can_use_delayed_payment_methods": False,
    }


def _deepgram_projects() -> dict[str, Any]:
    return {
        "projects": [
            {"project_id": "3f2c1a9e-0000-4000-8000-000000000001", "name": "Mock project"},
        ]
    }


def _openrouter_key(ctx: _Ctx, remaining: float | None) -> dict[str, Any]:
    return {
        "data": {
            "label": _masked(ctx.rec),
            "usage": 0.0123,
            "limit": None if remaining is None else 10.0,
            "limit_remaining": remaining,
            "is_free_tier": False,
            "is_provisioning_key": False,
            "rate_limit": {"requests": 20, "interval": "10s"},
        }
    }


_GOOGLE_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_RETRY_AFTER = [("retry-after", "7")]


def _probe_openai(verdict: str, masked: str) -> tuple[int, Any, list[tuple[str, str]]]:
    def err(message: str, kind: str, code: str | None) -> dict[str, Any]:
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    bad_key = err(
        f"Incorrect API key provided: {masked}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    )
    answers: dict[str, tuple[int, Any, list[tuple[str, str]]]] = {
        "401": (401, bad_key, []),
        "invalid": (401, bad_key, []),
        "403": (
            403,
            err(
                "Country, region, or territory not supported",
                "request_forbidden",
                "unsupported_country_region_territory",
            ),
            [],
        ),
        "402": (402, _error_body("openai", 402, "Payment required (mock)."), []),
        "quota": (
            429,
            err(
                "You exceeded your current quota, please check your plan and billing details. "
                "For more information on this error, read the docs: "
                "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "insufficient_quota",
                "insufficient_quota",
            ),
            [("x-request-id", "req_mock_quota")],
        ),
        "429": (
            429,
            err(
                "Rate limit reached for requests (mock). Please try again in 7s.",
                "requests",
                "rate_limit_exceeded",
            ),
            list(_RATELIMIT_HEADERS),
        ),
        "500": (
            500,
            err(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            ),
            [],
        ),
        "scoped": (
            401,
            err(
                "You have insufficient permissions for this operation. Missing scopes: "
                "api.model.read. Check that you have the correct role in your organization "
                "(Reader, Writer, Owner) and project (Member, Owner), and if you're using a "
                "restricted API key, that it has the necessary scopes.",
                "invalid_request_error",
                None,
            ),
            [],
        ),
    }
    return answers[verdict]


def _probe_anthropic(verdict: str, masked: str) -> tuple[int, Any, list[tuple[str, str]]]:
    def err(kind: str, message: str) -> dict[str, Any]:
        return {"type": "error", "error": {"type": kind, "message": message}}

    bad_key = err("authentication_error", "invalid x-api-key")
    denied = err(
        "permission_error", "Your API key does not have permission to use the specified resource."
    )
    answers: dict[str, tuple[int, Any, list[tuple[str, str]]]] = {
        "401": (401, bad_key, []),
        "invalid": (401, bad_key, []),
        "403": (403, denied, []),
        "scoped": (403, denied, []),
        "402": (402, err("billing_error", "Your account has a billing problem (mock)."), []),
        "quota": (
            400,
            err(
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. Please go to "
                "Plans & Billing to upgrade or purchase credits.",
            ),
            [],
        ),
        "429": (
            429,
            err("rate_limit_error", "Number of requests has exceeded your rate limit (mock)."),
            _RATELIMIT_HEADERS + _ANTHROPIC_RATELIMIT_HEADERS,
        ),
        "500": (500, err("api_error", "Internal server error"), []),
    }
    return answers[verdict]


def _probe_gemini(verdict: str, masked: str) -> tuple[int, Any, list[tuple[str, str]]]:
    def err(
        status: int, google: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"code": status, "message": message, "status": google}
        if details is not None:
            body["details"] = details
        return {"error": body}

    def info(reason: str) -> list[dict[str, Any]]:
        metadata = {"service": "generativelanguage.googleapis.com"}
        return [
            {
                "@type": _GOOGLE_ERROR_INFO,
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": metadata,
            }
        ]

    invalid = "API key not valid. Please pass a valid API key."
    suspended = f"Permission denied: Consumer 'api_key:{masked}' has been suspended."
    answers: dict[str, tuple[int, Any, list[tuple[str, str]]]] = {
        "401": (
            401,
            err(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
            ),
            [],
        ),
        "invalid": (400, err(400, "INVALID_ARGUMENT", invalid, info("API_KEY_INVALID")), []),
        "403": (403, err(403, "PERMISSION_DENIED", suspended, info("CONSUMER_SUSPENDED")), []),
        "scoped": (403, err(403, "PERMISSION_DENIED", suspended, info("CONSUMER_SUSPENDED")), []),
        "402": (402, _error_body("gemini", 402, "Payment required (mock)."), []),
        "quota": (
            429,
            err(
                429,
                "RESOURCE_EXHAUSTED",
                "Your prepayment credits are depleted. Please go to AI Studio at "
                "https://ai.studio/projects to manage your project and billing.",
            ),
            [],
        ),
        "429": (
            429,
            err(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota, please check your plan and billing details. "
                "For more information on this error, head to: "
                "https://ai.google.dev/gemini-api/docs/rate-limits.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [
                            {
                                "quotaMetric": "generativelanguage.googleapis.com/"
                                "generate_content_free_tier_requests",
                                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                            }
                        ],
                    },
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"},
                ],
            ),
            list(_RETRY_AFTER),
        ),
        "500": (
            500,
            err(500, "INTERNAL", "An internal error has occurred. Please retry (mock)."),
            [],
        ),
    }
    return answers[verdict]


def _probe_elevenlabs(verdict: str, masked: str) -> tuple[int, Any, list[tuple[str, str]]]:
    def err(status: str, message: str) -> dict[str, Any]:
        return {"detail": {"status": status, "message": message}}

    bad_key = err("invalid_api_key", "Invalid API key")
    answers: dict[str, tuple[int, Any, list[tuple[str, str]]]] = {
        "401": (401, bad_key, []),
        "invalid": (401, bad_key, []),
        "403": (403, err("access_denied", "Access denied (mock)."), []),
        "402": (402, err("payment_required", "Your subscription payment failed (mock)."), []),
        "quota": (
            401,
            err(
                "quota_exceeded",
                "This request exceeds your quota of 10000. You have 0 credits remaining, "
                "while 1 credits are required for this request.",
            ),
            [],
        ),
        "429": (
            429,
            err("too_many_concurrent_requests", "Too many concurrent requests (mock)."),
            list(_RETRY_AFTER),
        ),
        "500": (500, err("internal_server_error", "Internal server error (mock)."), []),
        "scoped": (
            401,
            err(
                "missing_permissions",
                "The API key you used is missing the permission models_read to execute this "
                "operation.",
            ),
            [],
        ),
    }
    return answers[verdict]


def _probe_deepgram(verdict: str, masked: str) -> tuple[int, Any, list[tuple[str, str]]]:
    def err(code: str, message: str) -> dict[str, Any]:
        return {"err_code": code, "err_msg": message, "request_id": f"mock-{code.lower()}"}

    bad_key = err("INVALID_AUTH", "Invalid credentials.")
    no_credit = err(
        "ASR_PAYMENT_REQUIRED",
        "Project does not have enough credits for an ASR request and does not have an "
        "overage agreement.",
    )
    answers: dict[str, tuple[int, Any, list[tuple[str, str]]]] = {
        "401": (401, bad_key, []),
        "invalid": (401, bad_key, []),
        "403": (403, err("FORBIDDEN", "Access to this project is denied (mock)."), []),
        "scoped": (403, err("INSUFFICIENT_PERMISSIONS", "Insufficient permissions."), []),
        "402": (402, no_credit, []),
        "quota": (402, no_credit, []),
        "429": (429, err("TOO_MANY_REQUESTS", "Too many requests (mock)."), list(_RETRY_AFTER)),
        "500": (500, err("INTERNAL_SERVER_ERROR", "Internal server error (mock)."), []),
    }
    return answers[verdict]


def _probe_openrouter(verdict: str, masked: str) -> tuple[int, Any, list[tuple[str, str]]]:
    def err(status: int, message: str) -> dict[str, Any]:
        return {"error": {"code": status, "message": message}}

    answers: dict[str, tuple[int, Any, list[tuple[str, str]]]] = {
        "401": (401, err(401, "User not found."), []),
        "invalid": (401, err(401, "User not found."), []),
        "403": (403, err(403, "This API key has been disabled (mock)."), []),
        "scoped": (403, err(403, "This API key has been disabled (mock)."), []),
        "402": (
            402,
            err(
                402,
                "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
            ),
            [],
        ),
        "429": (429, err(429, "Rate limit exceeded (mock)."), list(_RETRY_AFTER)),
        "500": (500, err(500, "Internal Server Error"), []),
    }
    return answers[verdict]


_PROBE_FAMILIES: dict[str, Callable[[str, str], tuple[int, Any, list[tuple[str, str]]]]] = {
    "openai": _probe_openai,
    "anthropic": _probe_anthropic,
    "gemini": _probe_gemini,
    "elevenlabs": _probe_elevenlabs,
    "deepgram": _probe_deepgram,
    "openrouter": _probe_openrouter,
}


def _probe_reply(ctx: _Ctx, verdict: str) -> _Reply:
    """The answer of a key check to a key carrying a marker (not ``slow``)."""
    if ctx.route.kind == "openrouter_key" and verdict == "quota":
        return _json_reply(_openrouter_key(ctx, remaining=0))
    status, body, headers = _PROBE_FAMILIES[ctx.route.family](verdict, _masked(ctx.rec))
    return _json_reply(body, status, headers)


# --------------------------------------------------------------------------------------------
# Reply selection
# --------------------------------------------------------------------------------------------


def _default_reply(ctx: _Ctx, allow_stream: bool = True) -> _Reply:
    """The normal answer for the request's path."""
    kind = ctx.route.kind
    stream = allow_stream and ctx.wants_stream
    if kind == "openai_chat":
        return _openai_chat_stream(ctx) if stream else _json_reply(_openai_chat(ctx))
    if kind == "openai_completions":
        return _openai_completion_stream(ctx) if stream else _json_reply(_openai_completion(ctx))
    if kind == "openai_embeddings":
        return _json_reply(_openai_embeddings(ctx))
    if kind == "openai_responses":
        if stream:
            return _openai_responses_stream(ctx)
        return _json_reply(_response_obj(ctx, f"resp_mock{ctx.seq}", MOCK_TEXT, completed=True))
    if kind == "openai_responses_get":
        return _json_reply(_response_obj(ctx, ctx.route.arg or "", MOCK_TEXT, completed=True))
    if kind == "openai_responses_delete":
        return _json_reply({"id": ctx.route.arg, "object": "response.deleted", "deleted": True})
    if kind == "openai_models":
        return _json_reply(_openai_models())
    if kind == "gemini_openai_models":
        names = ("models/gemini-2.0-flash", "models/gemini-1.5-pro")
        data = [{"id": n, "object": "model", "owned_by": "google"} for n in names]
        return _json_reply({"object": "list", "data": data})
    if kind == "openai_model":
        model = {"id": ctx.route.arg, "object": "model", "created": 1_700_000_000}
        return _json_reply({**model, "owned_by": "mock"})
    if kind == "openai_speech":
        return _binary_reply(AUDIO_BYTES, "audio/mpeg", chunked=True)
    if kind == "openai_transcription":
        return _json_reply({"text": "hello from mock"})
    if kind == "openai_images":
        image = base64.b64encode(IMAGE_BYTES).decode()
        return _json_reply({"created": 1_700_000_000, "data": [{"b64_json": image}]})
    if kind == "openai_moderations":
        return _json_reply(
            {
                "id": f"modr-mock{ctx.seq}",
                "model": ctx.model,
                "results": [{"flagged": False, "categories": {}, "category_scores": {}}],
            }
        )
    if kind == "anthropic_messages":
        return _anthropic_stream(ctx) if stream else _json_reply(_anthropic_message(ctx))
    if kind == "anthropic_count_tokens":
        return _json_reply({"input_tokens": 12})
    if kind == "anthropic_models":
        return _json_reply(_anthropic_models())
    if kind == "gemini_generate":
        return _json_reply(_gemini_response(ctx, MOCK_TEXT, final=True))
    if kind == "gemini_stream":
        if ctx.q("alt") == "sse" and allow_stream:
            return _gemini_sse(ctx)
        item, last = _gemini_stream_parts(ctx)
        return _json_reply([*(item(i) for i in range(ctx.chunks)), last])
    if kind == "gemini_count_tokens":
        return _json_reply({"totalTokens": 10})
    if kind == "gemini_embed":
        return _json_reply({"embedding": {"values": _embedding_values(0)}})
    if kind == "gemini_batch_embed":
        reqs = ctx.body_get("requests")
        n = len(reqs) if isinstance(reqs, list) else 1
        return _json_reply({"embeddings": [{"values": _embedding_values(i)} for i in range(n)]})
    if kind == "gemini_models":
        return _json_reply(_gemini_models())
    if kind == "gemini_model":
        name = ctx.route.arg or "models/unknown"
        return _json_reply({"name": name, "displayName": name.split("/", 1)[-1]})
    if kind in ("eleven_tts", "eleven_sts", "eleven_sfx"):
        reply = _binary_reply(AUDIO_BYTES, "audio/mpeg", chunked=ctx.route.streaming_path)
        text = ctx.body_get("text")
        reply.headers += [
            ("request-id", f"mock-eleven-{ctx.seq}"),
            ("history-item-id", f"mockhistory{ctx.seq}"),
            ("x-character-count", str(len(text) if isinstance(text, str) else 0)),
        ]
        return reply
    if kind == "eleven_stt":
        return _json_reply(
            {"language_code": "en", "language_probability": 0.99, "text": "hello from mock"}
        )
    if kind == "eleven_voices":
        return _json_reply(_eleven_voices())
    if kind == "deepgram_listen":
        return _json_reply(_deepgram_listen(ctx))
    if kind == "deepgram_speak":
        reply = _binary_reply(AUDIO_BYTES, "audio/mpeg", chunked=True)
        text = ctx.body_get("text")
        reply.headers += [
            ("dg-request-id", f"mock-dg-{ctx.seq}"),
            ("dg-char-count", str(len(text) if isinstance(text, str) else 0)),
        ]
        return reply
    if kind == "deepgram_read":
        return _json_reply(_deepgram_read(ctx))
    if kind == "hf_model":
        return _binary_reply(IMAGE_BYTES, "image/png", chunked=False)
    if kind == "eleven_models":
        return _json_reply(_eleven_models())
    if kind == "eleven_user":
        return _json_reply(_eleven_user(ctx))
    if kind == "deepgram_projects":
        return _json_reply(_deepgram_projects())
    if kind == "openrouter_key":
        return _json_reply(_openrouter_key(ctx, remaining=None))
    message = f"Unknown request URL: {ctx.rec.method} {ctx.rec.path}. (mock provider)"
    return _error_reply(ctx.route, 404, message)


def _stream_reply(ctx: _Ctx) -> _Reply:
    """A streaming answer in the path's format, whatever the request asked for."""
    kind = ctx.route.kind
    if kind in _BINARY_KINDS:
        reply = _default_reply(ctx)
        reply.chunked = True
        return reply
    if kind == "anthropic_messages":
        return _anthropic_stream(ctx)
    if kind.startswith("gemini_"):
        return _gemini_sse(ctx)
    if kind == "openai_responses":
        return _openai_responses_stream(ctx)
    if kind == "openai_completions":
        return _openai_completion_stream(ctx)
    return _openai_chat_stream(ctx)


_RATELIMIT_HEADERS = [
    ("retry-after", "7"),
    ("x-ratelimit-limit-requests", "60"),
    ("x-ratelimit-remaining-requests", "0"),
    ("x-ratelimit-reset-requests", "7s"),
    ("x-request-id", "req_mock_429"),
]
_ANTHROPIC_RATELIMIT_HEADERS = [
    ("anthropic-ratelimit-requests-limit", "60"),
    ("anthropic-ratelimit-requests-remaining", "0"),
    ("anthropic-ratelimit-requests-reset", "2030-01-01T00:00:07Z"),
    ("request-id", "req_mock_429"),
]
_EXTRA_HEADERS = [
    ("x-ratelimit-limit-requests", "100"),
    ("x-ratelimit-remaining-requests", "99"),
    ("x-request-id", "req_mock_1"),
    ("openai-processing-ms", "12"),
    ("set-cookie", "tracking=1"),
    ("content-disposition", "inline"),
]


# --------------------------------------------------------------------------------------------
# The ASGI app
# --------------------------------------------------------------------------------------------


class MockApp:
    """Pure ASGI app; records into its ``MockProvider``."""

    def __init__(self, provider: MockProvider) -> None:
        self._provider = provider
        self._active: set[_Exchange] = set()
        self._stopping = False

    def request_stop(self) -> None:
        """Wake every running exchange so it finishes; call from the server's loop."""
        self._stopping = True
        for ex in self._active:
            ex.wake.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        ex = _Exchange(self._provider._generation)
        if self._stopping:
            ex.wake.set()
        self._provider._add_exchange(ex)
        self._active.add(ex)
        watcher: asyncio.Task[None] | None = None
        try:
            chunks: list[bytes] = []
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self._provider._mark_disconnect(ex)
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            rec = Recorded(
                method=scope["method"],
                path=scope["path"],
                raw_path=scope.get("raw_path") or scope["path"].encode(),
                query_string=scope.get("query_string", b""),
                headers=[
                    (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]
                ],
                body=b"".join(chunks),
            )
            seq = self._provider._record(rec)
            watcher = asyncio.create_task(self._watch(ex, receive))
            ctx = _Ctx(rec, _route(rec.method, rec.path, rec.headers), seq)
            await self._answer(ctx, ex, send)
        except _ClientGone:
            return
        finally:
            self._active.discard(ex)
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            self._provider._settle(ex)

    async def _watch(self, ex: _Exchange, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not ex.finished:
                    self._provider._mark_disconnect(ex)
                return

    async def _pause(self, ex: _Exchange, seconds: float) -> bool:
        """Sleep; True if woken early because the client left or the server is stopping."""
        if seconds > 0 and not ex.wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ex.wake.wait(), seconds)
        return ex.wake.is_set()

    async def _send(self, ex: _Exchange, send: Send, message: Message) -> None:
        try:
            await send(message)
        except Exception as exc:
            self._provider._mark_disconnect(ex)
            raise _ClientGone from exc

    async def _answer(self, ctx: _Ctx, ex: _Exchange, send: Send) -> None:
        scenario = ctx.scenario()
        route = ctx.route
        if scenario == "default" and route.kind in _PROBE_KINDS:
            verdict = _key_verdict(ctx.rec)
            if verdict == "slow":
                if await self._pause(ex, _SLOW_PROBE_S) and ex.disconnected_at is not None:
                    return
            elif verdict is not None:
                await self._play(ctx, ex, send, _probe_reply(ctx, verdict))
                return
        if scenario == "ratelimited":
            headers = list(_RATELIMIT_HEADERS)
            if route.family == "anthropic":
                headers += _ANTHROPIC_RATELIMIT_HEADERS
            msg = "Rate limit reached for requests (mock). Please try again in 7s."
            await self._play(ctx, ex, send, _error_reply(route, 429, msg, headers))
        elif scenario == "status":
            status = ctx.qint("status", 500)
            if status >= 400:
                reply = _error_reply(
                    route,
                    status,
                    f"Mock error with status {status}.",
                    [("x-request-id", f"req_mock_{status}")],
                )
            elif status in (204, 304) or status < 200:
                reply = _Reply(status, None)
            else:
                reply = _default_reply(ctx)
                reply.status = status
            await self._play(ctx, ex, send, reply)
        elif scenario == "headers":
            reply = _default_reply(ctx)
            reply.headers += _EXTRA_HEADERS
            await self._play(ctx, ex, send, reply)
        elif scenario == "slow_headers":
            delay = ctx.qint("delay_ms", 3000) / 1000
            if await self._pause(ex, delay) and ex.disconnected_at is not None:
                return
            await self._play(ctx, ex, send, _default_reply(ctx))
        elif scenario == "endless":
            await self._play(ctx, ex, send, _stream_reply(ctx), mode="endless")
        elif scenario == "stall":
            await self._play(ctx, ex, send, _stream_reply(ctx), mode="stall")
        elif scenario == "break":
            await self._play(ctx, ex, send, _stream_reply(ctx), mode="break")
        elif scenario == "gzip":
            if route.kind not in _BINARY_KINDS and route.kind != "not_found":
                base = _default_reply(ctx, allow_stream=False)
            else:
                base = _json_reply(_openai_chat(ctx))
            plain = b"".join(base.pieces())
            reply = _Reply(
                base.status,
                base.content_type,
                head=[gzip.compress(plain, mtime=0)],
                headers=[*base.headers, ("content-encoding", "gzip")],
            )
            await self._play(ctx, ex, send, reply)
        elif scenario == "echo":
            rec = ctx.rec
            seen: dict[str, str] = {}
            for key, value in rec.headers:
                seen[key] = f"{seen[key]}, {value}" if key in seen else value
            echo = {
                "method": rec.method,
                "path": rec.path,
                "raw_path": rec.raw_path.decode("latin-1"),
                "query": _flatten_query(ctx.query),
                "query_string": rec.query_string.decode("latin-1"),
                "headers": seen,
                "body_len": len(rec.body),
                "body_sha256": hashlib.sha256(rec.body).hexdigest(),
            }
            await self._play(ctx, ex, send, _json_reply(echo))
        elif scenario == "default":
            await self._play(ctx, ex, send, _default_reply(ctx))
        else:
            known = ", ".join(SCENARIOS)
            msg = f"Unknown mock scenario {scenario!r}; known: {known}."
            await self._play(ctx, ex, send, _error_reply(route, 400, msg))

    async def _play(
        self, ctx: _Ctx, ex: _Exchange, send: Send, reply: _Reply, mode: str = "normal"
    ) -> None:
        """Send ``reply``. ``mode``: normal, endless, stall (after 2 pieces) or break (ditto)."""
        default_interval = 100 if mode == "endless" else 0
        interval = max(0, ctx.qint("interval_ms", default_interval)) / 1000
        if mode == "normal" and ctx.scenario() == "default":
            # An optional delay before the response start, for plain requests too.
            delay = ctx.qint("delay_ms", 0) / 1000
            if delay > 0 and await self._pause(ex, delay) and ex.disconnected_at is not None:
                return
        pieces: Iterator[bytes] = reply.endless() if mode == "endless" else iter(reply.pieces())
        headers: list[tuple[str, str]] = []
        if reply.content_type is not None:
            headers.append(("content-type", reply.content_type))
        headers += reply.headers
        if not reply.chunked:
            if mode == "normal":
                materialized = list(pieces)
                pieces = iter(materialized)
                length = sum(len(p) for p in materialized)
            else:
                length = sum(len(p) for p in reply.pieces())
            headers.append(("content-length", str(length)))
        raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        start = {"type": "http.response.start", "status": reply.status, "headers": raw_headers}
        await self._send(ex, send, start)
        deadline = time.monotonic() + _ENDLESS_SAFETY_S
        after = ctx.qint("after", 2)  # pieces sent before a stall or a break
        for sent, piece in enumerate(pieces):
            if sent and interval > 0:
                if await self._pause(ex, interval):
                    break
            elif ex.wake.is_set():
                break
            elif mode == "endless":
                await asyncio.sleep(0)
            if sent == after and mode == "break":
                break
            if sent == after and mode == "stall":
                mode = "normal"
                if await self._pause(ex, ctx.qint("delay_ms", 30_000) / 1000):
                    break
            body_msg = {"type": "http.response.body", "body": piece, "more_body": True}
            await self._send(ex, send, body_msg)
            if mode == "endless" and time.monotonic() > deadline:
                break
        if mode == "break":
            self._provider._settle(ex, finished=True)
            raise _MockAbort("mock provider: deliberate mid-stream abort")
        if ex.disconnected_at is not None:
            return  # the client is gone: leave the response unfinished
        self._provider._settle(ex, finished=True)
        await self._send(ex, send, {"type": "http.response.body", "body": b"", "more_body": False})


# --------------------------------------------------------------------------------------------
# The server wrapper
# --------------------------------------------------------------------------------------------


class MockProvider:
    """A mock provider server on 127.0.0.1; use as a context manager or start()/stop()."""

    def __init__(self) -> None:
        self.url: str = ""
        self.port: int = 0
        self.requests: list[Recorded] = []
        self.disconnects: list[float] = []
        self._cond = threading.Condition()
        self._exchanges: list[_Exchange] = []
        self._seq = 0
        self._generation = 0
        self.app = MockApp(self)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("mock provider already started")
        _install_log_filter()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            log_config=None,
            lifespan="off",
            loop="asyncio",
            http="h11",
            ws="none",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=3,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=self._run, name="mockprovider", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"mock provider failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                server.should_exit = True
                raise RuntimeError("mock provider did not start within 10 s")
            time.sleep(0.005)
        sockname = server.servers[0].sockets[0].getsockname()
        self.port = int(sockname[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start()
            self._error = exc

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        assert self._server is not None
        await self._server.serve()

    def stop(self) -> None:
        server, thread, loop = self._server, self._thread, self._loop
        if server is None or thread is None:
            return
        server.should_exit = True
        if loop is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(self.app.request_stop)
        thread.join(timeout=15)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        self._server = None
        self._thread = None
        self._loop = None

    def __enter__(self) -> MockProvider:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- inspection (test thread) ---------------------------------------------------------

    def clear(self) -> None:
        with self._cond:
            self.requests.clear()
            self.disconnects.clear()
            self._exchanges.clear()
            # Exchanges still running from before keep going, but their disconnects no longer
            # show up in `disconnects` or `wait_for_disconnect`.
            self._generation += 1

    def last(self) -> Recorded:
        with self._cond:
            if not self.requests:
                raise LookupError("the mock provider has not received any request")
            return self.requests[-1]

    def wait_for_request(self, n: int = 1, timeout: float = 5) -> None:
        """Block until at least ``n`` requests are recorded; TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(
                    f"mock provider got {len(self.requests)} request(s), wanted {n}, "
                    f"within {timeout} s"
                )

    def wait_for_disconnect(self, timeout: float) -> float | None:
        """Monotonic time at which the most recent still-pending/streaming exchange saw its
        client go away (maybe already before this call); None if not within ``timeout``.

        Exchanges that completed normally are skipped; if no exchange is pending yet this
        also waits for one to arrive.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                target = self._disconnect_target()
                if target is not None and target.disconnected_at is not None:
                    return target.disconnected_at
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def _disconnect_target(self) -> _Exchange | None:
        for ex in reversed(self._exchanges):
            if not ex.finished or ex.disconnected_at is not None:
                return ex
        return None

    # ---- called from the app (server thread) ----------------------------------------------

    def _add_exchange(self, ex: _Exchange) -> None:
        with self._cond:
            self._exchanges.append(ex)
            del self._exchanges[:-1000]
            self._cond.notify_all()

    def _record(self, rec: Recorded) -> int:
        with self._cond:
            self.requests.append(rec)
            self._seq += 1
            self._cond.notify_all()
            return self._seq

    def _mark_disconnect(self, ex: _Exchange) -> None:
        with self._cond:
            if ex.disconnected_at is None and not ex.finished:
                now = time.monotonic()
                ex.disconnected_at = now
                if ex.generation == self._generation:
                    self.disconnects.append(now)
                self._cond.notify_all()
        ex.wake.set()

    def _settle(self, ex: _Exchange, finished: bool = False) -> None:
        """Mark ``ex`` finished (explicitly, or when its app call ends without a disconnect)."""
        with self._cond:
            if finished or ex.disconnected_at is None:
                ex.finished = True
                self._cond.notify_all()


def start_mock() -> MockProvider:
    """Start a mock provider; stop it with ``.stop()`` or use it as a context manager::

    @pytest.fixture
    def provider() -> Iterator[MockProvider]:
        with start_mock() as mock:
            yield mock
    """
    mock = MockProvider()
    mock.start()
    return mock
