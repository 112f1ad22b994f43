"""Spending caps reserved ahead: while a user's requests come fast, a process takes from the
store a little more of each counter than the request in hand needs, reserves the next requests
from what it holds, in memory, and tops that up off the request path before it runs out, so
that at a steady rate no capped request waits on the store.

The store still decides every amount: a process only ever holds what the store's atomic
`KeyStore.reserve` let it take, so the counters never pass their limits, on any number of
instances. What a process holds but has not used counts as spent until it is given back: after
`IDLE` seconds without use, when the cap's limit changes, when the process stops (a crashed one
gives it back only when the period ends). A user's counters used slowly are reserved one
request at a time, exactly as if there were no leases; a counter refused the extra, or whose
top-up failed (the store down), is reserved exactly for `IDLE`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Final

from backends import Charge, KeyStore
from relay.security.auth import now_ms
from relay.server.ratelimit import Deferred
from relay.usage.background import Background

__all__ = ["AHEAD", "IDLE", "MOST_AHEAD", "SHARE", "Leases"]

logger = logging.getLogger("relay")

IDLE: Final = 1.0
"""Seconds a lease may sit unused before what it holds goes back to the store."""
AHEAD: Final = 0.5
"""Seconds of a counter's requests (at its rate over the last second) taken ahead."""
MOST_AHEAD: Final = 1024
"""Requests' worth taken ahead at most."""
SHARE: Final = 16
"""A process takes ahead at most 1/SHARE of a limit: near a cap, others are never kept out long."""


@dataclasses.dataclass(slots=True)
class _Lease:
    """What this process holds of one counter."""

    limit: int
    expires_at: int
    left: int = 0
    """Taken from the store's counter and not reserved by a request of this process yet."""
    exact_until: float = 0.0
    """Until then (monotonic), reserve exactly: taking more was refused, or failed."""
    low: int = 0
    """Below this a top-up is taken, off the request path: half of what was last taken ahead."""
    topping_up: asyncio.Future[None] | None = None
    """Done when the top-up of this lease on its way from the store has come (or failed)."""

    def wants_top_up(self) -> bool:
        """Below half of what it takes ahead, with no top-up on its way."""
        return self.left < self.low and self.topping_up is None


