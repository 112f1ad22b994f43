"""`GET /openapi.json`: the OpenAPI 3.1 document of every endpoint the relay serves.

The document is built from data: `OPERATIONS` has one row per route and method (path, method,
summary, auth, request body, responses), and the provider enum comes from `PROVIDERS`. A test
walks the app's router and checks the table against it both ways, so a route cannot be added,
moved or dropped without the document following. It is built once and served as cached bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from typing import Any, Final, Literal

from starlette.requests import Request
from starlette.responses import Response

from backends import OUTCOMES

from . import __version__
from .providers import PROVIDERS

__all__ = ["OPERATIONS", "Operation", "build_document", "document_bytes", "openapi_json"]

JSON = dict[str, Any]
Auth = Literal["none", "token", "app_secret", "operator"]

# Every error the relay answers itself: `#/components/responses/<name>`, JSON in the Error shape.
ERROR_RESPONSES: Final[Mapping[int, tuple[str, str]]] = {
    400: ("BadRequest", "Malformed JSON, a missing or invalid field, or an unsupported provider."),
    401: ("Unauthorized", "Missing, unknown, expired or revoked credentials."),
    403: ("Forbidden", "Not an inference endpoint, or a model this relay does not allow."),
    404: ("NotFound", "No such route."),
    405: ("MethodNotAllowed", "The route does not serve this method (see `Allow`)."),
    413: ("PayloadTooLarge", "The request body is over `REQUEST_BODY_LIMIT_BYTES`."),
    422: ("KeyRejected", "The provider refused the new key; the stored key was not changed."),
    429: ("TooManyRequests", "A rate limit was reached; retry after `Retry-After` seconds."),
    500: ("InternalError", "An unexpected error, for this request only (never a traceback)."),
    502: ("BadGateway", "The AI provider could not be reached."),
    503: ("ServiceUnavailable", "The key store or the rate limiter is down; retry shortly."),
    504: ("GatewayTimeout", "The AI provider timed out before answering."),
}
# What any request may meet, whatever the endpoint.
ALWAYS: Final = (429, 500)


@dataclasses.dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    ok: tuple[tuple[int, str, str], ...]
    """(status, description, schema): `#/components/schemas/<schema>`, or "" for relayed content."""
    errors: tuple[int, ...] = ()
    """Statuses from `ERROR_RESPONSES` besides `ALWAYS`."""
    auth: Auth = "none"
    body: str | None = None
    """`#/components/requestBodies/<body>`."""
    parameters: tuple[str, ...] = ()
    """`#/components/parameters/<name>`; path parameters are named like the path's."""
    description: str = ""


def _forwarded_client_headers() -> list[str]:
    """Every provider-specific request header a client may send (the forwarding allowlist)."""
    names = {c for p in PROVIDERS.values() for _, clients in p.forwarded_headers for c in clients}
    return sorted(names)


_RELAY_NOTE = (
    "Relays the request upstream with the caller's stored key and streams the answer back as it "
    "arrives: status, body (JSON, SSE or binary) and selected headers. The errors listed are "
    "the relay's own; any other status is the provider's, relayed unchanged."
)
_RELAYED = ((200, "The provider's response, relayed.", ""),)
_RELAY_ERRORS = (400, 401, 403, 405, 413, 502, 503, 504)
_RELAY_HEADERS = ("RelayBaseUrl", *(f"Header-{name}" for name in _forwarded_client_headers()))
_NO_PATH = "The relay without an upstream path: refused (403) once the token is checked"

