"""`relay.upstream.transport.HTTPTransport`: the relay's own HTTP/1.1 client, against scripted
servers.

Every test runs a raw TCP server on 127.0.0.1 whose handler writes exactly the bytes a test
needs (well-formed, truncated, hostile or slow), under both event loops the relay may run on
(asyncio's and uvloop's). The relay's end-to-end tests cover the ordinary path through the
mock provider; these cover the connection's edges: reuse and expiry, framing, flow control,
timeouts, errors, and what is refused before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from relay.upstream.client import upstream_request
from relay.upstream.http11 import HEAD_LIMIT, HIGH_WATER, READ_SIZE
from relay.upstream.transport import PINNED_ADDRESS, HTTPTransport

pytestmark = [pytest.mark.anyio, pytest.mark.sqlite]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Upstream"], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
TIMEOUTS = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}


@pytest.fixture(params=[pytest.param(False, id="asyncio"), pytest.param(True, id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return "asyncio", {"use_uvloop": request.param}


@dataclass
class Upstream:
    """A scripted server: `handler` runs once per accepted connection."""

    handler: Handler
    port: int = 0
    connections: int = 0
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)  # (head, body)
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # a connection ended

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client hung up, or the test is over
        finally:
            writer.close()
            self.closed.set()

    async def read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        """One request, its body de-chunked; recorded."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        body = b""
        if b"transfer-encoding: chunked" in lines:
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                body += (await reader.readexactly(size + 2))[:-2]
            await reader.readexactly(2)
        else:
            for line in lines:
                if line.startswith(b"content-length:"):
                    body = await reader.readexactly(int(line.split(b":")[1]))
        self.requests.append((head, body))
        return head, body


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Upstream]:
    upstream = Upstream(handler)
    server = await asyncio.start_server(upstream.accept, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    async with server:
        yield upstream


@contextlib.asynccontextmanager
async def transport(**limits: float) -> AsyncIterator[HTTPTransport]:
    options = {"max_connections": 100, "keepalive_expiry": 5.0, **limits}
    client = HTTPTransport(httpx.Limits(**options))  # type: ignore[arg-type]
    try:
        yield client
    finally:
        await client.aclose()


def request(
    upstream: Upstream,
    path: str = "/v1/chat",
    *,
    method: str = "POST",
    content: bytes | AsyncIterator[bytes] | None = b'{"model":"m"}',
    headers: list[tuple[bytes, bytes]] | None = None,
    **timeouts: float,
) -> httpx.Request:
    return httpx.Request(
        method,
        upstream.url + path,
        headers=headers or [(b"content-type", b"application/json")],
        content=content,
        extensions={"timeout": {**TIMEOUTS, **timeouts}},
    )


async def fetch(client: HTTPTransport, outgoing: httpx.Request) -> tuple[httpx.Response, bytes]:
    response = await client.handle_async_request(outgoing)
    try:
        body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
    finally:
        await response.aclose()
    return response, body


def answer_each(reply: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream):
        while True:
            await up.read_request(reader)
            writer.write(reply)
            await writer.drain()

    return handler


def answer_once(reply: bytes) -> Handler:
    """Read one request, send `reply`, close the connection (keep-alive notwithstanding)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream):
        await up.read_request(reader)
        writer.write(reply)
        await writer.drain()

    return handler


# --------------------------------------------------------------------------------------------
# What goes out
# --------------------------------------------------------------------------------------------


async def test_the_request_goes_out_exactly_as_httpx_built_it() -> None:
    async with serving(answer_each(OK)) as upstream, transport() as client:
        headers = [
            (b"Content-Type", b"application/json"),
            (b"X-Title", b"Caf\xe9 \xff"),  # latin-1 bytes: legal, and left as they are
            (b"x-api-key", b"k"),
        ]
        response, body = await fetch(client, request(upstream, "/v1/a?b=c%20d", headers=headers))
    assert (response.status_code, body) == (200, b"{}")
    assert response.extensions["reason_phrase"] == b"OK"
    head, sent = upstream.requests[0]
    assert head == (
        b"POST /v1/a?b=c%20d HTTP/1.1\r\n"
        b"Host: 127.0.0.1:" + str(upstream.port).encode() + b"\r\n"
        b"Content-Type: application/json\r\nX-Title: Caf\xe9 \xff\r\nx-api-key: k\r\n"
        b"Content-Length: 13\r\n\r\n"
    )
    assert sent == b'{"model":"m"}'


async def test_a_streamed_body_goes_out_chunked_and_whole() -> None:
    pieces = [b"a" * 10, b"", b"b" * 70_000, b"c"]

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            await asyncio.sleep(0)
            yield piece

    async with serving(answer_each(OK)) as upstream, transport() as client:
        response, _ = await fetch(client, request(upstream, content=body()))
        again, _ = await fetch(client, request(upstream))  # the framing left the line clean
    assert response.status_code == again.status_code == 200
    assert upstream.requests[0][1] == b"".join(pieces)
    assert b"transfer-encoding: chunked" in upstream.requests[0][0].lower()
    assert upstream.connections == 1


async def chunks() -> AsyncIterator[bytes]:
    yield b'{"model":'
    yield b'"m"}'


@pytest.mark.parametrize("method", ["POST", "GET", "PUT"])
@pytest.mark.parametrize("content", ["bytes", "none", "stream"])
@pytest.mark.parametrize("length", [None, b"13"])  # the client's Content-Length, forwarded
async def test_a_relayed_request_carries_the_headers_httpx_itself_would_add(
    method: str, content: str, length: bytes | None
) -> None:
    """`upstream_request` skips httpx's second pass over the headers, not its rules: the
    head comes out as `httpx.Request` would make it, in the same order."""
    url = httpx.URL("https://api.example.com:8443/v1/chat?x=1")
    headers = [(b"content-type", b"application/json"), (b"x-api-key", b"k")]
    if length is not None:
        headers.append((b"content-length", length))
    body: bytes | AsyncIterator[bytes] | None = {
        "bytes": b'{"model":"m"}',
        "none": None,
        "stream": chunks(),
    }[content]
    ours = upstream_request(method, url, headers, body, {})
    theirs = httpx.Request(method, url, headers=headers, content=body)
    assert ours.headers.raw == theirs.headers.raw
    if content != "stream":  # the body the transport sends, as httpx would have it
        assert isinstance(ours.stream, httpx.ByteStream)
        assert b"".join(ours.stream) == theirs.content


async def test_a_relayed_request_streams_its_body_once() -> None:
    async with serving(answer_each(OK)) as upstream, transport() as client:
        outgoing = upstream_request("POST", httpx.URL(upstream.url + "/v1"), [], chunks(), {})
        response, _ = await fetch(client, outgoing)
        assert response.status_code == 200
        with pytest.raises(httpx.StreamConsumed):
            await client.handle_async_request(outgoing)
    head, body = upstream.requests[0]
    assert body == b'{"model":"m"}'
    assert head.startswith(b"POST /v1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % upstream.port)
    assert b"Transfer-Encoding: chunked" in head


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"x-evil", b"a\r\nx-injected: 1"),
        (b"x-evil", b"a\nb"),
        (b"x-evil", b"a\x00b"),
        (b"x evil", b"a"),
        (b"x-evil:", b"a"),
        (b"", b"a"),
    ],
)
async def test_a_header_that_could_split_the_request_is_refused_unsent(
    name: bytes, value: bytes
) -> None:
    async with serving(answer_each(OK)) as upstream, transport() as client:
        outgoing = request(upstream, headers=[(name, value)])
        with pytest.raises(httpx.LocalProtocolError):
            await client.handle_async_request(outgoing)
        assert client.pool.open_connections == 0
    assert upstream.connections == 0


async def test_only_http_and_https_are_spoken() -> None:
    async with transport() as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.handle_async_request(httpx.Request("GET", "ftp://127.0.0.1/x"))


# --------------------------------------------------------------------------------------------
# What comes back
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "body", "reused"),
    [
        pytest.param(OK, b"{}", True, id="content-length"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n5;ext=1\r\nde\r\nf\r\n0\r\nx-trailer: t\r\n\r\n",
            b"abcde\r\nf",
            True,
            id="chunked",
        ),
        pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n" + OK, b"{}", True, id="after 100 Continue"),
        pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n", b"", True, id="204"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
            b"{}",
            False,
            id="connection close",
        ),
        pytest.param(
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}", b"{}", False, id="HTTP/1.0"
        ),
    ],
)
async def test_answers_are_framed_and_connections_reused_as_they_say(
    reply: bytes, body: bytes, reused: bool
) -> None:
    async with serving(answer_each(reply)) as upstream, transport() as client:
        for _ in range(2):
            response, received = await fetch(client, request(upstream))
            assert received == body
            assert response.status_code in (200, 204)
    assert upstream.connections == (1 if reused else 2)


@pytest.mark.parametrize("apart", [False, True], ids=["same packet", "after it"])
async def test_a_second_answer_to_one_request_never_reaches_anyone(apart: bool) -> None:
    """A provider that sends two answers to one request (an upstream trying to smuggle one
    into the next request's place): the first is read as it is, the connection never reused."""
    extra = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nEVIL!"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream):
        while True:
            await up.read_request(reader)
            writer.write(OK if apart else OK + extra)
            await writer.drain()
            if apart:
                await asyncio.sleep(0.05)
                writer.write(extra)
                await writer.drain()

    async with serving(handler) as upstream, transport() as client:
        for _ in range(2):
            response, body = await fetch(client, request(upstream))
            assert (response.status_code, body) == (200, b"{}")
            await asyncio.sleep(0.1)
    assert upstream.connections == 2


async def test_an_answer_without_a_length_ends_with_the_connection() -> None:
    reply = b"HTTP/1.1 200 OK\r\ncontent-type: audio/mpeg\r\n\r\n" + b"\xff" * 100_000
    async with serving(answer_once(reply)) as upstream, transport() as client:
        _, body = await fetch(client, request(upstream))
        assert body == b"\xff" * 100_000
        assert client.pool.open_connections == 0


async def test_an_answer_cut_short_is_an_error_not_a_short_body() -> None:
    reply = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 40
    async with serving(answer_once(reply)) as upstream, transport() as client:
        response = await client.handle_async_request(request(upstream))
        chunks = response.stream.__aiter__()  # type: ignore[union-attr]
        received = await chunks.__anext__()
        with pytest.raises(httpx.RemoteProtocolError):
            await chunks.__anext__()
        await response.aclose()
        assert received == b"x" * 40
        assert client.pool.open_connections == 0


async def test_a_response_to_head_has_no_body_and_its_connection_is_not_reused() -> None:
    # The length is what a GET would bring; the bytes after the head are never a body.
    reply = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 1000
    async with serving(answer_each(reply)) as upstream, transport() as client:
        response, body = await fetch(client, request(upstream, method="HEAD", content=None))
        assert (response.status_code, body) == (200, b"")
        assert response.headers["content-length"] == "1000"
        assert client.pool.open_connections == 0


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", id="not http"),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", id="bad length"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\n" + b"x-big: " + b"a" * 2 * HEAD_LIMIT + b"\r\n\r\n",
            id="head too large",
        ),
    ],
)
async def test_a_broken_answer_is_a_protocol_error(reply: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream):
        await up.read_request(reader)
        for start in range(0, len(reply), 4096):  # in pieces, as a network delivers it
            writer.write(reply[start : start + 4096])
            await writer.drain()
        await reader.read()

    async with serving(handler) as upstream, transport() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.handle_async_request(request(upstream))
        assert client.pool.open_connections == 0


