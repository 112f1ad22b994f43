"""The HTTP/1.1 client the relay speaks to providers with, behind httpx's API: one connection
(`http11`), the pool, the transport, egress through a proxy (`egress`), and the
`httpx.AsyncClient` built over them (`client`).

Imports nothing from the rest of `relay`: it is a general client, and everything
relay-specific (which address a name is pinned to, the timeouts) reaches it as arguments or as
request extensions.
"""