OPERATIONS: Final[tuple[Operation, ...]] = (
    # ---- meta
    Operation(
        "GET",
        "/health",
        "getHealth",
        "Health: the key store and configuration checks",
        "meta",
        (
            (200, "The relay and its key store are healthy.", "Health"),
            (503, "A required check failed (`ok: false`), or the limiter is down.", "Unhealthy"),
        ),
        (400,),
        parameters=("Deep", "ProbeProvider"),
        description="`?deep=1&provider=P` adds `checks.upstream`: a cheap reachability probe "
        "of that provider (no key is sent), under a tighter rate limit of its own.",
    ),
    Operation(
        "GET",
        "/version",
        "getVersion",
        "The running version",
        "meta",
        ((200, "Version, commit and build time.", "Version"),),
    ),
    Operation(
        "GET",
        "/openapi.json",
        "getOpenApi",
        "This document",
        "meta",
        ((200, "The OpenAPI 3.1 document of the relay.", "OpenApiDocument"),),
    ),
    Operation(
        "GET",
        "/models",
        "listModels",
        "How `POST /relay` routes model names, and which models this relay allows",
        "meta",
        ((200, "The routing table and the model allowlist.", "Models"),),
    ),
    # ---- accounts
    Operation(
        "POST",
        "/users",
        "register",
        "Register: a new relay token for an app",
        "accounts",
        ((200, "The new relay token; keep it, it is shown once.", "Registered"),),
        (400, 401, 413, 503),
        "app_secret",
        "RegisterBody",
        description="Needs `Authorization: Bearer <APP_SECRET>` when the operator set one.",
    ),
    Operation(
        "DELETE",
        "/users",
        "deleteUser",
        "Delete the caller's account, its keys and every record about it",
        "accounts",
        ((200, "Deleted.", "OkMessage"),),
        (401, 503),
        "token",
    ),
    Operation(
        "POST",
        "/tokens/revoke",
        "revokeToken",
        "Revoke the caller's token, at once and everywhere",
        "accounts",
        ((200, "Revoked.", "OkMessage"),),
        (401, 503),
        "token",
    ),
    # ---- keys
    Operation(
        "GET",
        "/keys",
        "listKeys",
        "The providers the caller has a key stored for (never a key)",
        "keys",
        ((200, "Provider names.", "KeyList"),),
        (401, 503),
        "token",
    ),
    Operation(
        "POST",
        "/keys/{provider}",
        "storeKey",
        "Store or replace the caller's key for a provider (encrypted at rest); with "
        "`verify=true`, only a key the provider accepts",
        "keys",
        ((200, "Stored.", "KeyStored"),),
        (400, 401, 413, 422, 503),
        "token",
        "StoreKeyBody",
        ("Provider", "Verify"),
    ),
    Operation(
        "POST",
        "/keys/{provider}/rotate",
        "rotateKey",
        "Check a new key's shape and ask the provider about it, then replace the stored key; "
        "the old key is untouched on any failure",
        "keys",
        ((200, "Replaced (or stored: `rotated` says whether a key existed).", "KeyStored"),),
        (400, 401, 413, 422, 503),
        "token",
        "StoreKeyBody",
        ("Provider",),
    ),
    Operation(
        "GET",
        "/stats",
        "userStats",
        "The caller's usage: requests, errors, providers, models, tokens",
        "usage",
        ((200, "Totals.", "UsageStats"),),
        (401, 503),
        "token",
    ),
    Operation(
        "GET",
        "/stats/{app_id}",
        "appStats",
        "A whole app's usage, for the operator (`Authorization: Bearer <APP_SECRET>`)",
        "usage",
        ((200, "Totals, with the app's user count.", "AppUsageStats"),),
        (401, 503),
        "operator",
        parameters=("AppId",),
    ),
    Operation(
        "DELETE",
        "/keys/{provider}",
        "deleteKey",
        "Delete the caller's key for a provider (idempotent)",
        "keys",
        ((200, "Deleted, or there was none.", "Ok"),),
        (400, 401, 503),
        "token",
        parameters=("Provider",),
    ),
    # ---- relay
    Operation(
        "POST",
        "/relay",
        "relayByModel",
        "Relay by model: the body's `model` picks the provider and the path",
        "relay",
        _RELAYED,
        (400, 401, 403, 413, 502, 503, 504),
        "token",
        "ModelRelayBody",
        _RELAY_HEADERS,
        _RELAY_NOTE + " `GET /models` shows the routing.",
    ),
    Operation(
        "POST",
        "/relay/{provider}/{path}",
        "relayPost",
        "Relay a request to the provider's own API",
        "relay",
        _RELAYED,
        _RELAY_ERRORS,
        "token",
        "RelayBody",
        ("Provider", "UpstreamPath", *_RELAY_HEADERS),
        _RELAY_NOTE,
    ),
    Operation(
        "GET",
        "/relay/{provider}/{path}",
        "relayGet",
        "Relay a read (ElevenLabs `/v1/voices`, OpenAI `/v1/responses/{id}`)",
        "relay",
        _RELAYED,
        _RELAY_ERRORS,
        "token",
        None,
        ("Provider", "UpstreamPath", *_RELAY_HEADERS),
        _RELAY_NOTE + " GET is relayed only on a provider's read paths; elsewhere it is 405.",
    ),
    Operation(
        "POST",
        "/relay/{provider}",
        "relayPostNoPath",
        _NO_PATH,
        "relay",
        _RELAYED,
        _RELAY_ERRORS,
        "token",
        "RelayBody",
        ("Provider", *_RELAY_HEADERS),
    ),
    Operation(
        "GET",
        "/relay/{provider}",
        "relayGetNoPath",
        _NO_PATH,
        "relay",
        _RELAYED,
        _RELAY_ERRORS,
        "token",
        None,
        ("Provider", *_RELAY_HEADERS),
    ),
)


