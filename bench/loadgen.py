"""The asyncio load generator, run as child processes: `python -m bench.loadgen JOB`.

A job is one JSON object; the child prints one JSON object back. Kinds of job (`mode`):

- `load`: C keep-alive connections, each sending one request after another, for `seconds` or
  until `requests` are sent. Answers counts and a latency histogram (merged across children).
- `interleaved`: one connection per target; every round sends one request to each target in
  turn, so that all of them see the same machine noise. Answers, per target, the percentiles of
  the whole exchange and of the time to the first body byte (for SSE: the first frame).
- `streams`: K SSE streams, opened at an even pace over `open_seconds` and held to the end.
  Every frame is checked: its sequence number (lost, repeated, out of order) and its lateness,
  the arrival time minus the `due` time the upstream stamped on it; a frame more than one
  interval late arrived after the next one was due, and the stream is not clean. Answers counts
  and, per stream, when its first frame and its end arrived.

`run_jobs` is the parent's side: it starts one child per job and gathers their answers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import httptools
import uvloop

from bench.client import Connection
from bench.figures import bucket, sample_summary
from bench.processes import Children, raise_file_limit

__all__ = ["main", "run_jobs"]

FAILURES = (OSError, TimeoutError, httptools.HttpParserError)


async def load(job: dict[str, Any]) -> dict[str, Any]:
    port, raw = job["port"], job["request"].encode("latin-1")
    remaining = job.get("requests") or math.inf
    deadline = time.monotonic() + (job.get("seconds") or math.inf)
    histogram: collections.Counter[int] = collections.Counter()
    sent = errors = 0

    async def connection() -> None:
        nonlocal remaining, sent, errors
        conn: Connection | None = None
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            sent += 1
            try:
                if conn is None or conn.closed:
                    conn = await Connection.open(port)
                response = await conn.request(raw)
            except FAILURES:
                errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                continue
            histogram[bucket(response.done - response.sent)] += 1
            if response.status != 200:
                errors += 1
        if conn is not None:
            conn.close()

    started = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(job["connections"])))
    return {
        "requests": sent,
        "errors": errors,
        "seconds": time.monotonic() - started,
        "histogram": histogram,
    }


async def interleaved(job: dict[str, Any]) -> dict[str, Any]:
    targets = job["targets"]
    raws = [target["request"].encode("latin-1") for target in targets]
    conns = [await Connection.open(target["port"]) for target in targets]
    totals: list[list[float]] = [[] for _ in targets]
    firsts: list[list[float]] = [[] for _ in targets]
    for round_ in range(job["warmup"] + job["requests"]):
        for i, target in enumerate(targets):
            if conns[i].closed:
                conns[i] = await Connection.open(target["port"])
            response = await conns[i].request(raws[i])
            if response.status != 200:
                raise RuntimeError(f"{target['name']} answered {response.status}")
            if round_ >= job["warmup"]:
                totals[i].append(response.done - response.sent)
                firsts[i].append((response.first_body or response.done) - response.sent)
    for conn in conns:
        conn.close()
    return {
        target["name"]: {
            "total": sample_summary(totals[i]),
            "first_byte": sample_summary(firsts[i]),
        }
        for i, target in enumerate(targets)
    }


class StreamCheck:
    """The verdict on one SSE stream."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.lost = self.out_of_order = self.late = 0
        self.max_late = 0.0
        self.first = self.end = math.nan

    @property
    def clean(self) -> bool:
        return self.error is None and not (self.lost or self.out_of_order or self.late)

    def check(self, frames: Sequence[tuple[float, bytes]], expected: int, interval: float) -> None:
        seqs: list[int] = []
        done = False
        for arrival, data in frames:
            if data == b"data: [DONE]":
                done = True
                continue
            try:
                event = json.loads(data.removeprefix(b"data: "))
                seq, due = event["seq"], event["due"]
            except (ValueError, KeyError, TypeError):  # the relay's `event: error`, or worse
                self.error = self.error or "unexpected frame: " + data[:80].decode("latin-1")
                continue
            seqs.append(seq)
            lateness = arrival - due
            self.max_late = max(self.max_late, lateness)
            if lateness > interval:
                self.late += 1
        if frames:
            self.first, self.end = frames[0][0], frames[-1][0]
        self.lost = expected - len(set(seqs) & set(range(expected)))
        self.out_of_order = sum(b <= a for a, b in itertools.pairwise(seqs))
        if not done and self.error is None:
            self.error = "no [DONE]"


async def streams(job: dict[str, Any]) -> dict[str, Any]:
    port, raw = job["port"], job["request"].encode("latin-1")
    count, frames, interval = job["streams"], job["frames"], job["interval_ms"] / 1000
    timeout = frames * interval + job["open_seconds"] + 30

    async def stream(delay: float) -> StreamCheck:
        await asyncio.sleep(delay)
        result = StreamCheck()
        conn: Connection | None = None
        try:
            conn = await asyncio.wait_for(Connection.open(port), timeout)
            response = await asyncio.wait_for(conn.request(raw, frames=True), timeout)
        except FAILURES as exc:
            result.error = type(exc).__name__ + (f": {exc}" if str(exc) else "")
            return result
        finally:
            if conn is not None:
                conn.close()
        if response.status != 200:
            result.error = f"status {response.status}"
        assert response.frames is not None
        result.check(response.frames, frames, interval)
        return result

    pace = job["open_seconds"] / count
    checks = await asyncio.gather(*(stream(i * pace) for i in range(count)))
    errors = collections.Counter(c.error for c in checks if c.error is not None)
    return {
        "streams": count,
        "clean": sum(c.clean for c in checks),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors.most_common(5)),
        "lost_frames": sum(c.lost for c in checks),
        "out_of_order_frames": sum(c.out_of_order for c in checks),
        "late_frames": sum(c.late for c in checks),
        "max_late_ms": round(max((c.max_late for c in checks), default=0.0) * 1000, 3),
        "first_frames": [c.first for c in checks if c.error is None],
        "ends": [c.end for c in checks if c.error is None],
    }


MODES = {"load": load, "interleaved": interleaved, "streams": streams}


async def run(job: dict[str, Any]) -> dict[str, Any]:
    """The job, within its `timeout` (a hung server ends the child instead of the run)."""
    async with asyncio.timeout(job.get("timeout", 600)):
        return await MODES[job["mode"]](job)


def run_jobs(
    children: Children, jobs: Sequence[dict[str, Any]], tick: Callable[[], None] | None = None
) -> list[dict[str, Any]]:
    """Run each job in a child of its own, all at once; call `tick` every 0.1 s meanwhile."""
    with contextlib.ExitStack() as stack:
        outputs = [stack.enter_context(tempfile.TemporaryFile()) for _ in jobs]
        processes = [
            children.start([sys.executable, "-m", "bench.loadgen", json.dumps(job)], stdout=output)
            for job, output in zip(jobs, outputs, strict=True)
        ]
        for process in processes:
            stack.callback(children.stop, process)
        while any(process.poll() is None for process in processes):
            if tick is not None:
                tick()
            time.sleep(0.1)
        results = []
        for process, output in zip(processes, outputs, strict=True):
            if process.returncode != 0:
                raise RuntimeError(f"load generator exited with status {process.returncode}")
            output.seek(0)
            results.append(json.loads(output.read()))
        return results


def main() -> None:
    raise_file_limit()
    job = json.loads(sys.argv[1])
    result = uvloop.run(run(job))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
