"""A raw HTTP/1.1 client connection for the load generator, and the requests it sends.

An asyncio `Protocol` fed to httptools' response parser, which reads content-length and chunked
bodies alike; keep-alive, one request at a time per connection, no httpx on the hot path. Each
`Response` records on `time.monotonic()` (one clock for every process on Linux, the one the mock
upstream stamps its frames with) when it was sent, when its first body byte arrived and when it
ended, and, when asked, every SSE frame with the time it arrived.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from typing import Any, cast

import httptools

__all__ = ["Connection", "Response", "Target"]


@dataclasses.dataclass(frozen=True)
class Target:
    """One kind of request to one server: `direct`, `floor` or `relay`."""

    name: str
    port: int
    path: str
    headers: Mapping[str, str]
    body: str  # JSON

    def raw(self) -> bytes:
        body = self.body.encode()
        head = [f"POST {self.path} HTTP/1.1", f"host: 127.0.0.1:{self.port}"]
        head += [f"{name}: {value}" for name, value in self.headers.items()]
        head += ["content-type: application/json", f"content-length: {len(body)}"]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body

    def job(self) -> dict[str, Any]:
        """How a load generator child receives it (JSON)."""
        return {"name": self.name, "port": self.port, "request": self.raw().decode("latin-1")}


class Response:
    __slots__ = ("buffer", "done", "first_body", "frames", "keep_alive", "sent", "status")

    def __init__(self, sent: float, frames: bool) -> None:
        self.sent = sent
        self.status = 0
        self.first_body: float | None = None
        self.done = 0.0
        self.keep_alive = True
        self.frames: list[tuple[float, bytes]] | None = [] if frames else None
        self.buffer = b""

    def feed(self, body: bytes, now: float) -> None:
        """Split SSE frames (`...\\n\\n`) as they complete; each keeps its arrival time."""
        assert self.frames is not None
        self.buffer += body
        while (end := self.buffer.find(b"\n\n")) >= 0:
            self.frames.append((now, self.buffer[:end]))
            self.buffer = self.buffer[end + 2 :]


class Connection(asyncio.Protocol):
    """One keep-alive connection to 127.0.0.1; `request` sends raw bytes, awaits the response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.now = 0.0

    @classmethod
    async def open(cls, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(cls, "127.0.0.1", port)
        return connection

    async def request(self, raw: bytes, *, frames: bool = False) -> Response:
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed")
        self.response = Response(time.monotonic(), frames)
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.now = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionError("connection closed by the server"))

    # httptools callbacks

    def on_headers_complete(self) -> None:
        if self.response is not None:
            self.response.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is None:
            return
        if response.first_body is None:
            response.first_body = self.now
        if response.frames is not None:
            response.feed(body, self.now)

    def on_message_complete(self) -> None:
        response, waiter = self.response, self.waiter
        self.response = self.waiter = None
        if response is None or waiter is None:
            return
        response.done = self.now
        response.keep_alive = self.parser.should_keep_alive()
        if not waiter.done():
            waiter.set_result(response)
        if not response.keep_alive:
            self.closed = True
            self.close()

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter, self.response = self.waiter, None, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
