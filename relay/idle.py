"""A deadline on a stream's silence that is cheap to move on.

A relayed stream may go silent for `RELAY_STREAM_IDLE_TIMEOUT` between chunks (and
`RELAY_UPSTREAM_TIMEOUT` before the first). Moving an `asyncio.timeout` on at every chunk costs
a timer cancelled and another armed at every chunk (with no deadline while the client takes the
chunk: a slow client is not a silent provider): 3.6 µs a chunk here, 70 µs a 20-chunk stream.
`IdleDeadline` only notes the time at each chunk; its one timer, when it comes due, arms itself
again for the new expiry if there was progress meanwhile, and otherwise makes the enclosing
`asyncio.timeout` expire (which cancels the task and raises `TimeoutError` at its end, as
before). So a silent stream is cut when its silence reaches the limit, never earlier.
"""

from __future__ import annotations

import asyncio

__all__ = ["IdleDeadline"]


class IdleDeadline:
    __slots__ = ("_expires", "_handle", "_idle", "_loop", "_paused", "_timeout")

    def __init__(self, timeout: asyncio.Timeout, first: float, idle: float) -> None:
        """Expire `timeout` (entered with no deadline of its own) after `first` seconds without
        a chunk, then after `idle` seconds between chunks."""
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._idle = idle
        self._paused = False
        self._expires = self._loop.time() + first
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(self._expires, self._due)

    def pause(self) -> None:
        """A chunk came: the clock stops while the client takes it."""
        self._paused = True

    def resume(self) -> None:
        """The client took it: the provider has `idle` seconds for the next."""
        self._paused = False
        self._expires = self._loop.time() + self._idle

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _due(self) -> None:
        now = self._loop.time()
        if self._paused:  # waiting on the client: look again once a full silence could fit
            self._handle = self._loop.call_at(now + self._idle, self._due)
        elif now < self._expires:  # chunks came meanwhile
            self._handle = self._loop.call_at(self._expires, self._due)
        else:
            self._handle = None
            self._timeout.reschedule(now)
