"""Which upstream an openai-compatible request may reach (`x-relay-base-url`).

Only globally routable unicast addresses, literal or resolved, unless the operator named the
upstream in `RELAY_PRIVATE_UPSTREAMS`. Every refusal is a `BadRequest` (400).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Final
from urllib.parse import urlsplit

from .errors import BadRequest

__all__ = ["Resolver", "Upstream", "UpstreamPolicy", "is_public_address", "system_resolver"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL: Final = ipaddress.ip_network("64:ff9b:1::/48")
# Special-purpose ranges that this Python's `ipaddress` does not know as such: deprecated
# site-local (RFC 3879, still routed inside older networks) and documentation (RFC 9637).
_NOT_GLOBAL: Final = tuple(ipaddress.ip_network(n) for n in ("fec0::/10", "3fff::/20"))
_METADATA: Final = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254")
)


def is_public_address(ip: IPAddress) -> bool:
    """True for a globally routable unicast address, judging embedded IPv4 by itself."""
    if ip in _METADATA or any(ip in net for net in _NOT_GLOBAL):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is None and int(ip) >> 32 == 0:  # IPv4-compatible ::a.b.c.d, and ::, ::1
            return False
        if embedded is not None:
            return is_public_address(embedded)
        if ip in _NAT64_LOCAL or ip.teredo is not None:
            return False
    return bool(
        ip.is_global
        and not ip.is_multicast
        and not ip.is_reserved
        and not ip.is_private
        and not ip.is_link_local
        and not ip.is_loopback
        and not ip.is_unspecified
    )


Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""(host, port) -> the addresses it resolves to; raises OSError when it does not resolve."""


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


@dataclasses.dataclass(frozen=True)
class Upstream:
    """Where an openai-compatible request goes: the validated address, named by its host."""

    scheme: str
    host: str
    port: int
    address: IPAddress
    """The connection goes here, not to a second lookup of `host` (no DNS rebinding)."""

    @property
    def origin(self) -> str:
        """The URL origin to connect to: the pinned address itself."""
        address = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.scheme}://{address}:{self.port}"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _bad(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_base_url")


def _literal_address(host: str) -> IPAddress | None:
    """`host` as an IP address, in every spelling a resolver would accept: dotted, integer,
    octal, hex and short IPv4 forms (`2130706433`, `0177.1`, `0x7f.0.0.1`), and IPv6."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if re.fullmatch(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            raise _bad("x-relay-base-url is not a valid URL") from None
    return None


class UpstreamPolicy:
    def __init__(self, private_upstreams: Sequence[str], resolver: Resolver | None = None) -> None:
        self._hosts = {e.lower() for e in private_upstreams if "/" not in e}
        self._networks = [
            ipaddress.ip_network(e, strict=False) for e in private_upstreams if "/" in e
        ]
        self._resolver = resolver or system_resolver

    def _allowed(self, host: str, port: int, ip: IPAddress) -> bool:
        return (
            is_public_address(ip)
            or f"{host}:{port}" in self._hosts
            or any(ip in net for net in self._networks)
        )

    async def resolve(self, base_url: str | None) -> Upstream:
        """The upstream `base_url` names, validated; `BadRequest` when it may not be reached."""
        if not base_url:
            raise _bad("x-relay-base-url header is required for openai-compatible provider")
        try:
            parts = urlsplit(base_url.strip())
            host = (parts.hostname or "").rstrip(".").lower()
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise _bad("x-relay-base-url is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not host:
            raise _bad("x-relay-base-url is not a valid URL")
        if parts.username is not None or parts.password is not None:
            raise _bad("x-relay-base-url must not contain credentials")
        if host == "localhost" or host.endswith(".localhost"):
            raise _bad("x-relay-base-url must not point at localhost")

        literal = _literal_address(host)
        addresses = [literal] if literal is not None else await self._lookup(host, port)
        if not all(self._allowed(host, port, ip) for ip in addresses):
            raise _bad("x-relay-base-url must resolve to a public address")
        # Plain http only to an upstream the operator named as private.
        named = f"{host}:{port}" in self._hosts
        if parts.scheme != "https" and not named and any(map(is_public_address, addresses)):
            raise _bad("x-relay-base-url must use https")
        return Upstream(parts.scheme, host, port, addresses[0])

    async def _lookup(self, host: str, port: int) -> list[IPAddress]:
        try:
            found = await self._resolver(host, port)
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
        except (OSError, UnicodeError, ValueError):
            raise _bad("x-relay-base-url host could not be resolved") from None
        if not addresses:
            raise _bad("x-relay-base-url host could not be resolved")
        return addresses
