"""The shared upstream HTTP client, and the header rules for what comes back from a provider."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import httpx

from .config import Settings
from .pinning import PinningTransport

__all__ = ["SSE_HEADERS", "new_http_client", "response_headers"]

# Response headers passed back to the client, by exact name or by prefix. Everything else a
# provider sends (cookies, hop-by-hop headers, its own server and caching headers) stays here.
# `content-encoding` passes because the body is relayed raw, exactly as the provider encoded it;
# `content-length` never does, since the relay may end a failing stream with its own error event.
RETURNED_HEADERS: Final = frozenset(
    {
        "content-type",
        "content-encoding",
        "content-disposition",
        "content-language",
        "retry-after",
        "request-id",
        "x-request-id",
        "openai-processing-ms",
        "openai-version",
        "openai-model",
        "x-dg-request-id",
        "x-dg-model-name",
        "x-dg-model-uuid",
        "x-dg-char-count",
        "history-item-id",
        "character-cost",
        "request-time",
        "x-generation-id",
        "x-compute-type",
        "x-compute-time",
        "x-compute-characters",
    }
)
RETURNED_PREFIXES: Final = ("x-ratelimit-", "ratelimit-", "anthropic-ratelimit-", "x-goog-")

SSE_HEADERS: Final = ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))


def new_http_client(settings: Settings) -> httpx.AsyncClient:
    """One client per process, made in the lifespan: pooled connections to every provider.

    No redirects (a provider never legitimately redirects an API call, and a redirect could lead
    anywhere), no environment proxies or netrc (`trust_env=False`: an operator routes egress with
    `RELAY_<PROVIDER>_BASE_URL`), and timeouts per phase; the idle timeout between streamed
    chunks is applied by the proxy itself.
    """
    timeout = httpx.Timeout(
        connect=settings.connect_timeout,
        read=settings.upstream_timeout,
        write=settings.upstream_timeout,
        pool=settings.connect_timeout,
    )
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30)
    return httpx.AsyncClient(
        timeout=timeout,
        transport=PinningTransport(limits),
        follow_redirects=False,
        trust_env=False,
    )


def response_headers(
    headers: Iterable[tuple[bytes, bytes]], *, sse: bool
) -> list[tuple[bytes, bytes]]:
    """The provider's response headers that the client may see (raw, lower-cased names)."""
    out = [
        (name, value)
        for name, value in ((n.lower(), v) for n, v in headers)
        if name.decode("latin-1") in RETURNED_HEADERS
        or name.decode("latin-1").startswith(RETURNED_PREFIXES)
    ]
    if sse:
        out.extend(SSE_HEADERS)
    return out
