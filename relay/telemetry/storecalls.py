"""The key store's calls as the metrics (and, when on, the traces) see them.

`ObservedStore` stands in front of a store and times every call of the `KeyStore` interface
into `relay_store_call_duration_seconds{operation}`, counting failures by kind; given a `span`
factory (`relay.telemetry.traces`), each call is also a span of the request it serves. Its
methods are made from the interface's own list, so a call added there is observed here too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Final

from backends import KeyStore, StoreError, StoreUnavailable
from relay.telemetry.metrics import STORE_DURATION, STORE_ERRORS

__all__ = ["ObservedStore", "SpanFactory", "observed"]

SpanFactory = Callable[[str], contextlib.AbstractContextManager[object]]
"""A span for one store call, given the operation's name."""

_UNOBSERVED: Final = frozenset({"iter_keys"})  # a generator, for the offline commands only


class ObservedStore(KeyStore):
    def __init__(self, store: KeyStore, span: SpanFactory | None = None) -> None:
        self.store = store
        self.span = span

    async def iter_keys(self, batch: int = 500) -> AsyncIterator[tuple[str, str, bytes]]:
        async for item in self.store.iter_keys(batch):
            yield item

    async def close(self) -> None:
        await self.store.close()


def observed(store: KeyStore, span: SpanFactory | None = None) -> KeyStore:
    """`store`, observed."""
    return ObservedStore(store, span)  # type: ignore[abstract]  # its calls are set below


def _observed(operation: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    duration = STORE_DURATION.labels(operation)
    unavailable = STORE_ERRORS.labels(operation, "unavailable")
    failed = STORE_ERRORS.labels(operation, "error")

    async def call(self: ObservedStore, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.store, operation)
        started = time.perf_counter()
        try:
            if self.span is None:
                return await method(*args, **kwargs)
            with self.span(operation):
                return await method(*args, **kwargs)
        except StoreUnavailable:
            unavailable.inc()
            raise
        except StoreError:
            failed.inc()
            raise
        finally:
            duration.observe(time.perf_counter() - started)

    call.__name__ = call.__qualname__ = operation
    return call


for _operation in sorted(KeyStore.__abstractmethods__ - _UNOBSERVED):
    setattr(ObservedStore, _operation, _observed(_operation))
ObservedStore.__abstractmethods__ = frozenset()
