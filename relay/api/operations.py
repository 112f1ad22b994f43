"""What the OpenAPI document says, as data: every operation the relay serves, one row each.

A row names the msgspec Structs its endpoint parses and answers with (declared beside each
handler); `relay.api.openapi` generates their schemas from those classes and builds the document
from these tables. The few shapes no endpoint builds are here: the error shape (`relay.errors`
writes it), the relay path's bodies (relayed as they are), the health check's 503 and the
document itself. A test checks `OPERATIONS` against the app's router both ways.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from backends import LEDGER_GROUPS
from relay.api import accounts, discovery, health, keys, ledger, limits, probes, stats, tokens
from relay.api.shapes import PROVIDER_NAME_REF, AppId
from relay.providers.table import PROVIDERS

__all__ = [
    "ALWAYS",
    "ERROR_RESPONSES",
    "NAMED_BODIES",
    "NAMED_SCHEMAS",
    "OPERATIONS",
    "PARAMETERS",
    "PATH_PARAMETERS",
    "Auth",
    "Error",
    "Operation",
    "Shape",
]

JSON = dict[str, Any]
Auth = Literal["none", "token", "app_secret", "operator", "metrics_token"]
# The Struct an endpoint parses or answers with; a key of `NAMED_SCHEMAS` or `NAMED_BODIES`; None
# for relayed content, whatever the provider sends.
Shape = type[msgspec.Struct] | str | None

# Every error the relay answers itself: `#/components/responses/<name>`, JSON in the Error shape.
ERROR_RESPONSES: Final[Mapping[int, tuple[str, str]]] = {
    400: ("BadRequest", "Malformed JSON, a missing or invalid field, or an unsupported provider."),
    401: ("Unauthorized", "Missing, unknown, expired or revoked credentials."),
    402: (
        "BudgetExceeded",
        "A spending cap of the key owner's could be passed (`budget_exceeded`, "
        "naming the cap, the spend and `resets_at`), or a cost cap meets a model of no known "
        "price (`model_unpriced`); `x-should-retry: false`.",
    ),
    403: (
        "Forbidden",
        "Not an inference endpoint, a model this relay does not allow, or more "
        "than a narrow token may do (`limit` names which).",
    ),
    404: ("NotFound", "No such route."),
    405: ("MethodNotAllowed", "The route does not serve this method (see `Allow`)."),
    409: ("Conflict", "The account already holds as many narrow tokens as it may."),
    413: ("PayloadTooLarge", "The request body is over `REQUEST_BODY_LIMIT_BYTES`."),
    422: ("KeyRejected", "The provider refused the new key; the stored key was not changed."),
    429: ("TooManyRequests", "A rate limit was reached; retry after `Retry-After` seconds."),
    500: ("InternalError", "An unexpected error, for this request only (never a traceback)."),
    502: ("BadGateway", "The AI provider could not be reached."),
    503: ("ServiceUnavailable", "The key store or the rate limiter is down; retry shortly."),
    504: ("GatewayTimeout", "The AI provider timed out before answering."),
}
ALWAYS: Final = (429, 500)  # what any request may meet, whatever the endpoint


@dataclasses.dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    tag: str
    auth: Auth
    summary: str
    answers: Mapping[int, tuple[str, Shape]]  # status -> (description, shape)
    errors: tuple[int, ...] = ()  # statuses of `ERROR_RESPONSES` besides `ALWAYS`
    body: Shape = None
    parameters: tuple[str, ...] = ()  # keys of `PARAMETERS`, after the path's own
    description: str = ""
    media_type: str = "application/json"  # of the answers the relay builds


class Error(msgspec.Struct):
    """Every error the relay answers itself; some add fields (e.g. `hint`)."""

    error: Annotated[str, Meta(description="A human message.")]
    code: Annotated[str, Meta(pattern="^[a-z][a-z0-9_]*$")]


class ModelRelayBody(msgspec.Struct):
    """The provider's request body; forwarded with `model` as the provider names it."""

    # Documented only: the relay path reads `model` itself (`relay.providers.routing`).
    model: Annotated[
        str,
        Meta(
            description="`provider/name`, or a name of a known family.",
            examples=["gpt-4o-mini", "anthropic/claude-3-5-haiku-latest"],
        ),
    ]
    stream: bool | UnsetType = UNSET


