"""Access lines and request ids, through a real `byok-relay serve` process: one JSON line per
request (relayed, refused and failed alike), the id answered on every response and passed to
the provider that takes one, the cause of every 502 and 504 logged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.telemetry.access import Access, AccessMiddleware, short_user
from tests.mockprovider import MockProvider
from tests.relayprocess import RelayProcess
from tests.relayserver import chat_as_a_new_user, register, relay_env, store_key

pytestmark = pytest.mark.sqlite

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
KEY = "test-openai-key-access-0123456789"
GENERATED = re.compile(r"[0-9a-f]{32}")


def line_of(relay: RelayProcess, response: httpx.Response) -> dict[str, Any]:
    """The access line of `response`, found by its request id."""
    request_id = response.headers["x-relay-request-id"]
    deadline = time.monotonic() + 5
    while True:
        for entry in access_lines(relay, 0, timeout=0):
            if entry["request_id"] == request_id:
                return entry
        assert time.monotonic() < deadline, f"no access line for {request_id}"
        time.sleep(0.05)


def access_lines(relay: RelayProcess, count: int, timeout: float = 5) -> list[dict[str, Any]]:
    """The relay's access lines, once there are at least `count` of them."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            entry
            for entry in map(_json, relay.lines)
            if entry is not None and entry.get("logger") == "relay.access"
        ]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _json(line: str) -> dict[str, Any] | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def relay(mock: MockProvider, tmp_path: Path) -> Iterator[RelayProcess]:
    env = relay_env(tmp_path / "relay.db", mock.url, LOG_LEVEL="info")
    process = RelayProcess(tmp_path, env)
    try:
        yield process
    finally:
        process.stop()


def test_a_relayed_call_writes_one_line_that_says_what_happened(
    relay: RelayProcess, mock: MockProvider
) -> None:
    with relay.client() as client:
        token = register(client, "access-app")
        store_key(client, token, "openai", KEY)
        body = json.dumps(CHAT).encode()
        response = client.post(
            "/relay/openai/v1/chat/completions",
            content=body,
            headers={"x-relay-token": token, "content-type": "application/json"},
        )
    assert response.status_code == 200
    request_id = response.headers["x-relay-request-id"]
    assert GENERATED.fullmatch(request_id)
    line = line_of(relay, response)
    assert line["level"] == "info"
    assert (line["method"], line["route"], line["status"]) == (
        "POST",
        "/relay/{provider}/{path}",
        200,
    )
    assert (line["outcome"], line["provider"], line["model"]) == (
        "completed",
        "openai",
        "gpt-4o-mini",
    )
    assert line["app_id"] == "access-app"
    assert re.fullmatch(r"[0-9a-f]{12}", line["user"])
    assert line["bytes_in"] == len(body)
    assert line["bytes_out"] == len(response.content)
    assert 0 < line["ttfb_ms"] <= line["duration_ms"]
    assert line["client"] == "127.0.0.1"
    # The provider that takes a client's request id gets the relay's.
    assert mock.last().header("x-client-request-id") == request_id
    everything = "".join(relay.lines)
    assert token not in everything
    assert KEY not in everything


def test_a_user_is_shown_as_a_short_digest_of_the_id() -> None:
    assert short_user("user-1") == short_user("user-1") != short_user("user-2")
    assert len(short_user("user-1")) == 12


def test_a_request_id_the_client_sends_is_kept_when_well_formed(
    relay: RelayProcess, mock: MockProvider
) -> None:
    with relay.client() as client:
        token = register(client)
        store_key(client, token, "openai", KEY)
        headers = {"x-relay-token": token, "x-request-id": "lb-7f3a.req:42"}
        kept = client.post("/relay/openai/v1/chat/completions", json=CHAT, headers=headers)
        assert kept.headers["x-relay-request-id"] == "lb-7f3a.req:42"
        assert mock.last().header("x-client-request-id") == "lb-7f3a.req:42"
        for bad in (b"two words", b"x" * 129, "ünïcode".encode(), b""):
            replaced = client.get("/version", headers={"x-request-id": bad})
            assert GENERATED.fullmatch(replaced.headers["x-relay-request-id"]), bad
        # Anthropic takes no client request id: nothing is added to what it is sent.
        store_key(client, token, "anthropic", "test-anthropic-key-access-0123")
        client.post("/relay/anthropic/v1/messages", json=CHAT, headers=headers)
        assert "lb-7f3a.req:42" not in str(mock.last().headers)


def test_refusals_and_routes_are_logged_by_their_template(relay: RelayProcess) -> None:
    with relay.client(headers={"origin": "https://app.example"}) as client:
        answers = [
            client.post("/relay/openai/v1/chat/completions", json=CHAT),  # no token
            client.delete("/keys/openai", headers={"x-relay-token": "nope"}),
            client.get("/no/such/route"),
            client.get("/version"),
        ]
    assert [a.status_code for a in answers] == [401, 401, 404, 200]
    exposed = answers[-1].headers["access-control-expose-headers"]
    assert "x-relay-request-id" in exposed
    lines = [line_of(relay, answer) for answer in answers]
    assert [(line["route"], line["status"]) for line in lines] == [
        ("/relay/{provider}/{path}", 401),
        ("/keys/{provider}", 401),
        ("unmatched", 404),
        ("/version", 200),
    ]
    assert all(line["outcome"] is None for line in lines)


