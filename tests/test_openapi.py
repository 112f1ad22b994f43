"""The OpenAPI document (`relay/api/openapi.py`, from the tables of `relay/api/operations.py`):
valid OpenAPI 3.1, served as built, checked against the app's real routes both ways, and its
schemas against what the endpoints accept and answer, so that it cannot go stale."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import jsonschema_rs
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

import backends
from relay.api import accounts, discovery, health, keys, stats
from relay.api.openapi import OPERATIONS, build_document, document_bytes
from relay.app import create_app
from relay.config import Settings
from relay.providers.table import PROVIDERS
from tests.relayserver import TEST_SECRET, register, store_key

pytestmark = pytest.mark.sqlite

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# A route without a method list is a raw ASGI endpoint (the relay): it serves these and answers
# 405 to every other method itself (checked below against a real relay).
ASGI_ENDPOINT_METHODS = {"GET", "POST"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_document()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert method in HTTP_METHODS, (path, method)
            yield path, method.upper(), operation


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def deref(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = resolve(document, node["$ref"])
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


# ---- a valid OpenAPI 3.1 document -----------------------------------------------------------


def test_validates_against_the_openapi_31_meta_schema(document: dict[str, Any]) -> None:
    try:
        from openapi_spec_validator import validate  # type: ignore[import-not-found]
    except ImportError:
        # schemathesis (a test dependency) ships the official OpenAPI 3.1 JSON Schema.
        from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

        errors = [
            f"{e.instance_path}: {e.message}" for e in OPENAPI_31_VALIDATOR.iter_errors(document)
        ]
        assert not errors, errors
    else:
        validate(document)


def test_structure(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"]
    assert document["info"]["version"]
    for ref in refs(document):
        resolve(document, ref)  # every $ref resolves
    schemes = document["components"]["securitySchemes"]
    assert schemes["relayToken"] == {"type": "apiKey", "in": "header", "name": "x-relay-token"}
    assert schemes["appSecret"]["type"] == "http"
    assert schemes["appSecret"]["scheme"] == "bearer"
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(ids) == len(set(ids)), ids
    for path, method, op in operations(document):
        where = f"{method} {path}"
        assert op["summary"], where
        assert op["responses"], where
        for requirement in op["security"]:
            assert set(requirement) <= set(schemes), where
        # Path parameters: exactly the template's names, each required.
        params = [deref(document, p) for p in op.get("parameters", [])]
        in_path = {p["name"] for p in params if p["in"] == "path"}
        assert in_path == set(re.findall(r"{(\w+)}", path)), where
        assert all(p["required"] for p in params if p["in"] == "path"), where
        assert "requestBody" not in op or method in ("POST", "PUT", "PATCH"), where


def test_every_schema_is_valid_json_schema_2020_12(document: dict[str, Any]) -> None:
    registry = jsonschema_rs.Registry([("urn:doc", document)])
    for name, schema in document["components"]["schemas"].items():
        jsonschema_rs.meta.validate(schema)
        # Local refs resolve against the document.
        jsonschema_rs.validator_for(
            {"$ref": f"urn:doc#/components/schemas/{name}"}, registry=registry
        ).is_valid({})


def test_errors_are_documented_in_the_one_error_shape(document: dict[str, Any]) -> None:
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "code"]
    assert error["additionalProperties"] is True
    for path, method, op in operations(document):
        where = f"{method} {path}"
        responses = op["responses"]
        assert {"429", "500"} <= set(responses), where
        retry_after = deref(document, responses["429"])["headers"]["Retry-After"]
        assert retry_after["required"] is True, where
        for status, response in responses.items():
            if status == "default" or int(status) < 400 or (path, status) == ("/health", "503"):
                continue
            schema = deref(document, response)["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}, (where, status)
    health_503 = document["paths"]["/health"]["get"]["responses"]["503"]
    assert health_503["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Unhealthy"
    }


def test_documented_statuses_per_endpoint(document: dict[str, Any]) -> None:
    def statuses(path: str, method: str) -> set[str]:
        return set(document["paths"][path][method]["responses"]) - {"429", "500"}

    assert statuses("/health", "get") == {"200", "400", "401", "503"}
    assert statuses("/livez", "get") == {"200"}
    assert statuses("/readyz", "get") == {"200", "503"}
    assert statuses("/version", "get") == {"200"}
    assert statuses("/openapi.json", "get") == {"200"}
    assert statuses("/users", "post") == {"200", "400", "401", "413", "503"}
    assert statuses("/keys/{provider}", "post") == {
        *("200", "400", "401", "403", "413", "422", "503")
    }
    assert statuses("/tokens", "post") == {"201", "400", "401", "403", "409", "413", "503"}
    assert statuses("/tokens/{token_id}", "delete") == {"200", "401", "404", "503"}
    assert statuses("/models", "get") == {"200"}
    assert statuses("/relay", "post") == {
        *("200", "400", "401", "402", "403", "413", "502", "503", "504"),
        "default",
    }
    for method in ("get", "post"):
        assert statuses("/relay/{provider}/{path}", method) == {
            *("200", "400", "401", "402", "403", "405", "413", "502", "503", "504"),
            "default",
        }


def test_provider_enum_is_the_provider_table(document: dict[str, Any]) -> None:
    assert document["components"]["schemas"]["ProviderName"]["enum"] == list(PROVIDERS)
    provider = document["components"]["parameters"]["Provider"]
    assert provider["in"] == "path"
    assert provider["schema"] == {"$ref": "#/components/schemas/ProviderName"}


def test_request_bodies(document: dict[str, Any]) -> None:
    def body(path: str) -> dict[str, Any]:
        op = document["paths"][path]["post"]
        return deref(document, op["requestBody"])

    register = body("/users")["content"]["application/json"]["schema"]
    assert register["properties"]["app_id"] == {"type": "string", "minLength": 1, "maxLength": 128}
    store = body("/keys/{provider}")["content"]["application/json"]["schema"]
    assert store["required"] == ["key"]
    assert store["properties"]["key"]["type"] == "string"
    relay = body("/relay/{provider}/{path}")
    assert relay["content"]["application/json"]["schema"] == {"type": "object"}
    assert "application/octet-stream" in relay["content"]
    assert document["paths"]["/users"]["post"]["security"] == [{}, {"appSecret": []}]
    model = body("/relay")["content"]["application/json"]["schema"]
    assert model["required"] == ["model"]
    for path in ("/relay", "/relay/{provider}/{path}", "/relay/{provider}", "/keys", "/users"):
        for method, op in document["paths"][path].items():
            if (path, method) != ("/users", "post"):
                assert op["security"] == [{"relayToken": []}], (path, method)
    relay_params = {
        deref(document, p)["name"]
        for p in document["paths"]["/relay/{provider}/{path}"]["post"]["parameters"]
    }
    assert {"provider", "path", "x-relay-base-url", "anthropic-version"} <= relay_params


# ---- the document against the app's routes, both ways --------------------------------------


def starlette_app(app: ASGIApp) -> Starlette:
    """`create_app` wraps the Starlette app in pure-ASGI middleware, each holding `.app`."""
    for _ in range(10):
        if isinstance(app, Starlette):
            return app
        app = app.app  # type: ignore[attr-defined]
    raise AssertionError("no Starlette app inside the middleware")


def routed(routes: list[BaseRoute]) -> set[tuple[str, str]]:
    """(OpenAPI path, method) for every route; `{name:convertor}` becomes `{name}`."""
    served: set[tuple[str, str]] = set()
    for route in routes:
        assert isinstance(route, Route), f"unexpected route kind {route!r}: teach this test"
        path = re.sub(r"{(\w+)(:\w+)?}", r"{\1}", route.path)
        methods = route.methods if route.methods is not None else ASGI_ENDPOINT_METHODS
        served |= {(path, m) for m in methods if m != "HEAD"}
    return served


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> set[tuple[str, str]]:
    db = tmp_path_factory.mktemp("openapi") / "relay.db"
    env = {"ENCRYPTION_SECRET": TEST_SECRET, "DATABASE_URL": f"sqlite:///{db}"}
    return routed(starlette_app(create_app(Settings.from_env(env))).routes)


def test_every_route_is_documented(document: dict[str, Any], served: set[tuple[str, str]]) -> None:
    documented = {(path, method) for path, method, _ in operations(document)}
    assert served - documented == set(), "routes missing from relay/openapi.py"


def test_every_documented_operation_is_routed(
    document: dict[str, Any], served: set[tuple[str, str]]
) -> None:
    documented = {(path, method) for path, method, _ in operations(document)}
    assert documented - served == set(), "documented operations the app does not serve"


def test_the_table_is_the_document(document: dict[str, Any]) -> None:
    assert {(op.path, op.method) for op in OPERATIONS} == {
        (path, method) for path, method, _ in operations(document)
    }
    assert len(OPERATIONS) == len({(op.path, op.method) for op in OPERATIONS})


def test_the_route_walk_sees_what_it_must() -> None:
    # The both-ways check is only as good as the walk: a known-bad table must fail it.
    assert routed([Route("/x/{p:path}", lambda r: None, methods=["GET"])]) == {("/x/{p}", "GET")}


# ---- served by a real relay ----------------------------------------------------------------


def test_served_without_auth_as_built(client: httpx.Client) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "application/json"
    assert response.content == document_bytes()
    assert response.json() == build_document()


def test_models_answer_fits_its_schema(client: httpx.Client, document: dict[str, Any]) -> None:
    models = document["components"]["schemas"]["Models"]
    assert models["properties"]["providerPrefixes"]["items"] == {
        "$ref": "#/components/schemas/ProviderName"
    }
    registry = jsonschema_rs.Registry([("urn:doc", document)])
    validator = jsonschema_rs.validator_for(
        {"$ref": "urn:doc#/components/schemas/Models"}, registry=registry
    )
    answer = client.get("/models").json()
    errors = [error.message for error in validator.iter_errors(answer)]
    assert not errors, errors


def test_built_once() -> None:
    assert document_bytes() is document_bytes()


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_relay_routes_refuse_undocumented_methods(client: httpx.Client, method: str) -> None:
    # What `ASGI_ENDPOINT_METHODS` claims: the relay endpoint serves GET and POST only.
    for path in ("/relay/openai/v1/chat/completions", "/relay/openai"):
        response = client.request(method, path)
        assert response.status_code == 405, (method, path, response.text)
        assert response.json()["code"] == "method_not_allowed"


def test_openapi_json_method_not_allowed(client: httpx.Client) -> None:
    response = client.post("/openapi.json")
    assert response.status_code == 405
    assert json.loads(response.content)["code"] == "method_not_allowed"


# ---- the schemas are the endpoints' own declarations ---------------------------------------

ENDPOINT_MODULES = [accounts, discovery, health, keys, stats]


def structs(module: ModuleType) -> list[type[msgspec.Struct]]:
    return [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, msgspec.Struct)
        and value.__module__ == module.__name__
    ]


@pytest.mark.parametrize("module", ENDPOINT_MODULES, ids=lambda m: m.__name__)
def test_every_declared_shape_is_documented(document: dict[str, Any], module: ModuleType) -> None:
    components = document["components"]
    names = {*components["schemas"], *components["requestBodies"]}
    assert structs(module), module
    for struct in structs(module):
        assert struct.__name__ in names, f"{module.__name__}.{struct.__name__} is not documented"


def test_key_info_is_the_stores_record() -> None:
    # `GET /keys` builds its entries from the store's `KeyInfo`, field for field.
    stored = [field.name for field in dataclasses.fields(backends.KeyInfo)]
    assert list(keys.KeyInfo.__struct_fields__) == stored


def validator(document: dict[str, Any], name: str) -> Any:
    registry = jsonschema_rs.Registry([("urn:doc", document)])
    return jsonschema_rs.validator_for(
        {"$ref": f"urn:doc#/components/schemas/{name}"}, registry=registry
    )


def test_answers_fit_their_schemas(client: httpx.Client, document: dict[str, Any]) -> None:
    token = register(client)
    headers = {"x-relay-token": token}
    store_key(client, token, "openai", "sk-schema-check-0123456789")
    answers = {
        "Health": client.get("/health"),
        "Probe": client.get("/readyz"),
        "Version": client.get("/version"),
        "Registered": client.post("/users", json={"app_id": "schema-check"}),
        "KeyStored": client.post("/keys/groq", json={"key": "gsk_0123456789"}, headers=headers),
        "KeyList": client.get("/keys", headers=headers),
        "UsageStats": client.get("/stats", headers=headers),
        "Ok": client.delete("/keys/groq", headers=headers),
        "OkMessage": client.post("/tokens/revoke", headers=headers),
        "Error": client.get("/keys", headers=headers),  # the token is revoked now
    }
    assert answers["KeyList"].json()["keys"], "a key is listed, so its entry is checked"
    for name, response in answers.items():
        errors = [e.message for e in validator(document, name).iter_errors(response.json())]
        assert not errors, (name, response.text, errors)


def body_validator(document: dict[str, Any], name: str) -> Any:
    content = document["components"]["requestBodies"][name]["content"]
    return jsonschema_rs.validator_for(content["application/json"]["schema"])


def test_register_accepts_what_its_schema_allows(
    client: httpx.Client, document: dict[str, Any]
) -> None:
    schema = body_validator(document, "RegisterBody")
    for length in (0, 1, 128, 129):
        body = {"app_id": "a" * length}
        response = client.post("/users", json=body)
        assert (response.status_code == 200) == schema.is_valid(body), (length, response.text)


def test_store_key_accepts_what_its_schema_allows(
    client: httpx.Client, document: dict[str, Any]
) -> None:
    schema = body_validator(document, "StoreKeyBody")
    headers = {"x-relay-token": register(client)}
    candidates = ["k" * n for n in (9, 10, 4096, 4097)]
    candidates += ["k" * 10 + c for c in ("\u00e9", "\x7f", "~")]
    for key in candidates:
        body = {"key": key}
        response = client.post("/keys/mistral", json=body, headers=headers)
        assert (response.status_code == 200) == schema.is_valid(body), (key[-12:], response.text)
