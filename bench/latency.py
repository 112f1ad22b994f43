"""Added latency of the relay at one connection: the first, partial step of the benchmark.

    .venv/bin/python bench/latency.py [--requests N] [--quick]

Starts, all on 127.0.0.1: a small upstream (uvicorn, one fixed JSON answer), the relay as
`byok-relay serve` (one worker, SQLite, in-memory limits) pointed at it, then sends N small
chat-completion requests one after another, straight to the upstream and through the relay,
interleaved so both see the same machine noise. Prints p50/p90/p99 of each and the difference,
and writes the figures as JSON to bench/results/. Only differences are meaningful: these
machines are shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
).encode()
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(ANSWER)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": ANSWER})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_upstream() -> tuple[uvicorn.Server, str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            upstream,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{port}"


def start_relay(upstream_url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "ENCRYPTION_SECRET": "bench-encryption-secret-0123456789abcdef",
        "DATABASE_URL": f"sqlite:///{workdir}/relay.db",
        "RELAY_OPENAI_BASE_URL": upstream_url,
        "RATE_LIMIT_GLOBAL": "100000000/minute",
        "RATE_LIMIT_RELAY": "100000000/minute",
        "LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--port", str(port)],
        cwd=workdir,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the relay did not start")


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "p50_ms": round(at(0.50), 3),
        "p90_ms": round(at(0.90), 3),
        "p99_ms": round(at(0.99), 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


async def measure(direct: str, relay: str, token: str, requests: int) -> dict[str, Any]:
    timings: dict[str, list[float]] = {"direct": [], "relay": []}
    targets = {
        "direct": (direct + "/v1/chat/completions", {"authorization": "Bearer x"}),
        "relay": (relay + "/relay/openai/v1/chat/completions", {"x-relay-token": token}),
    }
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(50):  # warm both paths: connections, caches, prepared statements
            for url, headers in targets.values():
                await client.post(url, content=BODY, headers=headers)
        for _ in range(requests):
            for name, (url, headers) in targets.items():
                started = time.perf_counter()
                response = await client.post(url, content=BODY, headers=headers)
                timings[name].append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
    result: dict[str, Any] = {name: percentiles(t) for name, t in timings.items()}
    result["added"] = {
        k: round(result["relay"][k] - result["direct"][k], 3) for k in result["direct"]
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 requests, for a smoke run")
    args = parser.parse_args()
    requests = 200 if args.quick else args.requests
    upstream_server, upstream_url = start_upstream()
    with tempfile.TemporaryDirectory() as tmp:
        relay, relay_url = start_relay(upstream_url, Path(tmp))
        try:
            token = httpx.post(relay_url + "/users", json={"app_id": "bench"}).json()["token"]
            httpx.post(
                relay_url + "/keys/openai",
                json={"key": "sk-bench-" + "0" * 32},
                headers={"x-relay-token": token},
            ).raise_for_status()
            result = asyncio.run(measure(upstream_url, relay_url, token, requests))
        finally:
            relay.terminate()
            relay.wait(timeout=15)
    upstream_server.should_exit = True
    result["requests"] = requests
    result["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(f"small JSON, 1 connection, {requests} requests each (ms)")
    print(f"{'':8}{'p50':>9}{'p90':>9}{'p99':>9}{'mean':>9}")
    for name in ("direct", "relay", "added"):
        row = result[name]
        print(
            f"{name:8}"
            + "".join(f"{row[k]:>9.3f}" for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"))
        )
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"latency-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
