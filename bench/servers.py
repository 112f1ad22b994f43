"""The three servers under test, each a process of its own on 127.0.0.1.

- the mock upstream (`bench.upstream`) and the floor proxy (`bench.floor`) bind a free port
  themselves and announce it on stdout;
- the relay runs as production runs it, `python -m relay serve --port P --workers W`, in a
  temporary directory, on SQLite, pointed at the mock upstream, with rate limits set very high
  but active; its log (JSON lines on stderr, warnings and up) goes to `relay.log` there.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import httpx

from bench.processes import Children, Role, free_port, wait_http

__all__ = [
    "Server",
    "create_user",
    "log_entries",
    "start_floor",
    "start_relay",
    "start_upstream",
]

BENCH_KEY: Final = "sk-bench-" + "0" * 32
HIGH_LIMIT: Final = "100000000/minute"


@dataclasses.dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    workers: int = 1
    log: Path | None = None  # the relay's: JSON lines, warnings and up


def log_entries(log: Path | None) -> list[dict[str, Any]]:
    """What a relay has logged so far (a line that is not JSON is kept as its message)."""
    if log is None or not log.exists():
        return []
    entries: list[dict[str, Any]] = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            entries.append({"level": "?", "message": line})
    return entries


def announced(
    children: Children,
    name: str,
    args: list[str],
    *,
    under: Sequence[str] = (),
    timeout: float = 30,
    role: Role = "server",
) -> Server:
    """Start a bench server that prints `{"port": P}` once it listens. `under` is a command
    Python runs inside (valgrind, say); `timeout` the seconds it may take to answer."""
    command = [*under, sys.executable, "-m", *args]
    process = children.start(command, role=role, stdout=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline()
    process.stdout.close()
    if not line:
        raise RuntimeError(f"{name} did not start (status {process.wait()})")
    server = Server(name, process, json.loads(line)["port"])
    wait_http(process, server.port, timeout)
    return server


def start_upstream(children: Children) -> Server:
    return announced(children, "upstream", ["bench.upstream"], role="load")  # part of the rig


def start_floor(
    children: Children, upstream: Server, *, under: Sequence[str] = (), timeout: float = 30
) -> Server:
    args = ["bench.floor", f"http://127.0.0.1:{upstream.port}"]
    return announced(children, "floor", args, under=under, timeout=timeout)


def relay_env(upstream: Server, workdir: Path) -> dict[str, str]:
    """Production settings except the store (SQLite here), the upstream and the limits."""
    # PYTHONPATH: a checkout elsewhere (a worktree of another commit) is the one benched.
    keep = ("PATH", "HOME", "LANG", "SYSTEMROOT", "PYTHONPATH")
    return {
        **{name: value for name, value in os.environ.items() if name in keep},
        "RELAY_ENV": "production",
        "ENCRYPTION_SECRET": "bench-encryption-secret-0123456789abcdef",
        "DATABASE_URL": f"sqlite:///{workdir}/relay.db",
        "RELAY_OPENAI_BASE_URL": f"http://127.0.0.1:{upstream.port}",
        "RATE_LIMIT_GLOBAL": HIGH_LIMIT,
        "RATE_LIMIT_RELAY": HIGH_LIMIT,
        # All the load comes from one address, which the per-address cap would hold to an
        # eighth of what the process may serve: the bench measures the process.
        "RELAY_MAX_CONNECTIONS_PER_IP": "1000000",
        "LOG_LEVEL": "info",  # the default: one access line per request, to the log file
    }


def start_relay(
    children: Children,
    upstream: Server,
    workdir: Path,
    workers: int,
    *,
    under: Sequence[str] = (),
    timeout: float = 60,
    env: dict[str, str] | None = None,
    name: str = "",
) -> Server:
    """The relay on a free port; tried again on another port should that one be taken. `under`
    and `timeout` as for `announced`; `env` adds settings, and `name` tells its log apart."""
    log = workdir / f"relay-{name or f'{workers}w'}.log"
    for _ in range(3):
        port = free_port()
        args = ["serve", "--port", str(port), "--workers", str(workers)]
        with log.open("ab") as stderr:
            process = children.start(
                [*under, sys.executable, "-m", "relay", *args],
                role="server",
                cwd=workdir,
                env={**relay_env(upstream, workdir), **(env or {})},
                stderr=stderr,
            )
        try:
            wait_http(process, port, timeout)
        except RuntimeError:
            children.stop(process)
            continue
        return Server("relay", process, port, workers, log)
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"the relay did not start; its log ends with:\n{tail}")


# Caps no run reaches, so that every request pays for their checks and none is refused.
BENCH_CAPS: Final = {
    "caps": [
        {"period": "day", "requests": 10**12, "tokens": 10**15},
        {"period": "month", "cost_usd": "100000000", "provider": "openai"},
    ],
    "allow_unpriced": True,
}
BENCH_BUDGET: Final = [{"period": "day", "requests": 10**12}]


def create_user(relay: Server, capped: bool = False) -> str:
    """Register a user and store its (fake) OpenAI key; the user's relay token. `capped`: the
    owner also sets spending caps, and the token is a narrow one (OpenAI's small models, with a
    budget of its own) under them."""
    base_url = f"http://127.0.0.1:{relay.port}"
    with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as client:
        response = client.post("/users", json={"app_id": "bench"})
        response.raise_for_status()
        token: str = response.json()["token"]
        owner = {"x-relay-token": token}
        client.post("/keys/openai", json={"key": BENCH_KEY}, headers=owner).raise_for_status()
        if capped:
            client.put("/limits", json=BENCH_CAPS, headers=owner).raise_for_status()
            narrow = {"providers": ["openai"], "models": ["gpt-4o-mini*"], "budget": BENCH_BUDGET}
            minted = client.post("/tokens", json=narrow, headers=owner)
            minted.raise_for_status()
            token = minted.json()["token"]
    return token
