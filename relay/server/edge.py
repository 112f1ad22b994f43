"""What one connection may take of a relay process, and what the application may do with it.

The server's protocol (`relay.server.protocol`) holds every connection to these limits, which the
application makes from its settings and hands over in the lifespan state (`EDGE_LIMITS`):

- a request head must be whole within `head_timeout` of its first byte (of the connection's
  opening, for its first request), and a body must keep coming, `MIN_BODY_RATE` on average
  over every `body_timeout` the server spends reading it; past either, 408 JSON and the
  connection closes;
- a client whose send buffer is full must take something within `send_timeout`;
- at most `max_connections` connections at once, and `max_per_address` from one address (a
  trusted proxy, which speaks for many clients, is not counted per address); past either, a
  new connection gets 503 JSON and is closed.

Each request's scope carries its connection as an `Edge` (`EDGE`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import resource
from collections.abc import Callable
from typing import Final, Protocol

__all__ = [
    "EDGE",
    "EDGE_LIMITS",
    "MIN_BODY_RATE",
    "Edge",
    "EdgeLimits",
    "Waiting",
    "connections_the_files_allow",
    "raise_file_limit",
]

EDGE: Final = "relay.edge"
"""Scope key of the request's `Edge`."""
EDGE_LIMITS: Final = "relay.edge_limits"
"""Lifespan state key of the process's `EdgeLimits`."""
MIN_BODY_RATE: Final = 1024  # bytes a second a request body must average, at least
FILES_HELD_BACK: Final = 128  # descriptors kept for the store, the log, the upstream pool's spare


class Edge(Protocol):
    """What the application may do with and learn of a request's connection."""

    @property
    def send_timed_out(self) -> bool:
        """The connection was dropped because the client took nothing for too long."""

    def end_response(self) -> None:
        """End the response where it is, incomplete: the connection closes once what is
        buffered has gone out (or the client's time to take it runs out), and the server logs
        nothing about a response left unfinished."""


class Late(Protocol):
    def head_late(self) -> None:
        """Its request head did not arrive in time."""


class Waiting:
    """The connections waiting for a request head, by when they began to: one timer for all,
    looking every quarter of the timeout (a timer each would be half a KiB on every connection,
    nearly all of them cancelled a moment later). A connection is told it is late at most a
    quarter of the timeout after it is."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._since: dict[Late, float] = {}
        self._sweep: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._since)

    def add(self, connection: Late, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for `connection`'s head from now (or from when it began to, if it had)."""
        self._since.setdefault(connection, loop.time())
        if self._sweep is None:
            self._sweep = loop.call_later(self.timeout / 4, self._look, loop)

    def discard(self, connection: Late) -> None:
        self._since.pop(connection, None)

    def _look(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep = None
        now = loop.time()
        late = [c for c, since in self._since.items() if now - since >= self.timeout]
        for connection in late:
            del self._since[connection]
            connection.head_late()
        if self._since:
            self._sweep = loop.call_later(self.timeout / 4, self._look, loop)


@dataclasses.dataclass
class EdgeLimits:
    head_timeout: float = 10.0
    body_timeout: float = 10.0
    send_timeout: float = 60.0
    max_connections: int = 10_000
    max_per_address: int = 1_000
    proxy: Callable[[str], bool] = lambda address: False
    """Whether connections from `address` come through a trusted proxy (not counted per
    address)."""
    open: int = 0
    by_address: dict[str, int] = dataclasses.field(default_factory=dict)
    waiting: Waiting = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.waiting = Waiting(self.head_timeout)

    def admit(self, address: str | None) -> bool:
        """Count a new connection from `address`; False (and nothing counted) past a limit."""
        if self.open >= self.max_connections:
            return False
        if address is not None and not self.proxy(address):
            held = self.by_address.get(address, 0)
            if held >= self.max_per_address:
                return False
            self.by_address[address] = held + 1
        self.open += 1
        return True

    def release(self, address: str | None) -> None:
        """A connection `admit` counted has closed."""
        self.open -= 1
        if address is not None and address in self.by_address:
            held = self.by_address[address] - 1
            if held:
                self.by_address[address] = held
            else:
                del self.by_address[address]


def raise_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (each connection, and
    each open stream's upstream, takes one); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connections_the_files_allow(files: int) -> int:
    """Client connections that `files` descriptors can serve: each may hold a stream, whose
    upstream connection takes a second one."""
    return max(1, (files - FILES_HELD_BACK) // 2)
