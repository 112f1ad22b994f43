"""The relay's uvicorn protocol on the wire: what a response costs in TCP segments.

Each segment is a packet on the network and a wake-up of the client. uvicorn writes at every
ASGI message, so a small relayed answer (head, one chunk, the chunked encoding's end) went out
as three segments; the relay's protocol sends what a response writes in its first loop
iteration as one, and the proxy sends an answer's last chunk with its end. Counted on the
client's socket with Linux's `TCP_INFO` (`tcpi_data_segs_in`: segments that carried data, pure
ACKs not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Final

import pytest

from relay.server.protocol import CORK_LIMIT, _Corked
from tests.conftest import RelayFactory
from tests.relayserver import RelayServer, raw_relay_post, register, store_key

pytestmark = [
    pytest.mark.sqlite,
    pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO's layout is Linux's"),
]

DATA_SEGS_IN = 152  # offset of tcpi_data_segs_in in struct tcp_info (Linux 4.6 and later)


def data_segments_in(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, DATA_SEGS_IN)[0])


def read_response(sock: socket.socket) -> bytes:
    """One whole response (Content-Length or chunked) from a keep-alive connection."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            lowered = head.lower()
            if b"transfer-encoding: chunked" in lowered:
                if body.endswith(b"0\r\n\r\n"):
                    return data
            else:
                length = 0
                for line in lowered.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b": ")
                    if name == b"content-length":
                        length = int(value)
                if len(body) >= length:
                    return data
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk


def connect(relay: RelayServer) -> socket.socket:
    host, port = relay.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


@pytest.fixture
def connection(relay: RelayServer) -> Iterator[socket.socket]:
    with connect(relay) as sock:
        yield sock


def exchange(sock: socket.socket, request: bytes) -> tuple[bytes, int]:
    """The response to `request` and the number of data segments it came in."""
    before = data_segments_in(sock)
    sock.sendall(request)
    response = read_response(sock)
    return response, data_segments_in(sock) - before


ANSWER: Final = b'{"object":"chat.completion","choices":[]}'


