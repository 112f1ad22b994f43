"""How exchanges end, through real `byok-relay serve` processes with short limits: the idle limit
from the answer's head on, a client that takes nothing let go, requests reaching the provider
exactly as framed and once, erasure and revocation that are final on every instance, and a
drain on SIGTERM."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from relay.proxy.idle import GRAIN
from tests.mockprovider import MockProvider
from tests.relayprocess import RelayProcess
from tests.relayserver import RelayServer, relay_env
from tests.servers import (
    REDIS_URL,
    create_database,
    drop_database,
    drop_namespace,
    in_thread,
    new_namespace,
)

IDLE = 1.0  # RELAY_STREAM_IDLE_TIMEOUT of these relays
SEND_TIMEOUT = 2.0  # RELAY_CLIENT_SEND_TIMEOUT
CACHE_TTL = 1.0
APP_SECRET = "endings-app-secret"
STREAM = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
PROVIDER_FRAME = 'event: error\ndata: {"error":"Stream interrupted by provider"}\n\n'
RESTARTING = (
    'event: error\ndata: {"error":"The relay is restarting: send the request again",'
    '"code":"relay_restarting"}\n\n'
)
REVOKED = 'event: error\ndata: {"error":"Invalid or expired token","code":"invalid_token"}\n\n'

LIMITS = {
    "RELAY_STREAM_IDLE_TIMEOUT": str(IDLE),
    "RELAY_UPSTREAM_TIMEOUT": "30",
    "RELAY_CLIENT_SEND_TIMEOUT": str(SEND_TIMEOUT),
    "APP_SECRET": APP_SECRET,
    "LOG_LEVEL": "info",
}
ADMIN = {"authorization": f"Bearer {APP_SECRET}"}


def new_user(relay: RelayProcess | RelayServer, app_id: str) -> str:
    with relay.client() as client:
        response = client.post("/users", json={"app_id": app_id}, headers=ADMIN)
        assert response.status_code == 200, response.text
        token = str(response.json()["token"])
        for provider in ("openai", "elevenlabs"):
            stored = client.post(
                f"/keys/{provider}",
                json={"key": f"test-{provider}-key-{uuid.uuid4().hex}"},
                headers={"x-relay-token": token},
            )
            assert stored.status_code == 200, stored.text
    return token


def app_stats(relay: RelayProcess, app_id: str) -> dict[str, object]:
    with relay.client() as client:
        response = client.get(f"/stats/{app_id}", headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def outcomes(relay: RelayProcess, app_id: str) -> dict[str, int]:
    found = app_stats(relay, app_id)["outcomes"]
    assert isinstance(found, dict)
    return {name: count for name, count in found.items() if count}


@pytest.fixture(scope="module")
def relay(mock: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """One relay process with short limits, shared by the tests that need no store of their own."""
    tmp_path = tmp_path_factory.mktemp("endings")
    process = RelayProcess(tmp_path, relay_env(tmp_path / "relay.db", mock.url, **LIMITS))
    yield process
    process.stop()
    assert not [line for line in process.lines if "Traceback" in line], "".join(process.lines)


# ---------------------------------------------------------------------------------------------
# The idle limit: from the answer's head, whatever the first-byte limit


@pytest.mark.parametrize("after", [0, 1, 5], ids=["after-the-head", "after-1-chunk", "after-5"])
def test_a_silent_stream_is_cut_within_the_slack_of_the_idle_limit(
    relay: RelayProcess, after: int
) -> None:
    """RELAY_UPSTREAM_TIMEOUT is 30 s: a stream that goes silent is cut IDLE after its last
    byte (its head, when nothing followed), not 30 s after it started, and an event stream
    ends with the error frame."""
    app_id = f"idle-{uuid.uuid4().hex[:8]}"
    token = new_user(relay, app_id)
    url = f"/relay/openai/v1/chat/completions?scenario=stall&after={after}&delay_ms=20000"
    with (
        relay.client(timeout=httpx.Timeout(10, read=IDLE * 4)) as client,
        client.stream("POST", url, json=STREAM, headers={"x-relay-token": token}) as response,
    ):
        assert response.status_code == 200
        last = time.monotonic()
        text = ""
        for chunk in response.iter_text():
            if chunk != PROVIDER_FRAME:
                last = time.monotonic()
            text += chunk
        silence = time.monotonic() - last
    assert text.endswith(PROVIDER_FRAME), text
    assert text.count("data: {") == after + 1  # the chunks, then the frame
    assert IDLE - 0.05 <= silence <= IDLE + IDLE / GRAIN + 0.5
    assert outcomes(relay, app_id) == {"idle_timeout": 1}


# ---------------------------------------------------------------------------------------------
# A client that takes nothing


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _stalled_client(url: str, token: str) -> socket.socket:
    """A connection asking for an endless audio stream, that then reads nothing."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    body = b'{"text": "hi"}'
    sock.sendall(
        b"POST /relay/elevenlabs/v1/text-to-speech/voice123?scenario=endless&interval_ms=0 "
        b"HTTP/1.1\r\nHost: x\r\nx-relay-token: " + token.encode() + b"\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
    )
    return sock


