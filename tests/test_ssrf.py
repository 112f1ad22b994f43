"""SSRF defences of the openai-compatible provider (`x-relay-base-url`), end to end and unit.

Nothing here sends traffic anywhere but 127.0.0.1. Hostile values must be refused before any
connection, and every test proves it three ways: the answer is a 400 `invalid_base_url`, the mock
provider recorded nothing, and a guard around `aiohappyeyeballs.start_connection` (what the
upstream connection pool dials with) recorded no dial at all. The guard also refuses
to dial anything but 127.0.0.1, so a regression fails loudly here instead of reaching the
network. Names resolve through `FakeResolver`, never through DNS.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import ipaddress
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohappyeyeballs
import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import BadRequest
from relay.proxy.ssrf import IPAddress, Upstream, UpstreamPolicy, is_public_address
from tests.conftest import LogCapture, provider_key
from tests.mockprovider import MockProvider
from tests.relayserver import RelayServer, register, relay_env, store_key

pytestmark = pytest.mark.sqlite

CHAT_PATH = "/relay/openai-compatible/v1/chat/completions"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
# Rate limits must not turn a refusal into a 429 in a module that sends many requests.
UNLIMITED = {
    "RATE_LIMIT_GLOBAL": "100000/minute",
    "RATE_LIMIT_RELAY": "100000/minute",
    "RATE_LIMIT_REGISTER": "100000/minute",
}
PUBLIC_V4 = "93.184.216.34"


# --------------------------------------------------------------------------------------------
# Test doubles: a resolver from a table, and a guard on every outgoing dial
# --------------------------------------------------------------------------------------------

Answer = Sequence[str] | BaseException | Callable[[int], Sequence[str]]


class FakeResolver:
    """A `Resolver` answering from a table and recording every lookup.

    An answer is a list of addresses, an exception to raise, or a callable given the how-many-th
    lookup of that name this is (1-based). Unknown names raise `OSError`, like getaddrinfo.
    """

    def __init__(self, answers: Mapping[str, Answer] | None = None) -> None:
        self.answers = dict(answers or {})
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        answer = self.answers.get(host)
        if answer is None:
            raise OSError(f"[Errno -2] Name or service not known: {host!r}")
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            answer = answer(sum(1 for name, _ in self.calls if name == host))
        return list(answer)


@pytest.fixture(scope="module", autouse=True)
def dialled() -> Iterator[list[tuple[str, int]]]:
    """Every TCP dial made in this process while the module runs; only 127.0.0.1 goes through."""
    attempts: list[tuple[str, int]] = []
    original = aiohappyeyeballs.start_connection

    async def guarded(addr_infos: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        for *_, sockaddr in addr_infos:
            host, port = str(sockaddr[0]), int(sockaddr[1])
            attempts.append((host, port))
            if host != "127.0.0.1":
                raise OSError(f"test guard: refused to dial {host}:{port}")
        return await original(addr_infos, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aiohappyeyeballs, "start_connection", guarded)
        yield attempts


@pytest.fixture(autouse=True)
def _fresh_dials(dialled: list[tuple[str, int]]) -> None:
    dialled.clear()


def compatible_user(client: httpx.Client) -> str:
    """A registered user holding an openai-compatible key; returns the token."""
    token = register(client)
    store_key(client, token, "openai-compatible", provider_key("openai-compatible"))
    return token


def relay_post(client: httpx.Client, token: str, base_url: str) -> httpx.Response:
    return client.post(
        CHAT_PATH, json=CHAT, headers={"x-relay-token": token, "x-relay-base-url": base_url}
    )


def assert_invalid_base_url(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == "invalid_base_url", response.text


StartRelay = Callable[..., RelayServer]


@pytest.fixture
def start_relay(
    mock: MockProvider, tmp_path: Path, captured_logs: LogCapture
) -> Iterator[StartRelay]:
    """`start_relay(resolver, **env)`: a relay resolving names with `resolver`; stopped after."""
    servers: list[RelayServer] = []

    def start(resolver: FakeResolver, **env: str) -> RelayServer:
        db = tmp_path / f"relay-{len(servers)}.db"
        server = RelayServer.from_env(relay_env(db, mock.url, **UNLIMITED, **env), resolver)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# --------------------------------------------------------------------------------------------
# 1. Hostile base URLs through a real relay
# --------------------------------------------------------------------------------------------

HOSTILE_RESOLVER = FakeResolver(
    {
        "public.example": [PUBLIC_V4],
        "internal.example": ["10.1.2.3"],
        "metadata.example": ["169.254.169.254"],
        "mixed.example": [PUBLIC_V4, "127.0.0.1"],
        "mapped.example": ["2606:4700:4700::1111", "::ffff:127.0.0.1"],
        "ula.example": ["fd12:3456::1"],
        "scoped.example": ["fe80::1%eth0"],
        "garbage.example": ["not-an-address"],
        "empty.example": [],
        "unicode.example": UnicodeError("label too long"),
    }
)


@dataclass
class HostileRelay:
    server: RelayServer
    client: httpx.Client
    token: str
    resolver: FakeResolver


@pytest.fixture(scope="module")
def hostile_relay(
    mock: MockProvider, tmp_path_factory: pytest.TempPathFactory, captured_logs: LogCapture
) -> Iterator[HostileRelay]:
    """A relay where no private upstream is allowed (not even the mock)."""
    db = tmp_path_factory.mktemp("ssrf") / "relay.db"
    env = relay_env(db, mock.url, RELAY_PRIVATE_UPSTREAMS="", **UNLIMITED)
    server = RelayServer.from_env(env, resolver=HOSTILE_RESOLVER)
    try:
        with server.client() as client:
            yield HostileRelay(server, client, compatible_user(client), HOSTILE_RESOLVER)
    finally:
        server.stop()


def literal(url: str, name: str) -> Any:
    """A hostile value the relay must refuse without any lookup."""
    return pytest.param(url, None, id=name)


def resolved(url: str, name: str, host: str, port: int = 443) -> Any:
    """A hostile value the relay must look up exactly once, as (host, port), then refuse."""
    return pytest.param(url, (host, port), id=name)


HOSTILE = [
    # Loopback in every spelling.
    literal("https://127.0.0.1", "loopback"),
    literal("https://127.1", "loopback-short"),
    literal("https://2130706433", "loopback-decimal"),
    literal("https://0177.0.0.1", "loopback-octal-dotted"),
    literal("https://0x7f.0.0.1", "loopback-hex-dotted"),
    literal("https://0X7F.1", "loopback-hex-upper-short"),
    literal("https://0x7f000001", "loopback-hex-int"),
    literal("https://017700000001", "loopback-octal-int"),
    literal("https://127.0.0.1./v1", "loopback-trailing-dot"),
    literal("https://127.0.0.1:{mock_port}", "the-live-mock-https"),
    literal("http://127.0.0.1:{mock_port}", "the-live-mock-http"),
    # Private, unspecified, this-network.
    literal("https://10.0.0.1", "private-10"),
    literal("https://10.255.255.255", "private-10-top"),
    literal("https://172.16.0.1", "private-172.16"),
    literal("https://172.31.255.254", "private-172.31"),
    literal("https://192.168.1.1", "private-192.168"),
    literal("https://0.0.0.0", "unspecified-v4"),
    literal("https://0", "unspecified-v4-int"),
    literal("https://0.1.2.3", "this-network-0/8"),
    literal("https://[::]", "unspecified-v6"),
    literal("https://[::1]", "loopback-v6"),
    # IPv4 embedded in IPv6.
    literal("https://[::ffff:127.0.0.1]", "v4-mapped-loopback"),
    literal("https://[::ffff:10.0.0.1]", "v4-mapped-private"),
    literal("https://[::ffff:169.254.169.254]", "v4-mapped-metadata"),
    literal("https://[::127.0.0.1]", "v4-compatible-loopback"),
    literal("https://[::ffff:0:127.0.0.1]", "v4-translated-loopback"),
    literal("https://[64:ff9b::10.0.0.1]", "nat64-private"),
    literal("https://[64:ff9b::7f00:1]", "nat64-loopback"),
    literal("https://[64:ff9b::169.254.169.254]", "nat64-metadata"),
    literal("https://[64:ff9b:1::a00:1]", "nat64-local-use"),
    literal("https://[2002:a00:1::]", "6to4-private"),
    literal("https://[2002:7f00:1::]", "6to4-loopback"),
    literal("https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]", "teredo"),
    # IPv6 special ranges.
    literal("https://[fe80::1]", "link-local-v6"),
    literal("https://[fe80::1%25eth0]", "link-local-v6-zone"),
    literal("https://[fc00::1]", "ula-fc00"),
    literal("https://[fd00:ec2::254]", "aws-metadata-v6"),
    literal("https://[fec0::1]", "site-local-v6-deprecated"),
    literal("https://[ff02::1]", "multicast-v6"),
    literal("https://[2001:db8::1]", "documentation-v6"),
    literal("https://[3fff::1]", "documentation-v6-3fff"),
    # Metadata, link-local, CGNAT, benchmark, documentation, multicast, reserved, broadcast.
    literal("https://169.254.169.254", "metadata"),
    literal("https://169.254.0.1", "link-local-v4"),
    literal("https://100.64.0.1", "cgnat-bottom"),
    literal("https://100.127.255.254", "cgnat-top"),
    literal("https://100.100.100.200", "alibaba-metadata"),
    literal("https://198.18.0.1", "benchmark-198.18"),
    literal("https://198.19.255.255", "benchmark-198.19"),
    literal("https://192.0.2.1", "documentation-test-net-1"),
    literal("https://198.51.100.7", "documentation-test-net-2"),
    literal("https://203.0.113.9", "documentation-test-net-3"),
    literal("https://224.0.0.1", "multicast-all-hosts"),
    literal("https://239.255.255.250", "multicast-ssdp"),
    literal("https://240.0.0.1", "reserved-240/4"),
    literal("https://255.255.255.255", "broadcast"),
    # localhost by name.
    literal("http://localhost", "localhost-http"),
    literal("https://localhost:8443", "localhost-port"),
    literal("https://api.localhost", "localhost-subdomain"),
    literal("https://LOCALHOST.", "localhost-upper-trailing-dot"),
    # Not an acceptable URL at all.
    literal("https://user:pass@api.example.com", "credentials"),
    literal("https://api.example.com@127.0.0.1", "userinfo-confusion"),
    literal("ftp://x.example", "scheme-ftp"),
    literal("javascript:alert(1)", "scheme-javascript"),
    literal("not a url", "not-a-url"),
    literal("https://", "no-host"),
    literal("https://[::1", "unclosed-bracket"),
    literal("https://4294967296", "v4-integer-overflow"),
    literal("https://api.example.com:99999", "port-out-of-range"),
    # Names: resolved once through the test resolver, then refused.
    resolved("http://public.example", "http-to-public-name", "public.example", 80),
    resolved("https://internal.example", "name-to-private", "internal.example"),
    resolved("https://metadata.example/latest", "name-to-metadata", "metadata.example"),
    resolved("https://mixed.example", "name-one-private-answer", "mixed.example"),
    resolved("https://mapped.example", "name-to-v4-mapped-loopback", "mapped.example"),
    resolved("https://ula.example:8443", "name-to-ula", "ula.example", 8443),
    resolved("https://scoped.example", "name-to-zoned-link-local", "scoped.example"),
    resolved("https://garbage.example", "name-garbage-answer", "garbage.example"),
    resolved("https://empty.example", "name-no-answer", "empty.example"),
    resolved("https://unicode.example", "name-unicode-error", "unicode.example"),
    resolved("https://nowhere.example", "name-does-not-resolve", "nowhere.example"),
]


def test_hostile_table_is_large_enough() -> None:
    assert len(HOSTILE) >= 40
    assert len({p.id for p in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize(("base_url", "lookup"), HOSTILE)
def test_hostile_base_url_is_refused_before_any_connection(
    hostile_relay: HostileRelay,
    mock: MockProvider,
    dialled: list[tuple[str, int]],
    base_url: str,
    lookup: tuple[str, int] | None,
) -> None:
    hostile_relay.resolver.calls.clear()
    response = relay_post(
        hostile_relay.client, hostile_relay.token, base_url.format(mock_port=mock.port)
    )
    assert_invalid_base_url(response)
    assert mock.requests == []
    assert dialled == []
    # Literals are parsed, never resolved; a name is looked up exactly once.
    assert hostile_relay.resolver.calls == ([] if lookup is None else [lookup])


def test_missing_base_url_is_refused(hostile_relay: HostileRelay, mock: MockProvider) -> None:
    response = hostile_relay.client.post(
        CHAT_PATH, json=CHAT, headers={"x-relay-token": hostile_relay.token}
    )
    assert_invalid_base_url(response)
    assert response.json()["error"] == (
        "x-relay-base-url header is required for openai-compatible provider"
    )
    assert mock.requests == []


def test_the_mock_is_reachable_once_allowed(
    start_relay: StartRelay, mock: MockProvider, dialled: list[tuple[str, int]]
) -> None:
    """The control for the table: the same request to the mock goes through when the operator
    names it in RELAY_PRIVATE_UPSTREAMS, so the refusals above are the policy at work."""
    server = start_relay(FakeResolver())
    with server.client() as client:
        response = relay_post(client, compatible_user(client), f"{mock.url}/ignored")
    assert response.status_code == 200, response.text
    assert len(mock.requests) == 1
    assert dialled == [("127.0.0.1", mock.port)]


# --------------------------------------------------------------------------------------------
# 2. DNS rebinding: the connection goes to the address that was checked
# --------------------------------------------------------------------------------------------


def test_dns_rebinding_connects_to_the_validated_address(
    start_relay: StartRelay, mock: MockProvider, dialled: list[tuple[str, int]]
) -> None:
    resolver = FakeResolver({"rebind.example": lambda n: ["127.0.0.1"] if n == 1 else ["10.9.9.9"]})
    server = start_relay(resolver, RELAY_PRIVATE_UPSTREAMS="127.0.0.1/32")
    base_url = f"http://rebind.example:{mock.port}"
    with server.client() as client:
        token = compatible_user(client)

        response = relay_post(client, token, base_url)
        assert response.status_code == 200, response.text
        assert len(mock.requests) == 1
        assert mock.last().header("host") == f"rebind.example:{mock.port}"
        # One lookup, and the dial went to the address it returned, not to the name.
        assert resolver.calls == [("rebind.example", mock.port)]
        assert dialled == [("127.0.0.1", mock.port)]

        # The next request resolves again, now to 10.9.9.9, which is not allowed.
        response = relay_post(client, token, base_url)
        assert_invalid_base_url(response)
        assert len(resolver.calls) == 2
        assert len(mock.requests) == 1
        assert dialled == [("127.0.0.1", mock.port)]


# --------------------------------------------------------------------------------------------
# 2b. Lookups: after the key, within RELAY_DNS_TIMEOUT, at most two at a time per token
# --------------------------------------------------------------------------------------------


class HangingResolver(FakeResolver):
    """`FakeResolver`, except that names under `.hang.example` are never answered."""

    async def __call__(self, host: str, port: int) -> list[str]:
        if host.endswith(".hang.example"):
            self.calls.append((host, port))
            await asyncio.Event().wait()
        return await super().__call__(host, port)


def test_the_key_is_checked_before_any_lookup(start_relay: StartRelay) -> None:
    resolver = HangingResolver()
    server = start_relay(resolver)
    with server.client() as client:
        keyless = register(client)
        response = relay_post(client, keyless, "https://a.hang.example")
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "no_key"
        refused = client.post(
            CHAT_PATH, json=CHAT, headers={"x-relay-base-url": "https://x.example"}
        )
        assert refused.status_code == 401
    assert resolver.calls == []


def test_a_lookup_is_given_the_dns_timeout_and_no_more(start_relay: StartRelay) -> None:
    server = start_relay(HangingResolver(), RELAY_DNS_TIMEOUT="0.3")
    with server.client() as client:
        token = compatible_user(client)
        started = time.monotonic()
        response = relay_post(client, token, "https://a.hang.example")
        elapsed = time.monotonic() - started
    assert_invalid_base_url(response)
    assert response.json()["error"] == "x-relay-base-url host could not be resolved"
    assert 0.3 <= elapsed < 2


def test_a_token_has_at_most_two_lookups_at_once(
    start_relay: StartRelay, mock: MockProvider
) -> None:
    resolver = HangingResolver({"ok.example": ["127.0.0.1"]})
    # The two hung lookups last the whole timeout: long enough for the third to come meanwhile.
    server = start_relay(resolver, RELAY_DNS_TIMEOUT="3", RELAY_PRIVATE_UPSTREAMS="127.0.0.1/32")
    with server.client() as client:
        busy, other = compatible_user(client), compatible_user(client)

        def hang(n: int) -> httpx.Response:
            with server.client() as own:
                return relay_post(own, busy, f"https://n{n}.hang.example")

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            hanging = [pool.submit(hang, n) for n in range(2)]
            deadline = time.monotonic() + 2
            while len(resolver.calls) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            third = relay_post(client, busy, "https://n3.hang.example")
            # Another token looks names up meanwhile.
            answered = relay_post(client, other, f"http://ok.example:{mock.port}")
            results = [future.result() for future in hanging]
        assert third.status_code == 429, third.text
        assert third.json() == {
            "error": "Too many upstream lookups in progress. Try again in 3 seconds.",
            "code": "rate_limited",
            "limit": "lookups",
        }
        assert third.headers["retry-after"] == "3"
        assert answered.status_code == 200, answered.text
        for response in results:
            assert_invalid_base_url(response)
        # Their lookups over, the token may look names up again.
        assert relay_post(client, busy, f"http://ok.example:{mock.port}").status_code == 200
    assert ("n3.hang.example", 443) not in resolver.calls


# --------------------------------------------------------------------------------------------
# 3. Redirects are never followed
# --------------------------------------------------------------------------------------------


class _ThreadedServer:
    """An ASGI app served by uvicorn on 127.0.0.1 (random port) in a daemon thread."""

    def __init__(self, app: Any, **config: Any) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=0,
                log_config=None,
                lifespan="off",
                loop="asyncio",
                access_log=False,
                timeout_graceful_shutdown=1,
                **config,
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    def __enter__(self) -> _ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.005)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class Recorder:
    """An ASGI app that records (path, query, host) of every request and answers with
    `status`, `headers` and a small JSON body."""

    def __init__(self, status: int = 200, headers: Sequence[tuple[str, str]] = ()) -> None:
        self.status = status
        self.headers = list(headers)
        self.hits: list[tuple[str, str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        while (await receive()).get("more_body"):
            pass
        host = dict(scope["headers"]).get(b"host", b"").decode()
        self.hits.append((scope["path"], scope["query_string"].decode(), host))
        body = b'{"ok":true}'
        headers = [(k.encode(), v.encode()) for k, v in self.headers]
        headers += [(b"content-type", b"application/json"), (b"content-length", b"11")]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize(
    ("status", "target"),
    [
        pytest.param(307, "self", id="307-to-itself"),
        pytest.param(308, "self", id="308-to-itself"),
        pytest.param(302, "metadata", id="302-to-metadata"),
        pytest.param(301, "metadata", id="301-to-metadata"),
    ],
)
def test_redirects_are_not_followed(
    start_relay: StartRelay, dialled: list[tuple[str, int]], status: int, target: str
) -> None:
    redirector = Recorder(status)
    with _ThreadedServer(redirector) as upstream:
        location = (
            f"http://127.0.0.1:{upstream.port}/v1/chat/completions?hop=2"
            if target == "self"
            else "http://169.254.169.254/latest/meta-data/"
        )
        redirector.headers = [("location", location)]
        resolver = FakeResolver()
        server = start_relay(resolver, RELAY_PRIVATE_UPSTREAMS=f"127.0.0.1:{upstream.port}")
        with server.client(follow_redirects=False) as client:
            base_url = f"http://127.0.0.1:{upstream.port}"
            response = relay_post(client, compatible_user(client), base_url)
        server.stop()  # closes the relay's pooled connections while the upstream still runs
    # The 3xx goes back to the client as is (or as an error); nothing follows it.
    assert response.status_code == status or response.status_code >= 400, response.text
    assert redirector.hits == [("/v1/chat/completions", "", f"127.0.0.1:{upstream.port}")]
    assert dialled == [("127.0.0.1", upstream.port)]
    assert resolver.calls == []


# --------------------------------------------------------------------------------------------
# TLS: the certificate is checked against the name, on every request
# --------------------------------------------------------------------------------------------


@dataclass
class Pki:
    ca_pem: bytes
    cert_file: Path
    key_file: Path


def make_pki(directory: Path, name: str) -> Pki:
    """A throwaway CA and a server certificate for `name` only (no IP address in it)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "byok-relay test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Pki(ca_cert.public_bytes(serialization.Encoding.PEM), cert_file, key_file)


