"""The key store's calls as the metrics (and, when on, the traces) see them.

`ObservedStore` stands in front of a store and times every call of the `KeyStore` interface
into `relay_store_call_duration_seconds{operation}`, counting failures by kind; given a `span`
factory (`relay.telemetry.traces`), each call is also a span of the request it serves. Its
methods are made from the interface's own list, so a call added there is observed here too;
`observed_call` observes one the interface does not have.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Final, TypeVar

from backends import KeyStore, StoreError, StoreUnavailable
from relay.telemetry.metrics import STORE_DURATION, STORE_ERRORS

__all__ = ["ObservedStore", "SpanFactory", "observed", "observed_call"]

SpanFactory = Callable[[str], contextlib.AbstractContextManager[object]]
"""A span for one store call, given the operation's name."""

_UNOBSERVED: Final = frozenset({"iter_keys"})  # a generator, for the offline commands only
_OBSERVED: Final = sorted(KeyStore.__abstractmethods__ - _UNOBSERVED)
T = TypeVar("T")


class ObservedStore(KeyStore):
    def __init__(self, store: KeyStore, span: SpanFactory | None = None) -> None:
        self.store = store
        for operation in _OBSERVED:  # on the instance: a call is one frame more, not two
            setattr(self, operation, observed_call(operation, getattr(store, operation), span))

    async def iter_keys(self, batch: int = 500) -> AsyncIterator[tuple[str, str, bytes]]:
        async for item in self.store.iter_keys(batch):
            yield item

    async def close(self) -> None:
        await self.store.close()


def observed(store: KeyStore, span: SpanFactory | None = None) -> KeyStore:
    """`store`, observed."""
    return ObservedStore(store, span)  # type: ignore[abstract]  # its calls are its instance's


def observed_call(
    operation: str, call: Callable[..., Coroutine[Any, Any, T]], span: SpanFactory | None = None
) -> Callable[..., Coroutine[Any, Any, T]]:
    """`call`, observed as the store's `operation`: for a call a store makes outside the
    `KeyStore` interface (the rate limiter's reservation on the store's own Redis)."""
    duration = STORE_DURATION.labels(operation)
    unavailable = STORE_ERRORS.labels(operation, "unavailable")
    failed = STORE_ERRORS.labels(operation, "error")

    async def observed(*args: Any, **kwargs: Any) -> T:
        started = time.perf_counter()
        try:
            if span is None:
                return await call(*args, **kwargs)
            with span(operation):
                return await call(*args, **kwargs)
        except StoreUnavailable:
            unavailable.inc()
            raise
        except StoreError:
            failed.inc()
            raise
        finally:
            duration.observe(time.perf_counter() - started)

    observed.__name__ = observed.__qualname__ = operation
    return observed


ObservedStore.__abstractmethods__ = frozenset()  # each instance has them all
