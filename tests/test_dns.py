"""Client-named hosts are looked up on a resolver of their own: c-ares, against name servers
that are real UDP sockets on 127.0.0.1 (one that answers from a table, one that never answers).

The starvation test runs the relay's own default resolver; to keep every lookup on this
machine it points c-ares at the mute server (`pycares.Channel`, wrapped) and replaces the
system's `socket.getaddrinfo`, which the event loop's default thread pool runs for every
provider's connection, with one that blocks on the names the clients made up, as a name server
that never answers would. Today's relay looked those names up in that same pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohappyeyeballs
import httpx
import pycares
import pytest

from relay.errors import BadRequest, ServiceUnavailable
from relay.proxy.ssrf import AresResolver, UpstreamPolicy
from tests.conftest import LogCapture, provider_key
from tests.mockprovider import MockProvider
from tests.relayserver import RelayServer, register, relay_env, store_key

pytestmark = pytest.mark.sqlite

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
COMPATIBLE = "/relay/openai-compatible/v1/chat/completions"
A, AAAA = 1, 28


@dataclass
class NameServer:
    """A DNS server on 127.0.0.1 (UDP, a free port): A records from `answers`, no AAAA, NXDOMAIN
    for other names; with `mute`, it only listens. Records every question (name, type)."""

    answers: Mapping[str, str] = field(default_factory=dict)
    mute: bool = False
    questions: list[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def names(self) -> set[str]:
        return {name for name, _ in list(self.questions)}

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                query, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            name, qtype, end = _question(query)
            self.questions.append((name, qtype))
            if not self.mute:
                self.sock.sendto(self._answer(query, name, qtype, end), peer)

    def _answer(self, query: bytes, name: str, qtype: int, end: int) -> bytes:
        address = self.answers.get(name)
        rcode = 3 if address is None else 0  # NXDOMAIN, or NOERROR
        records = b""
        if address is not None and qtype == A:
            rdata = ipaddress.IPv4Address(address).packed
            records = struct.pack("!HHHIH", 0xC00C, A, 1, 60, len(rdata)) + rdata
        flags = 0x8180 | rcode  # a response, recursion desired and available
        head = struct.pack(
            "!HHHHHH", *struct.unpack("!H", query[:2]), flags, 1, 1 if records else 0, 0, 0
        )
        return head + query[12:end] + records


def _question(query: bytes) -> tuple[str, int, int]:
    """The first question's name, type and where it ends."""
    labels, at = [], 12
    while query[at]:
        labels.append(query[at + 1 : at + 1 + query[at]].decode("ascii").lower())
        at += 1 + query[at]
    qtype = struct.unpack("!H", query[at + 1 : at + 3])[0]
    return ".".join(labels), qtype, at + 5


