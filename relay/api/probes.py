"""`GET /livez` and `GET /readyz`: what an orchestrator asks, answered ahead of the rate limits.

Liveness says the process serves: it touches neither the key store nor Redis, so a store outage
never gets every pod restarted. Readiness says the key store answers and the process is not
draining. The per-IP limit leaves `PATHS` alone (its count may live in Redis and would make a
probe wait on it); in its place the store is asked at most once per `STORE_CHECK_EVERY`,
however many ask.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from backends import KeyStore, StoreError
from relay.api.shapes import answer
from relay.errors import ServiceUnavailable
from relay.services import Services

__all__ = ["PATHS", "STORE_CHECK_EVERY", "Probe", "Probes"]

PATHS: Final = frozenset({"/livez", "/readyz"})
STORE_CHECK_EVERY: Final = 1.0  # seconds a readiness answer about the store stands
NO_STORE: Final = {"cache-control": "no-store"}


class Probe(msgspec.Struct):
    ok: bool


class _StoreCheck:
    """Whether the store answered a ping, asked at most once per `every`: concurrent callers
    wait for the one ping in flight."""

    def __init__(self, every: float) -> None:
        self._every = every
        self._lock = asyncio.Lock()
        self._at = -float("inf")
        self._ok = False

    async def reachable(self, store: KeyStore) -> bool:
        if time.monotonic() - self._at < self._every:
            return self._ok
        async with self._lock:
            if time.monotonic() - self._at >= self._every:
                try:
                    await store.ping()
                    self._ok = True
                except StoreError:  # the breaker logs an outage, once
                    self._ok = False
                self._at = time.monotonic()
            return self._ok


class Probes:
    """The two endpoints, holding the readiness answer of this process's store."""

    def __init__(self, store_check_every: float = STORE_CHECK_EVERY) -> None:
        self._store = _StoreCheck(store_check_every)

    async def livez(self, request: Request) -> Response:
        return answer(Probe(True), headers=NO_STORE)

    async def readyz(self, request: Request) -> Response:
        services: Services = request.state.services
        if services.drain.draining:
            raise ServiceUnavailable(
                "The relay is draining: it takes no new requests",
                code="relay_draining",
                headers={"retry-after": "1", **NO_STORE},
            )
        if not await self._store.reachable(services.store):
            raise ServiceUnavailable(
                "Key store unavailable, try again shortly",
                code="store_unavailable",
                headers={"retry-after": "1", **NO_STORE},
            )
        return answer(Probe(True), headers=NO_STORE)
