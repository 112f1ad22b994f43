"""`relay.usage.meter.UsageMeter`: token usage read off real wire formats, however they are chunked,
compressed or mangled, in bounded memory and without ever raising."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import random
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.usage import meter as usage
from relay.usage.meter import (
    MAX_DECODED_BYTES,
    MAX_EVENT_BYTES,
    MAX_JSON_BYTES,
    MAX_PARSED_EVENTS,
    Usage,
    UsageMeter,
)
from tests import mockprovider

pytestmark = pytest.mark.sqlite

# No example database: the tests must not write files outside tmp_path.
PROPERTY = settings(database=None, max_examples=300, deadline=None)

JSON = "application/json"
SSE = "text/event-stream; charset=utf-8"  # what OpenAI and Anthropic send
SSE_GEMINI = "text/event-stream"


# ---- Wire formats, as the mock provider (and the providers) write them ------------------------


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def sse(data: Any, event: str | None = None, crlf: bool = False) -> bytes:
    payload = data if isinstance(data, str) else dumps(data).decode()
    nl = "\r\n" if crlf else "\n"
    head = f"event: {event}{nl}" if event else ""
    return f"{head}data: {payload}{nl}{nl}".encode()


def openai_chat_json() -> bytes:
    return dumps(
        {
            "id": "chatcmpl-mock1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini",
            "system_fingerprint": "fp_mock",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }
    )


def openai_chat_sse(include_usage: bool = True, chunks: int = 5) -> bytes:
    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        obj: dict[str, Any] = {
            "id": "chatcmpl-mock1",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini",
            "system_fingerprint": "fp_mock",
            "choices": choices,
        }
        if include_usage:
            obj["usage"] = usage  # null in every chunk but the last, as OpenAI sends it
        return sse(obj)

    body = b"".join(
        chunk([{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}])
        for i in range(chunks)
    )
    body += chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    if include_usage:
        body += chunk([], {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
    return body + sse("[DONE]")


def anthropic_json() -> bytes:
    return dumps(
        {
            "id": "msg_mock000001",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-haiku-20241022",
            "content": [{"type": "text", "text": "Hello"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 6},
        }
    )


def anthropic_sse(outputs: tuple[int, ...] = (6,), chunks: int = 5) -> bytes:
    message = {
        "id": "msg_mock000001",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-20241022",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }
    body = sse({"type": "message_start", "message": message}, event="message_start")
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
    body += sse(block, event="content_block_start") + sse({"type": "ping"}, event="ping")
    for i in range(chunks):
        delta = {"type": "content_block_delta", "index": 0, "delta": {"text": f"tok{i} "}}
        body += sse(delta, event="content_block_delta")
    body += sse({"type": "content_block_stop", "index": 0}, event="content_block_stop")
    for output in outputs:  # cumulative: the last one is the total
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": output},
        }
        body += sse(delta, event="message_delta")
    return body + sse({"type": "message_stop"}, event="message_stop")


def gemini_response(text: str, usage: dict[str, int] | None) -> dict[str, Any]:
    candidate = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    obj: dict[str, Any] = {"candidates": [candidate], "modelVersion": "gemini-2.0-flash"}
    if usage is not None:
        obj["usageMetadata"] = usage
    return obj


GEMINI_USAGE = {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}


def gemini_json() -> bytes:
    return dumps(gemini_response("Hello", GEMINI_USAGE))


def gemini_sse(chunks: int = 5) -> bytes:
    """Gemini's `alt=sse` frames end with CRLF CRLF."""
    body = b"".join(sse(gemini_response(f"tok{i} ", None), crlf=True) for i in range(chunks))
    return body + sse(gemini_response("", GEMINI_USAGE), crlf=True)


def gemini_sse_growing() -> bytes:
    """Real Gemini puts usageMetadata in every chunk; the last one is the total."""
    frames = [
        gemini_response(f"tok{i} ", {"promptTokenCount": 10, "candidatesTokenCount": i + 1})
        for i in range(4)
    ]
    return b"".join(sse(frame, crlf=True) for frame in frames)


def gemini_json_array() -> bytes:
    """streamGenerateContent without `alt=sse`: a JSON array of responses."""
    items = [gemini_response(f"tok{i} ", None) for i in range(3)]
    return dumps([*items, gemini_response("", GEMINI_USAGE)])