_SCHEMA_REF = "#/components/schemas/{name}"
# The schemas and request bodies the table names by string: no endpoint module builds them.
NAMED_SCHEMAS: Final[JSON] = {
    "ProviderName": {"type": "string", "enum": list(PROVIDERS)},
    "Unhealthy": {"anyOf": [{"$ref": _SCHEMA_REF.format(name=n)} for n in ("Health", "Error")]},
    "PrometheusText": {"type": "string", "description": "The Prometheus text format."},
    "Markdown": {"type": "string", "description": "Markdown text."},
    "Csv": {"type": "string", "description": "CSV (RFC 4180), with a header row."},
    **{
        name: {"type": "string", "description": what}
        for name, what in (
            ("JavaScriptModule", "An ECMAScript module."),
            ("TypeScriptDeclarations", "TypeScript declarations."),
            ("HtmlPage", "An HTML page."),
            ("Stylesheet", "A CSS stylesheet."),
        )
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data", "unavailable"],
        "properties": {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "object", "created", "owned_by"],
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"const": "model"},
                        "created": {"type": "integer"},
                        "owned_by": {"type": "string"},
                    },
                },
            },
            "unavailable": {"type": "array", "items": {"type": "string"}},
        },
    },
    "OpenApiDocument": {
        "type": "object",
        "required": ["openapi"],
        "properties": {"openapi": {"type": "string"}},
    },
}
NAMED_BODIES: Final[JSON] = {
    "RelayBody": {
        "required": False,
        "description": "Forwarded to the provider byte for byte, whatever its content type.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {},
        },
    },
}


def _parameter(
    where: str, name: str, description: str = "", schema: JSON | None = None, **more: Any
) -> JSON:
    out: JSON = {"name": name, "in": where, "required": where == "path"}
    if description:
        out["description"] = description
    return {**out, "schema": schema or {"type": "string"}, **more}


# Every provider-specific request header a client may send (the forwarding allowlist).
_FORWARDED: Final = sorted(
    {c for p in PROVIDERS.values() for _, clients in p.forwarded_headers for c in clients}
)
_RELAY_HEADERS: Final = ("RelayBaseUrl", *(f"Header-{name}" for name in _FORWARDED))
_RELAYED: Final = {200: ("The provider's response, relayed.", None)}
_RELAY_ERRORS: Final = (400, 401, 402, 403, 405, 413, 502, 503, 504)
_RELAY_NOTE = (
    "Relays the request upstream with the caller's stored key and streams the answer back as it "
    "arrives: status, body (JSON, SSE or binary) and selected headers. The errors listed are "
    "the relay's own; any other status is the provider's, relayed unchanged."
)
_NO_PATH = "The relay without an upstream path: refused (403) once the token is checked"
_KEYS: Final = (400, 401, 403, 413, 422, 503)
_USER: Final = (401, 403, 503)  # 403: a narrow token, where only the account's own will do
_ANY_TOKEN: Final = (401, 503)