def test_tls_verifies_the_name_on_every_request(
    start_relay: StartRelay,
    tmp_path: Path,
    dialled: list[tuple[str, int]],
) -> None:
    """`good.example` and `evil.example` both resolve to the same (allowed) address, whose
    certificate is valid for `good.example` only. A request naming `evil.example` must fail the
    TLS check, also after a verified connection to `good.example` sits in the pool: a pooled
    connection keyed by the address alone would carry `evil.example` over `good.example`'s TLS.
    """
    pki = make_pki(tmp_path, "good.example")
    ca_file = tmp_path / "test-ca.pem"
    ca_file.write_bytes(pki.ca_pem)
    upstream_app = Recorder()
    tls = {"ssl_certfile": str(pki.cert_file), "ssl_keyfile": str(pki.key_file)}
    with _ThreadedServer(upstream_app, **tls) as upstream:
        resolver = FakeResolver({"good.example": ["127.0.0.1"], "evil.example": ["127.0.0.1"]})
        server = start_relay(
            resolver, RELAY_PRIVATE_UPSTREAMS="127.0.0.1/32", RELAY_CA_BUNDLE=str(ca_file)
        )
        good, evil = (f"https://{n}.example:{upstream.port}" for n in ("good", "evil"))
        with server.client() as client:
            token = compatible_user(client)
            refused_first = relay_post(client, token, evil)
            allowed = relay_post(client, token, good)
            refused_later = relay_post(client, token, evil)
        server.stop()  # closes the relay's pooled connections while the TLS server still runs
    assert refused_first.status_code == 502, refused_first.text
    assert allowed.status_code == 200, allowed.text
    assert refused_later.status_code == 502, refused_later.text
    assert upstream_app.hits == [("/v1/chat/completions", "", f"good.example:{upstream.port}")]
    assert {address for address, _ in dialled} == {"127.0.0.1"}


