"""Egress through an HTTP proxy: which upstreams go through one (`HTTPS_PROXY`, `HTTP_PROXY`,
`NO_PROXY`), and the CONNECT tunnel a connection is dialled through.

Every proxied upstream, https or http, goes through a CONNECT tunnel: what runs inside is the
same connection as a direct one (origin-form requests; for https, TLS end to end with the
upstream's name for SNI and certificate checks), so the proxy sees the CONNECT line and, for
https, only TLS bytes, and the pool and the request writer stay as they are.

A request pinned to a checked address (`PINNED_ADDRESS`) asks the proxy for that address
(`CONNECT 203.0.113.7:443`), never for its name: a proxy given the name would look it up again
and could be sent elsewhere by a second DNS answer (rebinding past the SSRF check). The name
stays for SNI and the certificate.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import ipaddress
import re
import socket
from typing import Final
from urllib.parse import unquote, urlsplit

import httpx

__all__ = ["Egress", "NoProxy", "Proxy", "ProxyError", "open_tunnel", "parse_proxy"]


class ProxyError(httpx.ConnectError):
    """The egress proxy refused the tunnel, or answered in a way that opens none."""


TUNNEL_HEAD_LIMIT: Final = 16 * 1024  # the proxy's answer to CONNECT, status line and headers
ROUTES_KEPT: Final = 4096  # decisions remembered per (scheme, host, port, address)
_STATUS: Final = re.compile(rb"HTTP/1\.[01] (\d{3})(?: |\r\n)")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy; its credentials, ready as a `Proxy-Authorization` value, never shown."""

    host: str
    port: int
    authorization: bytes | None = dataclasses.field(default=None, repr=False)

    @property
    def netloc(self) -> str:
        """`host:port`: how messages name the proxy (never with its credentials)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_proxy(url: str) -> Proxy:
    """The proxy `url` names (`http://[user:password@]host[:port]`, `host:port` alone too);
    `ValueError` with a message that never repeats the URL (it may hold a password)."""
    text = url.strip()
    try:
        parts = urlsplit(text if "://" in text else f"http://{text}")
        port = parts.port or 80
        host = parts.hostname
    except ValueError:
        raise ValueError("is not a URL") from None
    if parts.scheme != "http":
        raise ValueError("must be an http:// proxy URL (TLS to the proxy is not supported)")
    if not host or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be http://host:port, without a path")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = b"Basic " + base64.b64encode(pair.encode())
    return Proxy(host.lower(), port, authorization)


class NoProxy:
    """`NO_PROXY`: comma- (or space-) separated entries, each a name (matching itself and every
    name under it; a leading `.` or `*.` changes nothing), an IP address or CIDR block (matching
    a literal address, or the address a request is pinned to), either with `:port` to match that
    port only, or `*` for everything."""

    def __init__(self, value: str) -> None:
        self.everything = False
        self._names: list[tuple[str, int | None]] = []
        self._networks: list[tuple[Network, int | None]] = []
        for entry in re.split(r"[,\s]+", value.strip().lower()):
            if entry:
                self._add(entry)

    def _add(self, entry: str) -> None:
        if entry == "*":
            self.everything = True
            return
        port: int | None = None
        bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", entry)
        if bracketed:
            entry, port = (
                bracketed.group(1),
                int(bracketed.group(2)) if bracketed.group(2) else None,
            )
        elif entry.count(":") == 1:
            name, _, digits = entry.partition(":")
            if digits.isdigit():
                entry, port = name, int(digits)
        try:
            self._networks.append((ipaddress.ip_network(entry, strict=False), port))
            return
        except ValueError:
            pass
        name = entry.removeprefix("*").removeprefix(".").rstrip(".")
        if name:
            self._names.append((name, port))

    def __bool__(self) -> bool:
        return self.everything or bool(self._names or self._networks)

    def matches(self, host: str, port: int, address: str | None = None) -> bool:
        if self.everything:
            return True
        host = host.rstrip(".").lower()
        for name, only in self._names:
            if (only is None or only == port) and (host == name or host.endswith("." + name)):
                return True
        if self._networks:
            for candidate in (host, address):
                if candidate is None:
                    continue
                try:
                    ip = ipaddress.ip_address(candidate.strip("[]"))
                except ValueError:
                    continue
                for network, only in self._networks:
                    if (only is None or only == port) and ip in network:
                        return True
        return False


class Egress:
    """Which proxy, if any, a connection to an upstream goes through."""

    def __init__(
        self, http: Proxy | None = None, https: Proxy | None = None, no_proxy: str = ""
    ) -> None:
        self.http = http
        self.https = https
        self.no_proxy = NoProxy(no_proxy)
        self._routes: dict[tuple[bytes, str, int, str | None], Proxy | None] = {}

    @property
    def enabled(self) -> bool:
        return (self.http is not None or self.https is not None) and not self.no_proxy.everything

    def proxy_for(self, scheme: bytes, host: str, port: int, address: str | None) -> Proxy | None:
        key = (scheme, host, port, address)
        try:
            return self._routes[key]
        except KeyError:
            pass
        proxy = self.https if scheme == b"https" else self.http
        if proxy is not None and self.no_proxy.matches(host, port, address):
            proxy = None
        if len(self._routes) >= ROUTES_KEPT:  # client-named hosts are many: start afresh
            self._routes.clear()
        self._routes[key] = proxy
        return proxy


async def open_tunnel(sock: socket.socket, proxy: Proxy, host: str, port: int) -> None:
    """Ask the proxy at the other end of `sock` for a tunnel to `host:port`; return once it is
    open (a 2xx answer). Anything else is a `ConnectError` naming the proxy and its status, never
    carrying what the proxy wrote."""
    loop = asyncio.get_running_loop()
    target = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode("ascii")
    head = b"CONNECT %b HTTP/1.1\r\nHost: %b\r\n" % (target, target)
    if proxy.authorization is not None:
        head += b"Proxy-Authorization: %b\r\n" % proxy.authorization
    await loop.sock_sendall(sock, head + b"\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        if len(answer) > TUNNEL_HEAD_LIMIT:
            raise ProxyError(f"the egress proxy {proxy.netloc}'s answer is too large")
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            raise ProxyError(f"the egress proxy {proxy.netloc} closed the tunnel unanswered")
        answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    status = _STATUS.match(head + b"\r\n")
    if status is None:
        raise ProxyError(f"the egress proxy {proxy.netloc} did not answer in HTTP/1.1")
    code = int(status.group(1))
    if not 200 <= code < 300:
        raise ProxyError(
            f"the egress proxy {proxy.netloc} refused the tunnel to {target.decode()}: {code}"
        )
    if rest:  # the upstream speaks second (TLS, HTTP): nothing may come before it is asked
        raise ProxyError(f"the egress proxy {proxy.netloc} sent data ahead of the tunnel")