@pytest.fixture
def name_server() -> Iterator[Any]:
    servers: list[NameServer] = []

    def start(answers: Mapping[str, str] | None = None, *, mute: bool = False) -> NameServer:
        servers.append(NameServer(dict(answers or {}), mute))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def dialled(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP dial the relay makes; only 127.0.0.1 goes through."""
    attempts: list[tuple[str, int]] = []
    original = aiohappyeyeballs.start_connection

    async def guarded(addr_infos: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        for *_, sockaddr in addr_infos:
            attempts.append((str(sockaddr[0]), int(sockaddr[1])))
            if sockaddr[0] != "127.0.0.1":
                raise OSError(f"test guard: refused to dial {sockaddr[0]}")
        return await original(addr_infos, *args, **kwargs)

    monkeypatch.setattr(aiohappyeyeballs, "start_connection", guarded)
    return attempts


@pytest.fixture
def start_relay(mock: MockProvider, tmp_path: Path, captured_logs: LogCapture) -> Iterator[Any]:
    servers: list[RelayServer] = []

    def start(resolver: Any = None, loop: str = "auto", **env: str) -> RelayServer:
        db = tmp_path / f"relay-{len(servers)}.db"
        servers.append(RelayServer.from_env(relay_env(db, mock.url, **env), resolver, loop))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def user_of(client: httpx.Client, *providers: str) -> str:
    token = register(client)
    for provider in providers:
        store_key(client, token, provider, provider_key(provider))
    return token


def named(client: httpx.Client, token: str, base_url: str) -> httpx.Response:
    headers = {"x-relay-token": token, "x-relay-base-url": base_url}
    return client.post(COMPATIBLE, json=CHAT, headers=headers)


def unresolved(response: httpx.Response) -> bool:
    return response.status_code == 400 and response.json() == {
        "error": "x-relay-base-url host could not be resolved",
        "code": "invalid_base_url",
    }


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_client_named_hosts_are_resolved_by_c_ares(
    start_relay: Any, name_server: Any, mock: MockProvider, dialled: list[Any], loop: str
) -> None:
    dns = name_server({"ok.test": "127.0.0.1", "private.test": "10.0.0.1"})
    resolver = AresResolver([dns.address], timeout=2)
    server = start_relay(resolver, loop, RELAY_PRIVATE_UPSTREAMS="127.0.0.1/32")
    with server.client() as client:
        token = user_of(client, "openai-compatible")
        answered = named(client, token, f"http://OK.test:{mock.port}")
        assert answered.status_code == 200, answered.text
        assert mock.last().header("host") == f"ok.test:{mock.port}"
        assert unresolved(named(client, token, "https://missing.test"))
        refused = named(client, token, "https://private.test")
        assert refused.json()["error"] == "x-relay-base-url must resolve to a public address"
    assert dialled == [("127.0.0.1", mock.port)]
    assert {("ok.test", A), ("missing.test", A), ("private.test", A)} <= set(dns.questions)
    assert resolver.open == 0


def test_a_lookup_never_answered_is_refused_after_the_dns_timeout(
    start_relay: Any, name_server: Any, mock: MockProvider
) -> None:
    mute = name_server(mute=True)
    resolver = AresResolver([mute.address], timeout=0.4)
    server = start_relay(resolver, RELAY_DNS_TIMEOUT="0.4")
    with server.client() as client:
        token = user_of(client, "openai-compatible")
        started = time.monotonic()
        assert unresolved(named(client, token, "https://silent.test"))
        assert 0.4 <= time.monotonic() - started < 2
    assert ("silent.test", A) in mute.questions
    # c-ares gives up about when the relay does: the query does not linger.
    deadline = time.monotonic() + 2
    while resolver.open and time.monotonic() < deadline:
        time.sleep(0.02)
    assert resolver.open == 0
    assert mock.requests == []


def test_a_process_has_at_most_so_many_queries_open(name_server: Any) -> None:
    mute = name_server(mute=True)
    policy = UpstreamPolicy([], AresResolver([mute.address], timeout=0.3, limit=2))

    async def three() -> list[BaseException]:
        lookups = [
            policy.resolve(f"https://q{n}.test", owner=f"token-{n}", lookup_timeout=0.3)
            for n in range(3)
        ]
        return list(await asyncio.gather(*lookups, return_exceptions=True))  # type: ignore[arg-type]

    errors = asyncio.run(three())
    assert [type(e) for e in errors] == [BadRequest, BadRequest, ServiceUnavailable]
    busy = errors[2]
    assert isinstance(busy, ServiceUnavailable)
    assert (busy.status, busy.code, busy.headers) == (503, "resolver_busy", {"retry-after": "1"})
    assert mute.names() == {"q0.test", "q1.test"}


@pytest.mark.parametrize("loop", ["asyncio"])  # the thread pool below is asyncio's
def test_lookups_that_never_answer_delay_no_other_provider(
    start_relay: Any,
    name_server: Any,
    mock: MockProvider,
    monkeypatch: pytest.MonkeyPatch,
    loop: str,
) -> None:
    """Eight openai-compatible requests whose names never resolve (more, on a machine whose
    event loops' default thread pool has more than six threads), then an OpenAI request: it is
    answered at once, and the eight get their 400 at about RELAY_DNS_TIMEOUT. Through the relay's
    own resolver, not one the test gives it."""
    hung_requests = max(8, min(32, (os.cpu_count() or 1) + 4) + 2)  # asyncio's pool size, +2
    mute = name_server(mute=True)
    release = threading.Event()
    blocked: list[str] = []
    system = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        try:
            ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            return system(host, *args, **kwargs)
        if name.endswith(".hang.test"):  # a name server that never answers
            blocked.append(name)
            release.wait(30)
        raise socket.gaierror(socket.EAI_NONAME, "test guard: no real name lookups")

    class LoopbackChannel(pycares.Channel):
        def __init__(self, **options: Any) -> None:
            super().__init__(**{**options, "servers": [mute.address]})

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(pycares, "Channel", LoopbackChannel)
    timeout = 2.0  # long beside the OpenAI request's time on a loaded machine
    server = start_relay(None, loop, RELAY_DNS_TIMEOUT=str(timeout))
    with server.client() as client:
        tokens = [
            user_of(client, "openai-compatible", "openai") for _ in range((hung_requests + 1) // 2)
        ]

    def hung(n: int) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        with server.client() as own:
            response = named(own, tokens[n // 2], f"https://n{n}.hang.test")
        return response, time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(hung_requests) as pool:
        try:
            pending = [pool.submit(hung, n) for n in range(hung_requests)]
            deadline = time.monotonic() + 3
            while len(mute.names() | set(blocked)) < hung_requests - 2:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            with server.client(timeout=5) as client:
                started = time.monotonic()
                answered = client.post(
                    "/relay/openai/v1/chat/completions",
                    json=CHAT,
                    headers={"x-relay-token": tokens[0]},
                )
                elapsed = time.monotonic() - started
            assert answered.status_code == 200, answered.text
            assert elapsed < timeout / 2, f"the OpenAI request waited {elapsed:.2f} s"
            results = [future.result() for future in pending]
        finally:
            release.set()
    assert all(unresolved(response) for response, _ in results)
    # c-ares gives up about at the timeout (its two tries' waits vary a little).
    took = [took for _, took in results]
    assert all(timeout * 0.8 <= each < timeout + 2 for each in took), took
    assert mute.names() >= {f"n{n}.hang.test" for n in range(hung_requests)}
    assert blocked == [], "a client-named host went through the system's thread pool"