# ---- components ----------------------------------------------------------------------------


def _ref(kind: str, name: str) -> JSON:
    return {"$ref": f"#/components/{kind}/{name}"}


def _object(properties: JSON, required: tuple[str, ...] = (), **extra: Any) -> JSON:
    return {"type": "object", "required": list(required), "properties": properties, **extra}


def _usage_stats(**extra: JSON) -> JSON:
    count = {"type": "integer", "minimum": 0}
    properties: JSON = {
        "total": count,
        "last_7d": count,
        "last_30d": count,
        "error_count": count,
        "error_rate": {"type": "number", "minimum": 0, "maximum": 1},
        "providers": {
            "type": "object",
            "additionalProperties": _object({"total": count, "errors": count}, ("total", "errors")),
        },
        "top_models": {
            "type": "array",
            "items": _object({"model": {"type": "string"}, "total": count}, ("model", "total")),
        },
        "last_request": {"type": ["integer", "null"]},
        "tokens": _object({"input": count, "output": count}, ("input", "output")),
        "outcomes": _object(
            {outcome: count for outcome in OUTCOMES},
            OUTCOMES,
            description="Requests by how their exchange ended.",
        ),
        **extra,
    }
    return _object(properties, tuple(properties))


def _schemas() -> JSON:
    provider = _ref("schemas", "ProviderName")
    ok_true = {"type": "boolean", "const": True}
    return {
        "Error": _object(
            {
                "error": {"type": "string", "description": "A human message."},
                "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
            },
            ("error", "code"),
            description="Every error the relay answers itself; some add fields (e.g. `hint`).",
            additionalProperties=True,
        ),
        "ProviderName": {"type": "string", "enum": list(PROVIDERS)},
        "Health": _object(
            {
                "ok": {"type": "boolean"},
                "draining": {
                    "type": "boolean",
                    "description": "Shutting down: finishing what is in progress, taking no more.",
                },
                "version": {"type": "string"},
                "uptime": {"type": "number", "description": "Seconds since start."},
                "timestamp": {"type": "integer", "description": "Epoch milliseconds."},
                "providers": {"type": "array", "items": provider},
                "checks": _object(
                    {
                        "db": _object(
                            {"ok": {"type": "boolean"}, "error": {"type": "string"}}, ("ok",)
                        ),
                        "config": _object({"ok": {"type": "boolean"}}, ("ok",)),
                        "upstream": _object(
                            {"ok": {"type": "boolean"}, "provider": provider}, ("ok", "provider")
                        ),
                    },
                    ("db", "config"),
                ),
            },
            ("ok", "draining", "version", "uptime", "timestamp", "providers", "checks"),
        ),
        "Unhealthy": {"anyOf": [_ref("schemas", "Health"), _ref("schemas", "Error")]},
        "Version": _object(
            {name: {"type": "string"} for name in ("version", "commit", "buildTime")},
            ("version", "commit", "buildTime"),
        ),
        "OpenApiDocument": _object({"openapi": {"type": "string"}}, ("openapi",)),
        "Models": _object(
            {
                "providers": {"type": "array", "items": provider},
                "providerPrefixes": {
                    "type": "array",
                    "items": provider,
                    "description": "The providers a `provider/name` model may name, without "
                    "the slash (as the Node relay lists them).",
                },
                "patterns": {
                    "type": "array",
                    "items": _object(
                        {
                            "pattern": {"type": "string"},
                            "flags": {"type": "string"},
                            "provider": provider,
                        },
                        ("pattern", "flags", "provider"),
                    ),
                },
                "restricted": {"type": "boolean"},
                "allowed_models": {"type": "array", "items": {"type": "string"}},
                "message": {"type": "string"},
            },
            ("providers", "providerPrefixes", "patterns", "restricted"),
        ),
        "Registered": _object(
            {
                "token": {"type": "string", "description": "Send it as `x-relay-token`."},
                "expires_at": {
                    "type": ["integer", "null"],
                    "description": "Epoch milliseconds; null when tokens do not expire.",
                },
            },
            ("token", "expires_at"),
        ),
        "Ok": _object({"ok": ok_true}, ("ok",)),
        "OkMessage": _object({"ok": ok_true, "message": {"type": "string"}}, ("ok", "message")),
        "KeyList": _object(
            {
                "providers": {"type": "array", "items": provider},
                "keys": {"type": "array", "items": _ref("schemas", "KeyInfo")},
            },
            ("providers", "keys"),
        ),
        "KeyInfo": _object(
            {
                "provider": provider,
                "hint": {"type": "string", "description": "`sk-...a1b2`: never more of a key."},
                "status": {"enum": ["ok", "unverified", "invalid", "no_credit"]},
                "created_at": {"type": "integer"},
                "updated_at": {"type": "integer"},
                "verified_at": {"type": ["integer", "null"]},
                "last_used_at": {"type": ["integer", "null"]},
            },
            (
                "provider",
                "hint",
                "status",
                "created_at",
                "updated_at",
                "verified_at",
                "last_used_at",
            ),
        ),
        "KeyStored": _object(
            {
                "ok": ok_true,
                "provider": provider,
                "rotated": {"type": "boolean"},
                "status": {"enum": ["ok", "unverified"]},
                "hint": {
                    "type": "string",
                    "description": "Present when the key's shape is unfamiliar for the provider "
                    "(which accepted it): a hint in case it was pasted for another one.",
                },
            },
            ("ok", "provider"),
        ),
        "UsageStats": _usage_stats(),
        "AppUsageStats": _usage_stats(
            app_id={"type": "string"}, user_count={"type": "integer", "minimum": 0}
        ),
    }


