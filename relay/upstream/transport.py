"""httpx's transport API over the relay's own HTTP/1.1 connections: the upstream transport.

The relay speaks httpx (requests, responses, timeouts, exceptions); this transport carries them
over `relay.upstream.pool`'s connections (`relay.upstream.http11`: an asyncio protocol and
httptools' C parser), which hold a fraction of the memory per open stream of aiohttp's or httpcore's
and do less work per request (figures in docs/performance.md). What crosses the
boundary:

- the request goes out exactly as httpx built it: method, target, headers in their order and
  bytes (a header that could split the request, with CR, LF or NUL in it or a name that is not
  a token, is refused with `LocalProtocolError` before anything is sent), and the body whole or
  streamed as it arrives (chunked when httpx chose that); nothing is added, no redirect is
  followed, no cookie kept, and the answer is never decoded: it comes back exactly as the
  provider encoded it;
- the egress proxy `egress` chooses (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`): the connection
  then goes through its CONNECT tunnel, and the pool keeps it apart from direct ones;
- httpx's timeouts per phase: `pool` for a free connection when the pool is full, `connect` for
  DNS, TCP, the proxy's tunnel and TLS, `write` for each wait on a full send buffer, `read` for
  each wait on the provider;
- everything that fails is one of httpx's exceptions; an error raised by the request body's
  own stream (the client went away, the body grew too large) is raised as itself;
- a request is sent once: a pooled connection the provider has closed is never written to,
  and a request written on a reused connection that then closes unanswered (the provider's
  keep-alive ran out as it arrived, or it took the request and died) goes out again on a new
  connection only when its method is idempotent and its body can be sent again. A `POST` that
  was written may have been acted on: sending it twice could bill its user twice.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator, Awaitable
from typing import Final

import certifi
import httpx

from relay.upstream.egress import Egress
from relay.upstream.http11 import Connection, Origin
from relay.upstream.pool import ConnectionPool

__all__ = ["PINNED_ADDRESS", "HTTPTransport", "ResponseBody"]

# A request extension: the address a request's connection goes to, checked beforehand, rather
# than a fresh DNS answer for its host (no DNS rebinding). The host stays everywhere else: in
# SNI and certificate checks, and in the pool's key, so such a connection is only reused by a
# request for the same host pinned to the same address. Through an egress proxy, the tunnel is
# asked for the address, not the name (`relay.upstream.egress`).
PINNED_ADDRESS: Final = "pinned_address"

DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}
SMALL_BODY: Final = 64 * 1024  # a body held whole up to this goes out with the head
BODY_SLICE: Final = 256 * 1024
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})  # RFC 9110
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SPLITS: Final = re.compile(rb"[\r\n\0]")
_CHECKED_NAMES: set[bytes] = set()  # header names seen valid (a few dozen in practice)
CHECKED_NAMES_LIMIT: Final = 4096


class ResponseBody(httpx.AsyncByteStream):
    """The answer's body as it arrives; closing it hands the connection back to the pool. Its
    own iterator (no generator): an open stream waiting for its next chunk holds no frame here."""

    __slots__ = ("_connection", "_pool", "_timeout")

    def __init__(self, connection: Connection, pool: ConnectionPool, timeout: float | None):
        self._connection: Connection | None = connection
        self._pool = pool
        self._timeout = timeout

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._connection is None:
            raise httpx.StreamClosed()
        return self

    def __anext__(self) -> Awaitable[bytes]:
        if self._connection is None:
            raise httpx.StreamClosed()
        return self._connection.next_chunk(self._timeout)

    @property
    def ended(self) -> bool:
        """The whole body has arrived and been handed out: the chunk just taken was the last."""
        return self._connection is not None and self._connection.body_taken

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.release(connection)


class HTTPTransport(httpx.AsyncBaseTransport):
    """An httpx transport on one pool of HTTP/1.1 connections (HTTP and HTTPS)."""

    def __init__(
        self,
        limits: httpx.Limits,
        ssl_context: ssl.SSLContext | None = None,
        egress: Egress | None = None,
    ) -> None:
        # None unless some upstream goes through a proxy: the direct path looks nothing up.
        self.egress = egress if egress is not None and egress.enabled else None
        self.pool = ConnectionPool(
            max_connections=limits.max_connections or 2**31,
            keepalive_expiry=limits.keepalive_expiry or 0.0,
            ssl_context=ssl_context or ssl.create_default_context(cafile=certifi.where()),
        )

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return self.pool.ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        port = DEFAULT_PORTS.get(scheme)
        if port is None:
            raise httpx.UnsupportedProtocol(f"the upstream URL must be http or https: {url}")
        host = url.host
        port = url.port or port
        address = request.extensions.get(PINNED_ADDRESS)
        egress = self.egress
        proxy = None if egress is None else egress.proxy_for(scheme, host, port, address)
        origin = Origin(scheme, host, port, address, proxy)
        timeout = request.extensions.get("timeout", {})
        head = _head(request)
        body = request.stream
        replayable = isinstance(body, httpx.ByteStream) and request.method in IDEMPOTENT
        for attempt in (1, 2):
            connection = await self.pool.acquire(
                origin, timeout.get("connect"), timeout.get("pool")
            )
            reused = connection.exchanges > 0
            connection.begin(head_only=request.method == "HEAD")
            try:
                if isinstance(body, httpx.ByteStream):
                    whole = next(iter(body), b"")
                    await _send_whole(connection, head, whole, timeout.get("write"))
                else:
                    await _send_stream(connection, head, body, request, timeout.get("write"))
                await connection.read_head(timeout.get("read"))
            except (httpx.RemoteProtocolError, httpx.ReadError):
                self.pool.discard(connection)
                if attempt == 1 and reused and replayable and connection.unanswered:
                    continue  # idempotent: once more, on a new connection
                raise
            except BaseException:
                self.pool.discard(connection)
                raise
            break
        status, reason, headers = connection.take_head()
        return httpx.Response(
            status_code=status,
            headers=headers,
            stream=ResponseBody(connection, self.pool, timeout.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    async def aclose(self) -> None:
        await self.pool.close()


def _head(request: httpx.Request) -> bytes:
    """The request line and headers, refusing anything that could split the request."""
    parts = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        if name not in _CHECKED_NAMES:
            if not _TOKEN.fullmatch(name):
                raise httpx.LocalProtocolError(f"invalid header name {name!r}")
            if len(_CHECKED_NAMES) < CHECKED_NAMES_LIMIT:
                _CHECKED_NAMES.add(name)
        if _SPLITS.search(value):
            raise httpx.LocalProtocolError(f"invalid value in header {name.decode()!r}")
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


async def _send_whole(
    connection: Connection, head: bytes, content: bytes, timeout: float | None
) -> None:
    """The head and a body held whole: one write for a small one (one segment, usually), else
    in slices as the socket takes them, so that the transport never copies more of a large
    body than a slice."""
    if len(content) <= SMALL_BODY:
        connection.write(head + content if content else head)
        return
    connection.write(head)
    view = memoryview(content)
    for start in range(0, len(view), BODY_SLICE):
        if connection.head_done or connection.closed:
            connection.forbid_reuse()
            return
        connection.write(view[start : start + BODY_SLICE])
        await connection.drain(timeout)


async def _send_stream(
    connection: Connection,
    head: bytes,
    body: httpx.SyncByteStream | httpx.AsyncByteStream,
    request: httpx.Request,
    timeout: float | None,
) -> None:
    """The head, then the body as its stream yields it (chunked when httpx said so). An answer
    that comes before the body is all sent stops the sending (the connection is then not
    reused); so does the connection closing."""
    if not isinstance(body, httpx.AsyncByteStream):
        raise TypeError("the upstream transport is async: the request body must be too")
    chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
    connection.write(head)
    async for chunk in body:
        if connection.head_done or connection.closed:
            connection.forbid_reuse()
            return
        if chunk:
            connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            await connection.drain(timeout)
    if chunked and not connection.closed:
        connection.write(b"0\r\n\r\n")