def _dropped(sock: socket.socket, timeout: float) -> bool:
    """Whether the relay drops the connection within `timeout` (reading what it had sent)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sock.recv(1 << 20):
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


def _let_go_of_stalled_clients(url: str, token: str, mock: MockProvider, clients: int) -> None:
    socks = [_stalled_client(url, token) for _ in range(clients)]
    try:
        mock.wait_for_request(clients, timeout=10)
        stalled = time.monotonic()
        time.sleep(SEND_TIMEOUT * 1.5)
        # Every upstream was closed by the relay once its client had taken nothing for the
        # send timeout (with the checks' slack); until then the client still held it.
        for _ in range(100):
            if len(mock.disconnects) >= clients:
                break
            time.sleep(0.1)
        assert len(mock.disconnects) == clients
        assert all(at - stalled >= SEND_TIMEOUT * 0.5 for at in mock.disconnects)
        assert all(_dropped(sock, 5) for sock in socks)
    finally:
        for sock in socks:
            sock.close()


def test_clients_that_take_nothing_are_let_go_and_what_they_hold_is_bounded(
    mock: MockProvider, tmp_path: Path
) -> None:
    """A relay of its own, so that no earlier test's memory counts."""
    relay = RelayProcess(tmp_path, relay_env(tmp_path / "relay.db", mock.url, **LIMITS))
    try:
        app_id = f"slow-{uuid.uuid4().hex[:8]}"
        token = new_user(relay, app_id)
        with relay.client() as client:  # what the first streams load once is not theirs
            for _ in range(3):
                client.post(
                    "/relay/elevenlabs/v1/text-to-speech/v1",
                    json={"text": "hi"},
                    headers={"x-relay-token": token},
                )
        mock.clear()
        clients = 50
        before = _rss_kib(relay.process.pid)
        socks = [_stalled_client(relay.url, token) for _ in range(clients)]
        try:
            mock.wait_for_request(clients, timeout=10)
            time.sleep(SEND_TIMEOUT * 0.6)  # every buffer between provider and client is full
            held = (_rss_kib(relay.process.pid) - before) / clients
            # 64 KiB in the send buffer, a chunk and a read of at most 128 KiB each, the
            # stream's own objects and the allocator's slack under a loaded machine.
            assert held < 512, f"{held:.0f} KiB per stalled stream"
            time.sleep(SEND_TIMEOUT * 1.5)
            for _ in range(100):
                if len(mock.disconnects) >= clients:
                    break
                time.sleep(0.1)
            assert len(mock.disconnects) == clients, "every upstream is closed"
            assert all(_dropped(sock, 5) for sock in socks)
        finally:
            for sock in socks:
                sock.close()
        assert outcomes(relay, app_id) == {"completed": 3, "slow_client": clients}
    finally:
        relay.stop()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_that_takes_nothing_is_let_go_on_either_event_loop(
    make_server: Callable[..., RelayServer], mock: MockProvider, loop: str
) -> None:
    server = make_server(loop)
    token = new_user(server, "slow-loop")
    _let_go_of_stalled_clients(server.url, token, mock, clients=3)