def head_of(size: int, framing: bytes = b"content-length: 2\r\n") -> bytes:
    """An answer head of exactly `size` bytes, status line to empty line: headers of 1,000 bytes
    and one of the rest."""
    head = b"HTTP/1.1 200 OK\r\n" + framing
    rest = size - len(head) - 2
    while rest > 0:
        line = min(rest, 1000) if rest - 1000 >= 20 or rest <= 1000 else rest - 20
        name = b"x-h%d: " % len(head)
        head += name + b"a" * (line - len(name) - 2) + b"\r\n"
        rest -= line
    assert len(head) + 2 == size
    return head + b"\r\n"


def trailers_of(size: int) -> bytes:
    """A chunked body ending in trailers of `size` bytes (their empty line apart)."""
    lines = b""
    while len(lines) < size:
        lines += b"x-t%d: " % len(lines) + b"t" * 990 + b"\r\n"
    return b"3\r\nabc\r\n0\r\n" + lines + b"\r\n"


def writing(reply: bytes, piece: int | None) -> Handler:
    """Answer one request with `reply`, in one write or in pieces of `piece` bytes, then wait."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream):
        await up.read_request(reader)
        step = piece or len(reply)
        for start in range(0, len(reply), step):
            writer.write(reply[start : start + step])
            await writer.drain()
        await reader.read()

    return handler


PIECES = [pytest.param(None, id="one write"), pytest.param(4096, id="4 KiB pieces")]


@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize(
    ("size", "passes"),
    [
        pytest.param(63_000, True, id="63 KB"),
        pytest.param(HEAD_LIMIT, True, id="the limit"),
        pytest.param(HEAD_LIMIT + 1, False, id="a byte past it"),
        pytest.param(70_000, False, id="70 KB"),
    ],
)
async def test_every_byte_of_a_head_counts_however_it_arrives(
    size: int, passes: bool, piece: int | None
) -> None:
    """The read that completes a head counts too, whether the head came in it alone or not."""
    async with serving(writing(head_of(size) + b"{}", piece)) as upstream, transport() as client:
        if passes:
            response, body = await fetch(client, request(upstream))
            assert (response.status_code, body) == (200, b"{}")
            assert len(response.headers.raw) > 60
        else:
            with pytest.raises(httpx.RemoteProtocolError, match="head is too large"):
                await client.handle_async_request(request(upstream))
        assert client.pool.open_connections == (1 if passes else 0)


@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize(
    ("size", "passes"),
    [pytest.param(60_000, True, id="60 KB"), pytest.param(70_000, False, id="70 KB")],
)
async def test_trailers_count_like_a_head(size: int, passes: bool, piece: int | None) -> None:
    reply = head_of(100, b"transfer-encoding: chunked\r\n") + trailers_of(size)
    async with serving(writing(reply, piece)) as upstream, transport() as client:
        if passes:
            response, body = await fetch(client, request(upstream))
            assert (response.status_code, body) == (200, b"abc")
        else:
            with pytest.raises(httpx.RemoteProtocolError, match="trailers are too large"):
                await fetch(client, request(upstream))
        assert client.pool.open_connections == (1 if passes else 0)


@pytest.mark.parametrize(
    "start",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nx-endless: ", id="a header"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-t: ", id="a trailer"
        ),
    ],
)
async def test_a_line_that_never_ends_is_refused_once_past_the_limit(start: bytes) -> None:
    """The parser holds an unfinished line whole: what it holds is counted read by read."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream):
        await up.read_request(reader)
        writer.write(start)
        await asyncio.sleep(0.05)  # read apart: the line alone follows
        for _ in range(2 * HEAD_LIMIT // 4096):
            writer.write(b"a" * 4096)
            await writer.drain()
        await reader.read()

    async with serving(handler) as upstream, transport() as client:
        with pytest.raises(httpx.RemoteProtocolError, match="too large"):
            await fetch(client, request(upstream))
        assert client.pool.open_connections == 0


async def test_a_closed_connection_without_an_answer_is_a_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream):
        await up.read_request(reader)

    async with serving(handler) as upstream, transport() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.handle_async_request(request(upstream))


