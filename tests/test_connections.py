"""The server's edge holds against slow, silent and too many connections, through a real
`byok-relay serve` with short limits: heads and bodies that do not arrive in time get 408 JSON,
connections past the caps 503 JSON, malformed request lines and Host headers 400 JSON, and the
process takes the file descriptors its hard limit allows."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mockprovider import MockProvider
from tests.relayprocess import RelayProcess
from tests.relayserver import relay_env

pytestmark = pytest.mark.sqlite

HEAD, BODY = 1.0, 1.0  # RELAY_HEAD_TIMEOUT, RELAY_BODY_TIMEOUT of this module's relay


@pytest.fixture(scope="module")
def relay(mock: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    tmp_path = tmp_path_factory.mktemp("connections")
    env = relay_env(
        tmp_path / "relay.db",
        mock.url,
        LOG_LEVEL="info",
        RELAY_HEAD_TIMEOUT=str(HEAD),
        RELAY_BODY_TIMEOUT=str(BODY),
        RELAY_MAX_CONNECTIONS_PER_IP="40",
    )
    process = RelayProcess(tmp_path, env)
    yield process
    process.stop()
    assert not [line for line in process.lines if "Traceback" in line], "".join(process.lines)


def connect(relay: RelayProcess, source: str = "127.0.0.1") -> socket.socket:
    host, port = relay.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect((host, int(port)))
    sock.settimeout(10)
    return sock


def answer(sock: socket.socket) -> tuple[int, dict[str, object], bool]:
    """The status and JSON body of the one answer on `sock`, and whether it then closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    try:
        closed = sock.recv(1) == b""
    except ConnectionResetError:  # closed with bytes of ours unread: the kernel's RST
        closed = True
    return int(head.split(b" ")[1]), json.loads(body[:length]), closed


def test_a_connection_that_sends_nothing_gets_408_and_is_closed(relay: RelayProcess) -> None:
    with connect(relay) as sock:
        opened = time.monotonic()
        status, body, closed = answer(sock)
    assert (status, body["code"], closed) == (408, "request_timeout", True)
    assert HEAD - 0.1 <= time.monotonic() - opened < HEAD + 2


def test_a_head_sent_a_byte_at_a_time_is_cut_at_the_head_timeout(relay: RelayProcess) -> None:
    head = b"GET /version HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    with connect(relay) as sock:
        started = time.monotonic()
        with contextlib.suppress(OSError):  # the relay may have closed it under us
            for byte in head:
                sock.send(bytes([byte]))
                time.sleep(HEAD / 10)
                if time.monotonic() - started > HEAD * 3:
                    break
        status, body, closed = answer(sock)
    assert (status, body["code"], closed) == (408, "request_timeout", True)
    assert time.monotonic() - started < HEAD + 2


def test_a_body_sent_a_byte_at_a_time_is_cut_and_a_steady_one_is_not(
    relay: RelayProcess, mock: MockProvider
) -> None:
    with relay.client() as client:
        token = client.post("/users", json={"app_id": "slow-body"}).json()["token"]
        client.post(
            "/keys/openai",
            json={"key": "test-openai-key-slow-body-0123"},
            headers={"x-relay-token": token},
        )
    body = json.dumps({"model": "gpt-4o-mini", "pad": "x" * 30_000}).encode()
    head = (
        b"POST /relay/openai/v1/chat/completions?scenario=echo HTTP/1.1\r\nHost: x\r\n"
        b"x-relay-token: " + token.encode() + b"\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    )
    with connect(relay) as sock:
        sock.sendall(head)
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for byte in body[:40]:
                sock.send(bytes([byte]))
                time.sleep(BODY / 8)
        status, answered, closed = answer(sock)
    assert (status, answered["code"], closed) == (408, "request_timeout", True)
    assert time.monotonic() - started < BODY * 3
    with connect(relay) as sock:  # 2 KiB every 0.2 s: slow, but steady
        sock.sendall(head)
        for at in range(0, len(body), 2048):
            sock.sendall(body[at : at + 2048])
            time.sleep(0.2)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /version\r\n",  # HTTP/0.9: no version
        b"GET /version HTTP/1.1\r\n\r\n",  # no Host
        b"GET /version HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ],
    ids=["http-0.9", "no-host", "two-hosts"],
)
def test_malformed_requests_get_400_json(relay: RelayProcess, request_line: bytes) -> None:
    with connect(relay) as sock:
        sock.sendall(request_line)
        status, body, closed = answer(sock)
    assert (status, closed) == (400, True)
    assert body["code"] in ("malformed_request", "bad_host_header")


def test_an_http_1_0_request_needs_no_host(relay: RelayProcess) -> None:
    with connect(relay) as sock:
        sock.sendall(b"GET /version HTTP/1.0\r\n\r\n")
        status, body, _ = answer(sock)
    assert status == 200
    assert "version" in body


def test_a_websocket_handshake_is_an_ordinary_request(relay: RelayProcess) -> None:
    """No WebSocket route: an upgrade gets the relay's JSON answer, not uvicorn's text/plain
    403 (which skipped the per-IP limit)."""
    with connect(relay) as sock:
        sock.sendall(
            b"GET /relay/openai/v1/realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        status, body, _ = answer(sock)
    assert (status, body["code"]) == (401, "token_required")


def test_connections_past_the_per_address_cap_get_503_and_other_addresses_are_served(
    relay: RelayProcess,
) -> None:
    held = [connect(relay) for _ in range(40)]
    try:
        time.sleep(0.2)
        with connect(relay) as extra:
            status, body, closed = answer(extra)
        assert (status, body["code"], closed) == (503, "too_many_connections", True)
        with connect(relay, source="127.0.0.2") as other:
            other.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = answer(other)
        assert status == 200
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    with connect(relay) as again:  # the closed ones no longer count
        again.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer(again)[0] == 200


def test_the_file_limit_is_raised_and_silent_connections_cannot_exhaust_it(
    mock: MockProvider, tmp_path: Path
) -> None:
    """Started with 256 files allowed of a hard 1,024: the relay takes the 1,024, holds at
    most as many clients as leave each a descriptor for its upstream, and 1,100 silent
    connections from one address leave another address served and the process whole."""
    env = relay_env(tmp_path / "relay.db", mock.url, LOG_LEVEL="info", RELAY_HEAD_TIMEOUT="30")
    relay = RelayProcess(tmp_path, env, files=(256, 1024))
    try:
        limits = Path(f"/proc/{relay.process.pid}/limits").read_text()
        (files,) = [line.split()[3:5] for line in limits.splitlines() if "open files" in line]
        assert files == ["1024", "1024"]
        silent = []
        for _ in range(1100):
            with contextlib.suppress(OSError):
                silent.append(connect(relay))
        time.sleep(0.5)
        with connect(relay, source="127.0.0.2") as other:
            other.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer(other)[0] == 200
        for sock in silent:
            sock.close()
        assert relay.process.poll() is None
    finally:
        relay.stop()
    assert not [line for line in relay.lines if "Too many open files" in line]