# --------------------------------------------------------------------------------------------
# 4. Unit: is_public_address and UpstreamPolicy.resolve
# --------------------------------------------------------------------------------------------

ADDRESSES = [
    # Globally routable unicast.
    ("8.8.8.8", True),
    ("1.1.1.1", True),
    ("9.9.9.9", True),
    (PUBLIC_V4, True),
    ("11.0.0.1", True),
    ("100.63.255.255", True),
    ("100.128.0.0", True),
    ("172.15.255.255", True),
    ("172.32.0.0", True),
    ("198.17.255.255", True),
    ("198.20.0.0", True),
    ("223.255.255.254", True),
    ("2606:4700:4700::1111", True),
    ("2001:4860:4860::8888", True),
    ("::ffff:8.8.8.8", True),
    ("64:ff9b::8.8.8.8", True),
    ("2002:808:808::", True),
    # Everything else.
    ("127.0.0.1", False),
    ("127.255.255.254", False),
    ("10.0.0.1", False),
    ("10.255.255.255", False),
    ("172.16.0.1", False),
    ("172.31.255.254", False),
    ("192.168.1.1", False),
    ("0.0.0.0", False),
    ("0.1.2.3", False),
    ("169.254.169.254", False),
    ("169.254.0.1", False),
    ("100.64.0.1", False),
    ("100.127.255.254", False),
    ("100.100.100.200", False),
    ("198.18.0.1", False),
    ("198.19.255.255", False),
    ("192.0.2.1", False),
    ("198.51.100.7", False),
    ("203.0.113.9", False),
    ("224.0.0.1", False),
    ("239.255.255.250", False),
    ("240.0.0.1", False),
    ("255.255.255.255", False),
    ("::", False),
    ("::1", False),
    ("::ffff:127.0.0.1", False),
    ("::ffff:10.0.0.1", False),
    ("::ffff:169.254.169.254", False),
    ("::127.0.0.1", False),
    ("::8.8.8.8", False),
    ("::ffff:0:7f00:1", False),
    ("64:ff9b::10.0.0.1", False),
    ("64:ff9b::7f00:1", False),
    ("64:ff9b::a9fe:a9fe", False),
    ("64:ff9b:1::808:808", False),
    ("2002:a00:1::", False),
    ("2002:7f00:1::", False),
    ("2002::", False),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),
    ("fe80::1", False),
    ("fe80::1%eth0", False),
    ("fc00::1", False),
    ("fd00:ec2::254", False),
    ("fec0::1", False),
    ("ff02::1", False),
    ("ff0e::1", False),
    ("2001:db8::1", False),
    ("3fff::1", False),
    ("100::1", False),
]


