"""`relay.server.memorylimits.MemoryStorage`: fixed windows in process memory, a hit costing a few
dictionary operations (no task, no lock), expired keys swept now and then."""

from __future__ import annotations

import asyncio
import time

import pytest
from limits import parse
from limits.aio.strategies import FixedWindowRateLimiter

from relay.server.memorylimits import SWEEP_EVERY, MemoryStorage

pytestmark = [pytest.mark.anyio, pytest.mark.sqlite]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    return clock


async def test_a_window_allows_its_amount_then_refuses_until_it_ends(clock: Clock) -> None:
    limiter = FixedWindowRateLimiter(MemoryStorage())
    item = parse("3/minute")
    assert [await limiter.hit(item, "relay", "a") for _ in range(4)] == [True] * 3 + [False]
    assert await limiter.hit(item, "relay", "b")  # another identity, its own window
    reset, remaining = await limiter.get_window_stats(item, "relay", "a")
    assert (reset, remaining) == (clock.now + 60, 0)
    clock.now += 59.9
    assert not await limiter.hit(item, "relay", "a")
    clock.now += 0.1
    assert await limiter.hit(item, "relay", "a")  # a new window, counted from this hit
    reset, remaining = await limiter.get_window_stats(item, "relay", "a")
    assert (reset, remaining) == (clock.now + 60, 2)


async def test_a_hit_creates_no_task(clock: Clock) -> None:
    limiter = FixedWindowRateLimiter(MemoryStorage())
    item = parse("100/second")
    tasks = asyncio.all_tasks()
    for identity in ("a", "b", "a"):
        await limiter.hit(item, "relay", identity)
        clock.now += 2  # every window over: limits' own storage starts a sweep task now
    assert asyncio.all_tasks() == tasks


async def test_expired_keys_are_swept_once_a_sweep_is_due(clock: Clock) -> None:
    storage = MemoryStorage()
    assert await storage.incr("short", 1) == 1
    assert await storage.incr("long", 3600) == 1
    clock.now += 2
    assert "short" in storage.storage  # expired, but no sweep is due yet
    clock.now += SWEEP_EVERY
    assert await storage.incr("other", 1) == 1
    assert set(storage.storage) == set(storage.expirations) == {"long", "other"}
