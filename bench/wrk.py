"""Throughput with wrk (github.com/wg/wrk), when it is installed.

A Lua script sets the POST body and headers, and its `done` hook prints the summary as one JSON
line (requests, errors of every kind, p50 and p99 from wrk's own latency histogram), so nothing
depends on wrk's human-readable report.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Final

from bench.client import Target
from bench.processes import Children

__all__ = ["run_wrk", "wrk_version"]

DONE_HOOK: Final = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests":%d,"errors":%d,"seconds":%.6f,"p50_ms":%.3f,"p99_ms":%.3f,"mean_ms":%.3f}\\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.mean / 1000))
end
"""


def script(target: Target) -> str:
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{target.body}]==]"]
    headers = {**target.headers, "content-type": "application/json"}
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    return "\n".join(lines) + "\n" + DONE_HOOK


def wrk_version(wrk: str) -> str:
    """`wrk 4.1.0` or the like (wrk prints its version in its usage text)."""
    run = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    return " ".join((run.stdout + run.stderr).split()[:2])


def run_wrk(
    children: Children, wrk: str, target: Target, connections: int, seconds: int
) -> dict[str, Any]:
    """`connections` connections for `seconds` against `target`; one wrk thread per core used."""
    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "post.lua"
        lua.write_text(script(target))
        threads = min(connections, 2)
        url = f"http://127.0.0.1:{target.port}{target.path}"
        args = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
        process = children.start([*args, "--latency", "-s", str(lua), url], stdout=subprocess.PIPE)
        try:
            out, _ = process.communicate(timeout=seconds + 60)
        finally:
            children.stop(process)
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited with status {process.returncode}")
    summary: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    summary["rps"] = round(summary["requests"] / summary["seconds"], 1)
    return summary
