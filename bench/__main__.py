"""`python -m bench`: the relay against a floor proxy and the bare upstream, in one run.

Starts, all on 127.0.0.1 and each in a process of its own: a mock OpenAI upstream
(`bench.upstream`), the relay as production runs it (`python -m relay serve`, SQLite), and a
minimal Starlette proxy over the relay's own upstream client (`bench.floor`). Load comes from
wrk for the throughput rows when it is installed, and otherwise, and for everything else, from
the asyncio generator (`bench.loadgen`) in child processes. `--quick` always uses the asyncio
generator, so a machine without wrk runs the same path, and sizes everything down to seconds.

Sections: small JSON and 20-chunk SSE at 1, 16 and 64 connections; added latency and time to
first byte at one connection, interleaved with direct requests; server CPU time per request;
a ramp of concurrent SSE streams until one is not held cleanly, with the relay's resident memory
per stream; one worker against two; how long one hostile request body stalls the event loop
(`bench.stalls`). The report ends with the targets, passed or failed. The
figures are printed and written as JSON to bench/results/<timestamp>.json (or `--out`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

from bench import suite
from bench.processes import Children, Role, parse_cpus, raise_file_limit
from bench.ramp import ramp
from bench.report import machine, render, targets
from bench.stalls import stalls
from bench.wrk import wrk_version

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_list(text: str) -> frozenset[int]:
    try:
        return parse_cpus(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of every section")
    parser.add_argument("--workers", type=int, default=1, help="relay workers (default 1)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per throughput run")
    parser.add_argument(
        "--max-streams", type=int, help="where the stream ramp stops (default 6000; quick 50)"
    )
    parser.add_argument("--out", type=Path, help="the JSON file to write")
    parser.add_argument(
        "--capped",
        action="store_true",
        help="relay with the owner's spending caps set, through a narrow token with a budget",
    )
    parser.add_argument(
        "--relay-cpus",
        type=cpu_list,
        metavar="LIST",
        help="CPUs for the servers under test, the relay and the floor (e.g. 0-1; default any)",
    )
    parser.add_argument(
        "--load-cpus",
        type=cpu_list,
        metavar="LIST",
        help="CPUs for wrk, the load generators and the mock upstream (e.g. 2-3; default any)",
    )
    return parser.parse_args()


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        plan = suite.Plan.smoke(args.max_streams or 50)
        wrk = None
    else:
        plan = suite.Plan.full(args.duration, args.max_streams or 6000)
        wrk = shutil.which("wrk")
    started = time.monotonic()
    result: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick": plan.quick,
        "machine": machine(),
        "generator": {
            "throughput": wrk_version(wrk) if wrk else "asyncio (bench.loadgen)",
            "other": "asyncio (bench.loadgen)",
        },
        "relay_workers": args.workers,
        "capped": args.capped,
        "plan": dataclasses.asdict(plan) | {"ramp_steps": plan.ramp_steps()},
    }
    placement: dict[Role, frozenset[int]] = {}
    if args.relay_cpus:
        placement["server"] = args.relay_cpus
    if args.load_cpus:
        placement["load"] = args.load_cpus
    result["placement"] = {role: sorted(cpus) for role, cpus in placement.items()}
    children = Children(placement)
    with tempfile.TemporaryDirectory(prefix="byok-bench-") as workdir:
        try:
            bench = suite.Bench(plan, children, Path(workdir), args.workers, wrk, args.capped)
            suite.progress(f"servers up; throughput from {result['generator']['throughput']}")
            suite.warm_up(bench)
            result["small_json"] = suite.throughput(bench, stream=False)
            result["sse"] = suite.throughput(bench, stream=True)
            result["small_json_latency"] = suite.latency(bench, stream=False)
            result["sse_latency"] = suite.latency(bench, stream=True)
            result["cpu"] = suite.cpu(bench)
            result["ramp"] = ramp(bench)
            result["workers"] = suite.workers(bench)
            result["stalls"] = stalls(children, bench.upstream, Path(workdir), plan.stall_bytes)
            result["relay_log"] = suite.log_summary(bench.relay_log())
        finally:
            children.close()
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.monotonic() - started, 1)
    result["targets"] = targets(result)
    return result


def terminate(signum: int, frame: object) -> NoReturn:
    sys.exit(128 + signum)  # unwinds through `finally`: every child is stopped


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, terminate)
    raise_file_limit()  # inherited by the relay
    try:
        result = run(args)
    except KeyboardInterrupt:
        sys.exit("interrupted; every server and generator was stopped")
    out: Path = args.out or RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
