"""The client's address behind trusted proxies, from `X-Forwarded-For` read right to left.

Each proxy appends the address that connected to it, so only the entries that trusted proxies
wrote can be believed: anything further left is whatever the client wrote itself. The walk
starts at the socket's peer and steps one entry left for each trusted proxy; the first address
that is not a trusted proxy is the client. With `FORWARDED_ALLOW_IPS=*` every address is
trusted, and `FORWARDED_TRUSTED_HOPS` (1 unless set) says how many proxies stand in front: with
one, the client is the rightmost entry, the one the platform's own proxy appended. With a list
of addresses the walk has no limit unless `FORWARDED_TRUSTED_HOPS` sets one.

- An entry that is not an IP address (`unknown`, a name, junk) is never the client: the walk
  stops at the trusted proxy that wrote it. Ports (`1.2.3.4:5`, `[::1]:5`) are read, empty list
  elements skipped, and IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
- A request with several `X-Forwarded-For` lines keeps the socket's address: proxies disagree on
  which line they append to (some to the first, some add their own), so the client could choose
  the line the relay reads.
- `X-Forwarded-Proto` is believed on the same terms (a trusted peer), taken at the same depth as
  the address when a list of proxies wrote one each.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ForwardedMiddleware", "TrustedProxies", "parse_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# The scheme a forwarded protocol gives each kind of scope.
_SCHEMES: Final = {
    "http": {b"http": "http", b"https": "https"},
    "websocket": {b"http": "ws", b"https": "wss", b"ws": "ws", b"wss": "wss"},
}


def parse_address(text: str) -> IPAddress | None:
    """`text` as an IP address (an IPv4-mapped one as its IPv4 address); None if it is not one."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _entry(raw: bytes) -> tuple[IPAddress, int] | None:
    """One `X-Forwarded-For` element: an address, with or without a port; None for junk."""
    text = raw.decode("latin-1")
    host, port = text, ""
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else ""
        if rest and not port:
            return None
    elif text.count(":") == 1:  # IPv4 with a port; bare IPv6 has more colons
        host, _, port = text.partition(":")
        if not port:
            return None
    if port and not (len(port) <= 5 and port.isascii() and port.isdigit() and int(port) < 65536):
        return None
    address = parse_address(host)
    return None if address is None else (address, int(port or 0))


class TrustedProxies:
    """Which peers may speak for a client, and how far left in `X-Forwarded-For` to believe
    them. `entries` are IP addresses, CIDR blocks or `*` (everyone); `hops` caps the number of
    proxies stepped over (unset: 1 with `*`, no cap with a list)."""

    def __init__(self, entries: Sequence[str], hops: int | None = None) -> None:
        self.everyone = "*" in entries
        self.networks = tuple(ipaddress.ip_network(e, strict=False) for e in entries if e != "*")
        self.hops = 1 if hops is None and self.everyone else hops

    def trusts(self, address: IPAddress) -> bool:
        return self.everyone or any(address in network for network in self.networks)

    def client(self, peer: IPAddress, forwarded_for: bytes) -> tuple[IPAddress, int, int] | None:
        """The client's address and port behind `peer`, and how many proxies it stepped over
        (at least one); None when `peer` is not trusted or the header names nobody."""
        current, port, depth = peer, 0, 0
        end = len(forwarded_for)
        # Element by element from the right, as far as the walk goes: the part of a long
        # header that the client wrote is never split or copied.
        while end >= 0 and depth != self.hops and self.trusts(current):
            start = forwarded_for.rfind(b",", 0, end)
            element = forwarded_for[start + 1 : end].strip()
            end = start
            if not element:
                continue  # an empty list element (RFC 9110 section 5.6.1)
            found = _entry(element)
            if found is None:
                break  # junk: the trusted proxy that wrote it is as far as anyone can tell
            (current, port), depth = found, depth + 1
        return (current, port, depth) if depth else None


class ForwardedMiddleware:
    """Pure ASGI: rewrites the scope's `client` (and `scheme`) as trusted proxies report them."""

    def __init__(self, app: ASGIApp, trusted: Sequence[str], hops: int | None = None) -> None:
        self.app = app
        self.trusted = TrustedProxies(trusted, hops)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in _SCHEMES:
            self._rewrite(scope)
        await self.app(scope, receive, send)

    def _rewrite(self, scope: Scope) -> None:
        client = scope.get("client")
        peer = parse_address(str(client[0])) if client else None
        if peer is None or not self.trusted.trusts(peer):
            return
        forwarded: list[bytes] = []
        protocols: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded.append(value)
            elif name == b"x-forwarded-proto":
                protocols.append(value)
        depth = 0
        if len(forwarded) == 1:
            found = self.trusted.client(peer, forwarded[0])
            if found is not None:
                address, port, depth = found
                scope["client"] = (str(address), port)
        if protocols:
            values = [v.strip().lower() for line in protocols for v in line.split(b",")]
            values = [v for v in values if v]
            if values:
                # One value per proxy when each appended its own; else the one there is.
                value = values[max(0, len(values) - max(depth, 1))]
                scheme = _SCHEMES[scope["type"]].get(value)
                if scheme is not None:
                    scope["scheme"] = scheme