# Keys travel in HTTP headers: printable ASCII (after trimming, 10 to 4096 characters).
_KEY: Final = {"type": "string", "minLength": 10, "maxLength": 4096, "pattern": "^[ -~]*$"}


def _request_bodies() -> JSON:
    def json_body(schema: JSON, description: str) -> JSON:
        return {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }

    return {
        "RegisterBody": json_body(
            _object({"app_id": {"type": "string", "minLength": 1, "maxLength": 128}}, ("app_id",)),
            "The app the token is for (printable, 1 to 128 characters).",
        ),
        "StoreKeyBody": json_body(
            _object({"key": _KEY}, ("key",)),
            "The provider key (trimmed; 10 to 4096 printable ASCII characters). "
            "`apiKey` and `api_key` are accepted for `key`.",
        ),
        "ModelRelayBody": json_body(
            _object(
                {
                    "model": {
                        "type": "string",
                        "description": "`provider/name`, or a name of a known family.",
                        "examples": ["gpt-4o-mini", "anthropic/claude-3-5-haiku-latest"],
                    },
                    "stream": {"type": "boolean"},
                },
                ("model",),
                additionalProperties=True,
            ),
            "The provider's request body; forwarded with `model` as the provider names it.",
        ),
        "RelayBody": {
            "required": False,
            "description": "Forwarded to the provider byte for byte, whatever its content type.",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/octet-stream": {},
            },
        },
    }