# A table reads by row: the formatter would give every cell a line of its own.
# fmt: off
OPERATIONS: Final = (
    Operation("GET", "/health", "getHealth", "meta", "app_secret",
              "Health: the key store and configuration checks",
              {200: ("The relay and its key store are healthy.", health.Health),
               503: ("A required check failed (`ok: false`), or the limiter is down.",
                     "Unhealthy")},
              (400, 401), parameters=("Deep", "ProbeProvider"),
              description="`?deep=1&provider=P` adds `checks.upstream`: a cheap reachability "
              "probe of that provider (no key is sent), under a tighter rate limit of its own. "
              "`checks.config` holds `ok` alone, unless the operator sends "
              "`Authorization: Bearer <APP_SECRET>` (a wrong one is 401). Orchestrators ask "
              "`/livez` and `/readyz`."),
    Operation("GET", "/livez", "getLiveness", "meta", "none",
              "Liveness: the process serves (the key store and Redis are never asked)",
              {200: ("Serving.", probes.Probe)},
              description="Not rate limited. A liveness probe: failing it means restart."),
    Operation("GET", "/readyz", "getReadiness", "meta", "none",
              "Readiness: the key store answers and the process is not draining",
              {200: ("Ready for traffic.", probes.Probe)}, (503,),
              description="Not rate limited; the key store is asked at most once a second. 503 "
              "(`store_unavailable` or `relay_draining`, with `Retry-After`) means: send this "
              "process no traffic for now."),
    Operation("GET", "/metrics", "getMetrics", "meta", "metrics_token",
              "Prometheus metrics of the relay (of all its workers)",
              {200: ("The text exposition format.", "PrometheusText")}, (401,),
              media_type="text/plain",
              description="Requests by route and status, relayed requests by provider, model "
              "and outcome, tokens, time to first chunk, open streams, upstream connections, "
              "store calls, rate-limit refusals. Behind `Authorization: Bearer "
              "<METRICS_TOKEN>` when the operator set one; absent with `RELAY_METRICS=off`."),
    Operation("GET", "/llms.txt", "getAgentGuide", "meta", "none",
              "How to integrate this relay, for a coding agent (the llms.txt convention)",
              {200: ("Markdown: the three calls, the SDK base URLs, the providers' paths.",
                     "Markdown")},
              media_type="text/markdown",
              description="Built from this relay's provider table and settings (whether "
              "registration needs `APP_SECRET`, the model allowlist); every URL relative."),
    Operation("GET", "/sdk/byok-relay.js", "getBrowserClient", "browser", "none",
              "The browser client: one dependency-free ES module (`clients/js/`)",
              {200: ("The module; cached an hour, revalidated by its ETag.", "JavaScriptModule")},
              media_type="text/javascript",
              description="`connect()`, the keys, a token-adding `fetch` for the official SDKs, "
              "stream helpers, `RelayError`, and the `<byok-connect>` element."),
    Operation("GET", "/sdk/byok-relay.d.ts", "getBrowserClientTypes", "browser", "none",
              "The browser client's TypeScript declarations",
              {200: ("The declarations; cached an hour, revalidated by their ETag.",
                     "TypeScriptDeclarations")},
              media_type="application/typescript"),
    Operation("GET", "/", "getDemoPage", "browser", "none",
              "The demo page: connect, add a key, chat through it, see the usage",
              {200: ("The page, under a strict Content-Security-Policy.", "HtmlPage")},
              media_type="text/html",
              description="Served unless `RELAY_DEMO=off` (the default in production)."),
    Operation("GET", "/demo.js", "getDemoScript", "browser", "none", "The demo page's script",
              {200: ("The module.", "JavaScriptModule")}, media_type="text/javascript",
              description="Served unless `RELAY_DEMO=off`."),
    Operation("GET", "/demo.css", "getDemoStyles", "browser", "none",
              "The demo page's styles", {200: ("The stylesheet.", "Stylesheet")},
              media_type="text/css", description="Served unless `RELAY_DEMO=off`."),
    Operation("GET", "/version", "getVersion", "meta", "none", "The running version",
              {200: ("Version, commit and build time.", health.Version)}),
    Operation("GET", "/openapi.json", "getOpenApi", "meta", "none", "This document",
              {200: ("The OpenAPI 3.1 document of the relay.", "OpenApiDocument")}),
    Operation("GET", "/models", "listModels", "meta", "none",
              "How `POST /relay` routes model names, and which models this relay allows",
              {200: ("The routing table and the model allowlist.", discovery.Models)}),
    Operation("POST", "/users", "register", "accounts", "app_secret",
              "Register: a new relay token for an app",
              {200: ("The new relay token; keep it, it is shown once.", accounts.Registered)},
              (400, 401, 413, 503), accounts.RegisterBody,
              description="Needs `Authorization: Bearer <APP_SECRET>` when the operator set one."),
    Operation("DELETE", "/users", "deleteUser", "accounts", "token",
              "Delete the caller's account, its keys and every record about it",
              {200: ("Deleted.", accounts.OkMessage)}, _USER),
    Operation("POST", "/tokens/revoke", "revokeToken", "accounts", "token",
              "Revoke the caller's token, at once and everywhere",
              {200: ("Revoked.", accounts.OkMessage)}, _ANY_TOKEN,
              description="The account's own token takes every narrow token with it; a narrow "
              "token, those minted from it."),
    Operation("POST", "/tokens", "mintToken", "tokens", "token",
              "Mint a narrow token: limited to some providers, models, origins, an expiry",
              {201: ("The new token; keep it, it is shown once.", tokens.Minted)},
              (400, 401, 403, 409, 413, 503), tokens.MintBody,
              description="Any token may mint one, never broader than itself (403 "
              "`token_limit`, naming the limit); a limit left out is the minter's."),
    Operation("GET", "/tokens", "listTokens", "tokens", "token",
              "The narrow tokens minted from the caller's token, at any depth (never a token)",
              {200: ("Live tokens, oldest first.", tokens.TokenList)}, _ANY_TOKEN),
    Operation("DELETE", "/tokens/{token_id}", "revokeNarrowToken", "tokens", "token",
              "Revoke a narrow token and every token minted from it",
              {200: ("Revoked.", tokens.Revoked)}, (401, 404, 503),
              description="A narrow token may revoke itself and those minted from it."),
    Operation("PUT", "/limits", "setLimits", "limits", "token",
              "Set the caller's spending caps: requests, tokens and cost per day or month, "
              "overall or per app, provider or model",
              {200: ("The caps, with what each has counted this period.", limits.CapsShown)},
              (400, 401, 403, 413, 503), limits.CapsIn,
              description="Replaces every cap. They are hard: a relayed request reserves its "
              "worst case first and is refused (402) if that could pass one."),
    Operation("GET", "/limits", "getLimits", "limits", "token",
              "The caller's spending caps and what each has counted this period",
              {200: ("The caps.", limits.CapsShown)}, _USER),
    Operation("DELETE", "/limits", "clearLimits", "limits", "token",
              "Clear the caller's spending caps", {200: ("No caps.", limits.CapsShown)}, _USER),
    Operation("GET", "/keys", "listKeys", "keys", "token",
              "The providers the caller has a key stored for (never a key)",
              {200: ("Provider names.", keys.KeyList)}, _USER),
    Operation("POST", "/keys/{provider}", "storeKey", "keys", "token",
              "Store or replace the caller's key for a provider (encrypted at rest); with "
              "`verify=true`, only a key the provider accepts",
              {200: ("Stored.", keys.KeyStored)}, _KEYS, keys.StoreKeyBody, ("Verify",)),
    Operation("POST", "/keys/{provider}/rotate", "rotateKey", "keys", "token",
              "Check a new key's shape and ask the provider about it, then replace the stored "
              "key; the old key is untouched on any failure",
              {200: ("Replaced (or stored: `rotated` says whether a key existed).",
                     keys.KeyStored)}, _KEYS, keys.StoreKeyBody),
    Operation("GET", "/stats", "userStats", "usage", "token",
              "The caller's usage: requests, errors, providers, models, tokens, cost",
              {200: ("Totals.", stats.UsageStats)}, _USER),
    Operation("GET", "/usage", "usageLedger", "usage", "token",
              "The caller's own ledger: requests, tokens by kind, cost and outcomes, summed by "
              "day, app, provider, model or narrow token over a span",
              {200: ("The groups, sorted by key, and their total.", ledger.Ledger)},
              (400, *_USER), parameters=("LedgerFrom", "LedgerTo", "LedgerGroup"),
              description="Only the caller's own records. `from` defaults to 30 days before "
              "`to`, `to` to now; a span covers 400 days at most."),
    Operation("GET", "/usage.csv", "usageLedgerCsv", "usage", "token",
              "The same ledger as CSV, one row per group",
              {200: ("A header row, then one row per group.", "Csv")},
              (400, *_USER), parameters=("LedgerFrom", "LedgerTo", "LedgerGroup"),
              media_type="text/csv",
              description="Columns: the group, `requests`, `errors`, `<kind>_tokens` of each "
              "token kind, `cost_usd`, `unpriced`, then each outcome. A cell that would start a "
              "spreadsheet formula (`=`, `+`, `-`, `@`) is prefixed with `'`."),
    Operation("GET", "/stats/{app_id}", "appStats", "usage", "operator",
              "A whole app's usage, for the operator (`Authorization: Bearer <APP_SECRET>`)",
              {200: ("Totals, with the app's user count.", stats.AppUsageStats)},
              (400, *_ANY_TOKEN)),
    Operation("DELETE", "/keys/{provider}", "deleteKey", "keys", "token",
              "Delete the caller's key for a provider (idempotent)",
              {200: ("Deleted, or there was none.", keys.Ok)}, (400, *_USER)),
    Operation("POST", "/relay", "relayByModel", "relay", "token",
              "Relay by model: the body's `model` picks the provider and the path",
              _RELAYED, (400, 401, 402, 403, 413, 502, 503, 504), ModelRelayBody, _RELAY_HEADERS,
              _RELAY_NOTE + " `GET /models` shows the routing."),
    Operation("GET", "/relay/v1/models", "listAllModels", "relay", "token",
              "The models of every provider the caller holds a key for (`models.list` at "
              "`/relay/v1`)",
              {200: ("An OpenAI-format list; ids are `provider/id`.", "ModelList")},
              (401, 403, 503),
              description="Each provider with an OpenAI-compatible listing and a stored key is "
              "asked with that key; one that fails is left out and named in `unavailable`."),
    Operation("POST", "/relay/v1/chat/completions", "relayChatByModel", "relay", "token",
              "One OpenAI-compatible base URL for every model (`/relay/v1` in an OpenAI SDK)",
              _RELAYED, (400, 401, 402, 403, 413, 502, 503, 504), ModelRelayBody, _RELAY_HEADERS,
              _RELAY_NOTE + " The body's `model` picks the provider as for `POST /relay`; the "
              "body goes as it is (the model less any `provider/` prefix) to that provider's own "
              "OpenAI-compatible chat endpoint: OpenAI, Anthropic's, Gemini's `/v1beta/openai/`, "
              "Groq, OpenRouter, Mistral, openai-compatible."),
    Operation("POST", "/relay/{provider}/{path}", "relayPost", "relay", "token",
              "Relay a request to the provider's own API",
              _RELAYED, _RELAY_ERRORS, "RelayBody", _RELAY_HEADERS, _RELAY_NOTE),
    Operation("GET", "/relay/{provider}/{path}", "relayGet", "relay", "token",
              "Relay a read (a model listing, ElevenLabs `/v1/voices`, OpenAI "
              "`/v1/responses/{id}`)",
              _RELAYED, _RELAY_ERRORS, None, _RELAY_HEADERS,
              _RELAY_NOTE + " GET is relayed only on a provider's read paths; elsewhere it is "
              "405."),
    Operation("POST", "/relay/{provider}", "relayPostNoPath", "relay", "token", _NO_PATH,
              _RELAYED, _RELAY_ERRORS, "RelayBody", _RELAY_HEADERS),
    Operation("GET", "/relay/{provider}", "relayGetNoPath", "relay", "token", _NO_PATH,
              _RELAYED, _RELAY_ERRORS, None, _RELAY_HEADERS),
)

