"""The mock provider: an OpenAI-style upstream fast enough never to be the bottleneck.

    python -m bench.upstream        prints {"port": P} once it listens on 127.0.0.1:P

A raw asyncio `Protocol` on uvloop with httptools' request parser (no framework), HTTP/1.1
keep-alive, one process. It answers:

- `POST /v1/chat/completions`: a small fixed chat completion with a `usage` object and a
  content-length; or, when the body contains `"stream":true` (or `"stream": true`), an SSE answer
  in chunked transfer encoding: N `chat.completion.chunk` frames, then `data: [DONE]`. The query
  string sets N and the gap between frames (`?frames=20&interval_ms=0`, the defaults). Every
  frame carries `seq` (0 to N-1) and `due`, the `time.monotonic()` at which this server meant to
  send it; on Linux that clock is shared by every process, so a client can tell how late a frame
  arrived. Gaps are event-loop timers, so thousands of streams wait at no cost.
- `GET /v1/models`: a small model list.

Requests on one connection are answered in order: one that arrives during a stream waits for it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import deque
from typing import Final, cast
from urllib.parse import parse_qs

import httptools
import uvloop

from bench.processes import raise_file_limit

__all__ = ["CHAT_ANSWER", "main"]

CHAT_ANSWER: Final = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    },
    separators=(",", ":"),
).encode()
MODELS_ANSWER: Final = json.dumps(
    {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "owned_by": "bench"}]},
    separators=(",", ":"),
).encode()
NOT_FOUND: Final = b'{"error":{"message":"not found"}}'

# One frame; `%d` is the sequence number (twice), `%.6f` the time it was due, `%s` the tail.
FRAME: Final = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"gpt-4o-mini","seq":%d,"due":%.6f,"choices":[{"index":0,'
    b'"delta":{"content":"t%d "},"finish_reason":%s}]%s}\n\n'
)
LAST_TAIL: Final = b',"usage":{"prompt_tokens":5,"completion_tokens":20,"total_tokens":25}'
DONE: Final = b"data: [DONE]\n\n"
CLOSING: Final = b"%x\r\n%s\r\n0\r\n\r\n" % (len(DONE), DONE)  # the last chunk, then the end
SSE_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n"
)
STREAM_MARKERS: Final = (b'"stream":true', b'"stream": true')


def frame(seq: int, due: float, last: bool) -> bytes:
    """Frame `seq` as one chunk of the chunked body."""
    data = FRAME % (seq, due, seq, b'"stop"' if last else b"null", LAST_TAIL if last else b"")
    return b"%x\r\n%s\r\n" % (len(data), data)


def fixed(status: bytes, body: bytes, keep_alive: bool) -> bytes:
    """A complete response with a content-length."""
    connection = b"" if keep_alive else b"connection: close\r\n"
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        connection,
        body,
    )


class Request:
    """What the parser gathered of one request."""

    __slots__ = ("body", "keep_alive", "method", "url")

    def __init__(self) -> None:
        self.url = b""
        self.body = bytearray()
        self.method = b""
        self.keep_alive = True


class MockProtocol(asyncio.Protocol):
    """One client connection: parse requests, answer them in order."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.current = Request()
        self.pending: deque[Request] = deque()
        self.streaming = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(fixed(b"400 Bad Request", b"{}", keep_alive=False))
                self.transport.close()

    # httptools callbacks

    def on_url(self, url: bytes) -> None:
        self.current.url += url

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        request, self.current = self.current, Request()
        request.method = self.parser.get_method()
        request.keep_alive = self.parser.should_keep_alive()
        self.pending.append(request)
        if not self.streaming:
            self.answer_pending()

    # answers

    def answer_pending(self) -> None:
        while self.pending and not self.streaming and self.transport is not None:
            self.answer(self.pending.popleft())

    def answer(self, request: Request) -> None:
        assert self.transport is not None
        url = httptools.parse_url(request.url)
        if request.method == b"POST" and url.path == b"/v1/chat/completions":
            if any(marker in request.body for marker in STREAM_MARKERS):
                self.start_stream(url.query or b"", request.keep_alive)
                return
            self.finish(fixed(b"200 OK", CHAT_ANSWER, request.keep_alive), request.keep_alive)
        elif request.method == b"GET" and url.path == b"/v1/models":
            self.finish(fixed(b"200 OK", MODELS_ANSWER, request.keep_alive), request.keep_alive)
        else:
            self.finish(fixed(b"404 Not Found", NOT_FOUND, request.keep_alive), request.keep_alive)

    def finish(self, data: bytes, keep_alive: bool) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if not keep_alive:
            self.pending.clear()
            self.transport.close()

    def start_stream(self, query: bytes, keep_alive: bool) -> None:
        assert self.transport is not None
        params = parse_qs(query.decode("latin-1"))
        frames = max(1, int(params.get("frames", ["20"])[0]))
        interval = max(0.0, float(params.get("interval_ms", ["0"])[0]) / 1000)
        head = SSE_HEAD + (b"\r\n" if keep_alive else b"connection: close\r\n\r\n")
        if interval == 0:
            now = time.monotonic()
            body = b"".join(frame(i, now, i == frames - 1) for i in range(frames))
            self.finish(head + body + CLOSING, keep_alive)
            return
        self.streaming = True
        self.transport.write(head)
        Stream(self, frames, interval, keep_alive).send(0)

    def end_stream(self, keep_alive: bool) -> None:
        self.streaming = False
        self.finish(CLOSING, keep_alive)
        self.answer_pending()


class Stream:
    """One SSE answer in progress: frame i is sent at start + i * interval, by a loop timer."""

    __slots__ = ("frames", "interval", "keep_alive", "loop", "loop_start", "protocol", "started")

    def __init__(self, protocol: MockProtocol, frames: int, interval: float, keep_alive: bool):
        self.protocol = protocol
        self.frames = frames
        self.interval = interval
        self.keep_alive = keep_alive
        self.loop = asyncio.get_running_loop()
        self.loop_start = self.loop.time()
        self.started = time.monotonic()

    def send(self, seq: int) -> None:
        protocol = self.protocol
        protocol.timer = None
        if protocol.transport is None:  # the client left: nothing more to send
            return
        last = seq == self.frames - 1
        protocol.transport.write(frame(seq, self.started + seq * self.interval, last))
        if last:
            protocol.end_stream(self.keep_alive)
            return
        due = self.loop_start + (seq + 1) * self.interval
        protocol.timer = self.loop.call_at(due, self.send, seq + 1)


async def serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(MockProtocol, "127.0.0.1", 0, backlog=8192)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    raise_file_limit()
    uvloop.run(serve())


if __name__ == "__main__":
    main()
