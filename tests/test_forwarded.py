"""The client's address behind proxies (`relay.server.forwarded`): a client cannot choose its own.

Through real relays behind real appending proxies (what Railway's or Render's edge does), and
the selection rule on its own: trusted CIDRs, a number of hops, junk, IPv6, ports, several
header lines, and `X-Forwarded-Proto` on the same terms.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from relay.server.forwarded import ForwardedMiddleware, TrustedProxies, parse_address
from tests.conftest import RelayFactory

# --------------------------------------------------------------------------------------------
# Through a real relay, behind proxies that append the address they were connected from
# --------------------------------------------------------------------------------------------


class AppendingProxy:
    """A platform's edge proxy: forwards each request to `upstream`, adding the address that
    connected to it to the end of `X-Forwarded-For` (one line, as nginx and Cloudflare write it)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        skipped = (b"host", b"content-length", b"x-forwarded-for")
        headers = [(k, v) for k, v in scope["headers"] if k not in skipped]
        forwarded = [v for k, v in scope["headers"] if k == b"x-forwarded-for"]
        forwarded.append(scope["client"][0].encode())
        headers.append((b"x-forwarded-for", b", ".join(forwarded)))
        async with httpx.AsyncClient(base_url=self.upstream) as client:
            answer = await client.request(
                scope["method"], scope["path"], headers=headers, content=body
            )
        await send(
            {
                "type": "http.response.start",
                "status": answer.status_code,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer.content})


