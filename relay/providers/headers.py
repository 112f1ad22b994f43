"""Which headers cross the relay, each way: data, and the lists derived from it.

A browser may send the relay's own headers, what `fetch` and the official SDKs add, and every
header some provider takes from the client (the provider table's `forwarded_headers`): that union
is the CORS allow list. A provider's answer keeps only the headers below (by name or prefix);
of those, the ones browser code reads, with the relay's own, are the CORS expose list, which
cannot name a prefix and so names each header.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from relay.providers.table import PROVIDERS

__all__ = [
    "ALLOWED_REQUEST_HEADERS",
    "ALLOWED_REQUEST_PREFIXES",
    "EXPOSED_HEADERS",
    "KEY_HINT_HEADER",
    "PROVIDER_HEADER",
    "RETURNED_HEADERS",
    "RETURNED_PREFIXES",
    "SSE_HEADERS",
    "response_headers",
]

# -- From the browser ---------------------------------------------------------------------------

# What a browser sends that no provider takes from it: the relay's own headers, the body's type,
# what the official SDKs send whatever the base URL (their auth header, telemetry, Anthropic's
# browser opt-in). None of these is forwarded.
CLIENT_HEADERS: Final = frozenset(
    {
        "content-type",
        "accept",
        "accept-language",
        "authorization",
        "x-relay-token",
        "x-relay-base-url",
        "x-request-id",
        "xi-api-key",
        "anthropic-dangerous-direct-browser-access",
    }
)
ALLOWED_REQUEST_HEADERS: Final = CLIENT_HEADERS | frozenset(
    name
    for provider in PROVIDERS.values()
    for _, client_names in provider.forwarded_headers
    for name in client_names
)
# The official SDKs add telemetry headers of their own; they are harmless and never forwarded.
ALLOWED_REQUEST_PREFIXES: Final = ("x-stainless-",)

# -- Back from a provider -----------------------------------------------------------------------

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

# The relay's own, on every relayed answer.
PROVIDER_HEADER: Final = "x-relay-provider"
KEY_HINT_HEADER: Final = "x-relay-key-hint"

# -- What browser code may read -----------------------------------------------------------------

RELAY_EXPOSED: Final = (
    "retry-after",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "ratelimit-policy",
    PROVIDER_HEADER,
    KEY_HINT_HEADER,
    "x-relay-request-id",
)
# Anthropic's rate-limit state, which its SDK reads: per kind, its limit, what remains, the reset.
_ANTHROPIC_LIMITS: Final = tuple(
    f"anthropic-ratelimit-{kind}-{figure}"
    for kind in ("requests", "tokens", "input-tokens", "output-tokens")
    for figure in ("limit", "remaining", "reset")
)
# Of the returned headers, those browser code reads: the providers' rate-limit state and request
# ids, and a file's name.
PROVIDER_EXPOSED: Final = (
    *_ANTHROPIC_LIMITS,
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-request-id",
    "request-id",
    "content-disposition",
)


def returned(name: str) -> bool:
    """Whether a provider's response header `name` (lower case) reaches the client."""
    return name in RETURNED_HEADERS or name.startswith(RETURNED_PREFIXES)


if not all(map(returned, PROVIDER_EXPOSED)):  # an exposed header the relay never returns
    raise AssertionError("PROVIDER_EXPOSED names a header the relay does not return")

EXPOSED_HEADERS: Final = frozenset(RELAY_EXPOSED + PROVIDER_EXPOSED)


def response_headers(
    headers: Iterable[tuple[bytes, bytes]], *, sse: bool
) -> list[tuple[bytes, bytes]]:
    """The provider's response headers that the client may see (raw, lower-cased names)."""
    out = [
        (name, value)
        for name, value in ((n.lower(), v) for n, v in headers)
        if returned(name.decode("latin-1"))
    ]
    if sse:
        out.extend(SSE_HEADERS)
    return out