def test_address_table_is_large_enough() -> None:
    assert len(ADDRESSES) >= 30
    assert {public for _, public in ADDRESSES} == {True, False}


@pytest.mark.parametrize(("address", "public"), ADDRESSES, ids=[a for a, _ in ADDRESSES])
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


def resolve(policy: UpstreamPolicy, base_url: str | None) -> Upstream:
    return asyncio.run(policy.resolve(base_url))


def refused(policy: UpstreamPolicy, base_url: str | None) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        asyncio.run(policy.resolve(base_url))
    assert info.value.code == "invalid_base_url"
    assert info.value.status == 400
    return info.value


def test_resolve_pins_the_first_validated_address() -> None:
    resolver = FakeResolver({"api.example": [PUBLIC_V4, "8.8.8.8"]})
    upstream = resolve(UpstreamPolicy([], resolver), "https://API.Example./v1/ignored?x=1#frag")
    assert upstream == Upstream("https", "api.example", 443, ipaddress.ip_address(PUBLIC_V4))
    assert upstream.origin == f"https://{PUBLIC_V4}:443"
    assert upstream.host_header == "api.example"
    assert resolver.calls == [("api.example", 443)]


def test_resolve_brackets_ipv6_and_keeps_a_non_default_port() -> None:
    resolver = FakeResolver({"v6.example": ["2606:4700:4700::1111", "8.8.8.8"]})
    upstream = resolve(UpstreamPolicy([], resolver), "https://v6.example:8443")
    assert upstream.address == ipaddress.ip_address("2606:4700:4700::1111")
    assert upstream.origin == "https://[2606:4700:4700::1111]:8443"
    assert upstream.host_header == "v6.example:8443"
    assert resolver.calls == [("v6.example", 8443)]


