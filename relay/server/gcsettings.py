"""Garbage-collector settings for a serving process.

CPython's cyclic collector runs its young generation every 700 allocations and, now and then,
a full pass over every tracked object. A relay process allocates a few hundred objects per
request and holds a few hundred per open stream, so under load the default thresholds run
full passes many times a second, each longer as more streams are open, and long enough to
delay streamed frames (docs/performance.md). Almost nothing
the relay allocates is cyclic garbage (reference counting frees it), so collecting rarely
costs little memory.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["settle"]

THRESHOLDS: Final = (50_000, 20, 100)


def settle() -> None:
    """Once start-up is done: collect, move what is alive (modules, settings, pools) where the
    collector never looks again (`gc.freeze`), and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