def answering(pause: float) -> Iterator[str]:
    """A provider that, like nginx or Go's net/http, writes each small answer in one send (the
    mock provider's uvicorn writes head and body apart), or with `pause`, its head, then after
    that long its body. Its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    head %= len(ANSWER)

    def serve(conn: socket.socket) -> None:
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
                top, sep, rest = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", top)
                if sep and length and len(rest) >= int(length[1]):
                    data = rest[int(length[1]) :]
                    if pause:
                        conn.sendall(head)
                        time.sleep(pause)
                        conn.sendall(ANSWER)
                    else:
                        conn.sendall(head + ANSWER)

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    host, port = listener.getsockname()
    yield f"http://{host}:{port}"
    listener.close()


@pytest.fixture
def provider() -> Iterator[str]:
    yield from answering(0)


@pytest.fixture
def slow_provider() -> Iterator[str]:
    yield from answering(0.3)  # far longer than a loaded machine takes to pass the head on


def relay_for(make_relay: RelayFactory, provider: str) -> tuple[RelayServer, bytes]:
    """A relay whose OpenAI is `provider`, and a relayed chat request of a user of it."""
    relay = make_relay(
        RELAY_OPENAI_BASE_URL=provider, RELAY_PRIVATE_UPSTREAMS=provider.removeprefix("http://")
    )
    with relay.client() as client:
        token = register(client)
        store_key(client, token, "openai", "test-openai-key-protocol")
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    return relay, raw_relay_post(b"/relay/openai/v1/chat/completions", token, body)


def test_a_relayed_answer_reaches_the_client_in_one_segment(
    make_relay: RelayFactory, provider: str
) -> None:
    relay, request = relay_for(make_relay, provider)
    with connect(relay) as sock:
        for _ in range(3):  # the first on a new upstream connection, then on reused ones
            response, segments = exchange(sock, request)
            assert response.startswith(b"HTTP/1.1 200 ")
            assert b"transfer-encoding: chunked" in response  # head, chunk, end: three writes
            assert response.endswith(b"\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(ANSWER), ANSWER))
            assert segments == 1, response


def test_an_answers_last_chunk_goes_out_with_its_end(
    make_relay: RelayFactory, slow_provider: str
) -> None:
    """The head goes at once (a client may act on it); the body, when it comes, goes in one
    segment with the chunked encoding's end."""
    relay, request = relay_for(make_relay, slow_provider)
    with connect(relay) as sock:
        for _ in range(2):
            response, segments = exchange(sock, request)
            assert response.endswith(b"\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(ANSWER), ANSWER))
            assert segments == 2, response


def test_the_relays_own_answers_reach_the_client_in_one_segment(
    connection: socket.socket,
) -> None:
    for request in (
        b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /no-such-path HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /users HTTP/1.1\r\nHost: x\r\ncontent-length: 1\r\n\r\n{",
    ):
        response, segments = exchange(connection, request)
        assert response.startswith(b"HTTP/1.1 "), response
        assert segments == 1, response


def test_an_answer_with_no_body_write_is_sent_at_once(connection: socket.socket) -> None:
    """A HEAD answer writes only its head: held, then sent when the loop iteration ends."""
    connection.sendall(b"HEAD /version HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        assert chunk
        data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b"\r\n\r\n")  # no body follows the head
    response, _ = exchange(connection, b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b'"version"' in response  # and the connection goes on


# -- the cork itself, on a real TCP connection, on both event loops ----------------------------


@pytest.fixture(params=[pytest.param(False, id="asyncio"), pytest.param(True, id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return "asyncio", {"use_uvloop": request.param}


@pytest.fixture
async def pair() -> AsyncIterator[tuple[_Corked, asyncio.Transport, socket.socket]]:
    """A cork over a server-side transport, armed as for a new response, and the client
    socket at the other end."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, accepted)
    client.setblocking(False)
    corked = _Corked(transport, loop)  # type: ignore[arg-type]
    corked.armed = True
    yield corked, transport, client  # type: ignore[misc]
    transport.close()
    client.close()


Pair = tuple[_Corked, asyncio.Transport, socket.socket]


def left_the_cork(transport: asyncio.Transport, client: socket.socket) -> bool:
    """Whether anything written has reached the transport: on the wire or in its buffer."""
    try:
        on_the_wire = bool(client.recv(1 << 20, socket.MSG_PEEK))
    except BlockingIOError:
        on_the_wire = False
    return on_the_wire or transport.get_write_buffer_size() > 0


async def received(client: socket.socket, size: int) -> bytes:
    data = b""
    for _ in range(500):
        try:
            data += client.recv(1 << 20)
        except BlockingIOError:
            await asyncio.sleep(0.01)
        if len(data) >= size:
            return data
    raise AssertionError(f"{len(data)} of {size} bytes arrived")


@pytest.mark.anyio
async def test_a_responses_first_writes_go_out_together_and_later_ones_at_once(
    pair: Pair,
) -> None:
    corked, transport, client = pair
    before = data_segments_in(client)
    for part in (b"head ", b"chunk ", b"end"):
        corked.write(part)
    assert not left_the_cork(transport, client)
    assert await received(client, 14) == b"head chunk end"  # once the loop went round
    assert data_segments_in(client) - before == 1
    corked.write(b"later")  # a stream's next chunk: no waiting for the loop
    assert left_the_cork(transport, client)
    assert await received(client, 5) == b"later"


@pytest.mark.anyio
async def test_held_bytes_past_the_limit_go_out_at_once(pair: Pair) -> None:
    corked, transport, client = pair
    corked.write(b"head ")
    corked.write(b"x" * (CORK_LIMIT - 6))
    assert not left_the_cork(transport, client)
    corked.write(b"x")  # the limit: flow control must see these bytes before any await
    assert left_the_cork(transport, client)
    assert await received(client, CORK_LIMIT) == b"head " + b"x" * (CORK_LIMIT - 5)


@pytest.mark.anyio
async def test_closing_sends_what_is_held_first(pair: Pair) -> None:
    corked, _, client = pair
    corked.write(b"the last answer")
    corked.close()
    data = await received(client, 15)
    assert data == b"the last answer"
    await asyncio.sleep(0.05)
    assert client.recv(64) == b""  # then the connection closed
