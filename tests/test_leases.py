"""Spending caps reserved ahead (`relay.proxy.leases`), on real stores: a fast counter makes
few store round trips, a slow one reserves exactly, nothing held is ever lost or lets a limit
pass, on one process or two sharing a store."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

import backends
from backends import DAY_MS, Charge, KeyStore, StoreError, StoreUnavailable, User, migrate
from backends.breaker import BreakerStore
from relay.proxy import leases as leases_module
from relay.proxy.leases import MOST_AHEAD, SHARE, Leases
from relay.security.auth import now_ms
from relay.usage.background import Background
from tests import servers
from tests.servers import PrivatePostgres, PrivateStore

pytestmark = pytest.mark.anyio

USER = "user-1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _quick_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases_module, "IDLE", 0.3)


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    namespace = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'x.db'}"
        await asyncio.to_thread(migrate.upgrade, url)
        opened = backends.open_store(url)
    elif request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        await servers.truncate(url)
        opened = backends.open_store(url)
    else:
        namespace = servers.new_namespace()
        url = request.getfixturevalue("redis_url")
        opened = backends.open_store(url, backends.StoreOptions(namespace=namespace))
    await opened.create_user(User(id=USER, app_id="app", created_at=now_ms()), "digest-" + USER)
    try:
        yield opened
    finally:
        await opened.close()
        if namespace is not None:
            await asyncio.to_thread(servers.drop_namespace, namespace)


class Trips:
    """Counts the store's reservations, and which of them a caller of `Leases.reserve` waited
    on (the rest were top-ups, run as tasks of their own); passes each on to the store."""

    def __init__(self, store: KeyStore) -> None:
        self.count = 0
        self.tasks: list[asyncio.Task[object] | None] = []
        real = store.reserve

        async def reserve(user_id: str, charges: list[Charge], now: int) -> int | None:
            self.count += 1
            self.tasks.append(asyncio.current_task())
            return await real(user_id, charges, now)

        store.reserve = reserve  # type: ignore[method-assign]

    def waited(self) -> int:
        return self.tasks.count(asyncio.current_task())


@pytest.fixture
async def leases(store: KeyStore) -> AsyncIterator[Leases]:
    background = Background()
    held = Leases(store, background)
    held.start()
    try:
        yield held
    finally:
        await held.close()
        await background.close()


def charge(counter: str, amount: int, limit: int) -> Charge:
    return Charge(counter, amount, limit, now_ms() + DAY_MS)


async def counted(store: KeyStore, *counters: str) -> dict[str, int]:
    return await store.spent(USER, list(counters), now_ms())


async def reads(
    read: Callable[[], Awaitable[dict[str, int]]], expected: dict[str, int], within: float = 5
) -> None:
    """Waits, `within` seconds at most, for `read` to give `expected`: what goes back to the
    store goes off any request's path, in its own time."""
    deadline = time.monotonic() + within
    while (found := await read()) != expected:
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.02)


async def settled(background: Background) -> None:
    await asyncio.sleep(0)
    await background.close()  # waits for the settling tasks spawned so far


async def test_a_slow_counter_is_reserved_exactly(
    store: KeyStore, leases: Leases, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leases_module, "AHEAD", 0.1)  # slow: below ten requests a second
    trips = Trips(store)
    for _ in range(5):
        assert await leases.reserve(USER, [charge("a", 10, 1000)], now_ms()) is None
    assert trips.count == 5
    assert await counted(store, "a") == {"a": 50}


async def test_a_fast_counter_takes_ahead_and_reserves_from_what_it_holds(
    store: KeyStore, leases: Leases
) -> None:
    trips = Trips(store)
    requests = 400
    for _ in range(requests):
        assert await leases.reserve(USER, [charge("a", 10, 10**9)], now_ms()) is None
    assert trips.count < requests / 4
    held = (await counted(store, "a"))["a"] - requests * 10
    assert 0 < held <= MOST_AHEAD * 10
    # This process's own view leaves out what it holds; the store counts it until it is back.
    assert await leases.spent(USER, ["a"], now_ms()) == {"a": requests * 10}
    await reads(lambda: counted(store, "a"), {"a": requests * 10})  # given back when idle


async def test_at_a_steady_rate_no_request_waits_on_the_store(
    store: KeyStore, leases: Leases
) -> None:
    trips = Trips(store)
    requests = 300
    for _ in range(requests):
        assert await leases.reserve(USER, [charge("a", 10, 10**9)], now_ms()) is None
        await asyncio.sleep(0.002)  # requests a few milliseconds apart
    assert trips.count < requests / 4
    # The first requests took from the store; once the rate was known, top-ups came in time.
    assert trips.waited() < 10
    assert trips.count - trips.waited() > 0
    await reads(lambda: counted(store, "a"), {"a": requests * 10})


