"""A deadline on a stream's silence that is cheap to move on and cheap to hold.

A relayed answer may go silent for `RELAY_STREAM_IDLE_TIMEOUT`, counted from its head and then
from each chunk. Moving an `asyncio.timeout` on at every chunk costs a timer cancelled and
another armed per chunk; `IdleDeadline` only notes the time. When it comes due it is checked:
after progress it waits again for the new expiry, otherwise it makes the enclosing
`asyncio.timeout` expire (which cancels the task and raises `TimeoutError` at its end). The
expiry only ever moves later, so a deadline filed once is never checked late: a silent stream
is cut when its silence reaches the limit, never earlier. While the relay waits on the client
to take a chunk the clock stops: a slow client is not a silent provider (the server edge
bounds a client that takes nothing, `relay.server.protocol`).

Nor does each deadline arm a timer of its own: the deadlines of a process wait in an
`IdleWheel` (one, made in the lifespan), in buckets with one timer each, each bucket `1/GRAIN`
of the limit wide. A stream is cut at most that much after its silence reached the limit.
"""

from __future__ import annotations

import asyncio
import math
from typing import Final

__all__ = ["GRAIN", "IdleDeadline", "IdleWheel"]

GRAIN: Final = 16  # a deadline is checked at most 1/GRAIN of its limit after it is due


class IdleDeadline:
    __slots__ = ("_due", "_expires", "_idle", "_loop", "_paused", "_tick", "_timeout", "_wheel")

    def __init__(self, wheel: IdleWheel, timeout: asyncio.Timeout, idle: float) -> None:
        """Expire `timeout` (entered with no deadline of its own) after `idle` seconds with no
        chunk, counted from now and then from each chunk; `wheel` keeps it until then."""
        self._wheel = wheel
        self._loop = wheel.loop
        self._timeout = timeout
        self._idle = idle
        self._tick = idle / GRAIN
        self._paused = False
        self._expires = self._loop.time() + idle
        self._due: float | None = wheel.add(self, self._expires, self._tick)

    def pause(self) -> None:
        """A chunk came: the clock stops while the client takes it."""
        self._paused = True

    def resume(self) -> None:
        """The client took it: the provider has `idle` seconds for the next."""
        self._paused = False
        self._expires = self._loop.time() + self._idle

    def cancel(self) -> None:
        if self._due is not None:
            self._wheel.remove(self, self._due)
            self._due = None

    def check(self, now: float) -> None:
        """Its bucket's time has come (the wheel has let go of it)."""
        if self._paused:  # waiting on the client: look again once a full silence could fit
            self._due = self._wheel.add(self, now + self._idle, self._tick)
        elif now < self._expires:  # chunks came meanwhile
            self._due = self._wheel.add(self, self._expires, self._tick)
        else:
            self._due = None
            self._timeout.reschedule(now)


class IdleWheel:
    """The idle deadlines of one event loop, by the time their bucket is due; a timer per
    bucket. Made in the running loop."""

    __slots__ = ("_buckets", "loop")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._buckets: dict[float, tuple[asyncio.TimerHandle, set[IdleDeadline]]] = {}

    @property
    def timers(self) -> int:
        """Timers armed: one per bucket holding deadlines."""
        return len(self._buckets)

    @property
    def waiting(self) -> int:
        """Deadlines waiting in the buckets."""
        return sum(len(deadlines) for _, deadlines in self._buckets.values())

    def add(self, deadline: IdleDeadline, at: float, tick: float) -> float:
        """File `deadline` in the bucket that comes due at `at` or the next tick after it."""
        due = math.ceil(at / tick) * tick
        bucket = self._buckets.get(due)
        if bucket is None:
            bucket = self._buckets[due] = (self.loop.call_at(due, self._fire, due), set())
        bucket[1].add(deadline)
        return due

    def remove(self, deadline: IdleDeadline, due: float) -> None:
        bucket = self._buckets.get(due)
        if bucket is None:
            return
        bucket[1].discard(deadline)
        if not bucket[1]:
            bucket[0].cancel()
            del self._buckets[due]

    def _fire(self, due: float) -> None:
        _, deadlines = self._buckets.pop(due)
        now = self.loop.time()
        for deadline in deadlines:
            deadline.check(now)
