"""Which upstream an openai-compatible request may reach (`x-relay-base-url`).

Only globally routable unicast addresses, literal or resolved, unless the operator named the
upstream in `RELAY_PRIVATE_UPSTREAMS`. Every refusal is a `BadRequest` (400).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

from .errors import BadRequest

__all__ = ["Upstream", "UpstreamPolicy", "is_public_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL: Final = ipaddress.ip_network("64:ff9b:1::/48")
_METADATA: Final = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254")
)


def is_public_address(ip: IPAddress) -> bool:
    """True for a globally routable unicast address, judging embedded IPv4 by itself."""
    if ip in _METADATA:
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


@dataclasses.dataclass(frozen=True)
class Upstream:
    origin: str
    """`scheme://host[:port]`, what the request is sent to."""
    addresses: tuple[str, ...]
    """The validated addresses the host resolved to."""


def _bad(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_base_url")


class UpstreamPolicy:
    def __init__(self, private_upstreams: Sequence[str]) -> None:
        self._hosts = {e.lower() for e in private_upstreams if "/" not in e}
        self._networks = [
            ipaddress.ip_network(e, strict=False) for e in private_upstreams if "/" in e
        ]

    def _private_allowed(self, host: str, port: int, ip: IPAddress | None) -> bool:
        if f"{host}:{port}".lower() in self._hosts:
            return True
        return ip is not None and any(ip in net for net in self._networks)

    async def resolve(self, base_url: str | None) -> Upstream:
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

        addresses = await _resolve(host, port)
        named_private = f"{host}:{port}" in self._hosts
        for ip in addresses:
            if not is_public_address(ip) and not self._private_allowed(host, port, ip):
                raise _bad("x-relay-base-url must resolve to a public address")
        private = named_private or any(not is_public_address(ip) for ip in addresses)
        if parts.scheme != "https" and not private:
            raise _bad("x-relay-base-url must use https")
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        return Upstream(f"{parts.scheme}://{netloc}", tuple(str(ip) for ip in addresses))


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (OSError, UnicodeError):
        raise _bad("x-relay-base-url host could not be resolved") from None
    addresses = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        addresses.append(ipaddress.ip_address(address))
    if not addresses:
        raise _bad("x-relay-base-url host could not be resolved")
    return addresses
