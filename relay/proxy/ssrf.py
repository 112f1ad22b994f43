"""Which upstream an openai-compatible request may reach (`x-relay-base-url`).

Only globally routable unicast addresses, literal or resolved, unless the operator named the
upstream in `RELAY_PRIVATE_UPSTREAMS`. Every refusal is a `BadRequest` (400).

A name the client chose is looked up apart from everything else: by c-ares (`AresResolver`),
never in the event loop's default thread pool, where every provider's connection resolves its
own name; within `RELAY_DNS_TIMEOUT`, past which it "could not be resolved"; and at most
`LOOKUPS_PER_TOKEN` at a time per token (429 past them) and `LOOKUPS_IN_FLIGHT` per process
(503), so that names whose servers never answer hold up nobody but their own requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import math
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from relay.errors import BadRequest, ServiceUnavailable
from relay.server.ratelimit import RateLimited

if TYPE_CHECKING:
    import pycares

__all__ = [
    "AresResolver",
    "Resolver",
    "ResolverBusy",
    "Upstream",
    "UpstreamPolicy",
    "is_public_address",
]

logger = logging.getLogger("relay.ssrf")

DNS_TIMEOUT: Final = 5.0  # seconds, unless RELAY_DNS_TIMEOUT says otherwise
LOOKUPS_PER_TOKEN: Final = 2  # lookups one token may have waiting at once
LOOKUPS_IN_FLIGHT: Final = 256  # queries one process's c-ares may have open at once

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


class ResolverBusy(Exception):
    """The resolver has as many lookups open as it takes: none is started."""


class AresResolver:
    """A `Resolver` on c-ares: the system's name servers and hosts file (or `servers`, as
    `ip[:port]`), asked on c-ares's own thread, the answer handed to the asking loop.

    c-ares is told to give up about when the caller does (two tries in `timeout`): a query
    outlives its request by little, and counts against `limit` until it is over.
    """

    def __init__(
        self,
        servers: Sequence[str] | None = None,
        *,
        timeout: float = DNS_TIMEOUT,
        limit: int = LOOKUPS_IN_FLIGHT,
    ) -> None:
        self._servers = list(servers) if servers else None
        self._timeout = timeout
        self._limit = limit
        self._open = 0
        self._ares: pycares.Channel | None = None  # made at the first lookup

    @property
    def open(self) -> int:
        """Queries asked and not yet answered or given up by c-ares."""
        return self._open

    def _channel(self) -> pycares.Channel:
        if self._ares is None:
            import pycares

            # The second try waits twice as long as the first: together, about `timeout`.
            options: dict[str, Any] = {"timeout": self._timeout / 3, "tries": 2}
            if self._servers:
                options["servers"] = self._servers
            try:
                self._ares = pycares.Channel(**options)
            except pycares.AresError as exc:
                logger.error("c-ares could not start", extra={"cause": str(exc)})
                raise OSError("the resolver could not start") from None
        return self._ares

    async def __call__(self, host: str, port: int) -> list[str]:
        if self._open >= self._limit:
            raise ResolverBusy
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[str]] = loop.create_future()

        def answered(result: Any, status: int | None) -> None:  # on c-ares's thread
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(self._answered, answer, result, status)

        channel = self._channel()
        self._open += 1
        try:
            channel.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, callback=answered
            )
        except BaseException:
            self._open -= 1
            raise
        # Cancelled (the caller's timeout), the query goes on in c-ares until it gives up.
        return await answer

    def _answered(self, answer: asyncio.Future[list[str]], result: Any, status: int | None) -> None:
        self._open -= 1
        if answer.done():
            return
        if status is not None:
            answer.set_exception(OSError(f"lookup failed (c-ares status {status})"))
            return
        answer.set_result([_text(node.addr[0]) for node in result.nodes])


def _text(address: bytes | str) -> str:
    return address.decode("ascii") if isinstance(address, bytes) else address


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
    """`resolver` replaces c-ares (tests, embedding); the timeout and the per-token cap apply
    to it all the same."""

    def __init__(self, private_upstreams: Sequence[str], resolver: Resolver | None = None) -> None:
        self._hosts = {e.lower() for e in private_upstreams if "/" not in e}
        self._networks = [
            ipaddress.ip_network(e, strict=False) for e in private_upstreams if "/" in e
        ]
        self._resolver = resolver  # None: an AresResolver, made at the first lookup
        self._lookups: dict[str, int] = {}  # per token: lookups waiting

    def _allowed(self, host: str, port: int, ip: IPAddress) -> bool:
        return (
            is_public_address(ip)
            or f"{host}:{port}" in self._hosts
            or any(ip in net for net in self._networks)
        )

    async def resolve(
        self, base_url: str | None, *, owner: str = "", lookup_timeout: float = DNS_TIMEOUT
    ) -> Upstream:
        """The upstream `base_url` names, validated; `BadRequest` when it may not be reached.
        A name is looked up within `lookup_timeout` seconds, counted against `owner` (a
        token's digest) while it is."""
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
        if literal is not None:
            addresses = [literal]
        else:
            addresses = await self._lookup(host, port, owner, lookup_timeout)
        if not all(self._allowed(host, port, ip) for ip in addresses):
            raise _bad("x-relay-base-url must resolve to a public address")
        # Plain http only to an upstream the operator named as private.
        named = f"{host}:{port}" in self._hosts
        if parts.scheme != "https" and not named and any(map(is_public_address, addresses)):
            raise _bad("x-relay-base-url must use https")
        return Upstream(parts.scheme, host, port, addresses[0])

    async def _lookup(self, host: str, port: int, owner: str, within: float) -> list[IPAddress]:
        waiting = self._lookups.get(owner, 0)
        if waiting >= LOOKUPS_PER_TOKEN:
            seconds = str(math.ceil(within))
            raise RateLimited(
                f"Too many upstream lookups in progress. Try again in {seconds} seconds.",
                headers={"retry-after": seconds},
                limit="lookups",
            )
        if self._resolver is None:
            self._resolver = AresResolver(timeout=within)
        self._lookups[owner] = waiting + 1
        try:
            async with asyncio.timeout(within):
                found = await self._resolver(host, port)
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
        except ResolverBusy:
            raise ServiceUnavailable(
                "Too many upstream lookups in progress, try again shortly",
                code="resolver_busy",
                headers={"retry-after": "1"},
            ) from None
        except (OSError, UnicodeError, ValueError):  # a timeout is an OSError too
            raise _bad("x-relay-base-url host could not be resolved") from None
        finally:
            left = self._lookups[owner] - 1
            if left:
                self._lookups[owner] = left
            else:
                del self._lookups[owner]
        if not addresses:
            raise _bad("x-relay-base-url host could not be resolved")
        return addresses
