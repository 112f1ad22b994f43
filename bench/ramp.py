"""The SSE stream ramp: how many concurrent streams the relay holds cleanly, and at what memory.

Steps of K streams (250, 500, 1000, 2000, 3000, ... up to `--max-streams`), each K spread over
two load generator children and opened at an even pace. A stream is clean when every frame
arrives, in order, none more than one interval after the upstream meant to send it (so never
after the next one was due); a step is held when every stream is clean and all K were open at
one moment. The ramp stops at the first step the relay does not hold.
"""

from __future__ import annotations

import collections
from typing import Any

from bench.loadgen import run_jobs
from bench.processes import open_fds, rss_bytes
from bench.servers import log_entries
from bench.suite import Bench, log_summary, progress

__all__ = ["ramp"]


def _peak_open(firsts: list[float], ends: list[float]) -> int:
    """The most streams in progress (first frame received, end not yet) at any one moment."""
    events = sorted([(t, 1) for t in firsts] + [(t, -1) for t in ends])
    peak = current = 0
    for _, change in events:
        current += change
        peak = max(peak, current)
    return peak


def hold_streams(
    bench: Bench, name: str, streams: int, interval_ms: int, idle_rss: int
) -> dict[str, Any]:
    """`streams` SSE streams to `name`, over two generator children: are they all held
    cleanly? The server's resident memory is sampled meanwhile."""
    frames = bench.plan.ramp_frames
    target = bench.targets(True, f"?frames={frames}&interval_ms={interval_ms}")[name]
    open_seconds = streams / bench.plan.open_rate
    lasts = frames * interval_ms / 1000 + open_seconds
    shares = [share for share in (streams // 2, (streams + 1) // 2) if share]
    jobs = [
        {
            "mode": "streams",
            **target.job(),
            "streams": share,
            "frames": frames,
            "interval_ms": interval_ms,
            "open_seconds": open_seconds,
            "timeout": lasts + 120,
        }
        for share in shares
    ]
    pid = bench.servers()[name].process.pid
    peak = idle_rss

    def sample() -> None:
        nonlocal peak
        peak = max(peak, rss_bytes(pid))

    results = run_jobs(bench.children, jobs, sample)
    kinds: collections.Counter[str] = collections.Counter()
    for r in results:
        kinds.update(r["error_kinds"])
    merged: dict[str, Any] = {
        key: sum(r[key] for r in results)
        for key in ("clean", "errors", "lost_frames", "out_of_order_frames", "late_frames")
    }
    merged["error_kinds"] = dict(kinds.most_common(5))
    merged["max_late_ms"] = max(r["max_late_ms"] for r in results)
    firsts = [t for r in results for t in r["first_frames"]]
    merged["peak_open"] = _peak_open(firsts, [t for r in results for t in r["ends"]])
    merged["held"] = merged["clean"] == streams and merged["peak_open"] == streams
    merged["rss_peak_bytes"] = peak
    merged["kib_per_stream"] = round((peak - idle_rss) / streams / 1024, 2)
    return merged


def _verdict(run: dict[str, Any]) -> str:
    if run["held"]:
        return "held"
    return (
        f"NOT held ({run['clean']} clean, {run['errors']} errors, {run['lost_frames']} lost, "
        f"{run['late_frames']} late frames)"
    )


def ramp(bench: Bench) -> dict[str, Any]:
    """More and more concurrent SSE streams through the relay until they are not held cleanly
    (an error; a lost, repeated, out-of-order or late frame; streams never all open at once)
    or the cap is reached. Direct and the floor run at the first step, the last and the one the
    relay failed: direct shows that the generator and the mock could hold those, the floor what
    the same stack holds without the relay's work. The servers' resident
    memory is sampled while they hold the streams."""
    plan = bench.plan
    idle = {name: rss_bytes(server.process.pid) for name, server in bench.servers().items()}
    relay_pid = bench.relay.process.pid
    result: dict[str, Any] = {
        "frames": plan.ramp_frames,
        "open_rate": plan.open_rate,
        "idle_rss_bytes": idle,
        "relay_fds": {"before": open_fds(relay_pid)},
        "steps": [],
        "held": {"direct": 0, "floor": 0, "relay": 0},
        "stopped_by": "cap",
        "kib_per_stream": None,
    }
    steps = plan.ramp_steps()
    for index, streams in enumerate(steps):
        interval = plan.interval_ms(streams)
        step: dict[str, Any] = {"streams": streams, "interval_ms": interval}
        logged = len(log_entries(bench.relay.log))
        step["relay"] = relay = hold_streams(bench, "relay", streams, interval, idle["relay"])
        relay["log"] = log_summary(log_entries(bench.relay.log)[logged:])
        if index in (0, len(steps) - 1) or not relay["held"]:
            # The floor too: how much of the memory per stream is the stack's, not the relay's.
            for name in ("direct", "floor"):
                step[name] = hold_streams(bench, name, streams, interval, idle[name])
        result["steps"].append(step)
        shown = "".join(
            f", {name} {_verdict(step[name])} ({step[name]['kib_per_stream']} KiB/stream)"
            for name in ("floor", "direct")
            if name in step
        )
        progress(
            f"{streams} streams, a frame every {interval} ms: relay {_verdict(relay)}, "
            f"max {relay['max_late_ms']:.0f} ms late, {relay['kib_per_stream']} KiB/stream{shown}"
        )
        if relay["held"]:
            result["held"]["relay"] = streams
            result["kib_per_stream"] = relay["kib_per_stream"]
        for name in ("direct", "floor"):
            if name in step and step[name]["held"]:
                result["held"][name] = streams
        if not relay["held"]:
            result["stopped_by"] = "relay" if step["direct"]["held"] else "direct failed too"
            break
    # Every stream has ended: what the relay still holds (pooled upstream connections).
    result["relay_fds"]["after"] = open_fds(relay_pid)
    result["relay_rss_after_bytes"] = rss_bytes(relay_pid)
    return result
