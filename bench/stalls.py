"""How long one hostile request body keeps the relay's event loop from everything else.

A relay of its own (with `ALLOWED_MODELS` set, so that it reads the model of a provider's own
requests too) is sent one body of each shape below, each as large as the body limit allows,
while a generator in a child process asks `GET /version` every 5 ms on one connection. The
longest of those waits, less the longest while the relay is idle, is the stall: the target is
that no shape stalls the loop past 50 ms.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx

from bench.processes import Children
from bench.servers import Server, create_user, start_relay
from bench.suite import progress

T = TypeVar("T")

__all__ = ["SHAPES", "stalls", "worst_wait"]

GOOGLE_KEY: Final = "AIza" + "0" * 35
ELEVENLABS_KEY: Final = "sk_" + "0" * 40
LIMIT: Final = 10 * 1024 * 1024  # the default body limit


def _members(size: int, model: str) -> bytes:
    """Top-level members up to about `size` bytes, the model last."""
    count, members = size // 17, ""
    while True:
        members = ",".join(f'"k{i}":{i}' for i in range(count))
        if len(members) < size - 100:
            return ("{" + members + f',"model":"{model}"}}').encode()
        count = count * 9 // 10


def _array(size: int, item: str) -> bytes:
    return (
        '{"model":"gpt-4o-mini","x":[' + ",".join([item] * (size // (len(item) + 1))) + "]}"
    ).encode()


def _parts(size: int) -> bytes:
    part = b'--B\r\nContent-Disposition: form-data; name="x"\r\n\r\na\r\n'
    model = b'--B\r\nContent-Disposition: form-data; name="model_id"\r\n\r\neleven_v2\r\n'
    return part * ((size - 200) // len(part)) + model + b"--B--\r\n"


# name -> (path, content type, body of about `size` bytes)
SHAPES: Final[dict[str, tuple[str, str, Callable[[int], bytes]]]] = {
    "POST /relay, many members": (
        "/relay",
        "application/json",
        lambda n: _members(n, "gpt-4o-mini"),
    ),
    "POST /relay, Google (edited)": (
        "/relay",
        "application/json",
        lambda n: _members(n, "google/gemini-1.5-flash"),
    ),
    "POST /relay, prefixed (edited)": (
        "/relay",
        "application/json",
        lambda n: _members(n, "openai/gpt-4o-mini"),
    ),
    "POST /relay, integers": ("/relay", "application/json", lambda n: _array(n, "0")),
    "POST /relay, small objects": ("/relay", "application/json", lambda n: _array(n, '{"a":1}')),
    "POST /relay, 50,000 deep": (
        "/relay",
        "application/json",
        lambda n: b'{"model":"gpt-4o-mini","x":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    ),
    "allowlist, JSON members": (
        "/relay/openai/v1/chat/completions",
        "application/json",
        lambda n: _members(n, "gpt-4o-mini"),
    ),
    "allowlist, form fields": (
        "/relay/openai/v1/chat/completions",
        "application/x-www-form-urlencoded",
        lambda n: b"a=1&" * (n // 4 - 8) + b"model=gpt-4o",
    ),
    "allowlist, multipart parts": (
        "/relay/elevenlabs/v1/speech-to-speech/v1",
        "multipart/form-data; boundary=B",
        _parts,
    ),
}

_POLLER: Final = """
import sys, time, httpx
waits = []
with httpx.Client(base_url=sys.argv[1], trust_env=False) as client:
    client.get("/version")
    print("ready", flush=True)
    while not sys.stdin.readline().startswith("stop"):
        started = time.perf_counter()
        client.get("/version")
        waits.append(time.perf_counter() - started)
print(max(waits or [0.0]))
"""


def worst_wait(url: str, send: Callable[[], T]) -> tuple[T, float]:
    """`send()`'s result, and the longest a `GET /version` to the relay at `url`, asked every
    5 ms by a process of its own, waited meanwhile (seconds)."""
    poller = subprocess.Popen(
        [sys.executable, "-c", _POLLER, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert poller.stdin is not None
    assert poller.stdout is not None
    assert poller.stdout.readline().strip() == "ready"
    done = threading.Event()

    def tick() -> None:
        assert poller.stdin is not None
        while not done.wait(0.005):
            poller.stdin.write("go\n")
            poller.stdin.flush()

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        time.sleep(0.1)
        result = send()
        time.sleep(0.1)
    finally:
        done.set()
        ticker.join()
        out, _ = poller.communicate("stop\n", timeout=60)
    return result, float(out.strip())


def _worst_wait(relay: Server, send: Callable[[], int]) -> tuple[int, float]:
    """`worst_wait` for a bench server, in ms."""
    status, worst = worst_wait(f"http://127.0.0.1:{relay.port}", send)
    return status, worst * 1000


def _idle() -> int:
    time.sleep(1.0)
    return 0


def stalls(children: Children, upstream: Server, workdir: Path, size: int) -> dict[str, Any]:
    """The worst `GET /version` wait while each shape of `size` bytes is read, less the idle
    relay's own worst."""
    env = {
        "ALLOWED_MODELS": "*",
        "RELAY_GOOGLE_BASE_URL": f"http://127.0.0.1:{upstream.port}",
        "RELAY_ELEVENLABS_BASE_URL": f"http://127.0.0.1:{upstream.port}",
    }
    relay = start_relay(children, upstream, workdir, 1, env=env, name="stalls")
    token = create_user(relay)
    headers = {"x-relay-token": token}
    base_url = f"http://127.0.0.1:{relay.port}"
    result: dict[str, Any] = {"bytes": size, "shapes": {}}
    with httpx.Client(base_url=base_url, timeout=120, trust_env=False) as client:
        for provider, key in (("google", GOOGLE_KEY), ("elevenlabs", ELEVENLABS_KEY)):
            client.post(f"/keys/{provider}", json={"key": key}, headers=headers).raise_for_status()
        _, idle = _worst_wait(relay, _idle)
        result["idle_ms"] = round(idle, 1)
        for name, (path, content_type, make) in SHAPES.items():
            body = make(size)

            def send(path: str = path, body: bytes = body, content_type: str = content_type) -> int:
                sent = {**headers, "content-type": content_type}
                return client.post(path, content=body, headers=sent).status_code

            status, worst = _worst_wait(relay, send)
            stall = max(0.0, worst - idle)
            result["shapes"][name] = {
                "bytes": len(body),
                "status": status,
                "stall_ms": round(stall, 1),
            }
            progress(f"stall, {name} ({len(body) / 1e6:.1f} MB, {status}): {stall:.0f} ms")
    children.stop(relay.process)
    result["worst_ms"] = max(shape["stall_ms"] for shape in result["shapes"].values())
    return result