class Served:
    """An ASGI app on 127.0.0.1 (a free port) in a thread; uvicorn's own proxy handling off."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            lifespan="off",
            loop="asyncio",
            log_config=None,
            access_log=False,
            proxy_headers=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive(), "did not start"
            assert time.monotonic() < deadline, "did not start in time"
            time.sleep(0.005)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[Served] = []

    def start(app: Any) -> Served:
        servers.append(Served(app))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def client_at(address: str, url: str) -> httpx.Client:
    """A client whose connections come from `address` (any 127.x address is this machine)."""
    return httpx.Client(
        base_url=url, transport=httpx.HTTPTransport(local_address=address), timeout=10
    )


FORGED = ["1.2.3.4", "1.2.3.5, 9.9.9.9", "8.8.8.8, 127.0.0.9", "not-an-ip", "198.51.100.1,,"]


def registrations(client: httpx.Client, forged: list[str]) -> list[int]:
    """The statuses of one registration per forged `X-Forwarded-For` the client writes."""
    return [
        client.post("/users", json={"app_id": "a"}, headers={"x-forwarded-for": f}).status_code
        for f in forged
    ]


@pytest.mark.sqlite
@pytest.mark.parametrize("hops", [1, 2], ids=["one proxy", "two proxies"])
def test_a_client_cannot_write_its_own_address(
    make_relay: RelayFactory, serve: Any, hops: int
) -> None:
    """Behind `hops` appending proxies with FORWARDED_ALLOW_IPS=*, whatever a client writes
    leftmost it is counted by the address the outermost proxy saw: the 4th registration of a
    3/hour limit is refused, and another client (another address) still has its own 3."""
    env = {"RATE_LIMIT_REGISTER": "3/hour", "FORWARDED_ALLOW_IPS": "*"}
    if hops > 1:
        env["FORWARDED_TRUSTED_HOPS"] = str(hops)
    relay = make_relay(**env)
    front = relay.url
    for _ in range(hops):
        front = serve(AppendingProxy(front)).url
    with client_at("127.0.0.2", front) as first, client_at("127.0.0.3", front) as second:
        assert registrations(first, FORGED[:3]) == [200, 200, 200]
        assert registrations(first, FORGED[3:]) == [429, 429]
        assert registrations(second, FORGED[2:]) == [200, 200, 200]
        assert registrations(second, FORGED[:1]) == [429]


@pytest.mark.sqlite
def test_a_trusted_list_finds_the_client_however_many_proxies(
    make_relay: RelayFactory, serve: Any
) -> None:
    """With the proxies named (here 127.0.0.1, where both proxies connect from), no hop count
    is needed: the walk passes over them to the first address that is not one."""
    relay = make_relay(RATE_LIMIT_REGISTER="2/hour", FORWARDED_ALLOW_IPS="127.0.0.1/32")
    front = serve(AppendingProxy(serve(AppendingProxy(relay.url)).url)).url
    with client_at("127.0.0.2", front) as first, client_at("127.0.0.3", front) as second:
        assert registrations(first, FORGED[:3]) == [200, 200, 429]
        assert registrations(second, FORGED[3:]) == [200, 200]


# --------------------------------------------------------------------------------------------
# The selection rule
# --------------------------------------------------------------------------------------------

PEER = "10.0.0.2"  # the socket's peer: the proxy nearest the relay


def _wire(value: str) -> bytes:
    """A header value as a client may send it: latin-1 bytes, or UTF-8 beyond them."""
    return value.encode("latin-1") if max(map(ord, value), default=0) < 256 else value.encode()


def rewritten(
    trusted: list[str],
    *headers: tuple[str, str],
    hops: int | None = None,
    peer: str = PEER,
    kind: str = "http",
) -> tuple[tuple[str, int], str]:
    """(client, scheme) of the scope the middleware hands on."""
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    scope = {
        "type": kind,
        "client": (peer, 5555),
        "scheme": "http" if kind == "http" else "ws",
        "headers": [(k.encode(), _wire(v)) for k, v in headers],
    }
    asyncio.run(ForwardedMiddleware(app, trusted, hops)(scope, None, None))  # type: ignore[arg-type]
    return tuple(seen[0]["client"]), seen[0]["scheme"]  # type: ignore[return-value]


def client_of(trusted: list[str], forwarded_for: str, **options: Any) -> tuple[str, int]:
    return rewritten(trusted, ("x-forwarded-for", forwarded_for), **options)[0]


@pytest.mark.parametrize(
    ("forwarded_for", "hops", "client"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        ("1.2.3.4, 203.0.113.9", None, "203.0.113.9"),  # the rightmost: the platform wrote it
        ("1.2.3.4,203.0.113.9", 1, "203.0.113.9"),
        ("1.2.3.4, 203.0.113.9, 172.70.1.1", 2, "203.0.113.9"),  # behind Cloudflare too
        ("203.0.113.9, 172.70.1.1", 3, "203.0.113.9"),  # fewer proxies than hops: the farthest
        ("1.2.3.4, 203.0.113.9, ", None, "203.0.113.9"),  # empty list elements are skipped
        (" , 203.0.113.9 ,, ", 1, "203.0.113.9"),
    ],
)
def test_everyone_trusted_counts_hops_from_the_right(
    forwarded_for: str, hops: int | None, client: str
) -> None:
    assert client_of(["*"], forwarded_for, hops=hops) == (client, 0)


@pytest.mark.parametrize(
    ("trusted", "forwarded_for", "client"),
    [
        (["10.0.0.0/8"], "1.2.3.4, 203.0.113.9", "203.0.113.9"),
        (["10.0.0.0/8"], "1.2.3.4, 203.0.113.9, 10.1.1.1, 10.2.2.2", "203.0.113.9"),
        (["10.0.0.0/8", "172.64.0.0/13"], "6.6.6.6, 203.0.113.9, 172.70.1.1", "203.0.113.9"),
        (["10.0.0.2", "192.0.2.1"], "203.0.113.9, 192.0.2.1", "203.0.113.9"),
        (["10.0.0.0/8"], "10.1.1.1, 10.2.2.2", "10.1.1.1"),  # all trusted: the farthest
        (["10.0.0.0/8"], "2001:db8::7, 10.1.1.1", "2001:db8::7"),
    ],
)
def test_a_trusted_list_walks_to_the_first_address_not_in_it(
    trusted: list[str], forwarded_for: str, client: str
) -> None:
    assert client_of(trusted, forwarded_for) == (client, 0)


def test_hops_cap_the_walk_over_a_trusted_list() -> None:
    chain = "203.0.113.9, 10.1.1.1, 10.2.2.2"
    assert client_of(["10.0.0.0/8"], chain) == ("203.0.113.9", 0)
    assert client_of(["10.0.0.0/8"], chain, hops=2) == ("10.1.1.1", 0)


def test_an_untrusted_peer_is_the_client_whatever_it_sends() -> None:
    for forwarded_for in ("203.0.113.9", "10.1.1.1, 203.0.113.9"):
        assert client_of(["10.0.0.0/8"], forwarded_for, peer="192.0.2.50") == ("192.0.2.50", 5555)
    assert rewritten(["10.0.0.0/8"], ("x-forwarded-proto", "https"), peer="192.0.2.50") == (
        ("192.0.2.50", 5555),
        "http",
    )


@pytest.mark.parametrize(
    "junk",
    [
        *("unknown", "_hidden", "api.example.com", "1.2.3", "1.2.3.4.5", "01.2.3.4", "999.1.1.1"),
        *("1.2.3.4 5", "[2001:db8::1", "[2001:db8::1]x", "[2001:db8::1]:", "1.2.3.4:"),
        *("1.2.3.4:x", "1.2.3.4:99999", "1.2.3.4:123456", "1.2.3.4:\u00b2", "\u0661.2.3.4"),
    ],
)
def test_junk_is_never_the_client(junk: str) -> None:
    """Junk left of the client is the client's own writing: ignored. Junk where the client's
    address should be stops the walk at the trusted proxy that wrote it."""
    assert client_of(["*"], f"{junk}, 203.0.113.9") == ("203.0.113.9", 0)
    assert client_of(["*"], f"203.0.113.9, {junk}") == (PEER, 5555)
    assert client_of(["*"], f"203.0.113.9, {junk}, 172.70.1.1", hops=2) == ("172.70.1.1", 0)
    assert client_of(["10.0.0.0/8"], f"203.0.113.9, {junk}, 10.1.1.1") == ("10.1.1.1", 0)


@pytest.mark.parametrize(
    ("entry", "client"),
    [
        ("203.0.113.9:4711", ("203.0.113.9", 4711)),
        ("2001:db8::1", ("2001:db8::1", 0)),
        ("2001:DB8:0:0::1", ("2001:db8::1", 0)),
        ("[2001:db8::1]", ("2001:db8::1", 0)),
        ("[2001:db8::1]:443", ("2001:db8::1", 443)),
        ("::ffff:203.0.113.9", ("203.0.113.9", 0)),  # one client, however a proxy spells it
        ("[::ffff:203.0.113.9]:80", ("203.0.113.9", 80)),
    ],
)
def test_ports_and_ipv6(entry: str, client: tuple[str, int]) -> None:
    assert client_of(["*"], f"1.2.3.4, {entry}") == client


def test_an_ipv6_or_mapped_peer_is_judged_by_its_address() -> None:
    assert client_of(["10.0.0.0/8"], "203.0.113.9", peer="::ffff:10.0.0.2") == ("203.0.113.9", 0)
    assert client_of(["fd00::/8"], "203.0.113.9", peer="fd00::2") == ("203.0.113.9", 0)
    assert client_of(["fd00::/8"], "203.0.113.9", peer="fe80::2") == ("fe80::2", 5555)


def test_several_forwarded_for_lines_are_not_believed() -> None:
    """Proxies differ in the line they append to (Heroku's router was seen appending to the
    first, HAProxy adds one of its own), so a client writing a second line could choose the one
    read: the request counts as the proxy's own."""
    lines = [("x-forwarded-for", "203.0.113.9"), ("x-forwarded-for", "6.6.6.6")]
    assert rewritten(["*"], *lines)[0] == (PEER, 5555)
    assert rewritten(["10.0.0.0/8"], *lines)[0] == (PEER, 5555)
    # The protocol is still believed from a trusted peer.
    assert rewritten(["*"], *lines, ("x-forwarded-proto", "https")) == ((PEER, 5555), "https")