def test_a_probe_that_succeeds_writes_no_line(relay: RelayProcess) -> None:
    with relay.client() as client:
        probes = [client.get("/livez"), client.get("/readyz")]
        assert [probe.status_code for probe in probes] == [200, 200]
        version = client.get("/version")
    line_of(relay, version)  # written after the probes'
    logged = {line["request_id"] for line in access_lines(relay, 1)}
    assert not logged & {probe.headers["x-relay-request-id"] for probe in probes}


def test_a_rate_limited_request_is_logged(mock: MockProvider, tmp_path: Path) -> None:
    env = relay_env(tmp_path / "relay.db", mock.url, LOG_LEVEL="info", RATE_LIMIT_GLOBAL="2/minute")
    relay = RelayProcess(tmp_path, env)
    try:
        with relay.client() as client:
            statuses = [client.get("/version").status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        lines = access_lines(relay, 3)
        assert [line["status"] for line in lines] == [200, 200, 429]
    finally:
        relay.stop()


@pytest.mark.parametrize(
    ("settings", "status", "cause"),
    [
        ({"RELAY_OPENAI_BASE_URL": "http://127.0.0.1:{closed}"}, 502, "refused"),
        ({"RELAY_UPSTREAM_TIMEOUT": "0.5"}, 504, "timeout"),
    ],
    ids=["refused", "timeout"],
)
def test_the_cause_of_a_502_or_504_is_logged(
    mock: MockProvider, tmp_path: Path, settings: dict[str, str], status: int, cause: str
) -> None:
    env = relay_env(tmp_path / "relay.db", mock.url, LOG_LEVEL="info")
    env.update({k: v.format(closed=free_port()) for k, v in settings.items()})
    relay = RelayProcess(tmp_path, env)
    try:
        with relay.client() as client:
            token, response = chat_as_a_new_user(client, KEY, "delay_ms=3000")
        assert response.status_code == status
        relay.wait_for("upstream request failed")
        failures = [
            entry
            for entry in map(_json, relay.lines)
            if entry is not None and entry.get("message") == "upstream request failed"
        ]
        assert len(failures) == 1
        assert failures[0]["level"] == "warning"
        assert failures[0]["cause"] == cause
        assert failures[0]["provider"] == "openai"
        assert failures[0]["request_id"] == response.headers["x-relay-request-id"]
        outcome = "upstream_timeout" if status == 504 else "upstream_error"
        line = line_of(relay, response)
        assert (line["status"], line["provider"], line["outcome"]) == (status, "openai", outcome)
        # The usage record says so too (it said `completed` for a failure before the answer).
        with relay.client() as client:
            stats = client.get("/stats", headers={"x-relay-token": token}).json()
        assert stats["outcomes"][outcome] == 1
        assert KEY not in "".join(relay.lines)
    finally:
        relay.stop()


def test_access_lines_can_be_turned_off(mock: MockProvider, tmp_path: Path) -> None:
    env = relay_env(tmp_path / "relay.db", mock.url, LOG_LEVEL="info", RELAY_ACCESS_LOG="off")
    relay = RelayProcess(tmp_path, env)
    try:
        with relay.client() as client:
            response = client.get("/version")
        assert GENERATED.fullmatch(response.headers["x-relay-request-id"])
        time.sleep(0.2)
        assert access_lines(relay, 1, timeout=0.5) == []
    finally:
        relay.stop()


def run_through(app: Any, sinks: list[Any]) -> None:
    """One GET through `AccessMiddleware(app, sinks)`, and the round its sinks run in."""

    async def main() -> None:
        middleware = AccessMiddleware(app, sinks)
        scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
        sent: list[Any] = []

        async def receive() -> Any:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            sent.append(message)

        with contextlib.suppress(RuntimeError):
            await middleware(scope, receive, send)
        await asyncio.sleep(0)

    asyncio.run(main())


def test_a_failing_sink_leaves_the_others_told() -> None:
    told: list[int] = []

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def broken(scope: Any, access: Access, ended: float) -> None:
        raise ValueError("a sink's bug")

    run_through(answer, [broken, lambda scope, access, ended: told.append(access.status)])
    assert told == [204]


def test_what_escapes_before_an_answer_is_recorded_as_the_500_it_becomes() -> None:
    told: list[int] = []

    async def fail(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("escaped")

    run_through(fail, [lambda scope, access, ended: told.append(access.status)])
    assert told == [500]


def test_a_receive_never_awaited_leaves_no_coroutine_of_the_servers_unawaited() -> None:
    """An exchange's watcher may be cancelled before it first runs: what the middleware handed
    out must not have called the server's `receive` yet (a 'never awaited' warning, failing a
    test at random, once in the full suite)."""
    made: list[object] = []

    async def server_receive() -> Any:
        return {"type": "http.request", "body": b""}

    def receive() -> Any:
        coroutine = server_receive()
        made.append(coroutine)
        return coroutine

    async def app(scope: Any, wrapped: Any, send: Any) -> None:
        pending = asyncio.ensure_future(wrapped())
        pending.cancel()  # before it ever ran
        with contextlib.suppress(asyncio.CancelledError):
            await pending

    async def main() -> None:
        scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}

        async def send(message: Any) -> None:
            pass

        await AccessMiddleware(app)(scope, receive, send)

    asyncio.run(main())
    assert made == []