@dataclasses.dataclass(slots=True)
class _Held:
    """What this process holds of one user's counters, and how fast the user's requests come."""

    leases: dict[str, _Lease] = dataclasses.field(default_factory=dict)
    used: float = 0.0
    """When a request last reserved (monotonic): one refused (429, 402) keeps nothing held."""
    second: float = 0.0
    """When the second now being counted began (monotonic)."""
    count: int = 0
    """Reservations in that second."""
    rate: int = 0
    """Reservations in the second before it."""

    def use(self, at: float) -> None:
        """Count a request at `at` in the rate, reserved or not."""
        if at - self.second >= 1.0:
            self.rate = self.count if at - self.second < 2.0 else 0
            self.second, self.count = at, 0
        self.count += 1

    def ahead(self, lease: _Lease, amount: int, at: float) -> int:
        """How much more than `amount` to take for `lease`."""
        if at < lease.exact_until:
            return 0
        ahead = min(MOST_AHEAD, int(max(self.rate, self.count) * AHEAD)) * amount
        return min(ahead, lease.limit // SHARE)


def _from_held(
    leases: dict[str, _Lease], charges: Sequence[Charge]
) -> list[tuple[str, _Lease, int]] | None:
    """Every charge taken whole from `leases`, in order (a counter may be charged twice);
    None, and nothing taken, when one is not held in full under its limit."""
    taken: list[tuple[str, _Lease, int]] = []
    for charge in charges:
        lease = leases.get(charge.counter)
        if lease is None or lease.limit != charge.limit or lease.left < charge.amount:
            for _, earlier, part in taken:
                earlier.left += part
            return None
        lease.left -= charge.amount
        taken.append((charge.counter, lease, charge.amount))
    return taken


class Leases:
    """`reserve`, `settle` and `spent` as on `KeyStore`, through what this process holds."""

    def __init__(self, store: KeyStore, background: Background) -> None:
        self._store = store
        self._background = background
        self._held: dict[str, _Held] = {}
        self._ticking: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._ticking = asyncio.get_running_loop().create_task(self._tick())

    async def reserve(
        self, user_id: str, charges: Sequence[Charge], now: int, hit: Deferred | None = None
    ) -> int | None:
        """As `KeyStore.reserve`: None when every charge was reserved, else the index of the
        (first) one that could pass its limit, and nothing reserved. `hit`: the request's
        rate-limit hit, counted first (its 429 reserves nothing), in the store's round trip
        when the request needs one."""
        at = time.monotonic()
        held = self._held.get(user_id)
        if held is None:
            held = self._held[user_id] = _Held()
        held.use(at)
        leases = held.leases
        held_taken = _from_held(leases, charges)
        if held_taken is not None:  # the steady state: everything was held
            await self._reserved_held(user_id, held, charges, held_taken, at, now, hit)
            return None
        taken: list[tuple[str, _Lease, int]] = []
        short: list[tuple[int, Charge, int]] = []  # (index, charge, what the lease lacked)
        stale: list[tuple[str, int]] = []  # held under a limit since changed: goes back first
        arriving: list[asyncio.Future[None]] = []
        running_low = False
        for index, charge in enumerate(charges):
            counter = charge.counter
            lease = leases.get(counter)
            if lease is None or lease.limit != charge.limit:
                if lease is not None:  # taken under the earlier limit: it goes back
                    if lease.left:
                        stale.append((counter, -lease.left))
                    if lease.topping_up is not None:
                        arriving.append(lease.topping_up)  # back it goes as it comes
                lease = leases[counter] = _Lease(charge.limit, charge.expires_at)
            part = min(lease.left, charge.amount)
            lease.left -= part
            taken.append((counter, lease, part))
            if lease.wants_top_up():
                running_low = True
            if part < charge.amount:
                short.append((index, charge, charge.amount - part))
                if lease.topping_up is not None:
                    arriving.append(lease.topping_up)
        extras = [0] * len(short)
        granted = False
        try:
            if stale:  # before more is asked for, lest it be refused for what went back
                await asyncio.shield(self._store.settle(user_id, stale))
            if arriving:  # what this process is about to hold may be enough: wait for it first
                await asyncio.wait(arriving)
            elif short:
                extras = [held.ahead(taken[i][1], charge.amount, at) for i, charge, _ in short]
                refused = await self._take(user_id, short, extras, now, hit)
                if refused is not None and any(extras):
                    taken[short[refused][0]][1].exact_until = at + IDLE
                    extras = [0] * len(short)
                    refused = await self._take(user_id, short, extras, now, hit)
                if refused is not None:
                    return short[refused][0]
            elif hit is not None:
                await hit.count()
            granted = not arriving
        finally:
            if not granted:  # refused, failed, cancelled or waited: what the leases gave goes back
                for counter, lease, part in taken:
                    self._credit(user_id, counter, lease, part)
        if arriving:
            return await self.reserve(user_id, charges, now, hit)
        held.used = at
        for (index, _, _), extra in zip(short, extras, strict=True):
            counter, lease, _ = taken[index]
            lease.low = extra // 2
            if extra:
                self._credit(user_id, counter, lease, extra)
        if running_low and not short:
            self._top_up(user_id, held, charges, taken, at, now)
        return None

    async def _reserved_held(
        self, user_id: str, held: _Held, charges: Sequence[Charge],
        taken: list[tuple[str, _Lease, int]], at: float, now: int, hit: Deferred | None,
    ) -> None:  # fmt: skip
        """`reserve`'s end when `taken` came whole from what this process holds."""
        if hit is not None:
            try:
                await hit.count()
            except BaseException:  # refused (429) or cancelled: what was taken goes back
                for counter, lease, part in taken:
                    self._credit(user_id, counter, lease, part)
                raise
        held.used = at
        for _, lease, _ in taken:
            if lease.wants_top_up():
                self._top_up(user_id, held, charges, taken, at, now)
                break

    def _top_up(
        self, user_id: str, held: _Held, charges: Sequence[Charge],
        taken: list[tuple[str, _Lease, int]], at: float, now: int,
    ) -> None:  # fmt: skip
        """Take more from the store, off the request path, for the leases this request left
        with less than half of what they take ahead: at a steady rate, no request waits."""
        low = []
        for charge, (_, lease, _) in zip(charges, taken, strict=True):
            ahead = held.ahead(lease, charge.amount, at)
            lease.low = ahead // 2
            if lease.wants_top_up():
                low.append((charge._replace(amount=ahead - lease.left), lease))
        if low:
            arrived = asyncio.get_running_loop().create_future()
            for _, lease in low:
                lease.topping_up = arrived
            self._background.spawn(self._topped_up(user_id, low, arrived, at, now), "cap top-up")

    async def _topped_up(
        self, user_id: str, low: list[tuple[Charge, _Lease]], arrived: asyncio.Future[None],
        at: float, now: int,
    ) -> None:  # fmt: skip
        try:
            refused = await self._store.reserve(user_id, [charge for charge, _ in low], now)
            if refused is not None:  # near that limit: no more ahead there for a while
                low[refused][1].exact_until = at + IDLE
                return
            gone = []
            for charge, lease in low:
                if self._lease(user_id, charge.counter) is lease:
                    lease.left += charge.amount
                else:  # given back meanwhile: back this goes too, before anyone waiting goes on
                    gone.append((charge.counter, -charge.amount))
            if gone:
                await self._store.settle(user_id, gone)
        except Exception:  # the store is down: no more top-ups (nor a warning each) for a while
            for _, lease in low:
                lease.exact_until = time.monotonic() + IDLE
            raise
        finally:
            for _, lease in low:
                lease.topping_up = None
            arrived.set_result(None)

    async def _take(
        self, user_id: str, short: list[tuple[int, Charge, int]], extras: list[int], now: int,
        hit: Deferred | None,
    ) -> int | None:  # fmt: skip
        wanted = [
            charge._replace(amount=lacking + extra)
            for (_, charge, lacking), extra in zip(short, extras, strict=True)
        ]
        if hit is not None and hit.pending:
            return await hit.reserve(user_id, wanted, now)
        return await self._store.reserve(user_id, wanted, now)

    def _lease(self, user_id: str, counter: str) -> _Lease | None:
        held = self._held.get(user_id)
        return None if held is None else held.leases.get(counter)

    def settle(self, user_id: str, changes: Sequence[tuple[str, int]]) -> None:
        """As `KeyStore.settle`, off the request path: what a request reserved and did not
        spend joins what this process holds; what it spent beyond is taken from that, or added
        to the store's counter."""
        held = self._held.get(user_id)
        leases = held.leases if held is not None else {}
        rest = []
        for counter, change in changes:
            lease = leases.get(counter)
            if lease is not None and change <= lease.left:
                lease.left -= change
            elif change:
                rest.append((counter, change))
        if rest:
            self._send(user_id, rest, "cap settling")

    async def spent(self, user_id: str, counters: Sequence[str], now: int) -> dict[str, int]:
        """As `KeyStore.spent`, less what this process holds ahead (another's counts as spent
        until it is used or given back)."""
        spent = await self._store.spent(user_id, counters, now)
        for counter, amount in spent.items():
            lease = self._lease(user_id, counter)
            if lease is not None:
                spent[counter] = max(0, amount - lease.left)
        return spent

    def _credit(self, user_id: str, counter: str, lease: _Lease, amount: int) -> None:
        """Put `amount`, taken from the store, into `lease`, or back to the store if the lease
        was given back meanwhile."""
        if self._lease(user_id, counter) is lease:
            lease.left += amount
        elif amount:
            self._send(user_id, [(counter, -amount)], "cap lease")

    def _send(self, user_id: str, changes: list[tuple[str, int]], what: str) -> None:
        """`changes` to the store's counters, off the request path."""
        self._background.spawn(self._store.settle(user_id, changes), what)

    def _idle(self, everything: bool = False) -> dict[str, list[tuple[str, int]]]:
        """Take out the users' holdings that are idle (every one, with `everything`), and the
        leases whose period has ended; what goes back to the store, by user."""
        at, now = time.monotonic(), now_ms()
        idle: dict[str, list[tuple[str, int]]] = {}
        for user_id, held in list(self._held.items()):
            if everything or at - held.used >= IDLE:
                del self._held[user_id]
                changes = [(c, -lease.left) for c, lease in held.leases.items() if lease.left]
                if changes:
                    idle[user_id] = changes
            else:
                for counter, lease in list(held.leases.items()):
                    if lease.expires_at <= now:
                        del held.leases[counter]  # its counter has gone with its period
        return idle

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(IDLE / 2)
            for user_id, changes in self._idle().items():
                self._send(user_id, changes, "cap lease")

    async def close(self) -> None:
        """Give back everything held, and wait for the store to take it."""
        if self._ticking is not None:
            self._ticking.cancel()
        held = self._idle(everything=True)
        results = await asyncio.gather(
            *(self._store.settle(user_id, changes) for user_id, changes in held.items()),
            return_exceptions=True,
        )
        failed = sum(isinstance(r, Exception) for r in results)
        if failed:
            logger.warning(
                "caps: %d users' spending held ahead could not be given back; it counts as "
                "spent until its period ends",
                failed,
            )