async def test_a_request_waits_for_a_top_up_on_its_way_rather_than_be_refused(
    store: KeyStore, leases: Leases
) -> None:
    passed = 0
    for _ in range(100):  # no pause: the top-ups are still on their way when needed
        passed += await leases.reserve(USER, [charge("a", 1, 100)], now_ms()) is None
    assert passed == 100
    assert await counted(store, "a") == {"a": 100}


async def test_a_process_holds_at_most_a_sixteenth_of_a_limit_ahead(
    store: KeyStore, leases: Leases
) -> None:
    for _ in range(300):
        assert await leases.reserve(USER, [charge("a", 1, 16_000)], now_ms()) is None
    await asyncio.sleep(0.05)  # the last top-up in
    assert 300 < (await counted(store, "a"))["a"] <= 300 + 16_000 // SHARE


async def test_what_a_request_did_not_spend_serves_the_next_one(
    store: KeyStore, leases: Leases
) -> None:
    trips = Trips(store)
    assert await leases.reserve(USER, [charge("a", 100, 1000)], now_ms()) is None
    leases.settle(USER, [("a", -70)])  # it spent 30
    assert await leases.reserve(USER, [charge("a", 60, 1000)], now_ms()) is None
    assert trips.count == 1
    leases.settle(USER, [("a", 5)])  # spent beyond its reservation: taken from what is held
    await reads(lambda: counted(store, "a"), {"a": 30 + 60 + 5})


async def test_a_spend_beyond_what_is_held_reaches_the_store(store: KeyStore) -> None:
    background = Background()
    leases = Leases(store, background)
    assert await leases.reserve(USER, [charge("a", 10, 1000)], now_ms()) is None
    leases.settle(USER, [("a", 25), ("gone", -3)])
    await settled(background)
    assert await counted(store, "a", "gone") == {"a": 35}


async def test_a_refused_request_holds_nothing_and_names_its_charge(
    store: KeyStore, leases: Leases
) -> None:
    assert await leases.reserve(USER, [charge("a", 1, 100), charge("b", 6, 10)], now_ms()) is None
    refused = await leases.reserve(USER, [charge("a", 1, 100), charge("b", 6, 10)], now_ms())
    assert refused == 1
    assert await leases.reserve(USER, [charge("a", 99, 100)], now_ms()) is None
    assert await counted(store, "a", "b") == {"a": 100, "b": 6}


async def test_near_a_limit_a_fast_counter_reserves_exactly_and_fills_it(
    store: KeyStore, leases: Leases
) -> None:
    passed = 0
    for _ in range(200):
        passed += await leases.reserve(USER, [charge("a", 7, 1000)], now_ms()) is None
    assert passed == 1000 // 7  # what was taken ahead never kept a request out
    assert (await counted(store, "a"))["a"] <= 1000


async def test_a_counter_two_caps_share_is_charged_twice_and_never_passes_its_limit(
    store: KeyStore, leases: Leases
) -> None:
    # Two of the owner's caps of one scope and period name one counter; each request spends 1
    # less than it reserved, so what is held is no multiple of what a request takes.
    passed = 0
    for _ in range(200):
        twice = [charge("a", 7, 336), charge("a", 7, 336)]
        if await leases.reserve(USER, twice, now_ms()) is None:
            passed += 1
            leases.settle(USER, [("a", -1)])
    assert passed >= (336 - 14) // 13  # what was held ahead never kept a request out
    await reads(lambda: counted(store, "a"), {"a": passed * 13})  # what was held goes back
    assert passed * 13 <= 336


async def test_a_changed_limit_gives_back_what_was_held_under_the_old_one(
    store: KeyStore, leases: Leases
) -> None:
    for _ in range(100):
        assert await leases.reserve(USER, [charge("a", 1, 10**6)], now_ms()) is None
    assert (await counted(store, "a"))["a"] > 100
    assert await leases.reserve(USER, [charge("a", 1, 101)], now_ms()) is None
    assert await leases.reserve(USER, [charge("a", 1, 101)], now_ms()) == 0
    assert await counted(store, "a") == {"a": 101}


async def test_a_changed_limit_gives_back_what_was_held_even_for_a_charge_of_nothing(
    store: KeyStore, leases: Leases
) -> None:
    for _ in range(100):
        assert await leases.reserve(USER, [charge("a", 1, 10**6)], now_ms()) is None
    await asyncio.sleep(0.05)  # any top-up in
    assert await leases.reserve(USER, [charge("a", 0, 10**5)], now_ms()) is None
    # Back before being idle would have sent it back.
    await reads(lambda: counted(store, "a"), {"a": 100}, within=leases_module.IDLE * 0.8)