# Every parameter an operation may name: where it travels, its name, what it means.
PARAMETERS: Final[Mapping[str, JSON]] = {
    "Provider": _parameter("path", "provider", schema={"$ref": PROVIDER_NAME_REF}),
    "AppId": _parameter("path", "app_id", schema=msgspec.json.schema(AppId)),
    "TokenId": _parameter("path", "token_id", "A narrow token's id (`GET /tokens`)."),
    "UpstreamPath": _parameter("path", "path",
        "The provider's path (it may contain `/`). Decoded once and dot-resolved, it must "
        "equal or continue one of the provider's inference prefixes; otherwise 403.",
        examples={"chat": {"value": "v1/chat/completions"},
                  "messages": {"value": "v1/messages"}}),
    "Deep": _parameter("query", "deep",
        "`1` or `true`: also probe the provider named by `provider`."),
    "ProbeProvider": _parameter("query", "provider",
        "With `deep`: a provider with a fixed base URL; otherwise 400.",
        {"type": "string", "enum": [n for n, p in PROVIDERS.items() if p.base_url]}),
    "LedgerFrom": _parameter("query", "from",
        "Epoch milliseconds, a date (`YYYY-MM-DD`, its start, UTC) or an ISO 8601 time; "
        "included."),
    "LedgerTo": _parameter("query", "to",
        "Epoch milliseconds, a date (`YYYY-MM-DD`: the end of that day, UTC) or an ISO 8601 "
        "time; excluded."),
    "LedgerGroup": _parameter("query", "group_by", "What the records are summed by.",
        {"type": "string", "enum": list(LEDGER_GROUPS), "default": "day"}),
    "Verify": _parameter("query", "verify",
        "`true`: check the key's shape and ask the provider before storing."),
    "RelayBaseUrl": _parameter("header", "x-relay-base-url",
        "openai-compatible only, and required there: the upstream origin. Refused (400) "
        "unless `https` and a globally routable address, or an operator-named upstream."),
    **{f"Header-{name}": _parameter("header", name,
        "Forwarded to the providers that take it (CR, LF and NUL removed).")
       for name in _FORWARDED},
}
# The path's own `{names}`: their parameters come first, in the path's order.
PATH_PARAMETERS: Final = {
    "provider": "Provider",
    "path": "UpstreamPath",
    "app_id": "AppId",
    "token_id": "TokenId",
}
# fmt: on
