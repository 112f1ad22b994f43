"""Connections that go to an address checked beforehand, not to a fresh DNS answer.

An openai-compatible upstream is named by the client; `relay.ssrf` resolves and checks the
name, and the request then runs inside `pinned(name, address)`. Connections keep the name
everywhere else: in the pool's key (a connection is only reused for the same name), in SNI
and in certificate verification; only the TCP connect goes to the pinned address. Without a
pin, a name resolves as usual (every other provider).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar

import certifi
import httpcore
import httpx

__all__ = ["PinningTransport", "pinned"]

_pins: ContextVar[Mapping[str, str] | None] = ContextVar("byok_relay_pins", default=None)


@contextlib.contextmanager
def pinned(host: str, address: str) -> Iterator[None]:
    """Within this block, this task's connections to `host` go to `address`."""
    token = _pins.set({**(_pins.get() or {}), host: address})
    try:
        yield
    finally:
        _pins.reset(token)


class _PinnedBackend(httpcore.AnyIOBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pins = _pins.get()
        address = pins.get(host, host) if pins else host
        return await super().connect_tcp(address, port, timeout, local_address, socket_options)


class PinningTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, whose connection pool connects through the pins."""

    def __init__(self, limits: httpx.Limits, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or ssl.create_default_context(cafile=certifi.where()),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinnedBackend(),
        )