def test_resolve_literals_without_a_lookup() -> None:
    resolver = FakeResolver()
    policy = UpstreamPolicy([], resolver)
    v6 = resolve(policy, "https://[2606:4700:4700::1111]:8443/v1")
    assert v6.origin == "https://[2606:4700:4700::1111]:8443"
    assert v6.host_header == "[2606:4700:4700::1111]:8443"
    v4 = resolve(policy, "https://134744072")  # 8.8.8.8 as an integer
    assert v4.address == ipaddress.ip_address("8.8.8.8")
    assert v4.origin == "https://8.8.8.8:443"
    assert resolve(policy, "https://0x8.0x8.0x8.0x8").address == ipaddress.ip_address("8.8.8.8")
    assert resolve(policy, "https://010.010.010.010").address == ipaddress.ip_address("8.8.8.8")
    assert resolver.calls == []


def test_resolve_refuses_plain_http_to_a_public_upstream() -> None:
    resolver = FakeResolver({"api.example": [PUBLIC_V4]})
    policy = UpstreamPolicy([], resolver)
    assert refused(policy, "http://api.example").message == "x-relay-base-url must use https"
    assert refused(policy, "http://8.8.8.8").message == "x-relay-base-url must use https"


@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        (None, "x-relay-base-url header is required for openai-compatible provider"),
        ("", "x-relay-base-url header is required for openai-compatible provider"),
        ("https://u:p@api.example", "x-relay-base-url must not contain credentials"),
        ("https://u@api.example", "x-relay-base-url must not contain credentials"),
        ("https://x.localhost", "x-relay-base-url must not point at localhost"),
        ("https://10.0.0.1", "x-relay-base-url must resolve to a public address"),
        ("https://nowhere.example", "x-relay-base-url host could not be resolved"),
        ("gopher://api.example", "x-relay-base-url is not a valid URL"),
        ("https://[fe80::1", "x-relay-base-url is not a valid URL"),
    ],
)
def test_refusal_messages(base_url: str | None, message: str) -> None:
    resolver = FakeResolver()
    assert refused(UpstreamPolicy([], resolver), base_url).message == message
    assert resolver.calls == (
        [("nowhere.example", 443)] if base_url and "nowhere" in base_url else []
    )