def test_a_slow_client_that_keeps_taking_is_not_cut(
    relay: RelayProcess, mock: MockProvider
) -> None:
    """A client reading a little at a time, slower than the stream comes, for longer than the
    send timeout, keeps its stream: taking something is enough."""
    token = new_user(relay, "slow-reader")
    sock = _stalled_client(relay.url, token)
    try:
        sock.settimeout(5)
        started = time.monotonic()
        received = 0
        while time.monotonic() - started < SEND_TIMEOUT * 2.5:
            data = sock.recv(4096)
            assert data, "the relay dropped a client that was reading"
            received += len(data)
            time.sleep(0.05)
        assert mock.disconnects == [], "".join(relay.lines[-20:])
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------
# A request reaches the provider exactly as framed, exactly once


def _raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        while len(body) < length:
            body += sock.recv(65536)
    return int(head.split(b" ")[1]), body


@pytest.mark.parametrize(
    "framing",
    [
        b"content-length: 20\r\n\r\n" + b"x" * 20,
        b"transfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
def test_a_get_with_a_body_is_refused_before_anything_is_sent(
    relay: RelayProcess, mock: MockProvider, framing: bytes
) -> None:
    token = new_user(relay, "get-body")
    status, body = _raw_request(
        relay.url,
        b"GET /relay/openai/v1/responses/resp_1 HTTP/1.1\r\nHost: x\r\nx-relay-token: "
        + token.encode()
        + b"\r\n"
        + framing,
    )
    assert status == 400
    assert httpx.Response(400, content=body).json()["code"] == "body_not_allowed"
    assert mock.requests == []
    # The next requests, on whatever pooled connection, reach the provider intact.
    with relay.client() as client:
        listed = client.get("/relay/openai/v1/responses/resp_1", headers={"x-relay-token": token})
        chat = client.post(
            "/relay/openai/v1/chat/completions?scenario=echo",
            json=CHAT,
            headers={"x-relay-token": token},
        )
    assert (listed.status_code, chat.status_code) == (200, 200)
    assert [(r.method, r.path) for r in mock.requests] == [
        ("GET", "/v1/responses/resp_1"),
        ("POST", "/v1/chat/completions"),
    ]
    assert mock.requests[0].header("content-length") is None
    assert chat.json()["body_len"] == len(httpx.Request("POST", "/", json=CHAT).content)


class TakeThenDrop:
    """A provider whose first connection answers one request, then reads the next whole and
    closes without answering (it took the request, then died); later connections answer."""

    ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[bytes] = []
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._talk, args=(conn, self.connections), daemon=True).start()

    def _read(self, conn: socket.socket, buffer: bytes) -> tuple[bytes, bytes]:
        while b"\r\n\r\n" not in buffer:
            data = conn.recv(65536)
            if not data:
                raise ConnectionError
            buffer += data
        head, _, rest = buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.lower().split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(rest) < length:
            rest += conn.recv(65536)
        self.requests.append(head.split(b"\r\n")[0])
        return head, rest[length:]

    def _talk(self, conn: socket.socket, number: int) -> None:
        with conn, contextlib.suppress(ConnectionError, OSError):
            buffer = b""
            _, buffer = self._read(conn, buffer)
            conn.sendall(self.ANSWER)
            _, buffer = self._read(conn, buffer)
            if number == 1:
                return  # read whole, never answered
            conn.sendall(self.ANSWER)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def take_then_drop(
    make_relay: Callable[..., RelayServer],
) -> Iterator[tuple[RelayServer, TakeThenDrop]]:
    provider = TakeThenDrop()
    server = make_relay(RELAY_OPENAI_BASE_URL=provider.url, APP_SECRET=APP_SECRET)
    yield server, provider
    provider.close()


def test_a_post_the_provider_took_is_never_sent_twice(
    take_then_drop: tuple[RelayServer, TakeThenDrop],
) -> None:
    server, provider = take_then_drop
    token = new_user(server, "sent-once")
    headers = {"x-relay-token": token}
    with server.client() as client:
        assert (
            client.post("/relay/openai/v1/chat/completions", json=CHAT, headers=headers).status_code
            == 200
        )
        second = client.post("/relay/openai/v1/chat/completions", json=CHAT, headers=headers)
    assert second.status_code == 502, second.text
    assert second.json()["code"] == "upstream_unreachable"
    assert provider.requests == [b"POST /v1/chat/completions HTTP/1.1"] * 2


def test_a_get_the_provider_dropped_is_sent_again(
    take_then_drop: tuple[RelayServer, TakeThenDrop],
) -> None:
    server, provider = take_then_drop
    token = new_user(server, "sent-again")
    headers = {"x-relay-token": token}
    with server.client() as client:
        assert client.get("/relay/openai/v1/responses/r1", headers=headers).status_code == 200
        again = client.get("/relay/openai/v1/responses/r1", headers=headers)
    assert again.status_code == 200, again.text
    assert provider.requests == [b"GET /v1/responses/r1 HTTP/1.1"] * 3
    assert provider.connections == 2


# ---------------------------------------------------------------------------------------------
# Erasure and revocation are final on every instance


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
)
def two_relays(
    request: pytest.FixtureRequest, mock: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RelayProcess, RelayProcess, dict[str, str]]]:
    """Two relay processes on one store of each kind."""
    tmp_path = tmp_path_factory.mktemp("erasure")
    store: dict[str, str]
    cleanup: Callable[[], None]
    if request.param == "sqlite":
        store = {"DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}"}
        cleanup = lambda: None  # noqa: E731
    elif request.param == "postgres":
        request.getfixturevalue("postgres_url")  # fails clearly when the server is down
        url = in_thread(create_database, "byok_erasure")
        store = {"DATABASE_URL": url}
        cleanup = lambda: in_thread(drop_database, url)  # noqa: E731
    else:
        namespace = new_namespace()
        store = {"DATABASE_URL": request.getfixturevalue("redis_url"), "REDIS_NAMESPACE": namespace}
        cleanup = lambda: drop_namespace(namespace)  # noqa: E731
    env = relay_env(tmp_path / "unused.db", mock.url, **LIMITS, **store)
    first = RelayProcess(tmp_path, env)
    second = RelayProcess(tmp_path, env)
    yield first, second, {**store, "kind": request.param}
    first.stop()
    second.stop()
    cleanup()
    for process in (first, second):
        assert not [line for line in process.lines if "Traceback" in line], "".join(process.lines)


