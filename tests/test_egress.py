"""Egress through an HTTP proxy (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`) and the operator's CAs
(`RELAY_CA_BUNDLE`), against a small CONNECT proxy on 127.0.0.1 that records what passes.

The upstream is a TLS server whose self-signed certificate is trusted only through the CA
bundle; the proxy sees the CONNECT line, then TLS bytes: never a provider key. The transport's
tests run under both event loops; the end-to-end ones run a real relay process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from relay.config import ConfigError, Settings
from relay.services import upstream_transport
from relay.upstream.client import new_transport
from relay.upstream.egress import NoProxy, Proxy, parse_proxy
from relay.upstream.http11 import Origin
from relay.upstream.transport import PINNED_ADDRESS, HTTPTransport
from tests.mockprovider import MockProvider
from tests.relayprocess import RelayProcess
from tests.relayserver import RelayServer, register, relay_env, store_key
from tests.test_ssrf import FakeResolver
from tests.test_transport import OK, TIMEOUTS, Upstream, _certificate, answer_each

pytestmark = pytest.mark.sqlite

T = TypeVar("T")
SECRET = "32-characters-of-test-secret-xyz"
CANARY = "sk-egress-canary-7f3a9c"  # a provider key: the proxy must never see it
REFUSAL = b"proxy says: internal detail 10.9.8.7, user ops"  # nor may the client
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(params=[pytest.param(False, id="asyncio"), pytest.param(True, id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return "asyncio", {"use_uvloop": request.param}


@dataclass
class ConnectProxy:
    """A CONNECT proxy: records each CONNECT head and every byte the client sent, then tunnels
    (or, with `refuse`, answers that status with `REFUSAL` as its body)."""

    refuse: int | None = None
    port: int = 0
    heads: list[bytes] = field(default_factory=list)
    seen: bytearray = field(default_factory=bytearray)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def targets(self) -> list[str]:
        return [head.split(b" ")[1].decode() for head in self.heads]

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            self.seen += head
            if self.refuse is not None:
                writer.write(
                    b"HTTP/1.1 %d Refused\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                    b"\r\n%b" % (self.refuse, len(REFUSAL), REFUSAL)
                )
                await writer.drain()
                return
            host, _, port = head.split(b" ")[1].decode().rpartition(":")
            host = "127.0.0.1" if host == "localhost" else host.strip("[]")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(
                self._pipe(reader, up_writer, record=True), self._pipe(up_reader, writer)
            )
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool = False
    ) -> None:
        try:
            while data := await reader.read(65536):
                if record:
                    self.seen += data
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def proxying(refuse: int | None = None) -> AsyncIterator[ConnectProxy]:
    proxy = ConnectProxy(refuse)
    server = await asyncio.start_server(proxy.accept, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    async with server:
        yield proxy


@contextlib.asynccontextmanager
async def tls_upstream(cert: tuple[Path, Path], *, tls: bool = True) -> AsyncIterator[Upstream]:
    """A provider answering `OK` to every request, over TLS with `cert` (or plain)."""
    context = None
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*cert)
    upstream = Upstream(answer_each(OK))
    server = await asyncio.start_server(upstream.accept, "127.0.0.1", 0, ssl=context)
    upstream.port = server.sockets[0].getsockname()[1]
    async with server:
        yield upstream


@contextlib.asynccontextmanager
async def using(transport: HTTPTransport) -> AsyncIterator[HTTPTransport]:
    try:
        yield transport
    finally:
        await transport.aclose()


def call(url: str, **extensions: object) -> httpx.Request:
    return httpx.Request(
        "POST",
        url,
        headers=[(b"authorization", f"Bearer {CANARY}".encode())],
        content=b'{"model":"m"}',
        extensions={"timeout": TIMEOUTS, **extensions},
    )


async def fetch(transport: HTTPTransport, request: httpx.Request) -> httpx.Response:
    response = await transport.handle_async_request(request)
    await response.aread()
    await response.aclose()
    return response


# --------------------------------------------------------------------------------------------
# The transport, under both loops
# --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_https_goes_through_a_tunnel_the_proxy_cannot_read(tmp_path: Path) -> None:
    cert = _certificate(tmp_path)
    async with (
        tls_upstream(cert) as upstream,
        proxying() as proxy,
        using(new_transport(https_proxy=proxy.url, ca_files=[str(cert[0])])) as transport,
    ):
        url = f"https://localhost:{upstream.port}/v1/chat"
        for _ in range(2):
            assert (await fetch(transport, call(url))).status_code == 200
    target = f"localhost:{upstream.port}"
    assert proxy.targets == [target]  # one tunnel, reused
    assert proxy.heads[0] == f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    assert len(upstream.requests) == 2
    assert CANARY.encode() in upstream.requests[0][0]
    assert CANARY.encode() not in proxy.seen
    assert b"/v1/chat" not in proxy.seen


@pytest.mark.anyio
async def test_a_pinned_request_tunnels_to_its_address_and_checks_the_name(tmp_path: Path) -> None:
    """The proxy is asked for the checked address, never the name it could resolve again; TLS
    still verifies the certificate for the name (`localhost`, not 127.0.0.1)."""
    cert = _certificate(tmp_path)
    async with (
        tls_upstream(cert) as upstream,
        proxying() as proxy,
        using(new_transport(https_proxy=proxy.url, ca_files=[str(cert[0])])) as transport,
    ):
        url = f"https://localhost:{upstream.port}/v1/chat"
        response = await fetch(transport, call(url, **{PINNED_ADDRESS: "127.0.0.1"}))
    assert response.status_code == 200
    assert proxy.targets == [f"127.0.0.1:{upstream.port}"]


@pytest.mark.anyio
async def test_the_certificate_is_checked_through_the_tunnel(tmp_path: Path) -> None:
    cert = _certificate(tmp_path)
    async with (
        tls_upstream(cert) as upstream,
        proxying() as proxy,
        using(new_transport(https_proxy=proxy.url)) as transport,  # the CA is not trusted
    ):
        with pytest.raises(httpx.ConnectError, match="certificate"):
            await fetch(transport, call(f"https://localhost:{upstream.port}/v1/chat"))
        assert transport.pool.open_connections == 0
    assert CANARY.encode() not in proxy.seen


@pytest.mark.anyio
async def test_the_proxys_credentials_go_as_basic_authorization(tmp_path: Path) -> None:
    cert = _certificate(tmp_path)
    async with (
        tls_upstream(cert) as upstream,
        proxying() as proxy,
    ):
        credentialed = f"http://us%40er:p%3Ass@127.0.0.1:{proxy.port}"
        transport = new_transport(https_proxy=credentialed, ca_files=[str(cert[0])])
        async with using(transport):
            await fetch(transport, call(f"https://localhost:{upstream.port}/v1/chat"))
            assert transport.egress is not None
            assert "p:ss" not in repr(transport.egress.https)
    expected = b"Proxy-Authorization: Basic " + base64.b64encode(b"us@er:p:ss") + b"\r\n"
    assert expected in proxy.heads[0]


@pytest.mark.anyio
@pytest.mark.parametrize("status", [407, 403])
async def test_a_refused_tunnel_is_a_connect_error_naming_only_the_status(status: int) -> None:
    async with (
        proxying(refuse=status) as proxy,
        using(new_transport(https_proxy=proxy.url)) as transport,
    ):
        with pytest.raises(httpx.ConnectError) as raised:
            await fetch(transport, call("https://api.example.test/v1/chat"))
        assert transport.pool.open_connections == 0
    assert str(status) in str(raised.value)
    assert b"internal detail" not in str(raised.value).encode()
    assert proxy.targets == ["api.example.test:443"]


@pytest.mark.anyio
@pytest.mark.parametrize("no_proxy", ["localhost", ".localhost", "*", "127.0.0.0/8", "LOCALHOST:*"])
async def test_no_proxy_goes_direct(tmp_path: Path, no_proxy: str) -> None:
    cert = _certificate(tmp_path)
    async with tls_upstream(cert) as upstream, proxying(refuse=403) as proxy:
        rule = no_proxy.replace("*", str(upstream.port)) if ":" in no_proxy else no_proxy
        transport = new_transport(https_proxy=proxy.url, no_proxy=rule, ca_files=[str(cert[0])])
        async with using(transport):
            url = f"https://localhost:{upstream.port}/v1/chat"
            response = await fetch(transport, call(url, **{PINNED_ADDRESS: "127.0.0.1"}))
    assert response.status_code == 200
    assert proxy.heads == []


@pytest.mark.anyio
async def test_plain_http_goes_through_a_tunnel_too(tmp_path: Path) -> None:
    """One way through the proxy for both schemes: the request inside is the same origin-form
    request a direct connection carries."""
    async with (
        tls_upstream(_certificate(tmp_path), tls=False) as upstream,
        proxying() as proxy,
        using(new_transport(http_proxy=proxy.url, https_proxy="http://127.0.0.1:9")) as transport,
    ):
        response = await fetch(transport, call(f"http://127.0.0.1:{upstream.port}/v1/chat"))
    assert response.status_code == 200
    assert proxy.targets == [f"127.0.0.1:{upstream.port}"]
    assert upstream.requests[0][0].startswith(b"POST /v1/chat HTTP/1.1\r\n")


# --------------------------------------------------------------------------------------------
# Routing rules and settings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "host", "port", "address", "bypass"),
    [
        ("example.com", "example.com", 443, None, True),
        ("example.com", "api.example.com", 443, None, True),
        (".example.com", "example.com", 443, None, True),
        ("*.example.com", "api.example.com", 443, None, True),
        ("example.com", "badexample.com", 443, None, False),
        ("example.com:8443", "example.com", 443, None, False),
        ("example.com:8443", "example.com", 8443, None, True),
        ("10.0.0.0/8", "10.1.2.3", 443, None, True),
        ("10.0.0.0/8", "internal.test", 443, "10.1.2.3", True),  # the pinned address
        ("10.0.0.0/8", "11.1.2.3", 443, None, False),
        ("::1", "::1", 443, None, True),
        ("2001:db8::/32", "2001:db8::7", 443, None, True),
        ("[2001:db8::1]:8443", "2001:db8::1", 443, None, False),
        ("a.test, b.test  c.test", "c.test", 80, None, True),
        ("*", "anything.test", 443, None, True),
        ("", "example.com", 443, None, False),
        ("EXAMPLE.COM.", "Api.Example.com.", 443, None, True),
    ],
)
def test_no_proxy_rules(
    rules: str, host: str, port: int, address: str | None, bypass: bool
) -> None:
    assert NoProxy(rules).matches(host, port, address) is bypass


def test_a_proxy_url_is_parsed_and_its_password_never_shown() -> None:
    proxy = parse_proxy("http://ops:s3cret@Proxy.internal:3128")
    assert (proxy.host, proxy.port, proxy.netloc) == ("proxy.internal", 3128, "proxy.internal:3128")
    assert "s3cret" not in repr(proxy)
    assert parse_proxy("proxy.internal:8080") == Proxy("proxy.internal", 8080)
    for bad in ("https://proxy:443", "socks5://proxy:1080", "http://proxy:3128/path", "http://"):
        with pytest.raises(ValueError, match="must") as raised:
            parse_proxy(bad)
        assert "proxy:" not in str(raised.value)  # the URL itself is never repeated


def test_the_pool_keeps_proxied_and_direct_connections_apart() -> None:
    direct = Origin(b"https", "api.example.test", 443, None)
    proxied = Origin(b"https", "api.example.test", 443, None, Proxy("proxy.a", 3128))
    other = Origin(b"https", "api.example.test", 443, None, Proxy("proxy.b", 3128))
    assert len({direct, proxied, other}) == 3


def test_settings_read_the_proxy_variables_lower_case_first() -> None:
    settings = Settings.from_env(
        {
            "ENCRYPTION_SECRET": SECRET,
            "https_proxy": "http://lower:3128",
            "HTTPS_PROXY": "http://upper:3128",
            "HTTP_PROXY": "http://plain:3128",
            "NO_PROXY": "internal.test",
        }
    )
    assert str(settings.https_proxy) == "http://lower:3128"
    assert str(settings.http_proxy) == "http://plain:3128"
    assert settings.no_proxy == "internal.test"
    assert "lower" not in repr(settings)
    assert Settings.from_env({"ENCRYPTION_SECRET": SECRET}).https_proxy is None


def test_a_bad_proxy_url_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"ENCRYPTION_SECRET": SECRET, "HTTPS_PROXY": "https://u:pw1@p:443"})
    assert str(raised.value).startswith("HTTPS_PROXY must be an http:// proxy URL")
    assert "pw1" not in str(raised.value)


def test_ca_bundles_must_hold_certificates(tmp_path: Path) -> None:
    cert, _ = _certificate(tmp_path)
    settings = Settings.from_env({"ENCRYPTION_SECRET": SECRET, "RELAY_CA_BUNDLE": str(cert)})
    assert settings.ca_files == (str(cert),)
    with pytest.raises(ConfigError, match=r"RELAY_CA_BUNDLE: .* is not a file"):
        Settings.from_env({"ENCRYPTION_SECRET": SECRET, "RELAY_CA_BUNDLE": str(tmp_path / "no")})
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="holds no certificate"):
        Settings.from_env({"ENCRYPTION_SECRET": SECRET, "RELAY_CA_BUNDLE": str(junk)})
    # SSL_CERT_FILE and SSL_CERT_DIR as OpenSSL reads them: taken when they exist.
    missing = Settings.from_env(
        {"ENCRYPTION_SECRET": SECRET, "SSL_CERT_FILE": str(tmp_path / "no"), "SSL_CERT_DIR": "/no"}
    )
    assert (missing.ca_files, missing.ca_dirs) == ((), ())
    both = Settings.from_env(
        {
            "ENCRYPTION_SECRET": SECRET,
            "SSL_CERT_FILE": str(cert),
            "SSL_CERT_DIR": f"/no:{tmp_path}",
        }
    )
    assert (both.ca_files, both.ca_dirs) == ((str(cert),), (str(tmp_path),))


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [("asyncio", {"use_uvloop": False})])
async def test_the_relay_builds_its_transport_from_the_settings(
    anyio_backend: object, tmp_path: Path
) -> None:
    cert = _certificate(tmp_path)
    async with tls_upstream(cert) as upstream, proxying() as proxy:
        settings = Settings.from_env(
            {"ENCRYPTION_SECRET": SECRET, "HTTPS_PROXY": proxy.url, "RELAY_CA_BUNDLE": str(cert[0])}
        )
        async with using(upstream_transport(settings)) as transport:
            response = await fetch(transport, call(f"https://localhost:{upstream.port}/v1"))
    assert response.status_code == 200
    assert proxy.targets == [f"localhost:{upstream.port}"]
    no_proxy = upstream_transport(Settings.from_env({"ENCRYPTION_SECRET": SECRET}))
    assert no_proxy.egress is None  # the direct path looks nothing up
    await no_proxy.aclose()


# --------------------------------------------------------------------------------------------
# Through a real relay process
# --------------------------------------------------------------------------------------------


class LoopThread:
    """An event loop in a thread, for the proxy and upstream beside a relay process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    def enter(self, manager: contextlib.AbstractAsyncContextManager[T]) -> T:
        return self.run(manager.__aenter__())

    def stop(self, *managers: contextlib.AbstractAsyncContextManager[Any]) -> None:
        for manager in reversed(managers):
            self.run(manager.__aexit__(None, None, None))
        self.run(self._cancel_the_rest())  # the handlers of connections still open
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()

    @staticmethod
    async def _cancel_the_rest() -> None:
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def background() -> Iterator[tuple[LoopThread, list[Any]]]:
    thread = LoopThread()
    managers: list[Any] = []
    yield thread, managers
    thread.stop(*managers)