OLLAMA = FakeResolver({"ollama.internal": ["10.0.0.5"], "other.internal": ["10.0.0.5"]})


def test_private_host_port_entry_allows_that_name_and_port_only() -> None:
    policy = UpstreamPolicy(["Ollama.Internal:11434"], OLLAMA)
    upstream = resolve(policy, "http://ollama.internal:11434/v1")
    assert upstream.address == ipaddress.ip_address("10.0.0.5")
    assert upstream.origin == "http://10.0.0.5:11434"
    assert upstream.host_header == "ollama.internal:11434"
    assert resolve(policy, "https://ollama.internal:11434").origin == "https://10.0.0.5:11434"
    # Another port, or another name for the same address, is not what the operator named.
    refused(policy, "http://ollama.internal:11435")
    refused(policy, "https://ollama.internal")
    refused(policy, "http://other.internal:11434")
    refused(policy, "https://10.0.0.5:11434")


def test_private_cidr_entry_allows_addresses_inside_it_only() -> None:
    resolver = FakeResolver(
        {
            "gw.internal": ["10.20.30.40"],
            "half.internal": ["10.0.0.1", "192.168.0.1"],
            "public.example": [PUBLIC_V4],
        }
    )
    policy = UpstreamPolicy(["10.0.0.0/8"], resolver)
    assert resolve(policy, "https://10.1.2.3").address == ipaddress.ip_address("10.1.2.3")
    assert resolve(policy, "http://10.1.2.3:8080").origin == "http://10.1.2.3:8080"
    assert resolve(policy, "http://gw.internal:8080").origin == "http://10.20.30.40:8080"
    for outside in (
        "https://192.168.0.1",
        "https://127.0.0.1",
        "https://169.254.169.254",
        "https://[::ffff:10.1.2.3]",
        "https://half.internal",
    ):
        refused(policy, outside)
    # A CIDR entry does not make plain http acceptable for a public upstream.
    refused(policy, "http://public.example")
    refused(policy, "http://8.8.8.8")


