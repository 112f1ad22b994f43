"""uvicorn's httptools protocol with limits on the request head, JSON for every request it
cannot take (a browser client matches on one error shape, whatever went wrong), and a smaller
footprint per connection.

httptools accepts heads of any size and any number of headers; a relay in front of paying
users refuses more than `MAX_HEAD_BYTES` of request line and headers, or more than
`MAX_HEADERS` headers, with a 431, before the application sees the request.

A relay holds thousands of connections open while their answers stream, so what each one
costs counts. uvicorn gives every connection three `collections.deque`s that almost always
stay empty or hold one item: the pipelined-request queue and two `asyncio.Event`s' waiter
queues (flow control, and the request's messages). An empty deque is a 64-slot block, 760
bytes with its object; this protocol swaps each for a list (56 bytes empty), 2,112 bytes less
per connection, with the same behaviour (the cork below takes back 72).

uvicorn writes at every ASGI message: a response's head as the application starts it, then
each body chunk, then the chunked encoding's end. With TCP_NODELAY each write is a TCP segment
and a wake-up of the client: a small relayed answer (head, one chunk, end) took three, and
its whole exchange 7 segments on the loopback where 4 do. What a response writes in the loop
iteration in which it starts writing is held and sent as one write at that iteration's end
(Node's http server corks its socket for a response the same way); a stream's later chunks go
straight out as they come.

A client that stops reading must not hold a stream (and what is buffered for it) forever: once
the socket's send buffer is full, the client has `SEND_TIMEOUT_STATE` seconds (the lifespan's
setting, `RELAY_CLIENT_SEND_TIMEOUT`) in which it must take something, or the connection is
dropped; the application sees the client leave, and `Edge.send_timed_out` says why. Only a
connection whose buffer filled pays for this (a timer while it stays full); a client that keeps
up costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import struct
import termios
from typing import Any, Final, Protocol

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from .errors import error_body

__all__ = [
    "CORK_LIMIT",
    "EDGE",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "SEND_TIMEOUT_STATE",
    "Edge",
    "JSONErrorsProtocol",
]

logger = logging.getLogger("relay")

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 200
CORK_LIMIT: Final = 64 * 1024
EDGE: Final = "relay.edge"
"""Scope key of the request's `Edge`: its connection, as the application may act on it."""
SEND_TIMEOUT_STATE: Final = "relay.client_send_timeout"
"""Lifespan state key: seconds a client with a full send buffer may take nothing."""
DEFAULT_SEND_TIMEOUT: Final = 60.0
SEND_CHECKS: Final = 4  # looks at a full buffer per timeout: a client is cut within 1/4 late


class Edge(Protocol):
    """What the application may do with and learn of a request's connection."""

    @property
    def send_timed_out(self) -> bool:
        """The connection was dropped because the client took nothing for too long."""

    def end_response(self) -> None:
        """End the response where it is, incomplete: the connection closes once what is
        buffered has gone out (or the client's time to take it runs out), and the server logs
        nothing about a response left unfinished."""


_MALFORMED: Final = (b"400 Bad Request", error_body("Malformed HTTP request", "malformed_request"))
_TOO_LARGE: Final = (
    b"431 Request Header Fields Too Large",
    error_body("Request headers too large", "headers_too_large"),
)


class HeadTooLarge(Exception):
    """Raised from a parser callback; httptools turns it into a parser error."""


