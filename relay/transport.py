"""httpx's client API over aiohttp's connection pool: the relay's upstream transport.

The relay speaks httpx (requests, responses, timeouts, exceptions); this transport carries them
over an `aiohttp` session, whose pool and C parser serve several times more requests per second
than httpx's own pool behind the same proxy (figures in the README's Performance section).
What crosses the boundary:

- the request goes out as httpx built it (method, URL, headers in order, body streamed as it
  arrives); aiohttp adds no header of its own, follows no redirect, keeps no cookie and never
  decodes the answer, so the body comes back exactly as the provider encoded it;
- header values are sent as UTF-8 (aiohttp's only encoding): a value that is valid UTF-8
  leaves byte for byte; bytes that are not (a browser's latin-1) leave as the same characters
  in UTF-8;
- httpx's timeouts map to aiohttp's: `pool` + `connect` bound getting a connection, `connect`
  bounds the TCP and TLS handshake, `read` bounds each wait for the provider (`write` has no
  aiohttp counterpart: a stalled upload ends with the read timeout);
- aiohttp's exceptions become httpx's, in `map_exceptions`; an error raised by the request
  body's own stream (the client went away, the body grew too large) is raised as itself.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Final

import aiohttp
import certifi
import httpx

from .pinning import PinningResolver

__all__ = ["AiohttpTransport", "map_exceptions"]

# Most specific first: the first row whose aiohttp class matches decides.
EXCEPTIONS: Final[tuple[tuple[type[BaseException], type[httpx.TransportError]], ...]] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # DNS, refused, TLS and certificates
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.ClientOSError, httpx.ReadError),
    (aiohttp.ClientError, httpx.ReadError),
    (TimeoutError, httpx.ReadTimeout),
)

# Headers aiohttp would otherwise add itself; httpx has already set what the request needs.
NO_AUTO_HEADERS: Final = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


@contextlib.contextmanager
def map_exceptions() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        mapped = _mapped(exc)
        if mapped is None:
            raise
        raise mapped from exc


def _mapped(exc: Exception) -> httpx.TransportError | None:
    """The httpx exception to raise for `exc`; None when it is one already or has none."""
    if isinstance(exc, httpx.TransportError):
        return None
    for source, target in EXCEPTIONS:
        if isinstance(exc, source):
            return target(str(exc) or type(exc).__name__)
    return None


class _RequestBody:
    """The request's byte stream, remembering the error it ended with: aiohttp writes bodies
    in a task of its own and reports their failures as connection errors."""

    def __init__(self, stream: httpx.AsyncByteStream) -> None:
        self._stream = stream
        self.error: BaseException | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except BaseException as exc:
            self.error = exc
            raise


class _ResponseBody(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # Each chunk as it arrives: an SSE frame is never held back for more. (Straight from
        # `readany`: an open stream keeps fewer frames alive than with `iter_any` and a
        # context manager around it.)
        content = self._response.content
        while True:
            try:
                chunk = await content.readany()
            except Exception as exc:
                mapped = _mapped(exc)
                if mapped is None:
                    raise
                raise mapped from exc
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        # Back to the pool when read to the end, closed otherwise.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport on one aiohttp session, created on first use (inside the loop)."""

    def __init__(self, limits: httpx.Limits, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context or ssl.create_default_context(cafile=certifi.where())
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            limit_per_host=0,
            keepalive_timeout=self._limits.keepalive_expiry or 0,
            ssl=self.ssl_context,
            resolver=PinningResolver(),
            use_dns_cache=False,  # resolve in the requesting task, where its pins are
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=NO_AUTO_HEADERS,
            auto_decompress=False,
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = self._open_session()
        timeout = request.extensions.get("timeout", {})
        connect, pool = timeout.get("connect"), timeout.get("pool")
        headers = [
            (_text(name), _text(value))
            for name, value in request.headers.raw
            if name.lower() != b"transfer-encoding"  # aiohttp chunks a body of unknown length
        ]
        body: _RequestBody | None = None
        data: bytes | _RequestBody | None
        if isinstance(request.stream, httpx.ByteStream):
            data = request.read() or None
        elif isinstance(request.stream, httpx.AsyncByteStream):
            data = body = _RequestBody(request.stream)
        else:
            raise TypeError("the upstream transport is async: the request body must be too")
        try:
            with map_exceptions():
                response = await self._session.request(
                    request.method,
                    str(request.url),
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    compress=False,
                    timeout=aiohttp.ClientTimeout(
                        total=None,
                        connect=None if connect is None or pool is None else connect + pool,
                        sock_connect=connect,
                        sock_read=timeout.get("read"),
                    ),
                )
        except httpx.TransportError:
            if body is not None and body.error is not None:
                raise body.error from None
            raise
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseBody(response),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": _reason(response)},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _reason(response: aiohttp.ClientResponse) -> bytes:
    return (response.reason or "").encode("latin-1", "replace")
