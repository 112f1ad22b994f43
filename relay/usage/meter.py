"""Token usage read off a provider's response as it streams past.

`UsageMeter` watches the raw chunks the relay forwards and, at the end, tells how many tokens
the provider reported and which model answered. It only reads: the bytes forwarded are never
touched, and nothing it meets (garbage, truncation, a hostile stream) makes it raise. What it
cannot read gives counts of None. Per chunk it does little, and holds little:

- JSON (`application/json`): at most `MAX_JSON_BYTES` of the body, parsed once at `result()`.
- SSE (`text/event-stream`): each chunk is searched where it lies, and only the events that
  can carry usage (or, until one has named it, the model) are parsed; only the event still
  arriving is kept. One that grows past `MAX_EVENT_BYTES` is dropped; a stream that needs more
  than `MAX_PARSED_EVENTS` parses is given up.
- gzip, deflate and br (when `brotli` or `brotlicffi` is installed) are decoded from a copy; a
  body that expands past `MAX_DECODED_BYTES` and `MAX_RATIO` times its size is given up.
- Anything else (audio, images): ignored.

Longer than most modules because it holds one incremental reader per wire format (OpenAI,
Anthropic and Gemini, as SSE and as JSON), which share their framing code.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import zlib
from collections.abc import Callable
from types import ModuleType
from typing import Final, Protocol

from backends import TOKEN_KINDS

__all__ = [
    "MAX_DECODED_BYTES",
    "MAX_EVENT_BYTES",
    "MAX_JSON_BYTES",
    "MAX_MODEL_CHARS",
    "MAX_PARSED_EVENTS",
    "MAX_RATIO",
    "NO_USAGE",
    "Usage",
    "UsageMeter",
    "model_name",
]

MAX_JSON_BYTES: Final = 2 * 1024 * 1024
"""A JSON body longer than this is not metered."""
MAX_EVENT_BYTES: Final = 1024 * 1024
"""An SSE event (or a line with no end) longer than this is dropped."""
MAX_PARSED_EVENTS: Final = 10_000
"""An SSE stream with more usage-bearing events than this is not metered."""
MAX_DECODED_BYTES: Final = 8 * 1024 * 1024
MAX_RATIO: Final = 64
"""A compressed body is given up once it decodes to more than `MAX_DECODED_BYTES` and more than
`MAX_RATIO` times its compressed size (a bomb), so long streams stay metered."""
MAX_COUNT: Final = 10**12
"""The most tokens of a kind one answer is believed to report: past any real answer, and far
enough inside 64 bits that the ledger's sums of them cannot overflow."""
MAX_MODEL_CHARS: Final = 256


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    """What the provider reported: None for whatever it did not (or the meter could not read).
    The counts are `backends.TOKEN_KINDS`, each as the provider reported it."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    model: str | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    apart: frozenset[str] = dataclasses.field(default=frozenset(), compare=False)
    """The kinds this report counts apart from their total (Anthropic's cache reads and writes
    beside its input, Gemini's thoughts beside its output); the others are within it."""

    def totals(self) -> tuple[int, ...]:
        """Each kind of `TOKEN_KINDS` by the one convention prices are in: the input including
        the cache's tokens, the output including the reasoning (None counted as 0)."""
        counts = [getattr(self, field) or 0 for field in _TOKEN_FIELDS]
        for kind, part, whole in _WITHIN if self.apart else ():
            if kind in self.apart:
                counts[whole] += counts[part]
        return tuple(counts)


_TOKEN_FIELDS: Final = tuple(f"{kind}_tokens" for kind in TOKEN_KINDS)
_WITHIN: Final = tuple(
    (part, TOKEN_KINDS.index(part), TOKEN_KINDS.index(whole))
    for part, whole in (("cache_read", "input"), ("cache_write", "input"), ("reasoning", "output"))
)
NO_USAGE: Final = Usage()
"""Nothing reported."""


# ---- What a provider reports, where -------------------------------------------------------

_COUNTS: Final[dict[str, tuple[tuple[str, str, str | None, bool], ...]]] = {
    # object holding the counts -> (token kind, key, key within it, whether the count is apart
    # from its total: cache reads and writes outside the input, reasoning outside the output);
    # no provider's report holds two places of one kind
    "usage": (
        # OpenAI chat and completions; the OpenAI-compatible providers
        ("input", "prompt_tokens", None, False),
        ("output", "completion_tokens", None, False),
        ("cache_read", "prompt_tokens_details", "cached_tokens", False),
        ("reasoning", "completion_tokens_details", "reasoning_tokens", False),
        # Anthropic; OpenAI Responses
        ("input", "input_tokens", None, False),
        ("output", "output_tokens", None, False),
        ("cache_read", "cache_read_input_tokens", None, True),
        ("cache_write", "cache_creation_input_tokens", None, True),
        ("cache_read", "input_tokens_details", "cached_tokens", False),
        ("reasoning", "output_tokens_details", "reasoning_tokens", False),
    ),
    "usageMetadata": (  # Gemini
        ("input", "promptTokenCount", None, False),
        ("output", "candidatesTokenCount", None, False),
        ("cache_read", "cachedContentTokenCount", None, False),
        ("reasoning", "thoughtsTokenCount", None, True),
    ),
}
_MODEL_KEYS: Final = ("model", "modelVersion")  # OpenAI, Anthropic; Gemini
_WRAPPERS: Final = ("message", "response", "x_groq")
"""Keys under which an event nests the object that reports: Anthropic's `message_start`, OpenAI
Responses' `response.*` events, Groq's `x_groq`."""


class _Tally:
    """The figures reported so far: a later report of a figure replaces the earlier one (so
    Anthropic's cumulative `message_delta` and Gemini's last `usageMetadata` win)."""

    __slots__ = ("apart", "counts", "model")

    def __init__(self) -> None:
        self.counts: dict[str, int | None] = dict.fromkeys(TOKEN_KINDS)
        self.apart: set[str] = set()
        self.model: str | None = None

    def absorb(self, obj: object) -> None:
        if not isinstance(obj, dict):
            return
        nodes = [obj]
        for key in _WRAPPERS:
            node = obj.get(key)
            if isinstance(node, dict):
                nodes.append(node)
        for node in nodes:
            for holder, places in _COUNTS.items():
                counts = node.get(holder)
                if isinstance(counts, dict):
                    self._read(counts, places)
            for key in _MODEL_KEYS:
                model = model_name(node.get(key))
                if model is not None:
                    self.model = model

    def _read(
        self, counts: dict[str, object], places: tuple[tuple[str, str, str | None, bool], ...]
    ) -> None:
        found = self.counts
        for kind, key, inner, apart in places:
            value = counts.get(key)
            if value is None:  # most places are another provider's
                continue
            if inner is not None:
                value = value.get(inner) if isinstance(value, dict) else None
            found[kind] = _count(value, found[kind])
            if apart:
                self.apart.add(kind)


def model_name(value: object) -> str | None:
    """`value` as the model a record names: 1 to `MAX_MODEL_CHARS` printable characters (no
    control character, no lone surrogate: every store can hold it); otherwise None."""
    if isinstance(value, str) and 0 < len(value) <= MAX_MODEL_CHARS and value.isprintable():
        return value
    return None


def _count(value: object, previous: int | None) -> int | None:
    """`value` if it is a plausible count; otherwise it is as if it was not reported."""
    if type(value) is int and 0 <= value <= MAX_COUNT:
        return value
    return previous


def _loads(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


# ---- Bodies -------------------------------------------------------------------------------


class _GiveUp(Exception):
    """The body cannot be metered (within bounds)."""


class _Body(Protocol):
    @property
    def buffered(self) -> int: ...

    def feed(self, data: bytes) -> None:
        """Take decoded bytes; raise `_GiveUp` (or anything) to stop metering."""

    def finish(self) -> None: ...


class _JsonBody:
    """A JSON document: an object, or a list of them (Gemini's streamGenerateContent without
    `alt=sse`)."""

    def __init__(self, tally: _Tally) -> None:
        self._tally = tally
        self._chunks: list[bytes] = []  # joined once at the end (not at all when one)
        self._size = 0

    @property
    def buffered(self) -> int:
        return self._size

    def feed(self, data: bytes) -> None:
        if self._size + len(data) > MAX_JSON_BYTES:
            raise _GiveUp
        self._chunks.append(data)
        self._size += len(data)

    def finish(self) -> None:
        chunks = self._chunks
        doc = _loads(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        for obj in doc if isinstance(doc, list) else [doc]:
            self._tally.absorb(obj)


_BOUNDARIES: Final = (b"\n\n", b"\n\r", b"\r\r")
"""An event ends at an empty line: any of these pairs, whatever mix of CR, LF and CRLF the
stream uses. (Of a CRLF pair, the LF may be left to start the next event: an empty line there
dispatches nothing.)"""
_BOUNDARY: Final = re.compile(b"|".join(_BOUNDARIES))
_USAGE: Final = re.compile(rb'"usage(?:Metadata)?"\s*:(?!\s*null)')
_USAGE_OR_MODEL: Final = re.compile(rb'"usage(?:Metadata)?"\s*:(?!\s*null)|"model(?:Version)?"\s*:')


def _last_boundary_end(buf: bytes | bytearray, start: int, end: int) -> int:
    """Where the last event boundary within `buf[start:end]` ends; -1 if there is none."""
    if buf.endswith(_BOUNDARIES, start, end):  # the usual chunk: whole events
        return end
    at = max([buf.rfind(pair, start, end) for pair in _BOUNDARIES])
    return at + 2 if at >= 0 else -1


def _first_boundary_end(buf: bytes | bytearray, start: int, end: int) -> int:
    """Where the first event boundary within `buf[start:end]` ends; -1 if there is none."""
    found = _BOUNDARY.search(buf, start, end)  # one pass, unlike a `find` for each pair
    return -1 if found is None else found.end()


class _EventStream:
    """Server-sent events. Each chunk is searched where it lies (a C-speed search picks the few
    events that may report something, and only those are parsed); only the event still
    arriving at its end is kept."""

    def __init__(self, tally: _Tally) -> None:
        self._tally = tally
        self._pending = bytearray()  # the event still arriving (its last byte, when dropping)
        self._dropping = False  # that event outgrew MAX_EVENT_BYTES: skip to its end
        self._parsed = 0

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def feed(self, data: bytes) -> None:
        if not data:  # a decoder may give nothing back for a while
            return
        pos = 0
        if self._pending or self._dropping:  # first, the end of the event in progress
            if bytes(self._pending[-1:]) + data[:1] in _BOUNDARIES:  # the chunks split a boundary
                pos = 1
            else:
                pos = _first_boundary_end(data, 0, len(data))
            if pos < 0:  # the event goes on
                if self._dropping or len(self._pending) + len(data) > MAX_EVENT_BYTES:
                    self._pending, self._dropping = bytearray(data[-1:]), True
                else:
                    self._pending += data
                return
            if not self._dropping:
                event = self._pending + data[:pos]
                self._read(event, 0, len(event))
            self._pending, self._dropping = bytearray(), False
        cut = _last_boundary_end(data, pos, len(data))
        if cut >= 0:
            self._read(data, pos, cut)
            pos = cut
        if len(data) - pos > MAX_EVENT_BYTES:
            self._pending, self._dropping = bytearray(data[-1:]), True
        else:
            self._pending = bytearray(data[pos:])

    def finish(self) -> None:
        if not self._dropping:  # an unterminated last event counts too
            self._read(self._pending, 0, len(self._pending))
        self._pending = bytearray()

    def _read(self, buf: bytes | bytearray, pos: int, end: int) -> None:
        """Parse those events of `buf[pos:end]` (whole events) that may report something."""
        while True:
            wanted = _USAGE if self._tally.model else _USAGE_OR_MODEL
            match = wanted.search(buf, pos, end)
            if match is None:
                return
            self._parsed += 1
            if self._parsed > MAX_PARSED_EVENTS:
                raise _GiveUp
            start = max(_last_boundary_end(buf, pos, match.start()), pos)
            stop = _first_boundary_end(buf, match.start(), end)
            pos = end if stop < 0 else stop
            self._tally.absorb(_loads(_data(buf[start:pos])))


def _data(event: bytes | bytearray) -> bytes:
    """An event's data: its `data` fields, joined by newlines (the space that may follow the
    colon is left in: JSON ignores it)."""
    fields = (line.partition(b":") for line in event.splitlines())
    return b"\n".join(value for name, _, value in fields if name == b"data")


_BODIES: Final[dict[str, Callable[[_Tally], _Body]]] = {
    "application/json": _JsonBody,
    "text/event-stream": _EventStream,
}


# ---- Content codings ----------------------------------------------------------------------


class _Decoder:
    """Undoes one content coding, chunk by chunk, never expanding without bound."""

    def __init__(self) -> None:
        self._taken = 0
        self._given = 0

    def __call__(self, data: bytes) -> bytes:
        self._taken += len(data)
        room = max(MAX_DECODED_BYTES, MAX_RATIO * self._taken) - self._given
        out = self._process(data, room + 1)
        if len(out) > room:
            raise _GiveUp
        self._given += len(out)
        return out

    def _process(self, data: bytes, limit: int) -> bytes:
        """At most `limit` (>= 1) bytes of output."""
        raise NotImplementedError


class _Zlib(_Decoder):
    def __init__(self, wbits: int = 32 + zlib.MAX_WBITS) -> None:  # gzip or zlib, by header
        super().__init__()
        self._zlib = zlib.decompressobj(wbits)

    def _process(self, data: bytes, limit: int) -> bytes:
        return self._zlib.decompress(data, limit)


class _Deflate(_Zlib):
    """HTTP's deflate is zlib-wrapped, but some servers send it raw: the first bytes tell."""

    def __init__(self) -> None:
        super().__init__()
        self._head: bytes | None = b""  # the input until the zlib header was seen to be good

    def _process(self, data: bytes, limit: int) -> bytes:
        if self._head is None:
            return super()._process(data, limit)
        self._head += data
        try:
            out = super()._process(data, limit)
        except zlib.error:
            head, self._head = self._head, None
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            return super()._process(head, limit)
        if len(self._head) >= 2:
            self._head = None
        return out


class _Brotli(_Decoder):
    def __init__(self, module: ModuleType) -> None:
        super().__init__()
        self._brotli = module.Decompressor()

    def _process(self, data: bytes, limit: int) -> bytes:
        # The limit needs brotli >= 1.2 (brotlicffi >= 1.2.0.0); older ones raise TypeError,
        # and the body goes unmetered rather than decoded without bound.
        return bytes(self._brotli.process(data, output_buffer_limit=limit))


def _import_brotli() -> ModuleType | None:
    for name in ("brotli", "brotlicffi"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


_BROTLI: ModuleType | None = _import_brotli()


def _decoder(coding: str) -> _Decoder:
    if coding in ("gzip", "x-gzip"):
        return _Zlib()
    if coding == "deflate":
        return _Deflate()
    if coding == "br" and _BROTLI is not None:
        return _Brotli(_BROTLI)
    raise _GiveUp


def _decoders(content_encoding: str | None) -> list[_Decoder]:
    """Decoders in the order to apply them: the codings' reverse."""
    if not content_encoding:  # the usual case
        return []
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    return [_decoder(c) for c in reversed(codings) if c not in ("", "identity")]


# ---- The meter ----------------------------------------------------------------------------


class UsageMeter:
    """Meters one response: `feed` it every raw chunk as relayed, then ask for `result()`."""

    __slots__ = ("_body", "_decoders", "_result", "_tally")

    def __init__(self, content_type: str, content_encoding: str | None) -> None:
        self._tally = _Tally()
        self._result: Usage | None = None
        self._decoders: list[_Decoder] = []
        self._body: _Body | None = None
        body = _BODIES.get(content_type.partition(";")[0].strip().lower())
        if body is not None:
            try:
                self._decoders = _decoders(content_encoding)
                self._body = body(self._tally)
            except Exception:  # an unknown coding (zstd...), or brotli failing to start
                self._decoders = []

    @property
    def buffered(self) -> int:
        """Bytes of the body the meter holds now."""
        return 0 if self._body is None else self._body.buffered

    def feed(self, chunk: bytes) -> None:
        """Watch one raw chunk. Never raises; a body past reading is no longer metered."""
        body = self._body
        if body is None or not chunk:
            return
        try:
            for decode in self._decoders:
                chunk = decode(chunk)
            body.feed(chunk)
        except Exception:  # past a bound, corrupt compression, anything: stop metering
            self._body, self._decoders, self._tally = None, [], _Tally()

    def result(self) -> Usage:
        """What the provider reported. The meter is finished: later chunks are ignored."""
        if self._result is None:
            body, self._body = self._body, None
            try:
                if body is not None:
                    body.finish()
                tally = self._tally
                self._result = Usage(
                    model=tally.model,
                    apart=frozenset(tally.apart),
                    **dict(zip(_TOKEN_FIELDS, tally.counts.values(), strict=True)),
                )
            except Exception:
                self._result = NO_USAGE
        return self._result