# --------------------------------------------------------------------------------------------
# The pool
# --------------------------------------------------------------------------------------------


async def test_an_idle_connection_is_closed_after_the_keepalive_expiry() -> None:
    async with serving(answer_each(OK)) as upstream, transport(keepalive_expiry=0.2) as client:
        await fetch(client, request(upstream))
        assert (client.pool.open_connections, client.pool.idle_connections) == (1, 1)
        await asyncio.wait_for(upstream.closed.wait(), 5)
        assert (client.pool.open_connections, client.pool.idle_connections) == (0, 0)
        await fetch(client, request(upstream))
    assert upstream.connections == 2


async def test_a_connection_past_its_expiry_is_never_reused_however_late_the_loop_runs() -> None:
    async with serving(answer_each(OK)) as upstream, transport(keepalive_expiry=0.2) as client:
        await fetch(client, request(upstream))
        time.sleep(0.3)  # the loop is stuck: nothing has had a chance to close the connection
        response, _ = await fetch(client, request(upstream))
        assert response.status_code == 200
    assert upstream.connections == 2


async def test_idle_connections_close_each_at_its_own_expiry() -> None:
    loop = asyncio.get_running_loop()
    async with serving(answer_each(OK)) as upstream, transport(keepalive_expiry=0.5) as client:
        await asyncio.gather(fetch(client, request(upstream)), fetch(client, request(upstream)))
        await asyncio.sleep(0.25)
        await fetch(client, request(upstream))  # one of the two, idle again from now on
        fresher = loop.time()
        await asyncio.wait_for(upstream.closed.wait(), 5)
        if loop.time() < fresher + 0.5:
            assert client.pool.open_connections == 1  # the older went alone
        while client.pool.open_connections:
            await asyncio.sleep(0.01)
        assert loop.time() >= fresher + 0.5 - 0.002  # not before its time (1 ms clock grain)
    assert upstream.connections == 2


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"use_uvloop": False})])
async def test_idle_connections_share_one_expiry_timer(anyio_backend: object) -> None:
    """The pool arms no timer per exchange (asyncio's loop, whose methods can be wrapped)."""
    loop = asyncio.get_running_loop()
    async with serving(answer_each(OK)) as upstream, transport() as client:
        armed: list[object] = []
        for name in ("call_at", "call_later"):
            method = getattr(loop, name)

            def counting(
                when: float, callback: Any, *args: Any, _method: Any = method, **kw: Any
            ) -> Any:
                if getattr(callback, "__self__", None) is client.pool:
                    armed.append(callback)
                return _method(when, callback, *args, **kw)

            setattr(loop, name, counting)
        try:
            for _ in range(20):
                await fetch(client, request(upstream))
        finally:
            for name in ("call_at", "call_later"):
                delattr(loop, name)
    assert len(armed) == 1
    assert upstream.connections == 1


