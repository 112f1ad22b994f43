"""Why a provider could not be reached, in one word for logs and metrics.

The upstream client raises httpx's exceptions, keeping the system's own error as the cause
where there is one (a refused connection, a failed name lookup, a certificate). The kinds are
what an operator acts on differently: `dns` (the name does not resolve), `refused`,
`unreachable` (no route), `tls` and `certificate`, `connect_timeout` and `timeout` (no answer in
time), `protocol` (the provider's answer was not HTTP/1.1, or too large), `closed` (the
connection dropped), `proxy` (the egress proxy refused the tunnel), and `error` for anything
else.
"""

from __future__ import annotations

import socket
import ssl

import httpx

from relay.upstream.egress import ProxyError

__all__ = ["upstream_failure"]


def upstream_failure(exc: BaseException) -> str:
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return "connect_timeout"
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.LocalProtocolError):
        return "protocol"
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return "closed"
    if isinstance(exc, ProxyError):
        return "proxy"
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return "certificate"
    if isinstance(cause, ssl.SSLError):
        return "tls"
    if isinstance(cause, socket.gaierror):
        return "dns"
    if isinstance(cause, ConnectionRefusedError):
        return "refused"
    if isinstance(cause, OSError):
        return "unreachable"
    return "error"
