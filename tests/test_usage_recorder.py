"""The usage recorder: what a flush promises the endpoint that asks for it (`GET /stats` and
`GET /usage` flush first, so that the caller's latest request is counted)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest

import backends
from backends import KeyStore, StoreError, StoreUnavailable, UsageRecord, User
from backends.migrate import upgrade
from relay.usage.recorder import BATCH, UsageRecorder

pytestmark = [pytest.mark.sqlite, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[KeyStore]:
    """A SQLite store with users u1 and u2."""
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    await anyio.to_thread.run_sync(upgrade, url)
    opened = backends.open_store(url)
    for user in ("u1", "u2"):
        await opened.create_user(User(user, "app", int(time.time() * 1000)), user * 32)
    yield opened
    await opened.close()


async def test_a_flush_returns_only_once_a_write_under_way_is_stored(store: KeyStore) -> None:
    now = int(time.time() * 1000)
    recorder = UsageRecorder(store)
    record = UsageRecord("u1", "app", "openai", "gpt-4o", 200, 5, False, 1, 1, now)
    for _ in range(3):
        recorder.add(record)
    # The background round takes the queue and starts writing; a request's flush comes next.
    background = asyncio.get_running_loop().create_task(recorder.flush())
    await asyncio.sleep(0)
    await recorder.flush()
    assert (await store.usage_stats(now, user_id="u1")).total == 3
    await background


async def test_a_record_the_store_refuses_costs_no_other(store: KeyStore) -> None:
    now = int(time.time() * 1000)
    recorder = UsageRecorder(store)
    good = UsageRecord("u1", "app", "openai", "gpt-4o", 200, 5, False, 1, 1, now)
    refused = dataclasses.replace(good, user_id="u2", model="lone\ud800")  # no UTF-8 for it
    for record in (good, refused, good):
        recorder.add(record)
    await recorder.flush()
    assert (await store.usage_stats(now, user_id="u1")).total == 2
    assert (await store.usage_stats(now, user_id="u2")).total == 0


async def test_the_recorder_outlives_an_error_its_store_did_not_translate(
    store: KeyStore,
) -> None:
    now = int(time.time() * 1000)
    real, calls = store.record_usage, []

    async def once_broken(records: Sequence[UsageRecord]) -> None:
        calls.append(len(records))
        if len(calls) == 1:
            raise RuntimeError("a driver's error the store let through")
        await real(records)

    store.record_usage = once_broken  # type: ignore[method-assign]
    recorder = UsageRecorder(store)
    await recorder.start()
    record = UsageRecord("u1", "app", "openai", "gpt-4o", 200, 5, False, 1, 1, now)
    for _ in range(BATCH):  # a full batch wakes the writer at once: its write fails
        recorder.add(record)
    with anyio.fail_after(5):
        while not calls:
            await asyncio.sleep(0.01)
    for _ in range(BATCH):  # the next is written all the same
        recorder.add(record)
    with anyio.fail_after(5):
        while (await store.usage_stats(now, user_id="u1")).total < BATCH:
            await asyncio.sleep(0.01)
    await recorder.close()
    assert (await store.usage_stats(now, user_id="u1")).total == BATCH


async def test_a_refused_batch_is_not_tried_record_by_record_into_an_outage(
    store: KeyStore,
) -> None:
    calls: list[int] = []

    async def refused_then_down(records: Sequence[UsageRecord]) -> None:
        calls.append(len(records))
        raise StoreError("refused") if len(calls) == 1 else StoreUnavailable("down")

    store.record_usage = refused_then_down  # type: ignore[method-assign]
    recorder = UsageRecorder(store)
    now = int(time.time() * 1000)
    for _ in range(BATCH):
        recorder.add(UsageRecord("u1", "app", "openai", "gpt-4o", 200, 5, False, 1, 1, now))
    await recorder.flush()
    assert calls == [BATCH, 1]  # the batch, then the first record alone: the rest is dropped
