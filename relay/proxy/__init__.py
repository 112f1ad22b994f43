"""The relay routes (`/relay/{provider}/...` and `POST /relay`): a request prepared (token,
provider, path, model, key) and its exchange with the provider streamed back byte for byte,
under its deadlines, watched for revocation and metered. Beside them what only the relay path
needs: path checks, the model a request names, the JSON splice, SSRF checks of client-named
upstreams, the idle-deadline wheel, the register of exchanges in flight, and the spending
caps held ahead.

May import `relay.errors`, `relay.services`, `relay.security`, `relay.providers`,
`relay.upstream`, `relay.usage`, `relay.api.bodies`, the rate limiter and the edge's
connection state of `relay.server`, the request's record (`relay.telemetry.access`), and
`backends`.
"""