class _Pipeline(list[Any]):
    """uvicorn's queue of pipelined requests (it only calls `appendleft`, `pop` and `bool`),
    in a list: pipelining is rare, and an empty list costs no block."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class _Event(asyncio.Event):
    """An `asyncio.Event` whose waiters (one at most, in uvicorn's use) are kept in a list."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters: list[asyncio.Future[bool]] = []  # type: ignore[assignment]


class _Corked:
    """The transport a request's cycle writes through. What a response writes in the loop
    iteration that starts it (its head; for a short answer its body and end as well) is held
    and goes out as one write at the end of that iteration; later writes go straight through.
    Held bytes past `CORK_LIMIT` go out at once (flow control sees them)."""

    __slots__ = ("_held", "_loop", "_size", "_transport", "armed")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None
        self._size = 0
        self.armed = False  # set as each response's task starts

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            held.append(data)
            self._size += len(data)
            if self._size >= CORK_LIMIT:
                self.release()
        elif self.armed:
            self.armed = False
            self._held = [data]
            self._size = len(data)
            self._loop.call_soon(self.release)
        else:
            self._transport.write(data)

    def release(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():  # else the client is gone: nobody to tell
                self._transport.writelines(held)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.release()
        self._transport.close()


class JSONErrorsProtocol(HttpToolsProtocol):
    # uvicorn's protocol keeps its state in its instance dict, shared-key and compact (296
    # bytes); two more keys there would make it a full dict of 1,584 bytes for every
    # connection, so ours live in slots.
    __slots__ = (
        "_corked",
        "_head_bytes",
        "_header_count",
        "_send_check",
        "_send_left",
        "_send_since",
        "_too_large",
        "send_timed_out",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = self._header_count = 0
        self._too_large = False
        self.pipeline = _Pipeline()  # type: ignore[assignment]
        self._send_check: asyncio.TimerHandle | None = None
        self.send_timed_out = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow._is_writable_event = _Event()  # uvicorn's was just made, set: nobody waits
        self.flow._is_writable_event.set()
        self._corked = _Corked(transport, self.loop)

    def data_received(self, data: bytes) -> None:
        self._corked.release()  # nothing the protocol writes itself may pass what is held
        super().data_received(data)

    def shutdown(self) -> None:
        self._corked.release()  # uvicorn closes the transport itself here
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._send_check is not None:
            self._send_check.cancel()
            self._send_check = None
        if self.cycle is not None:  # its scope points back here: no cycle left for the GC
            self.cycle.scope.pop(EDGE, None)  # type: ignore[typeddict-item]
        super().connection_lost(exc)

    # -- a client that takes nothing --------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_check is None:
            timeout = float(self.app_state.get(SEND_TIMEOUT_STATE, DEFAULT_SEND_TIMEOUT))
            self._send_left = self._unsent()
            self._send_since = self.loop.time()
            self._send_check = self.loop.call_later(
                timeout / SEND_CHECKS, self._check_send, timeout
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_check is not None:
            self._send_check.cancel()
            self._send_check = None

    def _check_send(self, timeout: float) -> None:
        """The send buffer has stayed above its high-water mark: has the client taken any of
        it since the last look?"""
        left = self._unsent()
        now = self.loop.time()
        if left < self._send_left:
            self._send_left, self._send_since = left, now
        elif now - self._send_since >= timeout:
            self._send_check = None
            self.send_timed_out = True
            logger.warning(
                "client took nothing for %g s; connection dropped",
                timeout,
                extra={"buffered_bytes": left},
            )
            self.transport.abort()  # close() would wait for the client to read
            return
        self._send_check = self.loop.call_later(timeout / SEND_CHECKS, self._check_send, timeout)

    def _unsent(self) -> int:
        """Bytes written but not yet taken by the client: the transport's buffer and the
        kernel's send queue. (The kernel reports the socket writable only once half its queue
        has gone, which at a slow client's pace can take longer than the timeout: the queue
        shows progress the buffer does not.)"""
        unsent = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
                unsent += struct.unpack("i", queued)[0]
        return int(unsent)

    def end_response(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # uvicorn then neither writes more nor logs the cut
        self._corked.release()
        self.transport.close()

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not previous:  # a new request's cycle, whose task has not run yet
            cycle.scope[EDGE] = self  # type: ignore[typeddict-unknown-key]
            cycle.transport = self._corked  # type: ignore[assignment]
            if not cycle.message_event.is_set():  # nothing waits on it
                cycle.message_event = _Event()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._corked.armed = True  # the previous response is complete: cork this one's start
        super()._start_asgi_task(cycle, app)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = self._header_count = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url), headers=0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value), headers=1)
        super().on_header(name, value)

    def _count(self, size: int, headers: int) -> None:
        self._head_bytes += size
        self._header_count += headers
        if self._head_bytes > MAX_HEAD_BYTES or self._header_count > MAX_HEADERS:
            self._too_large = True
            raise HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        status, body = _TOO_LARGE if self._too_large else _MALFORMED
        head = [b"HTTP/1.1 " + status + b"\r\n"]
        head.extend(n + b": " + v + b"\r\n" for n, v in self.server_state.default_headers)
        head.append(b"content-type: application/json\r\n")
        head.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        self.transport.close()