class Stream:
    """An endless event stream read in a thread: when it ended, and how."""

    def __init__(self, relay: RelayProcess, token: str) -> None:
        self.text = ""
        self.ended: float | None = None
        self.started = threading.Event()
        self._client = relay.client(timeout=httpx.Timeout(10, read=5))
        self._thread = threading.Thread(target=self._read, args=(token,), daemon=True)
        self._thread.start()
        assert self.started.wait(5), "the stream did not start"

    def _read(self, token: str) -> None:
        url = "/relay/openai/v1/chat/completions?scenario=endless&interval_ms=50"
        with self._client.stream("POST", url, json=STREAM, headers={"x-relay-token": token}) as r:
            for chunk in r.iter_text():
                self.text += chunk
                self.started.set()
        self.ended = time.monotonic()

    def join(self, timeout: float) -> float:
        self._thread.join(timeout)
        assert self.ended is not None, "the stream is still running"
        self._client.close()
        return self.ended


def _streams_end_on_both(
    first: RelayProcess, second: RelayProcess, token: str, method: str, path: str
) -> None:
    """A stream of `token` open on each instance; `method path` on the first (an erasure or a
    revocation) ends its own at once and the other's within CACHE_TTL, with the frame."""
    here, there = Stream(first, token), Stream(second, token)
    with first.client() as client:
        client.post(
            "/relay/openai/v1/chat/completions", json=CHAT, headers={"x-relay-token": token}
        )  # a record queued too
        done = time.monotonic()
        assert client.request(method, path, headers={"x-relay-token": token}).status_code == 200
        answered = time.monotonic()
    assert here.join(5) - answered < 0.5, "the instance that did it ends its streams at once"
    assert there.join(5) - done < CACHE_TTL + 1.0
    assert here.text.endswith(REVOKED)
    assert there.text.endswith(REVOKED)
    time.sleep(1.5)  # both instances' recorders have written what they had queued


