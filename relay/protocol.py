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
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from .errors import error_body

__all__ = ["CORK_LIMIT", "MAX_HEADERS", "MAX_HEAD_BYTES", "JSONErrorsProtocol"]

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 200
CORK_LIMIT: Final = 64 * 1024

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
    __slots__ = ("_corked", "_head_bytes", "_header_count", "_too_large")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = self._header_count = 0
        self._too_large = False
        self.pipeline = _Pipeline()  # type: ignore[assignment]

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

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not previous:  # a new request's cycle, whose task has not run yet
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
