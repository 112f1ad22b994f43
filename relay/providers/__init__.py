"""Everything that varies by provider, as data and pure functions: the provider table (auth,
paths, forwarded and returned headers, key shapes, where a request names its model), model
routing for `POST /relay`, the `ALLOWED_MODELS` policy, and the key checks (one free probe per
provider).

Imports nothing from the rest of `relay` but `relay.errors` (`verify` is handed the HTTP client
it sends probes with).
"""