def test_an_erased_users_stream_ends_on_every_instance_and_leaves_no_record(
    two_relays: tuple[RelayProcess, RelayProcess, dict[str, str]],
) -> None:
    first, second, store = two_relays
    app_id = f"erased-{uuid.uuid4().hex[:8]}"
    _streams_end_on_both(first, second, new_user(first, app_id), "DELETE", "/users")
    assert (app_stats(first, app_id)["total"], app_stats(second, app_id)["total"]) == (0, 0)
    if store["kind"] == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        try:
            lists = client.scan_iter(match=f"{store['REDIS_NAMESPACE']}:usage:*")
            left = [raw for name in lists for raw in client.lrange(name, 0, -1)]
        finally:
            client.close()
        assert not [raw for raw in left if json.loads(raw)["app_id"] == app_id]


def test_a_revoked_tokens_streams_end_on_every_instance(
    two_relays: tuple[RelayProcess, RelayProcess, dict[str, str]],
) -> None:
    first, second, _ = two_relays
    app_id = f"revoked-{uuid.uuid4().hex[:8]}"
    _streams_end_on_both(first, second, new_user(first, app_id), "POST", "/tokens/revoke")
    # The second instance's record comes with its recorder's next write, a second or so on.
    deadline = time.monotonic() + 10
    while (found := outcomes(first, app_id)) != {"completed": 1, "revoked": 2}:
        assert time.monotonic() < deadline, found
        time.sleep(0.1)


def test_a_revoked_narrow_tokens_streams_end_on_every_instance_and_the_accounts_go_on(
    two_relays: tuple[RelayProcess, RelayProcess, dict[str, str]],
) -> None:
    first, second, _ = two_relays
    app_id = f"narrow-{uuid.uuid4().hex[:8]}"
    token = new_user(first, app_id)
    with first.client() as client:
        minted = client.post("/tokens", json={}, headers={"x-relay-token": token})
        assert minted.status_code == 201, minted.text
        narrow, narrow_id = minted.json()["token"], minted.json()["id"]
        own = Stream(first, token)
        here, there = Stream(first, narrow), Stream(second, narrow)
        done = time.monotonic()
        gone = client.delete(f"/tokens/{narrow_id}", headers={"x-relay-token": token})
        assert gone.status_code == 200, gone.text
        answered = time.monotonic()
    assert here.join(5) - answered < 0.5, "the instance that revoked ends its streams at once"
    assert there.join(5) - done < CACHE_TTL + 1.0
    assert here.text.endswith(REVOKED)
    assert there.text.endswith(REVOKED)
    assert own.ended is None, "the account's own stream goes on"
    with first.client() as client:
        assert client.post("/tokens/revoke", headers={"x-relay-token": token}).status_code == 200
    own.join(5)


def test_records_queued_when_their_user_is_erased_are_never_written(
    two_relays: tuple[RelayProcess, RelayProcess, dict[str, str]],
) -> None:
    """Each user's request leaves a record queued on its instance (written within a second);
    the user is erased at once, half of them through the other instance."""
    first, second, _ = two_relays
    app_id = f"queued-{uuid.uuid4().hex[:8]}"
    tokens = [new_user(first, app_id) for _ in range(20)]
    with first.client() as one, second.client() as other:
        for index, token in enumerate(tokens):
            headers = {"x-relay-token": token}
            relayed = one.post("/relay/openai/v1/chat/completions", json=CHAT, headers=headers)
            assert relayed.status_code == 200
            eraser = other if index % 2 else one
            assert eraser.delete("/users", headers=headers).status_code == 200
    time.sleep(1.5)
    assert (app_stats(first, app_id)["total"], app_stats(second, app_id)["user_count"]) == (0, 0)


# ---------------------------------------------------------------------------------------------
# A deploy drains


@dataclasses.dataclass
class Reading:
    """What a client read of one answer, in a thread of its own."""

    status: int = 0
    body: bytes = b""
    error: str = ""
    ended: float = 0.0
    thread: threading.Thread | None = None


