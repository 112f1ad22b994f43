"""The endpoints: accounts, keys, usage stats, health and probes, metrics, the models listing,
the OpenAPI document, and `bodies`, through which every one of them reads a request body.

Each endpoint module declares the JSON it reads and answers as msgspec Structs beside its
handler (`shapes` holds what they share); `operations` lists every route as data, and `openapi`
builds the document from that table and those very Structs.

May import `relay.errors`, `relay.config`, `relay.services`, `relay.security`,
`relay.providers`, `relay.server.ratelimit`, `relay.telemetry.metrics` (for `/metrics`) and
`backends`; never the relay path
(`relay.proxy`, which uses `bodies`) and never `relay.ops`.
"""