async def test_a_request_refused_by_the_store_puts_back_what_it_took_from_what_was_held(
    store: KeyStore, leases: Leases
) -> None:
    for _ in range(100):
        assert await leases.reserve(USER, [charge("a", 1, 10**6)], now_ms()) is None
    with pytest.raises(StoreError):  # the store's failures are the caller's
        await leases.reserve("nobody", [charge("a", 1, 10)], now_ms())
    # "a" is held, "b" must come from the store, which refuses it.
    assert await leases.reserve(USER, [charge("a", 1, 10**6), charge("b", 11, 10)], now_ms()) == 1
    assert await leases.reserve(USER, [charge("a", 1, 10**6)], now_ms()) is None
    # What "a" gave the refused request was put back: only the 101 that passed are spent.
    await reads(lambda: leases.spent(USER, ["a", "b"], now_ms()), {"a": 101})


async def test_a_user_whose_requests_are_all_refused_holds_nothing_after_idle(
    store: KeyStore, leases: Leases
) -> None:
    for _ in range(100):
        assert await leases.reserve(USER, [charge("a", 1, 10**6)], now_ms()) is None
    assert (await counted(store, "a"))["a"] > 100  # held ahead
    # From now on every request is refused ("b" is past its limit), and they keep coming.
    for _ in range(int(leases_module.IDLE * 3 / 0.01)):
        assert await leases.reserve(USER, [charge("a", 1, 10**6), charge("b", 9, 5)], now_ms())
        await asyncio.sleep(0.01)
    assert await counted(store, "a") == {"a": 100}  # what was held went back, while refused


async def test_stopping_gives_back_everything_held(store: KeyStore) -> None:
    background = Background()
    leases = Leases(store, background)
    for _ in range(100):
        assert await leases.reserve(USER, [charge("a", 1, 10**6)], now_ms()) is None
    assert (await counted(store, "a"))["a"] > 100
    await leases.close()
    await background.close()
    assert await counted(store, "a") == {"a": 100}


async def test_two_processes_on_one_store_never_pass_a_limit_together(store: KeyStore) -> None:
    backgrounds = [Background(), Background()]
    both = [Leases(store, background) for background in backgrounds]
    results: list[int | None] = []

    async def one(leases: Leases) -> None:
        charges = [charge("day", 1, 10**6), charge("n", 3, 600)]
        results.append(await leases.reserve(USER, charges, now_ms()))

    await asyncio.gather(*(one(both[i % 2]) for i in range(400)))
    assert results.count(None) <= 200
    for leases, background in zip(both, backgrounds, strict=True):
        await leases.close()
        await background.close()
    assert await counted(store, "day", "n") == {
        "day": results.count(None),
        "n": 3 * results.count(None),
    }


async def test_while_the_store_is_down_top_ups_back_off_and_requests_use_what_is_held(
    server: PrivateStore, caplog: pytest.LogCaptureFixture
) -> None:
    if isinstance(server, PrivatePostgres):
        await asyncio.to_thread(migrate.upgrade, server.url)
    opened = backends.open_store(server.url, backends.StoreOptions(connect_timeout=0.3))
    store = BreakerStore(opened)  # as the relay runs it: once a call times out, calls fail at once
    background = Background()
    leases = Leases(store, background)
    caplog.set_level(logging.WARNING, logger="relay")
    try:
        await store.create_user(User(id=USER, app_id="app", created_at=now_ms()), "digest")
        for _ in range(100):  # fast: a good part of a second's requests is held ahead
            assert await leases.reserve(USER, [charge("a", 1, 10**9)], now_ms()) is None
            await asyncio.sleep(0.002)
        trips = Trips(store)
        server.freeze()
        with pytest.raises(StoreUnavailable):  # times out, and opens the breaker
            await store.spent(USER, ["a"], now_ms())
        served = failed = 0
        started = time.monotonic()
        try:
            for _ in range(150):
                try:
                    served += await leases.reserve(USER, [charge("a", 1, 10**9)], now_ms()) is None
                except StoreError:
                    failed += 1
                await asyncio.sleep(0.002)
        finally:
            server.thaw()
        took = time.monotonic() - started
        assert served > 20  # from what was held, while the store did not answer
        assert served + failed == 150
        # A top-up each IDLE at most: not one (nor a warning) for each request that found what
        # was held running low.
        top_ups = trips.count - trips.waited()
        most = 1 + took / leases_module.IDLE
        assert 1 <= top_ups <= most, (top_ups, took)
        warnings = [r for r in caplog.records if "cap top-up failed" in r.getMessage()]
        assert len(warnings) == top_ups
    finally:
        await leases.close()
        await background.close()
        await store.close()


def test_the_rate_counts_whole_seconds() -> None:
    held, lease = leases_module._Held(), leases_module._Lease(limit=10**6, expires_at=0)
    held.use(0.0)
    assert held.ahead(lease, 5, 0.5) == 0  # one a second: too slow to take ahead
    for at in (0.1, 0.2, 0.9):
        held.use(at)
    assert held.ahead(lease, 5, 0.9) == int(4 * leases_module.AHEAD) * 5
    for i in range(40):
        held.use(1.0 + i / 100)
    assert held.ahead(lease, 5, 1.5) == int(40 * leases_module.AHEAD) * 5
    held.use(3.5)  # a quiet second between: the rate starts again
    assert held.rate == 0
