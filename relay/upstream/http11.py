"""One HTTP/1.1 connection to a provider: an asyncio protocol around httptools' response parser.

A `Connection` carries one exchange at a time. The transport writes the request through it and
then reads the answer: `read_head` until the status line and headers are in, `next_chunk` for
each piece of the body as it arrives. Everything the connection has to report is raised as httpx's
exceptions, so that the transport above passes them on unchanged:

- the provider sending something that is not HTTP/1.1, or a head (or trailers) over
  `HEAD_LIMIT`: `RemoteProtocolError`, and so is the connection closing before the answer is
  complete (an answer without a length, which ends when the connection does, is complete then);
- the connection failing under a read: `ReadError`; a wait longer than its timeout: the
  `ReadTimeout` or `WriteTimeout` the waiting side asked for.

Flow control both ways: reading pauses while more than `HIGH_WATER` bytes of the answer wait
for a slow client (and resumes below `LOW_WATER`), and writing the request waits while the
socket's buffer is full. A read takes at most `READ_SIZE` bytes (asyncio's own reads take up to
256 KiB), so what a stalled client's stream holds never depends on how fast the provider sent.

One class, kept whole: the parser's callbacks, flow control and head limits all act on the same
few fields.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, NamedTuple, cast

import httptools
import httpx

if TYPE_CHECKING:
    from relay.upstream.egress import Proxy

__all__ = ["HEAD_LIMIT", "HIGH_WATER", "LOW_WATER", "Connection", "Origin"]

HEAD_LIMIT: Final = 64 * 1024  # status line and headers of one answer; its trailers, apart
HIGH_WATER: Final = 64 * 1024  # answer bytes buffered before reading pauses (a slow client's share)
LOW_WATER: Final = 16 * 1024  # ... and below which it resumes
READ_SIZE: Final = 64 * 1024  # one read from the socket
_STATUS_LINE: Final = len(b"HTTP/1.1 200 \r\n")  # a status line but its reason


class Origin(NamedTuple):
    """What a connection may be reused for: the same scheme, name and port, the same pinned
    address (None: the name resolved by the system) and the same egress proxy (None: direct)."""

    scheme: bytes
    host: str
    port: int
    address: str | None
    proxy: Proxy | None = None


def _timed_out(waiter: asyncio.Future[None], error: type[httpx.TimeoutException]) -> None:
    if not waiter.done():
        waiter.set_exception(error("timed out waiting for the AI provider"))


class _ReadBuffer(threading.local):
    """One read buffer per thread (per event loop), shared by its connections: the parser copies
    out everything it keeps before a read returns, so a buffer per connection would only cost
    `READ_SIZE` bytes per open stream."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(READ_SIZE))


_READ = _ReadBuffer()


