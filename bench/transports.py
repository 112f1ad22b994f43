"""`python -m bench.transports`: the upstream transports that keep httpx's API, side by side.

    .venv/bin/python -m bench.transports [--duration S] [--connections N] [--rounds R]

Starts the mock upstream and one floor proxy (`bench.floor`) per transport in `TRANSPORTS` whose
package is installed, then loads each with wrk (required here), small JSON, the floors taken in
turn round after round so they share the machine's noise. Prints requests per second and
p50/p99 per transport, and the ratio to the relay's own, and writes the figures as JSON to
bench/results/. This is how the relay's transport was chosen (docs/performance.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from bench.client import Target
from bench.floor import TRANSPORTS
from bench.processes import Children
from bench.servers import Server, announced, start_upstream
from bench.suite import CHAT_BODY
from bench.wrk import run_wrk

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = {"httpx-aiohttp": "httpx_aiohttp"}
PATH = "/relay/openai/v1/chat/completions"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.transports", description=__doc__)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("bench.transports needs wrk (apt-get install wrk)")
    names = [
        name
        for name in TRANSPORTS
        if name not in PACKAGES or importlib.util.find_spec(PACKAGES[name]) is not None
    ]
    children = Children()
    try:
        upstream = start_upstream(children)
        floors: dict[str, Server] = {
            name: announced(
                children, name, ["bench.floor", f"http://127.0.0.1:{upstream.port}", name]
            )
            for name in names
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name, floor in floors.items():
                target = Target(
                    name, floor.port, "/relay/openai/v1/chat/completions", {}, CHAT_BODY
                )
                runs[name].append(run_wrk(children, wrk, target, args.connections, args.duration))
    finally:
        children.close()
    result = {
        name: {
            "rps": round(statistics.fmean(run["rps"] for run in done), 1),
            "p50_ms": round(statistics.median(run["p50_ms"] for run in done), 3),
            "p99_ms": round(statistics.median(run["p99_ms"] for run in done), 3),
            "runs": done,
        }
        for name, done in runs.items()
    }
    print(f"small JSON through a minimal Starlette proxy, {args.connections} connections")
    print(f"{'transport':<16}{'requests/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'vs relay':>10}")
    for name, row in result.items():
        ratio = row["rps"] / result["relay"]["rps"]
        print(
            f"{name:<16}{row['rps']:>12,.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
            f"{ratio:>9.2f}x"
        )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"transports-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