def test_http_is_refused_when_any_answer_is_public() -> None:
    """http is allowed for private upstreams only: a name answering a public address and an
    allowed private one must not be reached over plain http at the public address."""
    resolver = FakeResolver({"mixed.example": [PUBLIC_V4, "10.0.0.1"]})
    refused(UpstreamPolicy(["10.0.0.0/8"], resolver), "http://mixed.example")


# --------------------------------------------------------------------------------------------
# 5. Properties: every IPv4 spelling and embedding agrees with is_public_address
# --------------------------------------------------------------------------------------------


def _outcome(policy: UpstreamPolicy, base_url: str) -> IPAddress | None:
    try:
        return asyncio.run(policy.resolve(base_url)).address
    except BadRequest:
        return None


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(v=4))
def test_ipv4_spellings_are_accepted_iff_public(address: ipaddress.IPv4Address) -> None:
    resolver = FakeResolver()
    policy = UpstreamPolicy([], resolver)
    expected = address if is_public_address(address) else None
    octal = ".".join(f"0{int(octet):o}" for octet in str(address).split("."))
    assert _outcome(policy, f"https://{address}") == expected
    assert _outcome(policy, f"https://{int(address)}") == expected
    assert _outcome(policy, f"https://{int(address):#x}") == expected
    assert _outcome(policy, f"https://{octal}") == expected
    assert resolver.calls == []


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(v=4))
def test_embedded_ipv4_is_judged_by_itself(address: ipaddress.IPv4Address) -> None:
    public = is_public_address(address)
    n = int(address)
    mapped = ipaddress.IPv6Address(0xFFFF << 32 | n)
    nat64 = ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | n)
    sixtofour = ipaddress.IPv6Address(0x2002 << 112 | n << 80 | 1)
    assert is_public_address(mapped) is public
    assert is_public_address(nat64) is public
    assert is_public_address(sixtofour) is public
    # The IPv4-compatible form ::a.b.c.d is deprecated and never accepted.
    assert is_public_address(ipaddress.IPv6Address(n)) is False
    policy = UpstreamPolicy([], FakeResolver({"name.example": [str(mapped)]}))
    assert (_outcome(policy, "https://name.example") is not None) is public