def responses_sse() -> bytes:
    """OpenAI's Responses API: usage in `response.completed`'s response."""

    def response(completed: bool) -> dict[str, Any]:
        usage = {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}
        return {
            "id": "resp_mock1",
            "object": "response",
            "status": "completed" if completed else "in_progress",
            "model": "gpt-4o-mini",
            "output": [],
            "usage": usage if completed else None,
        }

    def ev(kind: str, **fields: Any) -> bytes:
        return sse({"type": kind, **fields}, event=kind)

    return (
        ev("response.created", response=response(False))
        + ev("response.in_progress", response=response(False))
        + b"".join(ev("response.output_text.delta", delta=f"tok{i} ") for i in range(3))
        + ev("response.completed", response=response(True))
    )


def groq_sse() -> bytes:
    """Groq's streams (before `stream_options`) report usage under `x_groq`."""
    base = {"id": "chatcmpl-g", "object": "chat.completion.chunk", "model": "llama-3.1-8b"}
    return (
        sse({**base, "choices": [{"index": 0, "delta": {"content": "hi"}}]})
        + sse(
            {
                **base,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "x_groq": {"id": "req_1", "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
            }
        )
        + sse("[DONE]")
    )


OPENAI = Usage(11, 7, "gpt-4o-mini")
ANTHROPIC = Usage(12, 6, "claude-3-5-haiku-20241022")
GEMINI = Usage(10, 5, "gemini-2.0-flash")
# What the mock provider reports: every token kind, each in its provider's own place.
MOCK_OPENAI = dataclasses.replace(
    OPENAI,
    cache_read_tokens=mockprovider.OPENAI_USAGE["prompt_tokens_details"]["cached_tokens"],
    reasoning_tokens=mockprovider.OPENAI_USAGE["completion_tokens_details"]["reasoning_tokens"],
)
MOCK_ANTHROPIC = dataclasses.replace(
    ANTHROPIC,
    cache_read_tokens=mockprovider.ANTHROPIC_USAGE["cache_read_input_tokens"],
    cache_write_tokens=mockprovider.ANTHROPIC_USAGE["cache_creation_input_tokens"],
)
MOCK_GEMINI = dataclasses.replace(
    GEMINI,
    cache_read_tokens=mockprovider.GEMINI_USAGE["cachedContentTokenCount"],
    reasoning_tokens=mockprovider.GEMINI_USAGE["thoughtsTokenCount"],
)

CASES: dict[str, tuple[str, bytes, Usage]] = {
    "openai-json": (JSON, openai_chat_json(), OPENAI),
    "openai-sse": (SSE, openai_chat_sse(), OPENAI),
    "openai-sse-no-usage": (
        SSE,
        openai_chat_sse(include_usage=False),
        Usage(None, None, OPENAI.model),
    ),
    "anthropic-json": (JSON, anthropic_json(), ANTHROPIC),
    "anthropic-sse": (SSE, anthropic_sse(), ANTHROPIC),
    "anthropic-sse-cumulative": (
        SSE,
        anthropic_sse(outputs=(2, 9, 17)),
        Usage(12, 17, ANTHROPIC.model),
    ),
    "gemini-json": ("application/json; charset=UTF-8", gemini_json(), GEMINI),
    "gemini-sse-crlf": (SSE_GEMINI, gemini_sse(), GEMINI),
    "gemini-sse-growing": (SSE_GEMINI, gemini_sse_growing(), Usage(10, 4, GEMINI.model)),
    "gemini-json-array": (JSON, gemini_json_array(), GEMINI),
    "responses-sse": (SSE, responses_sse(), OPENAI),
    "groq-sse": (SSE, groq_sse(), Usage(3, 4, "llama-3.1-8b")),
}


def meter(content_type: str, pieces: list[bytes], encoding: str | None = None) -> UsageMeter:
    m = UsageMeter(content_type, encoding)
    for piece in pieces:
        m.feed(piece)
    return m


def measure(content_type: str, pieces: list[bytes], encoding: str | None = None) -> Usage:
    return meter(content_type, pieces, encoding).result()


def cut(body: bytes, points: list[int]) -> list[bytes]:
    """`body` cut at `points` (any order, repeats allowed: empty chunks are fed too)."""
    bounds = [0, *sorted(points), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def chunkings(draw: st.DrawFn, body: bytes) -> list[bytes]:
    points = draw(st.lists(st.integers(0, len(body)), max_size=40))
    return cut(body, points)


# ---- Each format --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_each_format_whole(case: str) -> None:
    content_type, body, expected = CASES[case]
    assert measure(content_type, [body]) == expected


@pytest.mark.parametrize("case", CASES)
def test_each_format_split_at_every_byte(case: str) -> None:
    content_type, body, expected = CASES[case]
    for at in range(len(body) + 1):
        assert measure(content_type, [body[:at], body[at:]]) == expected, at
    assert measure(content_type, [body[i : i + 1] for i in range(len(body))]) == expected


@pytest.mark.parametrize("crlf", [False, True])
def test_a_short_stream_cut_at_every_pair_of_points(crlf: bool) -> None:
    body = sse({"usage": {"prompt_tokens": 1, "completion_tokens": 2}}, crlf=crlf)
    body += sse("[DONE]", crlf=crlf)
    for a in range(len(body) + 1):
        for b in range(a, len(body) + 1):
            assert measure(SSE, cut(body, [a, b])) == Usage(1, 2, None), (a, b)


@PROPERTY
@given(data=st.data(), case=st.sampled_from(sorted(CASES)))
def test_each_format_in_random_chunks(data: st.DataObject, case: str) -> None:
    content_type, body, expected = CASES[case]
    assert measure(content_type, data.draw(chunkings(body))) == expected


def test_a_gemini_crlf_frame_split_between_cr_and_lf() -> None:
    body = gemini_sse()
    assert body.count(b"\r\n\r\n") == 6
    for at in (i for i in range(len(body)) if body[i : i + 1] in (b"\r", b"\n")):
        assert measure(SSE_GEMINI, [body[:at], body[at:]]) == GEMINI


def test_the_last_anthropic_message_delta_is_the_total() -> None:
    assert measure(SSE, [anthropic_sse(outputs=(5, 3, 40))]).output_tokens == 40
    assert measure(SSE, [anthropic_sse(outputs=(40, 5))]).output_tokens == 5
    # No message_delta (a stream cut short): what message_start said.
    assert measure(SSE, [anthropic_sse(outputs=())]) == Usage(12, 1, ANTHROPIC.model)
    # A message_delta that also reports input (as the API now may) replaces message_start's.
    delta = {"type": "message_delta", "usage": {"input_tokens": 15, "output_tokens": 30}}
    body = anthropic_sse(outputs=(3,)) + sse(delta, event="message_delta")
    assert measure(SSE, [body]) == Usage(15, 30, ANTHROPIC.model)


def test_line_endings_of_every_kind() -> None:
    event = b'data: {"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4}}'
    for first, second in [(b"\n", b"\n"), (b"\r\n", b"\r\n"), (b"\r", b"\r"), (b"\r\n", b"\n")]:
        body = b": keepalive" + first + second + event + first + second + b"data: [DONE]" + first
        assert measure(SSE, [body]) == Usage(3, 4, "m"), (first, second)


def test_multi_line_data_fields_are_joined() -> None:
    obj = {"model": "m", "usage": {"input_tokens": 8, "output_tokens": 9}}
    lines = json.dumps(obj, indent=2).splitlines()
    assert len(lines) > 5
    event = b"".join(b"data:" + line.encode() + b"\n" for line in lines) + b"\n"
    assert measure(SSE, [b"event: message_delta\n" + event]) == Usage(8, 9, "m")


def test_data_lines_join_with_a_newline() -> None:
    """`1` and `2` on two data lines are not `12`: this event's data is not JSON."""
    event = b'data: {"usage":{"input_tokens":1\ndata:2,"output_tokens":3}}\n\n'
    assert measure(SSE, [event]) == Usage()
    event = b'data: {"usage":{"input_tokens":1\ndata: ,"output_tokens":3}}\n\n'
    assert measure(SSE, [event]) == Usage(1, 3)


def test_comments_and_other_fields_are_not_data() -> None:
    body = (
        b": OPENROUTER PROCESSING\n\n"
        b'id: 1\nretry: 10\nevent: x\n: {"usage":{"prompt_tokens":99}}\n'
        b'data: {"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n'
        b'dataX: {"usage":{"prompt_tokens":98}}\n\n'
    )
    assert measure(SSE, [body]) == Usage(3, 4, None)


def test_an_unterminated_last_event_still_counts() -> None:
    body = openai_chat_sse().removesuffix(sse("[DONE]")).removesuffix(b"\n\n")
    assert measure(SSE, [body]) == OPENAI


def test_only_events_that_may_report_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    real = usage._loads

    def counting(data: bytes) -> object:
        parsed.append(data)
        return real(data)

    monkeypatch.setattr(usage, "_loads", counting)
    body = openai_chat_sse(chunks=500)
    assert measure(SSE, [body]) == OPENAI
    # The first chunk (for the model) and the usage chunk: not the 500 with "usage":null.
    assert len(parsed) == 2
    parsed.clear()
    assert measure(SSE, [anthropic_sse(chunks=500)]) == ANTHROPIC
    assert len(parsed) == 2  # message_start, message_delta


def test_result_is_final() -> None:
    m = meter(SSE, [openai_chat_sse()])
    assert m.result() == OPENAI
    m.feed(sse({"usage": {"prompt_tokens": 1, "completion_tokens": 1}}))
    assert m.result() == OPENAI
    assert m.buffered == 0


# ---- Compressed bodies --------------------------------------------------------------------


def compress(body: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(body, mtime=0)
    if coding == "deflate":
        return zlib.compress(body)
    assert coding == "raw-deflate"  # what some servers send as "deflate"
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(body) + packer.flush()


CODINGS = {"gzip": "gzip", "deflate": "deflate", "raw-deflate": "deflate"}


@PROPERTY
@given(
    data=st.data(),
    case=st.sampled_from(sorted(CASES)),
    coding=st.sampled_from(sorted(CODINGS)),
)
def test_compressed_bodies_in_random_chunks(data: st.DataObject, case: str, coding: str) -> None:
    content_type, body, expected = CASES[case]
    packed = compress(body, coding)
    assert measure(content_type, data.draw(chunkings(packed)), CODINGS[coding]) == expected


@pytest.mark.parametrize("coding", sorted(CODINGS))
def test_compressed_bodies_byte_by_byte(coding: str) -> None:
    packed = compress(gemini_sse(), coding)
    pieces = [packed[i : i + 1] for i in range(len(packed))]
    assert measure(SSE_GEMINI, pieces, CODINGS[coding]) == GEMINI


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [
        ("GZIP", OPENAI),
        ("x-gzip", OPENAI),
        (" gzip ", OPENAI),
        ("identity, gzip", OPENAI),
        ("", None),  # gzip bytes read as plain: nothing to meter, nothing raised
        ("zstd", None),
        ("gzip, zstd", None),
        ("compress", None),
    ],
)
def test_encoding_names(encoding: str, expected: Usage | None) -> None:
    result = measure(SSE, [gzip.compress(openai_chat_sse())], encoding)
    assert result == (expected or Usage())


def test_codings_applied_twice_are_undone_in_reverse() -> None:
    twice = gzip.compress(compress(anthropic_json(), "raw-deflate"))
    assert measure(JSON, [twice[:9], twice[9:]], "deflate, gzip") == ANTHROPIC
    assert measure(JSON, [twice], "gzip, deflate") == Usage()


def bomb(coding: str, size: int) -> list[bytes]:
    """`size` bytes of newlines, then a real usage event: compressed to almost nothing."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31 if coding == "gzip" else 15)
    packed = b"".join(packer.compress(b"\n" * (1 << 20)) for _ in range(size >> 20))
    packed += packer.compress(openai_chat_sse()) + packer.flush()
    return [packed[i : i + 16_384] for i in range(0, len(packed), 16_384)]


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_decompression_bomb_is_given_up(coding: str) -> None:
    pieces = bomb(coding, 4 * MAX_DECODED_BYTES)
    assert sum(map(len, pieces)) < MAX_DECODED_BYTES // 200
    m = UsageMeter(SSE, coding)
    for piece in pieces:
        m.feed(piece)
        assert m.buffered <= MAX_EVENT_BYTES
    assert m.result() == Usage()
    # The same shape, small enough: metered.
    assert measure(SSE, bomb(coding, MAX_DECODED_BYTES // 2), coding) == OPENAI


def test_a_bomb_never_expands_much_at_once() -> None:
    """Each chunk is decoded with a limit: a 32 KiB chunk that would be 32 MiB is stopped at
    the cap, not decoded and then measured. (zlib builds its output in blocks and then joins
    them: twice the cap, briefly.)"""
    pieces = bomb("gzip", 16 * MAX_DECODED_BYTES)
    whole = b"".join(pieces)
    pieces = [whole[i : i + 32_768] for i in range(0, len(whole), 32_768)]
    assert len(pieces) > 2
    tracemalloc.start()
    try:
        m = meter(SSE, pieces, "gzip")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert m.result() == Usage()
    assert peak < 2.5 * MAX_DECODED_BYTES


def test_a_long_compressed_stream_is_not_a_bomb() -> None:
    """Past MAX_DECODED_BYTES, a stream that compresses like text is still metered."""
    rng = random.Random(7)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz ", k=40)) for _ in range(4000)]
    events = [
        sse({"model": "gpt-4o-mini", "choices": [{"delta": {"content": w}}], "usage": None})
        for w in words
    ]
    body = b"".join(events * (MAX_DECODED_BYTES // len(b"".join(events)) + 1))
    body += openai_chat_sse()
    assert len(body) > MAX_DECODED_BYTES
    packed = gzip.compress(body)
    pieces = [packed[i : i + 8192] for i in range(0, len(packed), 8192)]
    assert measure(SSE, pieces, "gzip") == OPENAI


def test_corrupt_compression_is_given_up() -> None:
    packed = bytearray(gzip.compress(openai_chat_sse()))
    packed[len(packed) // 2] ^= 0xFF
    packed[len(packed) // 2 + 1] ^= 0xFF
    assert measure(SSE, [bytes(packed)], "gzip") == Usage()
    assert measure(JSON, [b"not gzip at all" * 10], "gzip") == Usage()
    assert measure(JSON, [b"\x00\x01garbage" * 10], "deflate") == Usage()


class FakeBrotli:
    """Stands in for `brotli` (not installed here); zlib underneath, its API on top."""

    class Decompressor:
        def __init__(self) -> None:
            self._zlib = zlib.decompressobj()

        def process(self, data: bytes, output_buffer_limit: int | None = None) -> bytes:
            return self._zlib.decompress(data, output_buffer_limit or 0)


class OldBrotli:
    """brotli < 1.2: no output limit."""

    class Decompressor:
        def process(self, data: bytes) -> bytes:
            return data


def test_br_needs_brotli(monkeypatch: pytest.MonkeyPatch) -> None:
    packed = zlib.compress(openai_chat_sse())
    monkeypatch.setattr(usage, "_BROTLI", None)
    assert measure(SSE, [packed], "br") == Usage()
    monkeypatch.setattr(usage, "_BROTLI", FakeBrotli)
    assert measure(SSE, [packed[:50], packed[50:]], "br") == OPENAI
    # A brotli that cannot cap its output is not trusted with a body.
    monkeypatch.setattr(usage, "_BROTLI", OldBrotli)
    assert measure(SSE, [openai_chat_sse()], "br") == Usage()


def test_a_br_bomb_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage, "_BROTLI", FakeBrotli)
    pieces = bomb("deflate", 2 * MAX_DECODED_BYTES)
    assert measure(SSE, pieces, "br") == Usage()


# ---- Bounds -------------------------------------------------------------------------------


def test_a_json_body_over_the_cap_is_given_up() -> None:
    def body(size: int) -> bytes:
        head = b'{"model":"m","usage":{"prompt_tokens":1,"completion_tokens":2},"pad":"'
        return head + b"x" * (size - len(head) - 2) + b'"}'

    fits = body(MAX_JSON_BYTES)
    assert measure(JSON, [fits[i : i + 65_536] for i in range(0, len(fits), 65_536)]) == Usage(
        1, 2, "m"
    )
    m = UsageMeter(JSON, None)
    over = body(MAX_JSON_BYTES + 1)
    for i in range(0, len(over), 65_536):
        m.feed(over[i : i + 65_536])
        assert m.buffered <= MAX_JSON_BYTES
    assert m.buffered == 0  # released, not held to the end
    assert m.result() == Usage()


def test_a_line_without_end_stays_bounded_and_the_stream_recovers() -> None:
    m = UsageMeter(SSE, None)
    m.feed(b'data: "' + b"x" * (2 * MAX_EVENT_BYTES))  # one chunk bigger than the cap
    assert m.buffered <= 1
    m.feed(b'"\n\n')
    assert m.buffered == 0
    m.feed(b'data: {"model":"first","usage":{"prompt_tokens":')
    for _ in range(3 * MAX_EVENT_BYTES // 65_536):
        m.feed(b"7" * 65_536)
        assert m.buffered <= MAX_EVENT_BYTES
    assert m.buffered <= 1
    # The oversized event is dropped; the stream goes on at the next one.
    m.feed(b"}}\n\n" + sse({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}))
    assert m.result() == Usage(3, 4, None)


def test_an_event_of_many_lines_stays_bounded() -> None:
    m = UsageMeter(SSE, None)
    for _ in range(3 * MAX_EVENT_BYTES // 4096):
        m.feed(b'data: "' + b"y" * 4096 + b'"\n')
        assert m.buffered <= MAX_EVENT_BYTES
    m.feed(b"\n" + sse({"model": "m", "usage": {"input_tokens": 1, "output_tokens": 2}}))
    assert m.result() == Usage(1, 2, "m")


def test_an_oversized_event_split_right_at_its_end() -> None:
    big = b'data: "' + b"z" * (MAX_EVENT_BYTES + 10) + b'"\r'
    tail = b"\n\r\n" + sse({"usage": {"prompt_tokens": 5, "completion_tokens": 6}}, crlf=True)
    for at in range(len(tail) + 1):
        assert measure(SSE, [big, tail[:at], tail[at:]]) == Usage(5, 6, None), at


def test_an_oversized_event_is_dropped_whole() -> None:
    """Even the report on its last line: its tail is never read as an event of its own, also
    when a chunk in the middle decodes to nothing."""
    head = sse({"usage": {"prompt_tokens": 5, "completion_tokens": 6}})
    head += b'data: {"pad":"' + b"z" * (MAX_EVENT_BYTES + 100)
    tail = b'"}\ndata: {"usage":{"prompt_tokens":666,"completion_tokens":666}}\n\n'
    tail += b"data: [DONE]\n\n"
    plain = head + tail
    assert measure(SSE, [plain[i : i + 1000] for i in range(0, len(plain), 1000)]) == Usage(5, 6)
    packer = zlib.compressobj(wbits=31)
    first = packer.compress(head) + packer.flush(zlib.Z_SYNC_FLUSH)
    assert first.endswith(b"\x00\x00\xff\xff")  # the empty stored block a flush ends with
    # Its last two bytes decode to nothing: a chunk that gives the meter no bytes.
    pieces = [first[:-2], first[-2:], packer.compress(tail) + packer.flush()]
    assert measure(SSE, pieces, "gzip") == Usage(5, 6)

    # The dropped event's end split around such a chunk: the next event is read.
    packer = zlib.compressobj(wbits=31)
    first = packer.compress(head + b'"}\n') + packer.flush(zlib.Z_SYNC_FLUSH)
    rest = b"\n" + sse({"usage": {"prompt_tokens": 7, "completion_tokens": 8}})
    pieces = [first[:-2], first[-2:], packer.compress(rest) + packer.flush()]
    assert measure(SSE, pieces, "gzip") == Usage(7, 8)


def test_a_stream_of_endless_usage_reports_is_given_up() -> None:
    event = sse({"usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    m = meter(SSE, [event * 1000 for _ in range(MAX_PARSED_EVENTS // 1000)])
    assert m.result() == Usage(1, 1, None)
    m = meter(SSE, [event * 1000 for _ in range(MAX_PARSED_EVENTS // 1000 + 1)])
    assert m.result() == Usage()
    # Also when the one too many is the unterminated last event, read at the end.
    m = meter(SSE, [event * MAX_PARSED_EVENTS, event.rstrip(b"\n")])
    assert m.result() == Usage()


# ---- Robustness ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("Application/JSON", openai_chat_json()),
        ("application/json ;charset=utf-8", openai_chat_json()),
        ("TEXT/Event-Stream", openai_chat_sse()),
        (" text/event-stream ; charset=utf-8", openai_chat_sse()),
    ],
)
def test_media_types_are_case_insensitive(content_type: str, body: bytes) -> None:
    assert measure(content_type, [body]) == OPENAI


@pytest.mark.parametrize(
    "content_type", ["audio/mpeg", "image/png", "application/octet-stream", "text/plain", ""]
)
def test_other_content_types_are_ignored(content_type: str) -> None:
    m = UsageMeter(content_type, "gzip")
    m.feed(openai_chat_json())
    m.feed(gzip.compress(openai_chat_sse()))
    assert m.buffered == 0
    assert m.result() == Usage()


@pytest.mark.parametrize(
    "counts",
    [
        {"prompt_tokens": -1, "completion_tokens": -5},
        {"prompt_tokens": 1.0, "completion_tokens": 2.5},
        {"prompt_tokens": "11", "completion_tokens": "7"},
        {"prompt_tokens": True, "completion_tokens": False},
        {"prompt_tokens": None, "completion_tokens": [7]},
        {"prompt_tokens": 2**64, "completion_tokens": {"n": 7}},
        {"prompt_tokens": 10**12 + 1, "completion_tokens": 2**63 - 1},  # sums would overflow
        {},
    ],
)
def test_implausible_counts_are_none(counts: dict[str, Any]) -> None:
    body = {"model": "m", "usage": counts}
    assert measure(JSON, [dumps(body)]) == Usage(None, None, "m")
    assert measure(SSE, [sse(body)]) == Usage(None, None, "m")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"42",
        b'"usage"',
        b'["usage", 1, null]',
        b'{"usage": [1, 2]}',
        b'{"usage": "lots", "model": 5}',
        b'{"model": "' + b"m" * 1000 + b'"}',
        b'{"usage":{"prompt_tokens":11,"completion_tokens":7}',  # truncated
        b'{"model":"\xff\xfe","usage":{"prompt_tokens":1}}',  # not UTF-8
        b"[" * 100_000,
        b'{"usage":{"prompt_tokens":1' + b"0" * 5000 + b"}}",
    ],
)
def test_unreadable_json_is_none(body: bytes) -> None:
    assert measure(JSON, [body]) == Usage()
    assert measure(SSE, [b"data: " + body + b"\n\n"]) == Usage()


def test_invalid_utf8_elsewhere_does_not_hide_usage() -> None:
    body = b"data: \xff\xfe\xc3\x28\n\n" + openai_chat_sse()
    assert measure(SSE, [body]) == OPENAI


@PROPERTY
@given(
    pieces=st.lists(st.binary(max_size=300), max_size=20),
    content_type=st.sampled_from([JSON, SSE, "audio/mpeg"]),
    encoding=st.sampled_from([None, "gzip", "deflate", "br", "zstd"]),
)
def test_garbage_never_raises(pieces: list[bytes], content_type: str, encoding: str | None) -> None:
    m = meter(content_type, pieces, encoding)
    result = m.result()
    assert isinstance(result, Usage)
    assert m.result() is result


@PROPERTY
@given(
    data=st.data(),
    case=st.sampled_from(sorted(CASES)),
    noise=st.lists(st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=8))),
)
def test_mangled_bodies_never_raise(
    data: st.DataObject, case: str, noise: list[tuple[int, bytes]]
) -> None:
    content_type, body, _ = CASES[case]
    mangled = bytearray(body)
    for at, junk in noise:
        mangled[at % (len(mangled) + 1) : at % (len(mangled) + 1)] = junk
    result = measure(content_type, data.draw(chunkings(bytes(mangled))))
    assert isinstance(result, Usage)


# ---- What the mock provider really sends --------------------------------------------------


def mock_replies() -> Iterator[tuple[str, str, list[bytes], Usage]]:
    """Every usage-bearing answer of tests.mockprovider, built by its own code."""
    from tests import mockprovider as mp

    requests = [
        ("/v1/chat/completions", b"", {"model": "gpt-4o-mini"}, MOCK_OPENAI),
        (
            "/v1/chat/completions",
            b"",
            {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True}},
            MOCK_OPENAI,
        ),
        ("/openai/v1/chat/completions", b"", {"model": "gpt-4o-mini"}, MOCK_OPENAI),
        ("/v1/completions", b"", {"model": "gpt-4o-mini"}, MOCK_OPENAI),
        (
            "/v1/embeddings",
            b"",
            {"model": "gpt-4o-mini", "input": "x"},
            Usage(5, None, OPENAI.model),
        ),
        ("/v1/responses", b"", {"model": "gpt-4o-mini"}, MOCK_OPENAI),
        ("/v1/responses", b"", {"model": "gpt-4o-mini", "stream": True}, MOCK_OPENAI),
        ("/v1/messages", b"", {"model": ANTHROPIC.model}, MOCK_ANTHROPIC),
        ("/v1/messages", b"", {"model": ANTHROPIC.model, "stream": True}, MOCK_ANTHROPIC),
        ("/v1beta/models/gemini-2.0-flash:generateContent", b"", {}, MOCK_GEMINI),
        ("/v1beta/models/gemini-2.0-flash:streamGenerateContent", b"alt=sse", {}, MOCK_GEMINI),
        ("/v1beta/models/gemini-2.0-flash:streamGenerateContent", b"", {}, MOCK_GEMINI),
    ]
    for path, query, payload, expected in requests:
        body = dumps(payload)
        headers = [("content-type", "application/json")]
        rec = mp.Recorded("POST", path, path.encode(), query, headers, body)
        ctx = mp._Ctx(rec, mp._route("POST", path, headers), 1)
        reply = mp._default_reply(ctx)
        name = f"{path}?{query.decode()} {payload.get('stream', False)}"
        yield name, reply.content_type or "", reply.pieces(), expected


def test_the_mock_providers_own_answers() -> None:
    replies = list(mock_replies())
    assert len(replies) == 12
    for name, content_type, pieces, expected in replies:
        assert measure(content_type, pieces) == expected, name
        whole = b"".join(pieces)
        assert measure(content_type, [gzip.compress(whole)], "gzip") == expected, name


# ---- token kinds ----------------------------------------------------------------------------

SSE_TYPE = "text/event-stream"


def test_anthropic_cache_tokens_are_read_and_a_later_report_of_each_wins() -> None:
    start = {"type": "message_start", "message": {"model": "claude-x", "usage": {
        "input_tokens": 3, "output_tokens": 1, "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 2000}}}  # fmt: skip
    # Newer API versions repeat the input figures in message_delta, cumulatively.
    delta = {
        "type": "message_delta",
        "usage": {"output_tokens": 42, "cache_read_input_tokens": 2001},
    }
    result = measure(SSE_TYPE, [sse(start, "message_start"), sse(delta, "message_delta")])
    assert result == Usage(3, 42, "claude-x", cache_read_tokens=2001, cache_write_tokens=100)


def test_openai_responses_and_gemini_report_cache_reads_and_reasoning() -> None:
    completed = {"type": "response.completed", "response": {"model": "o4-mini", "usage": {
        "input_tokens": 50, "input_tokens_details": {"cached_tokens": 32}, "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 6}}}}  # fmt: skip
    assert measure(SSE_TYPE, [sse(completed)]) == Usage(
        50, 9, "o4-mini", cache_read_tokens=32, reasoning_tokens=6
    )
    gemini = {"modelVersion": "gemini-2.5-flash", "usageMetadata": {"promptTokenCount": 8,
        "candidatesTokenCount": 4, "cachedContentTokenCount": 5,
        "thoughtsTokenCount": 30}}  # fmt: skip
    assert measure("application/json", [dumps(gemini)]) == Usage(
        8, 4, "gemini-2.5-flash", cache_read_tokens=5, reasoning_tokens=30
    )


@pytest.mark.parametrize("model", ["nul\x00", "lone\ud800", "line\nbreak", "x" * 257, ""])
def test_a_model_name_no_store_can_hold_is_not_reported(model: str) -> None:
    body = {"model": model, "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
    assert measure(JSON, [dumps(body)]) == Usage(5, 1)


def test_a_token_kind_that_is_not_a_plausible_count_is_not_reported() -> None:
    body = {"usage": {"prompt_tokens": 5, "completion_tokens": 1,
        "prompt_tokens_details": {"cached_tokens": -1},
        "completion_tokens_details": "reasoning: 3"}}  # fmt: skip
    assert measure("application/json", [dumps(body)]) == Usage(5, 1)
    nested = {"usage": {"prompt_tokens_details": [{"cached_tokens": 4}]}}
    assert measure("application/json", [dumps(nested)]) == Usage()
