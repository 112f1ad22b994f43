"""What a run measures with (`Plan`, `Bench`: the servers and the two load generators), and
its sections but the stream ramp (`bench.ramp`); each section returns JSON-ready figures.

Every measurement is taken for the three targets in the same run, one right after the other:
`direct` (the mock upstream itself), `floor` (the minimal Starlette proxy) and `relay`. On a
shared machine only their ratios and differences mean much, so the report puts every relay
figure next to direct.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from bench.client import Target
from bench.figures import histogram_summary, merge_histograms
from bench.loadgen import run_jobs
from bench.processes import Children, cpu_by_process, cpu_seconds, machine_ticks
from bench.servers import (
    BENCH_KEY,
    Server,
    create_user,
    log_entries,
    start_floor,
    start_relay,
    start_upstream,
)
from bench.wrk import run_wrk

__all__ = [
    "Bench",
    "Plan",
    "cpu",
    "latency",
    "log_summary",
    "progress",
    "throughput",
    "warm_up",
    "workers",
]

CONNECTIONS: Final = (1, 16, 64)
SSE_QUERY: Final = "?frames=20&interval_ms=0"
MESSAGES: Final = [{"role": "user", "content": "hi"}]
COMPACT: Final = (",", ":")
CHAT_BODY: Final = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}, separators=COMPACT)
STREAM_BODY: Final = json.dumps(
    {"model": "gpt-4o-mini", "stream": True, "messages": MESSAGES}, separators=COMPACT
)
CPU_CONNECTIONS: Final = 16
DIRECT_CPU_FACTOR: Final = 5
SCALING_CONNECTIONS: Final = 64


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much of everything: a full run takes minutes, a `--quick` one seconds."""

    quick: bool
    duration: int  # seconds per throughput run (wrk, or the asyncio generator without wrk)
    fixed_requests: int | None  # quick: requests per throughput run, instead of a duration
    latency_requests: int  # interleaved rounds at one connection
    warmup: int
    cpu_requests: int
    ramp_frames: int
    open_rate: float  # ramp streams opened per second
    max_streams: int
    stall_bytes: int  # the size of each hostile body (bench.stalls)

    @classmethod
    def full(cls, duration: int, max_streams: int) -> Plan:
        return cls(
            quick=False,
            duration=duration,
            fixed_requests=None,
            latency_requests=2000,
            warmup=100,
            cpu_requests=10_000,
            ramp_frames=20,
            open_rate=500,
            max_streams=max_streams,
            stall_bytes=10 * 1024 * 1024 - 4096,  # the default body limit, less the headroom
        )

    @classmethod
    def smoke(cls, max_streams: int) -> Plan:
        return cls(
            quick=True,
            duration=1,
            fixed_requests=300,
            latency_requests=100,
            warmup=20,
            cpu_requests=1000,
            ramp_frames=5,
            open_rate=500,
            max_streams=max_streams,
            stall_bytes=256 * 1024,
        )

    def ramp_steps(self) -> list[int]:
        """Stream counts to try, in order; the last one is always `max_streams`."""
        base = [25] if self.quick else [250, 500, 1000, 2000, *range(3000, self.max_streams, 1000)]
        return [k for k in base if k < self.max_streams] + [self.max_streams]

    def interval_ms(self, streams: int) -> int:
        """The gap between frames: 250 ms at least, and in a full run long enough that the
        first stream is still open three seconds after the last one opened."""
        if self.quick:
            return 250
        needed = (streams / self.open_rate + 3) * 1000 / self.ramp_frames
        return max(250, math.ceil(needed / 50) * 50)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    """The servers under test, the relay user, and the two ways of generating load."""

    def __init__(
        self,
        plan: Plan,
        children: Children,
        workdir: Path,
        workers: int,
        wrk: str | None,
        capped: bool = False,
    ) -> None:
        self.plan = plan
        self.children = children
        self.workdir = workdir
        self.wrk = wrk
        self.upstream = start_upstream(children)
        self.floor = start_floor(children, self.upstream)
        self.relay = start_relay(children, self.upstream, workdir, workers)
        self.token = create_user(self.relay, capped)

    def servers(self) -> dict[str, Server]:
        return {"direct": self.upstream, "floor": self.floor, "relay": self.relay}

    def targets(self, stream: bool, query: str = "") -> dict[str, Target]:
        body = STREAM_BODY if stream else CHAT_BODY
        relay_path = "/relay/openai/v1/chat/completions" + query
        return {
            "direct": Target(
                "direct",
                self.upstream.port,
                "/v1/chat/completions" + query,
                {"authorization": f"Bearer {BENCH_KEY}"},
                body,
            ),
            "floor": Target("floor", self.floor.port, relay_path, {}, body),
            "relay": Target(
                "relay", self.relay.port, relay_path, {"x-relay-token": self.token}, body
            ),
        }

    def load(
        self, target: Target, connections: int, *, requests: int | None, seconds: int | None
    ) -> dict[str, Any]:
        """The asyncio generator, its connections split over two children (one for one)."""
        shares = [connections] if connections == 1 else [connections // 2, (connections + 1) // 2]
        jobs = [
            {
                "mode": "load",
                **target.job(),
                "connections": share,
                "requests": requests and math.ceil(requests * share / connections),
                "seconds": seconds,
            }
            for share in shares
        ]
        results = run_jobs(self.children, jobs)
        done = sum(r["requests"] for r in results)
        elapsed = max(r["seconds"] for r in results)
        return {
            "requests": done,
            "errors": sum(r["errors"] for r in results),
            "seconds": round(elapsed, 3),
            "rps": round(done / elapsed, 1),
            **histogram_summary(merge_histograms(r["histogram"] for r in results)),
        }

    def throughput(self, target: Target, connections: int) -> dict[str, Any]:
        if self.wrk is not None:
            return run_wrk(self.children, self.wrk, target, connections, self.plan.duration)
        if self.plan.fixed_requests is not None:
            return self.load(target, connections, requests=self.plan.fixed_requests, seconds=None)
        return self.load(target, connections, requests=None, seconds=self.plan.duration)

    def restart_relay(self, workers: int) -> Server:
        """A fresh relay with `workers` workers, on the same store, in place of the current."""
        self.children.stop(self.relay.process)
        self.relay = start_relay(self.children, self.upstream, self.workdir, workers)
        return self.relay

    def relay_log(self) -> list[dict[str, Any]]:
        """Every line every relay of this run logged (warnings and up)."""
        logs = sorted(self.workdir.glob("relay-*.log"))
        return [entry for log in logs for entry in log_entries(log)]


def log_summary(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The most frequent (level, message) pairs, with their counts."""
    counts = collections.Counter((e.get("level", "?"), e.get("message", "")) for e in entries)
    return [{"level": lv, "message": m, "count": n} for (lv, m), n in counts.most_common(5)]


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _difference(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {key: round(a[key] - b[key], 3) for key in a}


def warm_up(bench: Bench) -> None:
    """Connections, caches and code paths, before anything is measured."""
    for stream, query in ((False, ""), (True, SSE_QUERY)):
        for target in bench.targets(stream, query).values():
            bench.load(target, 16, requests=bench.plan.warmup * 10, seconds=None)


def throughput(bench: Bench, stream: bool) -> list[dict[str, Any]]:
    """Requests per second and latency at 1, 16 and 64 connections, for every target."""
    targets = bench.targets(stream, SSE_QUERY if stream else "")
    rows = []
    for connections in CONNECTIONS:
        row: dict[str, Any] = {"connections": connections}
        for name, target in targets.items():
            row[name] = bench.throughput(target, connections)
        rows.append(row)
        kind = "SSE" if stream else "small JSON"
        rates = ", ".join(f"{name} {row[name]['rps']:,.0f}/s" for name in targets)
        progress(f"{kind}, {connections} connection(s): {rates}")
    return rows


def latency(bench: Bench, stream: bool) -> dict[str, Any]:
    """One connection per target, requests interleaved; the floor's and the relay's added
    latency (whole exchange, and time to the first body byte) over direct."""
    targets = bench.targets(stream, SSE_QUERY if stream else "")
    job = {
        "mode": "interleaved",
        "targets": [target.job() for target in targets.values()],
        "requests": bench.plan.latency_requests,
        "warmup": bench.plan.warmup,
    }
    [result] = run_jobs(bench.children, [job])
    for name in ("floor", "relay"):
        result[name]["added"] = {
            kind: _difference(result[name][kind], result["direct"][kind])
            for kind in ("total", "first_byte")
        }
    result["requests"] = bench.plan.latency_requests
    added = result["relay"]["added"]["total"]
    kind = "SSE" if stream else "small JSON"
    progress(f"{kind} at 1 connection: relay adds {added['p50_ms']} ms p50, {added['p99_ms']} p99")
    return result


def cpu(bench: Bench) -> dict[str, Any]:
    """Server CPU time (user + system, all its processes) per small-JSON request: the mock's
    during direct runs, the floor's and the relay's during theirs. /proc counts CPU time in
    ticks (10 ms), so the mock, some 40 times cheaper, gets five times as many requests."""
    result: dict[str, Any] = {"connections": CPU_CONNECTIONS}
    servers = bench.servers()
    for name, target in bench.targets(False).items():
        requests = bench.plan.cpu_requests * (DIRECT_CPU_FACTOR if name == "direct" else 1)
        pid = servers[name].process.pid
        before = cpu_seconds(pid)
        run = bench.load(target, CPU_CONNECTIONS, requests=requests, seconds=None)
        used = cpu_seconds(pid) - before
        result[name] = {
            "requests": run["requests"],
            "us_per_request": round(used / run["requests"] * 1e6, 1),
            "rps": run["rps"],
            "errors": run["errors"],
        }
    relay = result["relay"]["us_per_request"]
    result["relay_over_direct"] = _ratio(relay, result["direct"]["us_per_request"])
    result["relay_over_floor"] = _ratio(relay, result["floor"]["us_per_request"])
    progress(
        "CPU per request: "
        + ", ".join(f"{name} {result[name]['us_per_request']} µs" for name in servers)
    )
    return result


def _scaling_run(bench: Bench, relay: Server) -> dict[str, Any]:
    """Small JSON at 64 connections through `relay`, with how many cores each relay process
    kept busy (the supervisor's near-zero share left out) and how busy the machine was (relay,
    mock and generator share its cores), or the relay's own CPUs when it was given some."""
    target = bench.targets(False)["relay"]
    cpus = bench.children.placement.get("server")  # the relay's CPUs, when it has its own
    cpu_before, (busy_before, total_before) = cpu_by_process(relay.process.pid), machine_ticks(cpus)
    started = time.monotonic()
    run = bench.throughput(target, SCALING_CONNECTIONS)
    elapsed = time.monotonic() - started
    cpu_after, (busy_after, total_after) = cpu_by_process(relay.process.pid), machine_ticks(cpus)
    cores = [(cpu_after[pid] - cpu_before.get(pid, 0.0)) / elapsed for pid in cpu_after]
    run["relay_cores"] = sorted((round(c, 2) for c in cores if c > 0.01), reverse=True)
    total = total_after - total_before
    run["machine_busy"] = round((busy_after - busy_before) / total, 3) if total else None
    return run


def workers(bench: Bench) -> dict[str, Any]:
    """Small JSON at 64 connections: first through the relay that ran every section so far
    (what the ramp left behind shows), then through a fresh relay with one worker and a fresh
    one with two, on the same store."""
    result: dict[str, Any] = {
        "connections": SCALING_CONNECTIONS,
        "after_ramp": _scaling_run(bench, bench.relay) | {"workers": bench.relay.workers},
    }
    for count in (1, 2):
        relay = bench.restart_relay(count)
        bench.load(bench.targets(False)["relay"], 16, requests=bench.plan.warmup * 10, seconds=None)
        result[f"workers_{count}"] = _scaling_run(bench, relay)
    one, two = result["workers_1"], result["workers_2"]
    result["ratio"] = _ratio(two["rps"], one["rps"])
    # What one worker leaves idle of the CPUs it runs on (all the machine's, shared with wrk,
    # the mock and the kernel, unless placed) is all a second can take: 2 workers serve at
    # most 1 / (those CPUs' busy share with 1).
    result["ceiling"] = round(1 / one["machine_busy"], 3) if one["machine_busy"] else None
    result["per_core"] = _ratio(
        two["rps"] / max(sum(two["relay_cores"]), 0.01),
        one["rps"] / max(sum(one["relay_cores"]), 0.01),
    )
    progress(
        f"workers: 2 serve {result['ratio']}x what 1 does (at most {result['ceiling']}x here; "
        f"{result['per_core']}x per relay core)"
    )
    return result
