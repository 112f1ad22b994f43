"""Connections that go to an address checked beforehand, not to a fresh DNS answer.

An openai-compatible upstream is named by the client; `relay.ssrf` resolves and checks the
name, and the request then runs inside `pinned(name, address)`. Connections keep the name
everywhere else: in the pool's key (a connection is only reused for the same name), in SNI
and in certificate verification; only the TCP connect goes to the pinned address, through
`PinningResolver`, the one resolver of the upstream connection pool. Without a pin, a name
resolves as usual (every other provider).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator, Mapping
from contextvars import ContextVar

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

__all__ = ["PinningResolver", "pinned"]

_pins: ContextVar[Mapping[str, str] | None] = ContextVar("byok_relay_pins", default=None)


@contextlib.contextmanager
def pinned(host: str, address: str) -> Iterator[None]:
    """Within this block, this task's connections to `host` go to `address`."""
    token = _pins.set({**(_pins.get() or {}), host: address})
    try:
        yield
    finally:
        _pins.reset(token)


class PinningResolver(AbstractResolver):
    """The pinned address of a name when the calling task has one, else the system's answer.

    The pool must call it from the requesting task (aiohttp does with its DNS cache off), so
    that the task's pins are the ones seen.
    """

    def __init__(self) -> None:
        self._system = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        pins = _pins.get()
        address = pins.get(host) if pins else None
        if address is None:
            return await self._system.resolve(host, port, family)
        version = ipaddress.ip_address(address).version
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        await self._system.close()
