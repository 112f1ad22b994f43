"""`relay.proxy.idle.IdleDeadline`: a stream is cut when its silence reaches the limit, never
before, and never while the client is the slow one."""

from __future__ import annotations

import asyncio

import pytest

from relay.proxy.idle import GRAIN, IdleDeadline, IdleWheel

pytestmark = [pytest.mark.anyio, pytest.mark.sqlite]

IDLE = 0.4  # long enough that a loaded machine's late timers (a tenth of a second) cut nothing
EPSILON = 1e-6  # (last + IDLE) - last is not always IDLE in floating point
LATEST = IDLE + IDLE / GRAIN + 0.2  # the wheel's grain, and a late wake-up on a loaded machine


@pytest.fixture(params=[pytest.param(False, id="asyncio"), pytest.param(True, id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return "asyncio", {"use_uvloop": request.param}


async def silent_for(
    seconds: float, *, chunks: tuple[float, ...] = (), paused: float = 0.0
) -> float:
    """Run a stream whose chunks come after the given waits (each taking `paused` seconds for
    the client to accept), then stays silent for `seconds`; how long after the last chunk was
    taken the deadline cut it (or -1 when it did not)."""
    loop = asyncio.get_running_loop()
    last = loop.time()
    try:
        async with asyncio.timeout(None) as timeout:
            deadline = IdleDeadline(IdleWheel(), timeout, IDLE)
            try:
                for wait in chunks:
                    await asyncio.sleep(wait)
                    deadline.pause()
                    await asyncio.sleep(paused)
                    deadline.resume()
                    last = loop.time()
                await asyncio.sleep(seconds)
            finally:
                deadline.cancel()
    except TimeoutError:
        return loop.time() - last
    return -1


async def test_no_chunk_within_the_idle_limit_is_cut_then() -> None:
    assert IDLE - EPSILON <= await silent_for(5) < LATEST


async def test_silence_between_chunks_is_cut_at_the_idle_limit_never_before() -> None:
    cut = await silent_for(5, chunks=(0.05,) * 3)
    assert IDLE - EPSILON <= cut < LATEST


async def test_steady_chunks_are_never_cut() -> None:
    # Chunks every 0.6 of the idle limit, for 3.6 times the limit.
    assert await silent_for(0, chunks=(IDLE * 0.6,) * 6) == -1


async def test_a_slow_client_is_not_a_silent_provider() -> None:
    """The client takes each chunk for longer than the idle limit: nothing is cut; the
    provider's silence after the last one is, counted from when the client took it."""
    assert await silent_for(0, chunks=(0.01, 0.01), paused=IDLE * 2) == -1
    cut = await silent_for(5, chunks=(0.01,), paused=IDLE * 2)
    assert IDLE - EPSILON <= cut < LATEST


async def test_a_cancelled_deadline_cuts_nothing() -> None:
    async with asyncio.timeout(None) as timeout:
        deadline = IdleDeadline(IdleWheel(), timeout, 0.05)
        deadline.cancel()
        await asyncio.sleep(0.2)
    assert timeout.expired() is False


async def test_deadlines_share_one_timer_per_bucket_and_leave_none_behind() -> None:
    """A thousand streams opened over 0.3 s or so wait on a timer per 1/GRAIN of the limit
    that span covers, not a thousand; cancelled, they leave no timer armed."""
    loop = asyncio.get_running_loop()
    wheel = IdleWheel()
    limit = 10.0
    async with asyncio.timeout(None) as timeout:
        deadlines = []
        started = loop.time()
        for _ in range(10):
            deadlines += [IdleDeadline(wheel, timeout, limit) for _ in range(100)]
            await asyncio.sleep(0.03)
        spread = loop.time() - started
        assert wheel.timers <= spread / (limit / GRAIN) + 2
        assert wheel.waiting == 1000
        for deadline in deadlines:
            deadline.cancel()
        assert wheel.timers == wheel.waiting == 0
    assert timeout.expired() is False