def _parameters() -> JSON:
    parameters: JSON = {
        "Provider": {
            "name": "provider",
            "in": "path",
            "required": True,
            "schema": _ref("schemas", "ProviderName"),
        },
        "Deep": {
            "name": "deep",
            "in": "query",
            "required": False,
            "description": "`1` or `true`: also probe the provider named by `provider`.",
            "schema": {"type": "string"},
        },
        "ProbeProvider": {
            "name": "provider",
            "in": "query",
            "required": False,
            "description": "With `deep`: a provider with a fixed base URL; otherwise 400.",
            "schema": {"type": "string", "enum": [n for n, p in PROVIDERS.items() if p.base_url]},
        },
        "AppId": {
            "name": "app_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 128},
        },
        "Verify": {
            "name": "verify",
            "in": "query",
            "required": False,
            "description": "`true`: check the key's shape and ask the provider before storing.",
            "schema": {"type": "string"},
        },
        "UpstreamPath": {
            "name": "path",
            "in": "path",
            "required": True,
            "description": (
                "The provider's path (it may contain `/`). Decoded once and dot-resolved, it must "
                "equal or continue one of the provider's inference prefixes; otherwise 403."
            ),
            "schema": {"type": "string"},
            "examples": {
                "chat": {"value": "v1/chat/completions"},
                "messages": {"value": "v1/messages"},
            },
        },
        "RelayBaseUrl": {
            "name": "x-relay-base-url",
            "in": "header",
            "required": False,
            "description": (
                "openai-compatible only, and required there: the upstream origin. Refused (400) "
                "unless `https` and a globally routable address, or an operator-named upstream."
            ),
            "schema": {"type": "string"},
        },
    }
    for name in _forwarded_client_headers():
        parameters[f"Header-{name}"] = {
            "name": name,
            "in": "header",
            "required": False,
            "description": "Forwarded to the providers that take it (CR, LF and NUL removed).",
            "schema": {"type": "string"},
        }
    return parameters


def _responses() -> JSON:
    error = {"application/json": {"schema": _ref("schemas", "Error")}}
    retry_after = {"description": "Seconds to wait.", "schema": {"type": "string"}}
    responses: JSON = {}
    for status, (name, description) in ERROR_RESPONSES.items():
        response: JSON = {"description": description, "content": error}
        if status in (429, 503):
            response["headers"] = {"Retry-After": {**retry_after, "required": status == 429}}
        responses[name] = response
    return responses


# ---- the document --------------------------------------------------------------------------

_SECURITY: Final[Mapping[Auth, list[JSON]]] = {
    "none": [],
    "token": [{"relayToken": []}],
    "app_secret": [{}, {"appSecret": []}],
    "operator": [{"appSecret": []}],
}


def _operation(op: Operation) -> JSON:
    responses: JSON = {}
    for status, description, schema in op.ok:
        content = (
            {"*/*": {}} if not schema else {"application/json": {"schema": _ref("schemas", schema)}}
        )
        responses[str(status)] = {"description": description, "content": content}
    for status in sorted({*op.errors, *ALWAYS}):
        responses[str(status)] = _ref("responses", ERROR_RESPONSES[status][0])
    if any(not schema for _, _, schema in op.ok):
        responses["default"] = {
            "description": "The provider's own answer, any status, relayed unchanged.",
            "content": {"*/*": {}},
        }
    out: JSON = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "security": _SECURITY[op.auth],
    }
    if op.description:
        out["description"] = op.description
    if op.parameters:
        out["parameters"] = [_ref("parameters", name) for name in op.parameters]
    if op.body is not None:
        out["requestBody"] = _ref("requestBodies", op.body)
    out["responses"] = responses
    return out


def build_document() -> JSON:
    """A fresh copy of the document (`document_bytes` is what the endpoint serves)."""
    paths: JSON = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "byok-relay",
            "version": __version__,
            "description": (
                "A bring-your-own-key relay for AI provider APIs. Every response body is JSON "
                "unless it is relayed provider content; errors are `{error, code}`. Unknown "
                "routes answer 404 and wrong methods 405, both JSON."
            ),
        },
        "tags": [{"name": name} for name in ("meta", "accounts", "keys", "relay", "usage")],
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "parameters": _parameters(),
            "requestBodies": _request_bodies(),
            "responses": _responses(),
            "securitySchemes": {
                "relayToken": {"type": "apiKey", "in": "header", "name": "x-relay-token"},
                "appSecret": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`APP_SECRET`, when the operator set one.",
                },
            },
        },
    }


@functools.cache
def document_bytes() -> bytes:
    return json.dumps(build_document(), separators=(",", ":")).encode()


async def openapi_json(request: Request) -> Response:
    return Response(document_bytes(), media_type="application/json")
