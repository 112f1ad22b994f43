"""The shared upstream HTTP client, and requests built for it without httpx's own passes."""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Sequence
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Final

import certifi
import httpx

from relay.upstream.egress import Egress, parse_proxy
from relay.upstream.transport import HTTPTransport

__all__ = ["new_http_client", "new_transport", "upstream_request", "upstream_url"]

# Open upstream connections per process, streams included: each open stream holds one.
MAX_CONNECTIONS: Final = 10_000
# Seconds an idle upstream connection is kept for reuse (httpx's own default). Busy providers
# reuse theirs long before; after a burst of streams, thousands of idle connections (and their
# memory and file descriptors) are let go within seconds instead of lingering.
KEEPALIVE_EXPIRY: Final = 5.0

# Distinct upstream URLs whose parsed form is kept (a few hundred bytes each).
PARSED_URLS: Final = 1024


@functools.lru_cache(maxsize=PARSED_URLS)
def upstream_url(url: str) -> httpx.URL:
    """`url` parsed, once: parsing and checking a URL costs httpx as much as the rest of its
    work on a relayed request, while a relay sends nearly all its traffic to a handful of URLs.
    `httpx.URL` is immutable, so one parsed URL serves every request to it."""
    return httpx.URL(url)


def upstream_request(
    method: str,
    url: httpx.URL,
    headers: list[tuple[bytes, bytes]],
    content: bytes | bytearray | AsyncIterator[bytes] | None,
    extensions: dict[str, object],
) -> httpx.Request:
    """The request to send, with the headers httpx itself would add (`Host`, then the body's
    `Content-Length`, or `Transfer-Encoding: chunked` for a stream of unknown length), made
    without httpx's own pass over them: given its body as content, `httpx.Request` builds its
    `Headers` twice; given it as a stream, once."""
    head = [(b"Host", url.netloc), *headers]
    sized = any(name.lower() == b"content-length" for name, _ in headers)
    stream: httpx.ByteStream | _Body
    if isinstance(content, bytes | bytearray):
        if not sized:
            head.append((b"Content-Length", b"%d" % len(content)))
        stream = httpx.ByteStream(content)  # type: ignore[arg-type]  # sent as it is
    elif content is None:
        if method in ("POST", "PUT", "PATCH") and not sized:
            head.insert(1, (b"Content-Length", b"0"))
        stream = httpx.ByteStream(b"")
    else:
        if not sized:
            head.append((b"Transfer-Encoding", b"chunked"))
        stream = _Body(content)
    return httpx.Request(method, url, headers=head, stream=stream, extensions=extensions)


class _Body(httpx.AsyncByteStream):
    """A request body sent as it arrives, once."""

    __slots__ = ("_chunks",)

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks: AsyncIterator[bytes] | None = chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        chunks, self._chunks = self._chunks, None
        if chunks is None:
            raise httpx.StreamConsumed()
        return chunks


def new_transport(
    *,
    https_proxy: str | None = None,
    http_proxy: str | None = None,
    no_proxy: str = "",
    ca_files: Sequence[str] = (),
    ca_dirs: Sequence[str] = (),
) -> HTTPTransport:
    """The process's one upstream connection pool, made in the lifespan. The relay path sends
    through it directly: one request in, one streamed response out, nothing kept between
    requests (no cookies, no redirects); timeouts travel in each request's extensions.

    `https_proxy`, `http_proxy` (URLs) and `no_proxy` route egress (`relay.upstream.egress`);
    `ca_files` and `ca_dirs` (PEM bundles, hashed folders) are trusted beside certifi's CAs."""
    context = ssl.create_default_context(cafile=certifi.where())
    for ca_file in ca_files:
        context.load_verify_locations(cafile=ca_file)
    for ca_dir in ca_dirs:
        context.load_verify_locations(capath=ca_dir)
    egress = Egress(
        http=parse_proxy(http_proxy) if http_proxy else None,
        https=parse_proxy(https_proxy) if https_proxy else None,
        no_proxy=no_proxy,
    )
    return HTTPTransport(
        httpx.Limits(max_connections=MAX_CONNECTIONS, keepalive_expiry=KEEPALIVE_EXPIRY),
        ssl_context=context,
        egress=egress,
    )


def new_http_client(
    transport: httpx.AsyncBaseTransport, *, connect_timeout: float, read_timeout: float
) -> httpx.AsyncClient:
    """The client of the relay's own calls to providers (key verification, deep health), over
    `transport` (closed with the client).

    No redirects (a provider never legitimately redirects an API call, and a redirect could lead
    anywhere), no netrc and no proxies of httpx's own (`trust_env=False`: the transport routes
    egress, as it does the relay path's), no cookies carried from one user's call to another's, and
    timeouts per phase (`read_timeout` for each read and each write).
    """
    timeout = httpx.Timeout(
        connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
    )
    return httpx.AsyncClient(
        timeout=timeout,
        transport=transport,
        cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
        follow_redirects=False,
        trust_env=False,
    )