def start(background: tuple[LoopThread, list[Any]], manager: Any) -> Any:
    thread, managers = background
    managers.append(manager)
    return thread.enter(manager)


def relayed(relay: RelayProcess, key: str, *, verify: bool = False) -> httpx.Response:
    with relay.client() as client:
        token = register(client)
        if verify:  # the key check goes out through the same transport
            checked = client.post(
                "/keys/openai?verify=true", json={"key": key}, headers={"x-relay-token": token}
            )
            assert checked.status_code == 200, checked.text
        else:
            store_key(client, token, "openai", key)
        return client.post(
            "/relay/openai/v1/chat/completions", json=CHAT, headers={"x-relay-token": token}
        )


def test_a_relayed_call_goes_through_the_proxy_which_sees_only_tls(
    background: tuple[LoopThread, list[Any]], mock: MockProvider, tmp_path: Path
) -> None:
    cert = _certificate(tmp_path)
    upstream: Upstream = start(background, tls_upstream(cert))
    proxy: ConnectProxy = start(background, proxying())
    env = relay_env(
        tmp_path / "relay.db",
        mock.url,
        RELAY_OPENAI_BASE_URL=f"https://localhost:{upstream.port}",
        HTTPS_PROXY=proxy.url,
        RELAY_CA_BUNDLE=str(cert[0]),
    )
    relay = RelayProcess(tmp_path, env)
    try:
        response = relayed(relay, CANARY, verify=True)
    finally:
        relay.stop()
    assert response.status_code == 200, response.text
    assert {head.split(b" ")[1] for head, _ in upstream.requests} == {
        b"/v1/models",  # the key check
        b"/v1/chat/completions",
    }
    assert set(proxy.targets) == {f"localhost:{upstream.port}"}
    assert all(CANARY.encode() in head for head, _ in upstream.requests)
    assert CANARY.encode() not in proxy.seen
    assert any(f"through the egress proxy 127.0.0.1:{proxy.port}" in line for line in relay.lines)


