"""Memory per open stream, layer by layer: how much of it each part of the stack holds.

    python -m bench.stacks [--streams N] [--quick]

Holds N SSE streams (default 2,000; 8 frames, 3 s apart, all open at once) through each of
these servers in turn, every one on uvicorn with uvloop and httptools and the relay's garbage
collector settings, and prints how much the server's resident memory grew per open stream:

- `uvicorn`: a raw ASGI app that makes the frames itself, with no upstream: the server's cost;
- `transport`: a raw ASGI app relaying the mock's stream through the relay's upstream
  transport (httpx's request and response objects over `relay.upstream.http11` connections);
- `floor`: `bench.floor`, Starlette's `StreamingResponse` over that transport;
- `relay`: `byok-relay serve`, as `python -m bench` runs it.

The first two are served by this module (`python -m bench.stacks serve KIND UPSTREAM_URL`).
`--quick` (20 streams, short frames; a smoke test of the tool, no figure worth reading) is what
the test suite runs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs

import httpx
from starlette.types import Receive, Scope, Send

from bench.client import Target
from bench.floor import serve_announced
from bench.loadgen import run_jobs
from bench.processes import Children, raise_file_limit, rss_bytes
from bench.servers import (
    Server,
    announced,
    create_user,
    start_floor,
    start_relay,
    start_upstream,
)
from bench.suite import STREAM_BODY
from bench.upstream import DONE, FRAME
from relay.server import gcsettings
from relay.upstream.client import new_transport

__all__ = ["main"]

OPEN_RATE: Final = 500  # streams opened per second
LAYERS: Final = ("uvicorn", "transport", "floor", "relay")

App = Callable[[Scope, Receive, Send], Any]


@dataclasses.dataclass(frozen=True)
class Shape:
    streams: int
    frames: int = 8
    interval_ms: int = 3000  # long enough that every stream is open at once
    warm_streams: int = 200  # through each server first, so pools and arenas exist

    @property
    def query(self) -> str:
        return f"?frames={self.frames}&interval_ms={self.interval_ms}"


QUICK: Final = Shape(streams=20, frames=3, interval_ms=300, warm_streams=10)

SSE_START: Final = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/event-stream")],
}


def _layer(kind: str, upstream: str) -> App:
    """The raw ASGI app of one of the layers this module serves."""
    state: dict[str, Any] = {}

    async def startup() -> None:
        if kind == "transport":
            state["transport"] = new_transport()
        gcsettings.settle()

    async def frames(scope: Scope, send: Send) -> None:
        """The frames the query string asks for, as the mock upstream would send them."""
        query = parse_qs(scope["query_string"].decode("latin-1"))
        count, interval = int(query["frames"][0]), int(query["interval_ms"][0]) / 1000
        for seq in range(count):
            await asyncio.sleep(interval)
            last = seq == count - 1
            data = FRAME % (seq, time.monotonic(), seq, b'"stop"' if last else b"null", b"")
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": DONE, "more_body": True})

    async def relayed(scope: Scope, body: bytes, send: Send) -> None:
        url = upstream + "/v1/chat/completions?" + scope["query_string"].decode("latin-1")
        request = httpx.Request("POST", url, content=body)
        answer = await state["transport"].handle_async_request(request)
        await send(SSE_START)
        async for chunk in answer.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await answer.aclose()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await startup()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = (await receive())["body"]
        if kind == "uvicorn":
            await send(SSE_START)
            if scope["method"] == "POST":
                await frames(scope, send)
        else:
            await relayed(scope, body, send)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def hold(children: Children, server: Server, headers: dict[str, str], shape: Shape) -> Held:
    """Warm `server` up, then hold `shape.streams` streams through it, sampling its memory."""
    path = "/relay/openai/v1/chat/completions" + shape.query
    target = Target(server.name, server.port, path, headers, STREAM_BODY)

    def jobs(count: int) -> list[dict[str, Any]]:
        shares = [share for share in (count // 2, (count + 1) // 2) if share]
        return [
            {
                "mode": "streams",
                **target.job(),
                "streams": share,
                "frames": shape.frames,
                "interval_ms": shape.interval_ms,
                "open_seconds": count / OPEN_RATE,
                "timeout": 120,
            }
            for share in shares
        ]

    run_jobs(children, jobs(shape.warm_streams))
    pid = server.process.pid
    idle = peak = rss_bytes(pid)

    def sample() -> None:
        nonlocal peak
        peak = max(peak, rss_bytes(pid))

    results = run_jobs(children, jobs(shape.streams), sample)
    clean = sum(r["clean"] for r in results)
    return Held(server.name, clean, idle, (peak - idle) / shape.streams)


@dataclasses.dataclass(frozen=True)
class Held:
    layer: str
    clean: int  # streams with every frame, in order, on time
    idle_bytes: int
    bytes_per_stream: float

    def __str__(self) -> str:
        return (
            f"{self.layer:10s} {self.bytes_per_stream / 1024:6.1f} KiB/stream   "
            f"idle {self.idle_bytes / 2**20:6.1f} MiB, {self.clean} streams clean"
        )


def measure(shape: Shape) -> list[Held]:
    """Every layer in turn, each alone on the machine with the mock upstream."""
    children = Children()
    held: list[Held] = []
    try:
        upstream = start_upstream(children)
        url = f"http://127.0.0.1:{upstream.port}"
        with tempfile.TemporaryDirectory() as workdir:
            for layer in LAYERS:
                headers: dict[str, str] = {}
                if layer == "floor":
                    server = start_floor(children, upstream)
                elif layer == "relay":
                    server = start_relay(children, upstream, Path(workdir), workers=1)
                    headers = {"x-relay-token": create_user(server)}
                else:
                    server = announced(children, layer, ["bench.stacks", "serve", layer, url])
                server.name = layer
                held.append(hold(children, server, headers, shape))
                print(held[-1], flush=True)
                children.stop(server.process)
    finally:
        children.close()
    return held


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        serve_announced(_layer(sys.argv[2], sys.argv[3]))
        return
    parser = argparse.ArgumentParser(prog="python -m bench.stacks", description=__doc__)
    parser.add_argument("--streams", type=int, default=2000, help="open streams (default 2000)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 short streams")
    args = parser.parse_args()
    raise_file_limit()
    shape = QUICK if args.quick else Shape(streams=args.streams)
    print(
        f"{shape.streams} open SSE streams, {shape.frames} frames {shape.interval_ms} ms apart; "
        "resident memory grown per open stream:",
        flush=True,
    )
    measure(shape)


if __name__ == "__main__":
    main()