def _read_in_thread(client: httpx.Client, url: str, token: str, body: object) -> Reading:
    reading = Reading()

    def read() -> None:
        try:
            with client.stream("POST", url, headers={"x-relay-token": token}, json=body) as r:
                reading.status = r.status_code
                for chunk in r.iter_raw():
                    reading.body += chunk
        except httpx.HTTPError as exc:
            reading.error = type(exc).__name__
        reading.ended = time.monotonic()

    reading.thread = threading.Thread(target=read, daemon=True)
    reading.thread.start()
    return reading


def test_sigterm_drains_then_ends_what_is_still_open_cleanly(
    mock: MockProvider, tmp_path: Path
) -> None:
    """Within the drain window a stream completes; past it an event stream ends with the
    restarting frame, a request still waiting for its provider gets 503 JSON, any other answer
    is cut short; the process stops accepting at once and exits without a traceback."""
    drain = 2.0
    env = relay_env(tmp_path / "relay.db", mock.url, **LIMITS, RELAY_DRAIN_SECONDS=str(drain))
    relay = RelayProcess(tmp_path, env)
    chat = "/relay/openai/v1/chat/completions"
    try:
        token = new_user(relay, "drain")
        client = relay.client(timeout=httpx.Timeout(10, read=8))
        short = _read_in_thread(client, f"{chat}?chunks=10&interval_ms=100", token, STREAM)
        long = _read_in_thread(client, f"{chat}?scenario=endless&interval_ms=50", token, STREAM)
        thinking = _read_in_thread(
            client, f"{chat}?scenario=slow_headers&delay_ms=20000", token, CHAT
        )
        audio = _read_in_thread(
            client,
            "/relay/elevenlabs/v1/text-to-speech/v1?scenario=endless&interval_ms=50",
            token,
            {"text": "hi"},
        )
        mock.wait_for_request(4, timeout=5)
        time.sleep(0.2)
        terminated = time.monotonic()
        relay.process.send_signal(signal.SIGTERM)
        # No longer accepting (readiness fails) well before the drain window ends.
        while True:
            try:
                with relay.client() as late:
                    late.get("/health")
            except httpx.ConnectError:
                break
            assert time.monotonic() - terminated < drain / 2, "still accepting"
            time.sleep(0.05)
        for reading in (short, long, thinking, audio):
            assert reading.thread is not None
            reading.thread.join(drain + 5)
        assert relay.process.wait(timeout=10) in (0, -signal.SIGTERM)
        exited = time.monotonic()
        client.close()
    finally:
        relay.stop()
    assert short.status == 200
    assert short.body.endswith(b"data: [DONE]\n\n"), "a stream within the window completes"
    assert long.status == 200
    assert long.body.endswith(RESTARTING.encode())
    assert long.ended - terminated >= drain - 0.1
    assert thinking.status == 503
    assert b'"code":"relay_restarting"' in thinking.body
    assert (audio.status, audio.error) == (200, "RemoteProtocolError")  # cut short
    assert exited - terminated < drain + 4
    log = "".join(relay.lines)
    assert "Traceback" not in log, log
    assert "Cancel " not in log, log  # uvicorn never had to cancel a request
    with sqlite3.connect(tmp_path / "relay.db") as db:
        found = sorted(db.execute("SELECT outcome, status FROM usage"))
    assert found == [("completed", 200), ("drained", 200), ("drained", 200), ("drained", 503)]


# ---------------------------------------------------------------------------------------------


@pytest.fixture
def make_server(mock: MockProvider, tmp_path: Path) -> Iterator[Callable[..., RelayServer]]:
    """An in-process relay served by uvicorn on a given event loop, with this module's limits."""
    servers: list[RelayServer] = []

    def factory(loop: str) -> RelayServer:
        env = relay_env(tmp_path / f"relay-{len(servers)}.db", mock.url, **LIMITS)
        server = RelayServer.from_env(env, loop=loop)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


def test_health_says_draining(make_relay: Callable[..., RelayServer]) -> None:
    server = make_relay()
    services = server.services
    loop = server.loop
    loop.call_soon_threadsafe(services.drain.begin)
    time.sleep(0.1)
    with server.client() as client:
        response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["draining"] is True
