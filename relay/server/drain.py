"""A deploy drains the relay instead of cutting it.

On SIGTERM (or SIGINT) uvicorn stops accepting and closes idle connections; `Drain` marks the
process draining (readiness fails), gives the exchanges in progress `RELAY_DRAIN_SECONDS` to
finish, and then ends what is still open cleanly: an event stream with an `event: error` frame
saying the relay is restarting, any other answer cut short, a request still waiting for its
provider with 503 JSON. uvicorn's own deadline (`graceful_timeout`) comes later, so it never
has to cancel a request (which would log a traceback).

Only the process's main thread can take signals; elsewhere (a server in a test thread) `watch`
is a no-op and `begin` is called by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Final

from backends import Outcome
from relay.proxy.inflight import InFlight

__all__ = ["SIGNALS", "Drain", "graceful_timeout"]

logger = logging.getLogger("relay")

SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
ENDING_GRACE: Final = 5  # seconds the ended exchanges get to say so before uvicorn's deadline


def graceful_timeout(drain_seconds: float) -> int:
    """uvicorn's `timeout_graceful_shutdown` for a drain window: after the drain has ended
    every exchange."""
    return math.ceil(drain_seconds) + ENDING_GRACE


class Drain:
    def __init__(self, inflight: InFlight, seconds: float) -> None:
        self._inflight = inflight
        self._seconds = seconds
        self._loop = asyncio.get_running_loop()
        self._deadline: asyncio.TimerHandle | None = None
        self.draining = False

    def begin(self) -> None:
        """Start draining (once): the exchanges in progress have the drain window to finish."""
        if self.draining:
            return
        self.draining = True
        logger.info(
            "draining: %d exchange(s) in progress get %g s to finish",
            len(self._inflight),
            self._seconds,
            extra={"open_exchanges": len(self._inflight)},
        )
        self._deadline = self._loop.call_later(self._seconds, self._end)

    def _end(self) -> None:
        ended = self._inflight.end_all(Outcome.DRAINED)
        if ended:
            logger.warning("drain window over: %d exchange(s) ended", ended)

    def close(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """While inside, the shutdown signals start the drain before reaching the handlers
        installed before (uvicorn's, which stop the server)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
        for sig, handler in previous.items():
            signal.signal(sig, self._on_signal(handler))
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, then: Any) -> Callable[[int, FrameType | None], None]:
        def handle(sig: int, frame: FrameType | None) -> None:
            self._loop.call_soon_threadsafe(self.begin)
            if callable(then):
                then(sig, frame)

        return handle
