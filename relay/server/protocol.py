"""uvicorn's httptools protocol with limits on the request head, JSON for every request it
cannot take (a browser client matches on one error shape, whatever went wrong), and a smaller
footprint per connection.

httptools accepts heads of any size and any number of headers; a relay in front of paying
users refuses more than `MAX_HEAD_BYTES` of request line and headers, or more than
`MAX_HEADERS` headers, with a 431, before the application sees the request.

A relay holds thousands of connections open while their answers stream, so what each one
costs counts. uvicorn gives every connection three `collections.deque`s that almost always
stay empty or hold one item: the pipelined-request queue and two `asyncio.Event`s' waiter
queues (flow control, and the request's messages). An empty deque is a 64-slot block; this
protocol swaps each for a list, with the same behaviour (the saving per connection is in
docs/performance.md).

uvicorn writes at every ASGI message: a response's head as the application starts it, then
each body chunk, then the chunked encoding's end. With TCP_NODELAY each write is a TCP segment
and a wake-up of the client: a small relayed answer (head, one chunk, end) took three, and
its whole exchange 7 segments on the loopback where 4 do. What a response writes in the loop
iteration in which it starts writing is held and sent as one write at that iteration's end
(Node's http server corks its socket for a response the same way); a stream's later chunks go
straight out as they come.

Every connection is held to the process's `relay.server.edge.EdgeLimits`: admitted or refused with
503 JSON as it opens; its request heads and bodies timed (408 JSON); a client whose send
buffer is full given a time to take something, or dropped (the application sees the client
leave, and `Edge.send_timed_out` says why). A request that arrives in one piece, as nearly all
do, arms no timer of these: a head or body still incomplete after a read does, and a full
send buffer does. A request line without an HTTP version (HTTP/0.9), an HTTP/1.1 request
without `Host` and any request with two get 400 JSON.

Longer than most modules because every check made at the socket (admission, head and body
deadlines, Host, slow clients, the cork) hooks the same uvicorn protocol class.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import re
import struct
import termios
from typing import Any, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from relay.errors import error_body
from relay.server.edge import EDGE, EDGE_LIMITS, MIN_BODY_RATE, EdgeLimits

__all__ = ["CORK_LIMIT", "MAX_HEADERS", "MAX_HEAD_BYTES", "JSONErrorsProtocol"]

logger = logging.getLogger("relay")

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 200
CORK_LIMIT: Final = 64 * 1024
SEND_CHECKS: Final = 4  # looks at a full buffer per timeout: a client is cut within 1/4 late
_DEFAULT_LIMITS: Final = EdgeLimits()  # for a server run without the relay's lifespan
_REQUEST_LINE: Final = re.compile(rb" HTTP/[0-9]\.[0-9]\r?$")
_NOT_ADMITTED: Final = "\0"  # the address of a connection refused as it opened


# What the protocol answers itself, before any application sees the request, by why: the
# status line and the JSON body.
_REFUSALS: Final = {
    why: (status, error_body(message, code))
    for why, status, code, message in (
        ("malformed", b"400 Bad Request", "malformed_request", "Malformed HTTP request"),
        ("host", b"400 Bad Request", "bad_host_header",
         "A request takes one Host header (HTTP/1.1 requires it)"),
        ("head_timeout", b"408 Request Timeout", "request_timeout",
         "The request head took too long to arrive"),
        ("body_timeout", b"408 Request Timeout", "request_timeout",
         "The request body stopped arriving"),
        ("too_large", b"431 Request Header Fields Too Large", "headers_too_large",
         "Request headers too large"),
        ("busy", b"503 Service Unavailable", "too_many_connections",
         "Too many connections: try again shortly"),
    )
}  # fmt: skip
_MALFORMED: Final = _REFUSALS["malformed"]


class Refused(Exception):
    """Raised from a parser callback to refuse the request: httptools makes it a parser error,
    which uvicorn answers with `send_400_response` (sending the protocol's `_answer`)."""


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
        "_address",
        "_answer",
        "_body_check",
        "_body_got",
        "_corked",
        "_head_bytes",
        "_header_count",
        "_hosts",
        "_limits",
        "_line",
        "_reading_head",
        "_send_check",
        "_send_left",
        "_send_since",
        "send_timed_out",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = self._header_count = self._hosts = self._body_got = 0
        self._answer = _MALFORMED  # what `send_400_response` sends
        self.pipeline = _Pipeline()  # type: ignore[assignment]
        self._send_check: asyncio.TimerHandle | None = None
        self._body_check: asyncio.TimerHandle | None = None
        self._reading_head = False
        self._line: bytes | None = b""  # the first request line, until it is whole
        self._address: str | None = None
        self.send_timed_out = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow._is_writable_event = _Event()  # uvicorn's was just made, set: nobody waits
        self.flow._is_writable_event.set()
        self._corked = _Corked(transport, self.loop)
        self._limits: EdgeLimits = self.app_state.get(EDGE_LIMITS, _DEFAULT_LIMITS)
        address = self.client[0] if self.client else None
        if not self._limits.admit(address):
            self._address = _NOT_ADMITTED
            self._refuse(_REFUSALS["busy"])
            return
        self._address = address
        self._limits.waiting.add(self, self.loop)  # for its first request

    def data_received(self, data: bytes) -> None:
        self._corked.release()  # nothing the protocol writes itself may pass what is held
        if self._line is not None and not self._first_line(data):
            return
        super().data_received(data)
        # What this read left incomplete is timed; a request read whole never is.
        if self._reading_head:
            self._limits.waiting.add(self, self.loop)
        cycle = self.cycle
        if (
            self._body_check is None
            and cycle is not None
            and cycle.more_body
            and not cycle.response_complete
            and not self._reading_head
        ):
            self._body_got = 0
            self._body_check = self.loop.call_later(
                self._limits.body_timeout, self._check_body, self.loop.time()
            )

    def _first_line(self, data: bytes) -> bool:
        """Whether the connection's first request line, once whole, names an HTTP version
        (False: refused)."""
        line = self._line
        assert line is not None
        end = data.find(b"\n")
        if end < 0:
            self._line = line + data if len(line) + len(data) <= MAX_HEAD_BYTES else None
            return True
        self._line = None
        first = (line + data[:end]).lstrip(b"\r\n")
        if first and not _REQUEST_LINE.search(first):
            self._refuse(_MALFORMED)
            return False
        return True

    def shutdown(self) -> None:
        self._corked.release()  # uvicorn closes the transport itself here
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._send_check, self._body_check):
            if timer is not None:
                timer.cancel()
        self._send_check = self._body_check = None
        self._limits.waiting.discard(self)
        if self._address != _NOT_ADMITTED:
            self._limits.release(self._address)
        self._address = _NOT_ADMITTED  # released once
        if self.cycle is not None:  # its scope points back here: no cycle left for the GC
            self.cycle.scope.pop(EDGE, None)  # type: ignore[typeddict-item]
        super().connection_lost(exc)

    # -- heads and bodies that take too long ------------------------------------------------

    def head_late(self) -> None:
        if self._reading_head or self.cycle is None:  # a head begun, or none yet at all
            logger.info("request head too slow; connection closed")
            self._refuse(_REFUSALS["head_timeout"])

    def _check_body(self, since: float) -> None:
        """A body has been arriving for `body_timeout`: has it come fast enough?"""
        self._body_check = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body or cycle.response_complete:
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the application is not reading: not the client's fault
            pass
        elif self._body_got < MIN_BODY_RATE * (now - since):
            logger.info("request body too slow; connection closed", extra={"bytes": self._body_got})
            cycle.disconnected = True  # the application's reads and writes end here
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.abort()
            else:
                self._refuse(_REFUSALS["body_timeout"])
            return
        self._body_got = 0
        self._body_check = self.loop.call_later(self._limits.body_timeout, self._check_body, now)

    def on_body(self, body: bytes) -> None:
        self._body_got += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._body_check is not None:
            self._body_check.cancel()
            self._body_check = None
        super().on_message_complete()

    # -- a client that takes nothing --------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_check is None:
            timeout = self._limits.send_timeout
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
        self._reading_head = False
        self._limits.waiting.discard(self)
        if self._hosts > 1 or (self._hosts == 0 and self.parser.get_http_version() == "1.1"):
            self._answer = _REFUSALS["host"]
            raise Refused
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
        self._head_bytes = self._header_count = self._hosts = 0
        self._reading_head = True

    def on_url(self, url: bytes) -> None:
        self._count(len(url), headers=0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value), headers=1)
        if len(name) == 4 and name.lower() == b"host":
            self._hosts += 1
        super().on_header(name, value)

    def _count(self, size: int, headers: int) -> None:
        self._head_bytes += size
        self._header_count += headers
        if self._head_bytes > MAX_HEAD_BYTES or self._header_count > MAX_HEADERS:
            self._answer = _REFUSALS["too_large"]
            raise Refused

    def send_400_response(self, msg: str) -> None:
        self._refuse(self._answer)  # uvicorn's for every refusal; `_answer` says which

    def _refuse(self, answer: tuple[bytes, bytes]) -> None:
        """Answer with `answer` (a status line's end, a JSON body) and close."""
        status, body = answer
        head = [b"HTTP/1.1 " + status + b"\r\n"]
        head.extend(n + b": " + v + b"\r\n" for n, v in self.server_state.default_headers)
        head.append(b"content-type: application/json\r\n")
        head.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        self.transport.close()
