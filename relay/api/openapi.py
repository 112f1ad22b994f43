"""`GET /openapi.json`: the OpenAPI 3.1 document of every endpoint the relay serves.

Built from the tables of `relay.api.operations`: a row per operation, and the schemas generated
by msgspec from the very Structs the endpoints parse and answer with, so a field or a limit is
declared once. The document is built once and served as cached bytes.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from relay import __version__
from relay.api.operations import (
    ALWAYS,
    ERROR_RESPONSES,
    NAMED_BODIES,
    NAMED_SCHEMAS,
    OPERATIONS,
    PARAMETERS,
    PATH_PARAMETERS,
    Auth,
    Error,
    Operation,
    Shape,
)

__all__ = ["OPERATIONS", "Operation", "build_document", "document_bytes", "openapi_json"]

JSON = dict[str, Any]

_SECURITY: Final[Mapping[Auth, list[JSON]]] = {
    "none": [],
    "token": [{"relayToken": []}],
    "app_secret": [{}, {"appSecret": []}],
    "operator": [{"appSecret": []}],
    "metrics_token": [{}, {"metricsToken": []}],
}
_SECURITY_SCHEMES: Final = {
    "relayToken": {"type": "apiKey", "in": "header", "name": "x-relay-token"},
    "appSecret": {
        "type": "http",
        "scheme": "bearer",
        "description": "`APP_SECRET`, when the operator set one.",
    },
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "`METRICS_TOKEN`, when the operator set one.",
    },
}
_RELAYED_DEFAULT: Final = {
    "description": "The provider's own answer, any status, relayed unchanged.",
    "content": {"*/*": {}},
}


def _ref(kind: str, name: str) -> JSON:
    return {"$ref": f"#/components/{kind}/{name}"}


def _name(shape: Shape) -> str | None:
    return shape.__name__ if isinstance(shape, type) else shape


def _json(schema: JSON, media_type: str = "application/json") -> JSON:
    return {media_type: {"schema": schema}}


def _components() -> JSON:
    bodies = [op.body for op in OPERATIONS if isinstance(op.body, type)]
    answers = [a for op in OPERATIONS for _, a in op.answers.values() if isinstance(a, type)]
    shapes = dict.fromkeys([Error, *answers, *bodies])
    _, schemas = msgspec.json.schema_components(shapes, ref_template="#/components/schemas/{name}")
    schemas["Error"]["additionalProperties"] = True  # some errors add fields (`hint`, ...)
    # A request body's schema goes inline, its docstring becoming the body's description.
    inline = {name: schemas.pop(name) for name in dict.fromkeys(b.__name__ for b in bodies)}
    request_bodies = {
        name: {"required": True, "description": s.pop("description"), "content": _json(s)}
        for name, s in inline.items()
    }
    responses: JSON = {}
    for status, (name, description) in ERROR_RESPONSES.items():
        responses[name] = {"description": description, "content": _json(_ref("schemas", "Error"))}
        if status in (429, 503):
            retry_after = {"description": "Seconds to wait.", "schema": {"type": "string"}}
            responses[name]["headers"] = {"Retry-After": {**retry_after, "required": status == 429}}
    return {
        "schemas": {**NAMED_SCHEMAS, **schemas},
        "parameters": dict(PARAMETERS),
        "requestBodies": {**request_bodies, **NAMED_BODIES},
        "responses": responses,
        "securitySchemes": _SECURITY_SCHEMES,
    }


def _operation(op: Operation) -> JSON:
    responses: JSON = {}
    for status, (description, shape) in op.answers.items():
        name = _name(shape)
        content = _json(_ref("schemas", name), op.media_type) if name else {"*/*": {}}
        responses[str(status)] = {"description": description, "content": content}
    for status in sorted({*op.errors, *ALWAYS}):
        responses[str(status)] = _ref("responses", ERROR_RESPONSES[status][0])
    if any(shape is None for _, shape in op.answers.values()):
        responses["default"] = _RELAYED_DEFAULT
    out: JSON = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "security": _SECURITY[op.auth],
    }
    if op.description:
        out["description"] = op.description
    in_path = [PATH_PARAMETERS[name] for name in re.findall(r"{(\w+)}", op.path)]
    if parameters := [*in_path, *op.parameters]:
        out["parameters"] = [_ref("parameters", name) for name in parameters]
    if body := _name(op.body):
        out["requestBody"] = _ref("requestBodies", body)
    return {**out, "responses": responses}


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
        "tags": [{"name": name} for name in dict.fromkeys(op.tag for op in OPERATIONS)],
        "paths": paths,
        "components": _components(),
    }


@functools.cache
def document_bytes() -> bytes:
    return json.dumps(build_document(), separators=(",", ":")).encode()


async def openapi_json(request: Request) -> Response:
    return Response(document_bytes(), media_type="application/json")