@pytest.mark.parametrize("status", [407, 403])
def test_a_proxy_refusing_the_tunnel_gives_the_client_a_502_and_nothing_of_its_answer(
    background: tuple[LoopThread, list[Any]], mock: MockProvider, tmp_path: Path, status: int
) -> None:
    proxy: ConnectProxy = start(background, proxying(refuse=status))
    password = "hunter2-proxy-password"
    env = relay_env(
        tmp_path / "relay.db",
        mock.url,
        RELAY_OPENAI_BASE_URL="https://api.openai.example",
        HTTPS_PROXY=f"http://ops:{password}@127.0.0.1:{proxy.port}",
    )
    relay = RelayProcess(tmp_path, env)
    try:
        response = relayed(relay, CANARY)
    finally:
        relay.stop()
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == "upstream_unreachable"
    assert b"internal detail" not in response.content
    assert str(status) not in response.text
    assert proxy.targets == ["api.openai.example:443"]
    credentials = base64.b64encode(f"ops:{password}".encode())
    assert b"Proxy-Authorization: Basic " + credentials in proxy.heads[0]  # it was used ...
    logs = "".join(relay.lines)  # ... and never logged (the relay logs at debug here)
    assert password not in logs
    assert credentials.decode() not in logs
    assert "internal detail" not in logs
    # The operator is told why: the proxy refused the tunnel.
    failures = [line for line in relay.lines if "upstream request failed" in line]
    assert len(failures) == 1
    assert json.loads(failures[0])["cause"] == "proxy"


