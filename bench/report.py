"""The printed report, and the targets the relay is held to, both read from the result JSON."""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
from collections.abc import Callable
from typing import Any, Final

__all__ = ["machine", "render", "targets"]

NAMES: Final = ("direct", "floor", "relay")
SATURATED: Final = 0.9  # of a core: one relay worker is CPU-bound, the load keeps up


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _get(result: dict[str, Any], *path: str | int) -> Any:
    value: Any = result
    for key in path:
        value = value[key]
    return value


def _row(result: dict[str, Any], section: str, connections: int) -> dict[str, Any]:
    return next(row for row in result[section] if row["connections"] == connections)


@dataclasses.dataclass(frozen=True)
class Goal:
    """A target the relay is held to: `measure(result)` is at most (or at least) `limit`."""

    name: str
    measure: Callable[[dict[str, Any]], float | None]
    limit: float
    at_most: bool
    unit: str = ""
    why: str = ""

    def check(self, result: dict[str, Any]) -> dict[str, Any]:
        value = self.measure(result)
        passed = (
            None
            if value is None
            else (value <= self.limit if self.at_most else value >= self.limit)
        )
        goal = f"{'<=' if self.at_most else '>='} {self.limit:g} {self.unit}".strip()
        return {
            "target": self.name,
            "goal": f"{goal} {self.why}".strip(),
            "measured": None if value is None else round(value, 3),
            "unit": self.unit,
            "pass": passed,
        }


def _rps(result: dict[str, Any], name: str, connections: int = 16) -> float:
    return float(_row(result, "small_json", connections)[name]["rps"])