class Connection(asyncio.BufferedProtocol):
    __slots__ = (
        "_buffered",
        "_chunks",
        "_error",
        "_head_size",
        "_held",
        "_on_lost",
        "_parser",
        "_reading_paused",
        "_reuse_forbidden",
        "_until_close",
        "_waiter",
        "_writing_paused",
        "active",
        "closed",
        "complete",
        "exchanges",
        "head_done",
        "head_only",
        "headers",
        "idle_since",
        "keep_alive",
        "loop",
        "origin",
        "reason",
        "status",
        "transport",
    )

    def __init__(self, origin: Origin, on_lost: Callable[[Connection], None]) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0  # the loop's time when the pool last took it back
        self.loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._on_lost = on_lost
        self._waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._reading_paused = False
        self.active = False  # an exchange is in progress
        self.exchanges = 0  # begun on this connection, this one included
        self._reuse_forbidden = False
        self.head_only = False  # the answer to HEAD: headers, never a body
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self._head_size = 0  # bytes of the head, then of the trailers, as the parser reads them
        self._held = 0  # bytes the parser holds that made nothing yet (an unfinished line)
        self._until_close = False  # the answer's body ends when the connection does
        self._chunks: list[bytes] = []  # read whole at each `read`: a list is enough
        self._buffered = 0
        self._error: httpx.TransportError | None = None

    # -- the exchange, as the transport drives it ---------------------------------------------

    def begin(self, head_only: bool) -> None:
        """Start a new exchange on this (new or idle) connection."""
        self.active = True
        self.exchanges += 1
        self.head_only = head_only
        self.status = 0
        self.reason = b""
        self.headers = []
        self.head_done = self.complete = self.keep_alive = self._until_close = False
        self._head_size = self._held = 0

    def write(self, data: bytes | memoryview) -> None:
        if self.transport is not None:  # else lost: dropped, as a closed transport would
            self.transport.write(data)

    async def drain(self, timeout: float | None) -> None:
        """Wait while the socket's send buffer is full (not past an answer or a closed
        connection: the caller sees those itself)."""
        while self._writing_paused and not self.head_done and not self.closed:
            await self._wait(timeout, httpx.WriteTimeout)

    async def read_head(self, timeout: float | None) -> None:
        while not self.head_done:
            if self._error is not None:
                raise self._error
            if self.closed:
                raise httpx.RemoteProtocolError("the AI provider closed the connection unanswered")
            await self._wait(timeout, httpx.ReadTimeout)

    async def next_chunk(self, timeout: float | None) -> bytes:
        """The next piece of the body (every piece that has arrived, as one);
        `StopAsyncIteration` at its end."""
        while True:
            chunks = self._chunks
            if chunks:
                chunk = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                if self._reading_paused:
                    self._resume_reading()
                return chunk
            if self.complete:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            if self.closed:
                raise httpx.RemoteProtocolError("the AI provider closed the connection mid-answer")
            await self._wait(timeout, httpx.ReadTimeout)

    def take_head(self) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """The answer's status, reason and headers, handed over: the connection does not keep
        the headers while the body streams."""
        head = (self.status, self.reason, self.headers)
        self.headers = []
        return head

    @property
    def body_taken(self) -> bool:
        """The whole answer has arrived and every byte of its body was handed out."""
        return self.complete and not self._chunks

    @property
    def closing(self) -> bool:
        """Closed, or on its way: the provider's end of it has already been seen."""
        return self.transport is None or self.transport.is_closing()

    @property
    def unanswered(self) -> bool:
        """Not a byte of an answer came back."""
        return self._head_size == 0 and self._held == 0 and not self.head_done

    @property
    def reusable(self) -> bool:
        """Whether the exchange ended cleanly and the connection can carry another."""
        return (
            self.complete
            and self.keep_alive
            and not self._reuse_forbidden
            and not self.closed
            and self._error is None
        )

    def forbid_reuse(self) -> None:
        """The request was not sent whole (the provider answered first): never reuse."""
        self._reuse_forbidden = True

    def finish(self) -> None:
        """The exchange is over: whatever of its body was not read is dropped."""
        self.active = False
        self._chunks.clear()
        self._buffered = 0
        if self._reading_paused:
            self._resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if self.transport is not None:
            self.transport.resume_reading()

    def _wait(
        self, timeout: float | None, error: type[httpx.TimeoutException]
    ) -> asyncio.Future[None]:
        """What to await until the protocol has news (or `timeout` passes: then `error`). A
        future, not a coroutine: a stream waiting for its next chunk holds no frame of it."""
        waiter = self._waiter = self.loop.create_future()
        if timeout is not None:
            timer = self.loop.call_later(timeout, _timed_out, waiter, error)
            waiter.add_done_callback(lambda _: timer.cancel())
        return waiter

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: httpx.TransportError) -> None:
        if self._error is None:
            self._error = error
        self.close()
        self._wake()

    # -- asyncio.BufferedProtocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ.view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_READ.view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        if not self.active:  # nothing is asked of an idle connection: it has broken
            self._fail(httpx.RemoteProtocolError("the AI provider sent data unasked"))
            return
        # The callbacks count each line of a head or trailers once the parser has it whole;
        # until then, a line that never ends is counted here: every read that makes nothing
        # (no head, body or end) adds to what the parser holds.
        self._held += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self._head_size > HEAD_LIMIT:
                self._fail(self._too_large())
            else:
                self._fail(httpx.RemoteProtocolError(f"invalid answer from the AI provider: {exc}"))
            return
        if self._held > HEAD_LIMIT:
            self._fail(self._too_large())

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        # The transport and the parser both point back at this protocol: let go of them, so
        # that a closed connection is freed at once rather than by the cycle collector.
        self.transport = None
        del self._parser  # no data comes after this
        if self.active and not self.complete and self._error is None:
            if self._until_close:
                self.complete = True
            elif exc is not None:
                self._error = httpx.ReadError(str(exc) or type(exc).__name__)
        self._wake()
        self._on_lost(self)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request: the parser stops here
            raise httptools.HttpParserError("an answer nobody asked for")
        self._count(_STATUS_LINE)

    def on_status(self, reason: bytes) -> None:
        self._count(len(reason))
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # name: value CRLF
        if not self.head_done:  # a trailer is counted, never kept: nothing reads them
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._count(2)  # the empty line
        self._held = 0
        status = self._parser.get_status_code()
        if status < 200:  # informational (100 Continue): the real answer follows
            return
        self.status = status
        self.head_done = True
        self._head_size = 0  # from here on, the trailers'
        self._until_close = not self._parser.should_keep_alive() and self._delimited_by_close()
        if self.head_only:
            self.complete = True  # no body follows, whatever the headers say; not reused
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.head_only:  # the answer to HEAD has no body, whatever its headers say
            raise httptools.HttpParserError("a body in the answer to HEAD")
        self._held = 0
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._held = 0
        if not self.head_done:  # the end of an informational answer
            self.reason = b""
            self.headers = []
            self._head_size = 0
            return
        self.complete = True
        self.keep_alive = not self.head_only and self._parser.should_keep_alive()
        self._wake()

    def _count(self, size: int) -> None:
        """`size` more bytes of the head (or the trailers); past `HEAD_LIMIT` the parser stops."""
        self._head_size += size
        if self._head_size > HEAD_LIMIT:
            raise httptools.HttpParserError("too large")

    def _too_large(self) -> httpx.RemoteProtocolError:
        part = "trailers are" if self.head_done else "head is"
        return httpx.RemoteProtocolError(f"the AI provider's answer {part} too large")

    def _delimited_by_close(self) -> bool:
        """An answer with neither a length nor chunked encoding ends with the connection."""
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                return False
            if lowered == b"transfer-encoding" and b"chunked" in value.lower():
                return False
        return True