def test_no_proxy_bypasses_the_proxy_in_a_relay_process(
    background: tuple[LoopThread, list[Any]], mock: MockProvider, tmp_path: Path
) -> None:
    proxy: ConnectProxy = start(background, proxying(refuse=403))
    env = relay_env(tmp_path / "relay.db", mock.url, HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1")
    relay = RelayProcess(tmp_path, env)
    try:
        response = relayed(relay, CANARY)
    finally:
        relay.stop()
    assert response.status_code == 200, response.text
    assert proxy.heads == []


def test_a_client_named_upstream_is_tunnelled_to_its_checked_address(
    background: tuple[LoopThread, list[Any]], mock: MockProvider, tmp_path: Path
) -> None:
    """The name resolves to an allowed address once, in the relay's check; the proxy is asked
    for that address, so no second answer (DNS rebinding) can send it anywhere else."""
    upstream: Upstream = start(background, tls_upstream(_certificate(tmp_path), tls=False))
    proxy: ConnectProxy = start(background, proxying())
    resolver = FakeResolver({"rebind.example": ["127.0.0.1"]})
    env = relay_env(
        tmp_path / "relay.db",
        mock.url,
        HTTP_PROXY=proxy.url,
        RELAY_PRIVATE_UPSTREAMS="127.0.0.1/32",
    )
    server = RelayServer.from_env(env, resolver)
    try:
        with server.client() as client:
            token = register(client)
            store_key(client, token, "openai-compatible", CANARY)
            response = client.post(
                "/relay/openai-compatible/v1/chat/completions",
                json=CHAT,
                headers={
                    "x-relay-token": token,
                    "x-relay-base-url": f"http://rebind.example:{upstream.port}",
                },
            )
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    assert proxy.targets == [f"127.0.0.1:{upstream.port}"]
    assert f"host: rebind.example:{upstream.port}".encode() in upstream.requests[0][0].lower()
    assert resolver.calls == [("rebind.example", upstream.port)]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("proxy_url", "kind"),
    [
        ("http://127.0.0.1:9", ConnectionRefusedError),
        ("http://proxy.invalid:3128", socket.gaierror),
    ],
)
async def test_a_proxy_that_cannot_be_reached_is_named_with_the_systems_error(
    proxy_url: str, kind: type[OSError]
) -> None:
    async with using(new_transport(https_proxy=proxy_url)) as transport:
        with pytest.raises(httpx.ConnectError, match=r"the egress proxy") as raised:
            await fetch(transport, call("https://api.example.test/v1/chat"))
    assert isinstance(raised.value.__cause__, kind)