GOALS: Final = (
    Goal(
        "added latency p50, 1 connection",
        lambda r: _get(r, "small_json_latency", "relay", "added", "total", "p50_ms"),
        0.6,
        at_most=True,
        unit="ms",
    ),
    Goal(
        "added latency p99, 1 connection",
        lambda r: _get(r, "small_json_latency", "relay", "added", "total", "p99_ms"),
        1.2,
        at_most=True,
        unit="ms",
    ),
    Goal(
        "relay rps / floor rps, 16 connections",
        lambda r: _rps(r, "relay") / _rps(r, "floor"),
        0.85,
        at_most=False,
        unit="x",
    ),
    Goal("relay rps, 16 connections", lambda r: _rps(r, "relay"), 2000, at_most=False, unit="/s"),
    Goal(
        "SSE streams held, no loss",
        lambda r: _get(r, "ramp", "held", "relay"),
        2000,
        at_most=False,
    ),
    Goal(
        "added time to first byte p99 (SSE)",
        lambda r: _get(r, "sse_latency", "relay", "added", "first_byte", "p99_ms"),
        2,
        at_most=True,
        unit="ms",
    ),
    Goal(
        "relay RSS per open stream",
        lambda r: _get(r, "ramp", "kib_per_stream"),
        20,
        at_most=True,
        unit="KiB",
    ),
    Goal(
        "2 workers / 1 worker, 64 connections",
        lambda r: _get(r, "workers", "ratio"),
        1.8,
        at_most=False,
        unit="x",
    ),
    Goal(
        "worst event-loop stall, one hostile body",
        lambda r: _get(r, "stalls", "worst_ms"),
        50,
        at_most=True,
        unit="ms",
    ),
    Goal(
        "direct rps / relay rps, 16 connections",
        lambda r: _rps(r, "direct") / _rps(r, "relay"),
        3,
        at_most=False,
        unit="x",
        why="(the mock is no bottleneck)",
    ),
)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal with the measured value and whether it passed (None: not measured)."""
    return [goal.check(result) for goal in GOALS]


def _times(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def _factor(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _throughput(result: dict[str, Any], section: str, title: str) -> list[str]:
    lines = [
        title,
        f"{'conns':>5}" + "".join(f"{n:>26}" for n in NAMES) + "  relay/direct  relay/floor",
    ]
    for row in result[section]:
        cells = "".join(
            f"{row[n]['rps']:>11,.0f}/s {row[n]['p50_ms']:>5.2f} / {row[n]['p99_ms']:<6.2f}"
            for n in NAMES
        )
        errors = sum(row[n]["errors"] for n in NAMES)
        lines.append(
            f"{row['connections']:>5}{cells}"
            f"{_times(row['relay']['rps'], row['direct']['rps']):>14}"
            f"{_times(row['relay']['rps'], row['floor']['rps']):>13}"
            + (f"  ({errors} errors)" if errors else "")
        )
    return lines


def _latency(result: dict[str, Any], section: str, kind: str, label: str) -> str:
    figures = result[section]
    parts = [
        f"direct {figures['direct'][kind]['p50_ms']:.2f} / {figures['direct'][kind]['p99_ms']:.2f}"
    ]
    for name in ("floor", "relay"):
        added = figures[name]["added"][kind]
        parts.append(f"{name} {added['p50_ms']:+.2f} / {added['p99_ms']:+.2f}")
    return f"  {label} (n={figures['requests']}), p50 / p99 ms: " + ", ".join(parts)


def _ramp(ramp: dict[str, Any]) -> list[str]:
    lines = [
        f"SSE stream ramp: {ramp['frames']} frames a stream, opened at {ramp['open_rate']:.0f}/s; "
        "held: every frame, in order, none over one interval late, all streams open at once",
        f"{'streams':>8}{'interval':>10}  {'relay':<44}{'floor':<44}direct",
    ]

    def verdict(run: dict[str, Any] | None, streams: int) -> str:
        if run is None:
            return "-"
        late = f"max {run['max_late_ms']:.0f} ms late"
        if run["held"]:
            return f"held, {late}, {run['kib_per_stream']:.1f} KiB/stream"
        problems = [
            f"{run[key]} {label}"
            for key, label in (("errors", "err"), ("lost_frames", "lost"), ("late_frames", "late"))
            if run[key]
        ]
        if run["peak_open"] < streams:
            problems.append(f"{run['peak_open']} at once")
        return f"NOT: {', '.join(problems)}; {late}"

    for step in ramp["steps"]:
        relay, streams = step["relay"], step["streams"]
        lines.append(
            f"{streams:>8}{step['interval_ms']:>7} ms  {verdict(relay, streams):<44}"
            f"{verdict(step.get('floor'), streams):<44}{verdict(step.get('direct'), streams)}"
        )
        for kind, count in relay["error_kinds"].items():
            lines.append(f"{'':20}relay error x{count}: {kind}")
        for entry in relay["log"]:
            lines.append(f"{'':20}relay log x{entry['count']}: {entry['level']} {entry['message']}")
    held, idle = ramp["held"], ramp["idle_rss_bytes"]
    lines.append(
        f"  largest count held: relay {held['relay']}, floor {held['floor']}, direct "
        f"{held['direct']} (stopped by: {ramp['stopped_by']}); idle RSS: relay "
        f"{idle['relay'] / 2**20:.1f} MiB, floor {idle['floor'] / 2**20:.1f} MiB, "
        f"mock {idle['direct'] / 2**20:.1f} MiB"
    )
    fds = ramp["relay_fds"]
    lines.append(
        f"  once every stream ended, the relay held {fds['after']} open files (before the ramp: "
        f"{fds['before']}) and {ramp['relay_rss_after_bytes'] / 2**20:.1f} MiB"
    )
    return lines


def _workers(result: dict[str, Any]) -> list[str]:
    scaling = result["workers"]
    direct = _row(result, "small_json", scaling["connections"])["direct"]["rps"]
    lines = [
        f"Workers, small JSON at {scaling['connections']} connections "
        f"(direct: {direct:,.0f}/s): 2 workers serve {scaling['ratio']}x what 1 does"
    ]
    after = scaling["after_ramp"]
    runs = [
        (f"the relay after the ramp ({after['workers']} worker(s))", after),
        ("1 worker, fresh", scaling["workers_1"]),
        ("2 workers, fresh", scaling["workers_2"]),
    ]
    where = "its CPUs" if result.get("placement", {}).get("server") else "machine"
    for label, run in runs:
        cores = " + ".join(f"{c:.2f}" for c in run["relay_cores"])
        lines.append(
            f"  {label + ':':<40}{run['rps']:>7,.0f}/s, p99 {run['p99_ms']:>6.1f} ms; relay "
            f"cores busy {cores}; {where} {run['machine_busy']:.0%} busy"
        )
    one = scaling["workers_1"]
    if not scaling.get("ceiling"):
        pass  # a result from before the ceiling was measured
    elif sum(one["relay_cores"]) < SATURATED:
        lines.append(
            f"  one worker kept only {sum(one['relay_cores']):.2f} of a core busy: the load, not "
            "the relay, set this row's pace"
        )
    else:
        lines.append(
            f"  one worker left {1 - one['machine_busy']:.0%} of the {where} idle, all a second "
            f"can take: 2 workers can serve at most {scaling['ceiling']}x here; per relay core "
            f"busy, 2 workers serve {scaling['per_core']}x what 1 does"
        )
    return lines


def _stalls(stalls: dict[str, Any]) -> list[str]:
    lines = [
        f"Event-loop stall while one body is read (GET /version every 5 ms; idle worst "
        f"{stalls['idle_ms']:.0f} ms, taken off):"
    ]
    for name, shape in stalls["shapes"].items():
        lines.append(
            f"  {name:<34}{shape['bytes'] / 1e6:5.1f} MB  {shape['status']}  "
            f"{shape['stall_ms']:6.1f} ms"
        )
    return lines


def _placement(placement: dict[str, list[int]]) -> str:
    if not placement:
        return "CPUs: every process may run on any (servers, generators and mock share them)"
    where = {
        role: ",".join(map(str, placement[role])) if role in placement else "any"
        for role in ("server", "load")
    }
    return f"CPUs: relay and floor on {where['server']}; generators and mock on {where['load']}"


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    cpu = result["cpu"]
    lines = [
        f"byok-relay benchmark, {result['started_at']} ({'quick' if result['quick'] else 'full'} "
        f"run, {result['seconds']:.0f} s)",
        f"machine: {m['cpus']} CPUs, Python {m['python']}, load average "
        f"{' '.join(map(str, m['load_average']))} before, "
        f"{' '.join(map(str, result['load_average_after']))} after",
        f"generators: throughput rows {result['generator']['throughput']}, everything else "
        f"{result['generator']['other']}; relay: workers {result['relay_workers']}, SQLite",
        _placement(result.get("placement", {})),
        "",
        *_throughput(result, "small_json", "Small JSON: requests/s, latency p50 / p99 ms"),
        _latency(
            result, "small_json_latency", "total", "1 connection interleaved, direct and added"
        ),
        "",
        *_throughput(result, "sse", "SSE, 20 chunks: requests/s, latency p50 / p99 ms"),
        _latency(result, "sse_latency", "total", "1 connection interleaved, direct and added"),
        _latency(result, "sse_latency", "first_byte", "time to first byte, direct and added"),
        "",
        *_ramp(result["ramp"]),
        "",
        f"CPU per small-JSON request, {cpu['connections']} connections: direct (mock) "
        f"{cpu['direct']['us_per_request']:.1f} µs ({cpu['direct']['requests']:,} requests), "
        f"floor {cpu['floor']['us_per_request']:.0f} µs, relay {cpu['relay']['us_per_request']:.0f}"
        f" µs ({cpu['relay']['requests']:,} each); relay/mock {_factor(cpu['relay_over_direct'])}, "
        f"relay/floor {_factor(cpu['relay_over_floor'])}",
        *_workers(result),
        "",
        *_stalls(result["stalls"]),
        "",
        "Targets",
    ]
    for t in result["targets"]:
        mark = {True: "PASS", False: "FAIL", None: "n/a"}[t["pass"]]
        value = t["measured"]
        digits = 0 if value is None or abs(value) >= 100 or float(value).is_integer() else 2
        shown = "-" if value is None else f"{value:,.{digits}f} {t['unit']}"
        lines.append(f"  {mark:<5}{t['target']:<42}{t['goal']:<36}{shown.strip()}")
    if result["relay_log"]:
        lines += ["", "Relay log during the run (warnings and up, most frequent first):"]
        lines += [f"  x{e['count']} {e['level']}: {e['message']}" for e in result["relay_log"]]
    return "\n".join(lines)
