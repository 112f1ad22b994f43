"""The upstream connection pool: at most `max_connections` open, idle ones kept for reuse.

A connection serves one exchange at a time and goes back to the pool only when its answer was
read to the end; the most recently used idle connection of an origin is taken first (the
warmest), and an idle connection closes after `keepalive_expiry` seconds or when the provider
closes it. When the pool is full, an idle connection to another origin is closed to make room;
failing that, the request waits for one up to its pool timeout.

Expiry costs no timer per exchange: a connection taken from the pool is checked against its
time of release (one past its expiry is closed, never reused, however late the loop runs), and
one timer per pool closes the idle ones as they expire (at most 1/`SWEEP_GRAIN` of the expiry
late), set for the oldest.

Dialling resolves the name (or takes the address a request pinned it to, `PINNED_ADDRESS`),
connects with Happy Eyeballs (RFC 8305, through `aiohappyeyeballs`: an IPv6 address that does not
answer does not stall the IPv4 one), then runs TLS with the name for SNI and certificate checks.
An origin with a proxy dials the proxy instead and runs the same over its CONNECT tunnel
(`relay.upstream.egress`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from typing import Final

import aiohappyeyeballs
import httpx

from relay.upstream.egress import open_tunnel
from relay.upstream.http11 import Connection, Origin

__all__ = ["ConnectionPool"]

HAPPY_EYEBALLS_DELAY: Final = 0.25  # seconds before the next address is tried alongside
SWEEP_GRAIN: Final = 16


class ConnectionPool:
    def __init__(
        self, max_connections: int, keepalive_expiry: float, ssl_context: ssl.SSLContext
    ) -> None:
        self.ssl_context = ssl_context
        self._max = max_connections
        self._expiry = keepalive_expiry
        self._idle: dict[Origin, dict[Connection, None]] = {}  # insertion order: oldest first
        self._connections: set[Connection] = set()
        self._dialling = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None  # due when the oldest idle one expires
        self._closed = False

    async def acquire(
        self, origin: Origin, connect_timeout: float | None, pool_timeout: float | None
    ) -> Connection:
        """A connection to `origin`: idle, newly dialled, or (the pool being full) the first
        to become available within `pool_timeout`."""
        loop: asyncio.AbstractEventLoop | None = None
        deadline: float | None = None
        while True:
            if self._closed:
                raise httpx.ConnectError("the upstream connection pool is closed")
            idle = self._idle.get(origin)
            if idle:
                connection, _ = idle.popitem()  # the most recently used
                if not idle:
                    del self._idle[origin]
                if connection.closing:  # the provider closed it: its loss is on the way
                    self.discard(connection)
                    continue
                if connection.idle_since + self._expiry > connection.loop.time():
                    return connection
                self.discard(connection)  # expired: so are all older ones of this origin
                while self._idle.get(origin):
                    self.discard(next(iter(self._idle[origin])))
                continue
            if len(self._connections) + self._dialling < self._max:
                return await self._dial(origin, connect_timeout)
            if self._close_oldest_idle():
                continue
            if loop is None:
                loop = asyncio.get_running_loop()
                deadline = None if pool_timeout is None else loop.time() + pool_timeout
            await self._wait_for_room(loop, deadline)

    def release(self, connection: Connection) -> None:
        """Take back a connection whose exchange ended; kept for reuse when it can be."""
        connection.finish()
        if self._closed or not connection.reusable:
            self.discard(connection)
            return
        loop = connection.loop
        connection.idle_since = now = loop.time()
        self._idle.setdefault(connection.origin, {})[connection] = None
        if self._sweep is None:
            self._sweep = loop.call_at(now + self._expiry, self._expire)
        self._wake_one()

    def discard(self, connection: Connection) -> None:
        """Close `connection` and forget it (its room in the pool is free at once)."""
        connection.finish()
        connection.close()
        self._forget(connection)

    async def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connection in list(self._connections):
            self.discard(connection)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    @property
    def idle_connections(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    # -- inside -------------------------------------------------------------------------------

    async def _dial(self, origin: Origin, timeout: float | None) -> Connection:
        self._dialling += 1
        try:
            async with asyncio.timeout(timeout):
                connection = await self._connect(origin)
        except BaseException as exc:
            self._dialling -= 1
            self._wake_one()
            if isinstance(exc, TimeoutError):
                raise httpx.ConnectTimeout(f"connecting to {origin.host} timed out") from None
            if isinstance(exc, OSError):  # DNS, refused, unreachable, TLS and certificates
                raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
            raise
        self._dialling -= 1
        self._connections.add(connection)
        if self._closed or connection.closed:
            self.discard(connection)
            raise httpx.ConnectError("the connection closed as it opened")
        return connection

    async def _connect(self, origin: Origin) -> Connection:
        loop = asyncio.get_running_loop()
        proxy = origin.proxy
        if proxy is not None:
            try:
                infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                where = f"the egress proxy {proxy.netloc}: {exc.strerror}"
                raise socket.gaierror(exc.errno, where) from exc
        elif origin.address is not None:
            family = socket.AF_INET6 if ":" in origin.address else socket.AF_INET
            infos = await loop.getaddrinfo(
                origin.address,
                origin.port,
                family=family,
                type=socket.SOCK_STREAM,
                flags=socket.AI_NUMERICHOST,
            )
        else:
            infos = await loop.getaddrinfo(origin.host, origin.port, type=socket.SOCK_STREAM)
        try:
            sock = await aiohappyeyeballs.start_connection(
                infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1
            )
        except OSError as exc:
            if proxy is None:
                raise
            # The same kind (refused, unreachable), naming the proxy rather than the provider.
            where = f"the egress proxy {proxy.netloc}: {exc.strerror or exc}"
            raise (OSError(exc.errno, where) if exc.errno else OSError(where)) from exc
        tls = origin.scheme == b"https"
        try:
            if proxy is not None:
                await open_tunnel(sock, proxy, origin.address or origin.host, origin.port)
            _, connection = await loop.create_connection(
                lambda: Connection(origin, self._forget),
                sock=sock,
                ssl=self.ssl_context if tls else None,
                server_hostname=origin.host if tls else None,
            )
        except BaseException:
            sock.close()
            raise
        return connection

    def _expire(self) -> None:
        """Close the idle connections whose time is up; come back when the next one's is (in
        steps of at least `SWEEP_GRAIN` of the expiry: a burst's thousands of connections,
        released moments apart, are closed in a few sweeps, not one each)."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        oldest: float | None = None
        for idle in list(self._idle.values()):
            while idle:
                connection = next(iter(idle))  # the oldest of its origin
                if connection.idle_since + self._expiry > now:
                    if oldest is None or connection.idle_since < oldest:
                        oldest = connection.idle_since
                    break
                self.discard(connection)  # leaves `idle`
        if oldest is not None and not self._closed:
            due = max(oldest + self._expiry, now + self._expiry / SWEEP_GRAIN)
            self._sweep = loop.call_at(due, self._expire)

    def _forget(self, connection: Connection) -> None:
        """`connection` is closed (by us or by the provider): it leaves the pool."""
        idle = self._idle.get(connection.origin)
        if idle is not None and connection in idle:
            del idle[connection]
            if not idle:
                del self._idle[connection.origin]
        if connection in self._connections:
            self._connections.discard(connection)
            self._wake_one()

    def _close_oldest_idle(self) -> bool:
        for idle in self._idle.values():
            for connection in idle:
                self.discard(connection)
                return True
        return False

    async def _wait_for_room(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        waiter = loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except TimeoutError:
            raise httpx.PoolTimeout("no upstream connection became free in time") from None
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):  # already taken off by _wake_one
                self._waiters.remove(waiter)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
