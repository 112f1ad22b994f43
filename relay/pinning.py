"""Connections that go to an address checked beforehand, not to a fresh DNS answer.

An openai-compatible upstream is named by the client; `relay.ssrf` resolves and checks the
name, and the request then runs inside `pinned(name, address)`. Connections keep the name
everywhere else: in SNI and certificate verification, and in the pool's key (a connection is
only reused for the same name pinned to the same address); only the TCP connect goes to the
pinned address (`relay.pool` asks `pinned_address`). Without a pin, a name resolves as usual
(every other provider).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar

__all__ = ["pinned", "pinned_address"]

_pins: ContextVar[Mapping[str, str] | None] = ContextVar("byok_relay_pins", default=None)


@contextlib.contextmanager
def pinned(host: str, address: str) -> Iterator[None]:
    """Within this block, this task's connections to `host` go to `address`."""
    token = _pins.set({**(_pins.get() or {}), host: address})
    try:
        yield
    finally:
        _pins.reset(token)


def pinned_address(host: str) -> str | None:
    """The address the calling task pinned `host` to, if it did."""
    pins = _pins.get()
    return pins.get(host) if pins else None
