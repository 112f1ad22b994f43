"""A real relay for tests: `create_app` served by uvicorn on 127.0.0.1 in a background thread.

Streaming order and disconnects need real sockets (Starlette's TestClient buffers whole bodies),
so every HTTP-level test talks to one of these over TCP.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from backends.migrate import upgrade
from relay.app import create_app
from relay.cli import SERVER_OPTIONS
from relay.config import Settings
from relay.providers.table import PROVIDERS
from relay.proxy.ssrf import Resolver
from relay.services import Services

TEST_SECRET = "test-encryption-secret-0123456789abcdef"


def relay_env(db_path: Path, mock_url: str, **overrides: str) -> dict[str, str]:
    """The environment of a relay whose every provider is the mock at `mock_url`."""
    env = {
        "ENCRYPTION_SECRET": TEST_SECRET,
        "DATABASE_URL": f"sqlite:///{db_path}",
        "LOG_LEVEL": "debug",
        "RELAY_PRIVATE_UPSTREAMS": mock_url.removeprefix("http://"),
        # Every test talks from 127.0.0.1: the rate-limit tests set their own limits.
        "RATE_LIMIT_GLOBAL": "100000/minute",
        "RATE_LIMIT_RELAY": "100000/minute",
        "RATE_LIMIT_REGISTER": "100000/minute",
    }
    for name, provider in PROVIDERS.items():
        if provider.base_url:
            env[f"RELAY_{name.upper().replace('-', '_')}_BASE_URL"] = mock_url
    env.update(overrides)
    return env


class RelayServer:
    def __init__(
        self, settings: Settings, resolver: Resolver | None = None, loop: str = "auto"
    ) -> None:
        self.settings = settings
        upgrade(str(settings.database_url))
        self.app = create_app(settings, resolver=resolver)
        options = {**SERVER_OPTIONS, "timeout_graceful_shutdown": 2}
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, lifespan="on", loop=loop, **options
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def start(self) -> RelayServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("relay did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def services(self) -> Services:
        """The running relay's long-lived objects (touch them on `loop` only)."""
        services: Services = self.server.lifespan.state["services"]
        return services

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.server.servers[0].get_loop()

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 10)
        return httpx.Client(base_url=self.url, **kwargs)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], resolver: Resolver | None = None, loop: str = "auto"
    ) -> RelayServer:
        return cls(Settings.from_env(env), resolver, loop).start()


def register(client: httpx.Client, app_id: str = "test-app", **headers: str) -> str:
    response = client.post("/users", json={"app_id": app_id}, headers=headers)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def store_key(client: httpx.Client, token: str, provider: str, key: str) -> None:
    response = client.post(f"/keys/{provider}", json={"key": key}, headers={"x-relay-token": token})
    assert response.status_code == 200, response.text


def chat_as_a_new_user(
    client: httpx.Client, key: str, query: str = ""
) -> tuple[str, httpx.Response]:
    """A new user with `key` stored for OpenAI, and one small chat relayed for them (`query`
    tunes the mock: `delay_ms=2000`): the user's token and the answer."""
    token = register(client)
    store_key(client, token, "openai", key)
    return token, client.post(
        f"/relay/openai/v1/chat/completions?{query}",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-relay-token": token},
    )


def raw_relay_post(path: bytes, token: str, body: bytes, *extra: bytes) -> bytes:
    """A relayed JSON POST as the bytes on the wire; `extra` header lines go as they are (a
    test may put any byte in them)."""
    head = [
        b"POST " + path + b" HTTP/1.1",
        b"Host: x",
        b"x-relay-token: " + token.encode(),
        *extra,
        b"content-type: application/json",
        b"content-length: %d" % len(body),
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body