@pytest.mark.parametrize(
    ("headers", "scheme"),
    [
        ([("x-forwarded-proto", "https")], "https"),
        ([("x-forwarded-proto", " HTTPS ")], "https"),
        ([("x-forwarded-proto", "gopher")], "http"),
        ([("x-forwarded-proto", "")], "http"),
        ([("x-forwarded-for", "203.0.113.9"), ("x-forwarded-proto", "https, http")], "http"),
    ],
)
def test_the_forwarded_protocol(headers: list[tuple[str, str]], scheme: str) -> None:
    assert rewritten(["*"], *headers)[1] == scheme


def test_the_protocol_is_taken_at_the_client_depth() -> None:
    """Two proxies each appending their protocol: the client's is the outer one's."""
    headers = [("x-forwarded-for", "203.0.113.9, 172.70.1.1"), ("x-forwarded-proto", "https, http")]
    assert rewritten(["*"], *headers, hops=2) == (("203.0.113.9", 0), "https")
    # A proxy that overwrote it rather than appending leaves one value: that one.
    headers[1] = ("x-forwarded-proto", "https")
    assert rewritten(["*"], *headers, hops=2) == (("203.0.113.9", 0), "https")


def test_websockets_get_their_own_scheme_and_lifespan_is_left_alone() -> None:
    proto = ("x-forwarded-proto", "https")
    assert rewritten(["*"], proto, kind="websocket") == ((PEER, 5555), "wss")
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(dict(scope))

    scope = {"type": "lifespan", "headers": [(b"x-forwarded-for", b"1.2.3.4")]}
    asyncio.run(ForwardedMiddleware(app, ["*"])(scope, None, None))  # type: ignore[arg-type]
    assert seen == [scope]


def test_trusted_entries_are_addresses_or_blocks() -> None:
    assert TrustedProxies(["10.0.0.1", "fd00::/8"]).trusts(parse_address("fd00::9"))  # type: ignore[arg-type]
    assert not TrustedProxies(["10.0.0.1"]).trusts(parse_address("10.0.0.2"))  # type: ignore[arg-type]
    assert TrustedProxies(["*"]).hops == 1
    assert TrustedProxies(["10.0.0.0/8"]).hops is None
    with pytest.raises(ValueError):
        TrustedProxies(["railway"])
