"""Schemathesis against a real relay, driven by the relay's own `/openapi.json`.

Every documented operation is fuzzed (valid and invalid inputs, seeded and derandomized, a bounded
number of examples) over TCP, with a live token whose user has a key stored for every provider,
so the relay path is exercised through to the mock provider. Checked on every response: no 5xx,
a documented status, content type, body schema and headers, and a JSON body whenever it is not
successfully relayed provider content (never HTML, never a traceback).

Nothing may leave this machine: every provider's base URL is the local mock, the
openai-compatible upstream (`x-relay-base-url`) is pinned to the mock on every request, names
never resolve (the resolver refuses them all), and an audit hook refuses, and records, any
connection or name lookup that is not loopback while this module runs.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from relay.api.openapi import OPERATIONS, build_document
from relay.providers.table import PROVIDERS
from tests.conftest import LogCapture, provider_key
from tests.mockprovider import MockProvider
from tests.relayserver import RelayServer, register, relay_env, store_key

pytestmark = pytest.mark.sqlite

SEED = 20_240_611
FUZZ_APP_SECRET = "fuzz-operator-secret"
OPERATOR = f"Bearer {FUZZ_APP_SECRET}"
MAX_EXAMPLES = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# These change the caller's own state (its account, token or keys): each example gets a user of
# its own, so that the shared fuzz user keeps its token and a key for every provider.
OWN_USER = {
    ("DELETE", "/users"),
    ("POST", "/tokens/revoke"),
    ("POST", "/keys/{provider}"),
    ("DELETE", "/keys/{provider}"),
}
RELAY_PATHS = (
    "/relay",
    "/relay/v1/chat/completions",
    "/relay/{provider}/{path}",
    "/relay/{provider}",
)
# What the relay answers with other than JSON when all goes well (`/metrics`' text format).
NOT_JSON = {
    (op.path, op.method): op.media_type for op in OPERATIONS if op.media_type != "application/json"
}
CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


# ---- nothing leaves the machine ------------------------------------------------------------


class LoopbackOnly:
    """A process-wide audit hook (hooks cannot be removed; this one is inert unless armed)."""

    armed = False
    refused: list[str] = []
    installed = False

    @classmethod
    def arm(cls) -> None:
        if not cls.installed:
            sys.addaudithook(cls._hook)
            cls.installed = True
        cls.armed = True

    @classmethod
    def disarm(cls) -> None:
        cls.armed = False

    @staticmethod
    def _is_loopback(host: object) -> bool:
        if host in (None, "localhost", b"localhost"):
            return True
        try:
            return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
        except ValueError:
            return False

    @classmethod
    def _hook(cls, event: str, args: tuple[Any, ...]) -> None:
        if not cls.armed:
            return
        if event == "socket.connect":
            address = args[1]
            host = address[0] if isinstance(address, tuple) else None
        elif event == "socket.getaddrinfo":
            host = args[0]
        else:
            return
        if not cls._is_loopback(host):
            cls.refused.append(f"{event} {host!r}")
            raise ConnectionRefusedError(f"test_fuzz: refused to reach {host!r}")


async def refuse_every_name(host: str, port: int) -> list[str]:
    raise OSError(f"test_fuzz: no name resolution ({host})")


# ---- the relay under test ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_relay(
    mock: MockProvider, tmp_path_factory: pytest.TempPathFactory, captured_logs: LogCapture
) -> Iterator[RelayServer]:
    db = tmp_path_factory.mktemp("fuzz") / "relay.db"
    unlimited = "1000000/minute"
    env = relay_env(
        db,
        mock.url,
        RATE_LIMIT_GLOBAL=unlimited,
        RATE_LIMIT_RELAY=unlimited,
        RATE_LIMIT_REGISTER=unlimited,
        RATE_LIMIT_HEALTH=unlimited,
        # Configured, so that the operator's statistics answer rather than 503.
        APP_SECRET=FUZZ_APP_SECRET,
        # A stray mock scenario (a fuzzed `"model": "mock-stall"`) must not hold the run up.
        RELAY_CONNECT_TIMEOUT="2",
        RELAY_UPSTREAM_TIMEOUT="5",
        RELAY_STREAM_IDLE_TIMEOUT="5",
    )
    LoopbackOnly.arm()
    server = RelayServer.from_env(env, resolver=refuse_every_name)
    try:
        yield server
    finally:
        server.stop()
        LoopbackOnly.disarm()
    assert LoopbackOnly.refused == [], "the relay tried to reach beyond loopback"


@pytest.fixture(scope="module")
def http(fuzz_relay: RelayServer) -> Iterator[httpx.Client]:
    # No keep-alive: a request after a 500 must not meet the connection the server dropped.
    with fuzz_relay.client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        yield client


@pytest.fixture(scope="module")
def fuzz_token(http: httpx.Client) -> str:
    """The shared fuzz user, with a key stored for every provider."""
    token = register(http, app_id="fuzz", authorization=OPERATOR)
    for name in PROVIDERS:
        store_key(http, token, name, provider_key(name))
    return token


# The document the relay serves (tests/test_openapi.py checks that it is this one). Loaded
# here rather than with `schemathesis.pytest.from_fixture`, whose lazy loader sets
# `Function._nodeid`, which pytest 9.2 no longer has.
schema = schemathesis.openapi.from_dict(
    build_document(),
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
                # Header values and strings over all of Latin-1: bytes 0x80-0xFF are legal in
                # HTTP field values (obs-text), and the default (ASCII headers) never sends them.
                "codec": "latin-1",
            },
            # Inputs from the schema and the seed alone, never from earlier responses (tokens
            # and timestamps differ from run to run): the same examples on every run.
            "phases": {
                "examples": {"extra-data-sources": {"responses": False}},
                "coverage": {"extra-data-sources": {"responses": False}},
                "fuzzing": {
                    "extra-data-sources": {"responses": False},
                    "error-feedback": {"enabled": False},
                },
            },
            "request-timeout": 15,
        }
    ),
)


# ---- the fuzz tests ------------------------------------------------------------------------


def test_the_fuzzed_document_is_the_served_one(http: httpx.Client) -> None:
    assert http.get("/openapi.json").json() == build_document()


def call_and_check(
    case: schemathesis.Case, relay: RelayServer, mock: MockProvider, token: str
) -> schemathesis.Response:
    """Send `case` with `token`, run the schema checks, and check that the body is JSON unless
    it is successfully relayed provider content."""
    # Pinned: the fuzzer's own `x-relay-base-url` values never reach the relay.
    headers = {"x-relay-token": token, "x-relay-base-url": mock.url, "authorization": OPERATOR}
    response = case.call_and_validate(base_url=relay.url, headers=headers, checks=CHECKS)
    relayed = case.path in RELAY_PATHS
    content_type = response.headers.get("content-type", [""])[0].split(";")[0].strip()
    other = NOT_JSON.get((case.path, case.method.upper()))
    if other and response.status_code < 400:
        assert content_type == other, (response.status_code, content_type)
    elif not (relayed and response.status_code < 400):
        assert content_type == "application/json", (response.status_code, content_type)
        body = response.json()
        if response.status_code >= 400 and not relayed:
            assert isinstance(body, dict), body
            assert isinstance(body.get("error"), str), body
    if content_type.startswith(("application/json", "text/")) and other != "text/html":
        assert "<html" not in response.text.lower(), response.text[:500]
        assert "Traceback (most recent call last)" not in response.text, response.text[:500]
    return response


@schema.parametrize()
def test_fuzz(
    case: schemathesis.Case,
    fuzz_relay: RelayServer,
    http: httpx.Client,
    fuzz_token: str,
    mock: MockProvider,
) -> None:
    """Every documented operation, valid and invalid inputs."""
    operation = (case.method.upper(), case.path)
    token = (
        register(http, app_id="fuzz-own", authorization=OPERATOR)
        if operation in OWN_USER
        else fuzz_token
    )
    response = call_and_check(case, fuzz_relay, mock, token)

    if operation == ("POST", "/keys/{provider}") and response.status_code == 200:
        # A key the relay accepted must be usable: relay one request with it.
        name = response.json()["provider"]
        path = PROVIDERS[name].allowed_paths[0]
        relayed = http.post(
            f"/relay/{name}{path}",
            json=CHAT_BODY,
            headers={"x-relay-token": token, "x-relay-base-url": mock.url},
        )
        assert relayed.status_code < 500, (
            f"key {case.body!r} stored for {name}, then relaying with it answered "
            f"{relayed.status_code}: {relayed.text[:300]}"
        )


# Every (method, provider, upstream path) the relay forwards: fuzzed bodies and headers on
# paths the provider allows, so that requests go all the way to the mock and back.
RELAY_TARGETS = [
    *(("POST", name, path) for name, p in PROVIDERS.items() for path in p.allowed_paths),
    *(("GET", name, path) for name, p in PROVIDERS.items() for path in p.read_paths),
    *(("GET", name, path) for name, p in PROVIDERS.items() for path in p.listing_paths),
]


@pytest.fixture(scope="module")
def routable_models(http: httpx.Client) -> list[str]:
    """A `provider/name` model for each provider `GET /models` says `POST /relay` routes."""
    response = http.get("/models")
    assert response.status_code == 200, response.text
    return [f"{prefix}/fuzz-model" for prefix in response.json()["providerPrefixes"]]


@settings(
    max_examples=2 * MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzz_relay_allowed_paths(
    data: st.DataObject,
    fuzz_relay: RelayServer,
    fuzz_token: str,
    mock: MockProvider,
    routable_models: list[str],
) -> None:
    """Fuzzed headers and bodies on requests the relay forwards: a provider's allowed path, or
    `POST /relay` with a model it routes."""
    mode = data.draw(st.sampled_from(GenerationMode), label="mode")
    if data.draw(st.booleans(), label="by model"):
        case = data.draw(schema["/relay"]["POST"].as_strategy(mode), label="case")
        if isinstance(case.body, dict):
            case.body["model"] = data.draw(st.sampled_from(routable_models), label="model")
    else:
        method, provider, path = data.draw(st.sampled_from(RELAY_TARGETS), label="target")
        operation = schema["/relay/{provider}/{path}"][method]
        path_parameters = {"provider": provider, "path": path.lstrip("/")}
        case = data.draw(operation.as_strategy(mode, path_parameters=path_parameters))
    call_and_check(case, fuzz_relay, mock, fuzz_token)
