"""Everything between the socket and the app: the HTTP protocol (connection limits, head and
body timeouts, slow clients), CORS, rate limits, the client's address behind proxies, logging,
GC settings, the router bypass for relayed requests, and draining on shutdown.

May import `relay.errors`, `relay.config`, `relay.providers` (the CORS lists are the provider
table's) and `backends`; of the relay path only the register of exchanges in flight, which a
drain ends; of `relay.telemetry` the request's record and the metrics (the rate limits count
their refusals). Never the
endpoints (they are handed in).
"""