async def test_an_idle_connection_the_provider_closes_leaves_the_pool() -> None:
    async with serving(answer_once(OK)) as upstream, transport() as client:
        await fetch(client, request(upstream))
        await asyncio.wait_for(upstream.closed.wait(), 5)
        for _ in range(100):
            if client.pool.open_connections == 0:
                break
            await asyncio.sleep(0.01)
        assert client.pool.open_connections == 0
        response, body = await fetch(client, request(upstream))
    assert (response.status_code, body, upstream.connections) == (200, b"{}", 2)


def drop_the_second_request() -> Handler:
    """The first connection answers one request, then reads the next whole and closes without
    answering (its keep-alive ran out as the request came, or it took it and died); later
    connections answer every request."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream):
        await up.read_request(reader)
        writer.write(OK)
        await writer.drain()
        if up.connections == 1:
            await up.read_request(reader)
            return
        while True:
            await up.read_request(reader)
            writer.write(OK)
            await writer.drain()

    return handler


async def test_an_idempotent_request_dropped_unanswered_is_sent_again_on_a_new_connection() -> None:
    async with serving(drop_the_second_request()) as upstream, transport() as client:
        await fetch(client, request(upstream, method="GET", content=None))
        response, body = await fetch(client, request(upstream, method="GET", content=None))
        assert (response.status_code, body) == (200, b"{}")
        assert len(upstream.requests) == 3
        assert upstream.connections == 2


async def test_a_post_the_provider_may_have_taken_is_never_sent_twice() -> None:
    """Whether the provider acted on it cannot be known: sending it again could bill twice."""

    async def streamed() -> AsyncIterator[bytes]:
        yield b"{}"

    for content in (b'{"model":"m"}', streamed()):
        async with serving(drop_the_second_request()) as upstream, transport() as client:
            await fetch(client, request(upstream))
            with pytest.raises(httpx.RemoteProtocolError):
                await client.handle_async_request(request(upstream, content=content))
            assert len(upstream.requests) == 2
            assert upstream.connections == 1


async def test_a_pooled_connection_the_provider_has_closed_is_never_written_to() -> None:
    """The provider's close has been read (the transport is closing; its loss is reported on
    the loop's next turn) when the pool would hand the connection out again: the POST goes out
    on a new connection instead, once."""
    async with serving(answer_each(OK)) as upstream, transport() as client:
        await fetch(client, request(upstream))
        (idle,) = [c for by_origin in client.pool._idle.values() for c in by_origin]
        assert idle.transport is not None
        idle.transport.close()  # what reading the provider's end of it does
        response, body = await fetch(client, request(upstream))
    assert (response.status_code, body) == (200, b"{}")
    assert len(upstream.requests) == 2
    assert upstream.connections == 2


async def test_a_full_pool_waits_for_a_connection_up_to_the_pool_timeout() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream):
        while True:
            await up.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
            await writer.drain()
            await release.wait()
            writer.write(b"{}")
            await writer.drain()

    async with serving(handler) as upstream, transport(max_connections=1) as client:
        held = await client.handle_async_request(request(upstream))
        with pytest.raises(httpx.PoolTimeout):
            await client.handle_async_request(request(upstream, pool=0.1))
        waiting = asyncio.ensure_future(fetch(client, request(upstream, pool=5)))
        await asyncio.sleep(0.05)
        release.set()
        assert b"".join([c async for c in held.stream]) == b"{}"  # type: ignore[union-attr]
        await held.aclose()
        response, body = await waiting
    assert (response.status_code, body, upstream.connections) == (200, b"{}", 1)


async def test_a_full_pool_closes_an_idle_connection_elsewhere_to_make_room() -> None:
    async with (
        serving(answer_each(OK)) as first,
        serving(answer_each(OK)) as second,
        transport(max_connections=1) as client,
    ):
        await fetch(client, request(first))
        response, _ = await fetch(client, request(second, pool=0.5))
        assert response.status_code == 200
        await asyncio.wait_for(first.closed.wait(), 5)
        assert client.pool.open_connections == 1


async def test_a_connection_whose_answer_was_not_read_to_the_end_is_closed() -> None:
    big = b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n" + b"z" * 1_000_000
    async with serving(answer_each(big)) as upstream, transport() as client:
        response = await client.handle_async_request(request(upstream))
        await response.aclose()
        assert client.pool.open_connections == 0
        await asyncio.wait_for(upstream.closed.wait(), 5)


async def test_a_cancelled_request_closes_its_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream):
        await up.read_request(reader)
        await reader.read()  # until the client hangs up

    async with serving(handler) as upstream, transport() as client:
        task = asyncio.ensure_future(client.handle_async_request(request(upstream)))
        while not upstream.requests:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.pool.open_connections == 0
        await asyncio.wait_for(upstream.closed.wait(), 5)


async def test_closing_the_transport_closes_every_connection() -> None:
    async with serving(answer_each(OK)) as upstream:
        async with transport() as client:
            await fetch(client, request(upstream))
        await asyncio.wait_for(upstream.closed.wait(), 5)
        with pytest.raises(httpx.ConnectError):
            await client.handle_async_request(request(upstream))


async def test_a_pinned_name_connects_to_its_pinned_address_with_its_own_connections() -> None:
    async with serving(answer_each(OK)) as upstream, transport() as client:
        url = f"http://provider.invalid:{upstream.port}/v1/chat"
        pin = {"timeout": TIMEOUTS, PINNED_ADDRESS: "127.0.0.1"}
        outgoing = httpx.Request("POST", url, content=b"{}", extensions=pin)
        response, _ = await fetch(client, outgoing)
        assert response.status_code == 200
        assert b"Host: provider.invalid:" in upstream.requests[0][0]
        await fetch(client, request(upstream))  # same port, no pin: not the pinned connection
    assert upstream.connections == 2


# --------------------------------------------------------------------------------------------
# Timeouts, failures, flow control
# --------------------------------------------------------------------------------------------


async def test_a_silent_provider_is_a_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream):
        await up.read_request(reader)
        if up.connections == 1:  # one piece of an answer; on the next connection, not a byte
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
            await writer.drain()
        await reader.read()

    async with serving(handler) as upstream, transport() as client:
        response = await client.handle_async_request(request(upstream, read=0.2))
        chunks = response.stream.__aiter__()  # type: ignore[union-attr]
        assert await chunks.__anext__() == b"a"
        with pytest.raises(httpx.ReadTimeout):
            await chunks.__anext__()
        await response.aclose()
        with pytest.raises(httpx.ReadTimeout):
            await client.handle_async_request(request(upstream, read=0.2))


async def test_nothing_listening_is_a_connect_error() -> None:
    async with serving(answer_each(OK)) as upstream:
        port = upstream.port
    async with transport() as client:
        outgoing = httpx.Request(
            "GET", f"http://127.0.0.1:{port}/", extensions={"timeout": TIMEOUTS}
        )
        with pytest.raises(httpx.ConnectError):
            await client.handle_async_request(outgoing)
        assert client.pool.open_connections == 0


async def test_an_error_of_the_body_stream_is_raised_as_itself() -> None:
    class ClientGone(Exception):
        pass

    async def body() -> AsyncIterator[bytes]:
        yield b"{"
        raise ClientGone

    async with serving(answer_each(OK)) as upstream, transport() as client:
        with pytest.raises(ClientGone):
            await client.handle_async_request(request(upstream, content=body()))
        assert client.pool.open_connections == 0


async def test_an_answer_before_the_body_is_all_sent_stops_the_sending() -> None:
    gate = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        gate.set()
        await reader.read()

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 10
        await gate.wait()
        await asyncio.sleep(0.05)
        for _ in range(1000):
            yield b"y" * 1000

    async with serving(handler) as upstream, transport() as client:
        response, received = await fetch(client, request(upstream, content=body()))
        assert (response.status_code, received) == (413, b"{}")
        assert client.pool.open_connections == 0  # the request was not sent whole


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `localhost` and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_an_answer_over_tls_is_read_in_bounded_reads(tmp_path: Path) -> None:
    """TLS hands the connection decrypted bytes through its own reads, on either loop."""
    cert_file, key_file = _certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    size = 16 * HIGH_WATER
    payload = bytes(range(256)) * (size // 256)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream):
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + payload)
        await writer.drain()

    upstream = Upstream(handler)
    server = await asyncio.start_server(upstream.accept, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    async with server, transport() as client:
        client.ssl_context.load_verify_locations(cert_file)
        outgoing = httpx.Request(
            "GET",
            f"https://localhost:{port}/v1/models",
            extensions={"timeout": TIMEOUTS, PINNED_ADDRESS: "127.0.0.1"},
        )
        response = await client.handle_async_request(outgoing)
        received = b""
        async for chunk in response.stream:  # type: ignore[union-attr]
            assert len(chunk) <= HIGH_WATER + READ_SIZE
            received += chunk
            await asyncio.sleep(0.01)
        await response.aclose()
    assert response.status_code == 200
    assert received == payload


async def test_reading_pauses_while_the_answer_waits_for_a_slow_reader() -> None:
    size = 8 * HIGH_WATER
    payload = bytes(range(256)) * (size // 256)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream):
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + payload)
        await writer.drain()

    async with serving(handler) as upstream, transport() as client:
        response = await client.handle_async_request(request(upstream))
        await asyncio.sleep(0.3)  # the server has sent all it can
        transport_ = client.pool._connections.copy().pop().transport
        assert transport_ is not None
        assert not transport_.is_reading()
        received = b""
        async for chunk in response.stream:  # type: ignore[union-attr]
            # Reading paused past the window, after one read: a bounded read, however much
            # the socket held (asyncio's own reads take up to 256 KiB).
            assert len(chunk) <= HIGH_WATER + READ_SIZE
            received += chunk
            await asyncio.sleep(0.05)  # the socket fills up again meanwhile
        await response.aclose()
    assert received == payload
