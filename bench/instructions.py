"""Instructions per relayed request, counted by valgrind: a figure machine noise cannot move.

    python -m bench.instructions [--requests N] [--warm N] [--env NAME=VALUE ...]

Timings on a shared 2-core machine move by 10 to 30% from run to run, which hides the change a
single optimisation makes. `valgrind --tool=callgrind` counts the instructions a process runs
instead: the same code, inputs and environment give the same count, whatever else the machine
is doing. This starts the mock upstream, then the floor and the relay in turn, each under
callgrind; sends 100 small-JSON requests to warm it up (`--warm`), zeroes the counters, sends
N more (default 300) one after another, and prints the instructions each server spent per
request (all of its threads, background tasks included) and the relay's count against the
floor's; `--env` gives the relay settings of its own (what a feature costs:
`RELAY_METRICS=off` against the default). It does not see what threads cost each other
(callgrind runs them one at a time), nor cache misses: it measures work, and timings measure
the rest. One thing in the relay's count
still follows the clock: usage records are written once a second, and under callgrind a second
holds a few dozen requests, not thousands, so how many requests share a write's cost moves the
relay's count by a few percent between runs (1.13 to 1.18 M on one code).
About a minute per server: Python under callgrind runs some 50 times slower.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path
from typing import Final

import httpx

from bench.processes import Children, raise_file_limit
from bench.servers import Server, create_user, start_floor, start_relay, start_upstream
from bench.suite import CHAT_BODY

__all__ = ["main", "measure"]

PATH: Final = "/relay/openai/v1/chat/completions"
STARTUP: Final = 600  # seconds a server may take to start under callgrind


def _callgrind(out: Path) -> list[str]:
    """The command a server's Python runs inside: callgrind, counting into `out`."""
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]


def _count(server: Server, out: Path, headers: dict[str, str], requests: int, warm: int) -> float:
    """Instructions per request over `requests` sequential requests, after `warm` more."""
    headers = {**headers, "content-type": "application/json"}
    base_url = f"http://127.0.0.1:{server.port}"
    pid = str(server.process.pid)
    with httpx.Client(base_url=base_url, timeout=120, trust_env=False) as client:

        def send(count: int) -> None:
            for _ in range(count):
                response = client.post(PATH, content=CHAT_BODY, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"{server.name} answered {response.status_code}")

        send(warm)
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        send(requests)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
    # The dump `-d` asked for: the first after the file callgrind writes when the process ends.
    dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda f: f.stat().st_mtime)
    for line in dumps[0].read_text().splitlines() if dumps else []:
        if line.startswith("summary:"):
            return int(line.split()[1]) / requests
    raise RuntimeError(f"callgrind left no count for {server.name}")


def measure(
    requests: int, warm: int = 100, env: dict[str, str] | None = None, capped: bool = False
) -> dict[str, float]:
    """Instructions per request of the floor and of the relay (with `env` added to its
    settings), each alone under callgrind."""
    counts: dict[str, float] = {}
    children = Children()
    try:
        upstream = start_upstream(children)
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            out = workdir / "floor.callgrind"
            floor = start_floor(children, upstream, under=_callgrind(out), timeout=STARTUP)
            counts["floor"] = _count(floor, out, {}, requests, warm)
            children.stop(floor.process)
            out = workdir / "relay.callgrind"
            relay = start_relay(
                children,
                upstream,
                workdir,
                workers=1,
                under=_callgrind(out),
                timeout=STARTUP,
                env=env,
            )
            token = create_user(relay, capped)
            counts["relay"] = _count(relay, out, {"x-relay-token": token}, requests, warm)
    finally:
        children.close()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="requests counted (300)")
    parser.add_argument("--warm", type=int, default=100, help="requests before counting (100)")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the relay's (repeatable)",
    )
    parser.add_argument(
        "--capped", action="store_true", help="with spending caps and a narrow token in use"
    )
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    raise_file_limit()
    counts = measure(args.requests, args.warm, env, args.capped)
    for name, count in counts.items():
        print(f"{name:6s} {count / 1e6:.3f} M instructions per small-JSON request")
    print(f"relay / floor: {counts['relay'] / counts['floor']:.3f}x the instructions")


if __name__ == "__main__":
    main()
