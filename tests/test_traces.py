"""Traces through a real `byok-relay serve` process exporting to a local OTLP/HTTP receiver (the
collector's protocol, decoded with OpenTelemetry's own protobuf classes): one server span per
relayed request with the GenAI attributes, the store calls and the provider request as its
children, a caller's `traceparent` joined, nothing secret exported; and nothing of
OpenTelemetry loaded when no endpoint is set."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from backends import StoreError
from relay.config import ConfigError, Settings
from relay.telemetry.traces import Tracer
from tests.mockprovider import MockProvider
from tests.relayprocess import RelayProcess, clean_env
from tests.relayserver import TEST_SECRET, chat_as_a_new_user, register, relay_env, store_key

pytestmark = pytest.mark.sqlite

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
KEY = "test-openai-key-traces-0123456789"


class Receiver:
    """An OTLP/HTTP traces endpoint on 127.0.0.1: every span it was sent, and the raw bodies."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.bodies.append(body)
                receiver.headers.append(dict(self.headers))
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        receiver.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, name_prefix: str, timeout: float = 10) -> Span:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for span in self.spans:
                if span.name.startswith(name_prefix):
                    return span
            time.sleep(0.05)
        raise AssertionError(f"no span {name_prefix!r} in {[s.name for s in self.spans]}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def attributes(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attribute in span.attributes:
        value = attribute.value
        out[attribute.key] = getattr(value, value.WhichOneof("value"))
    return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def relay(mock: MockProvider, receiver: Receiver, tmp_path: Path) -> Iterator[RelayProcess]:
    env = relay_env(
        tmp_path / "relay.db",
        mock.url,
        LOG_LEVEL="info",
        CACHE_TTL="0",  # every request asks the store: its calls are spans of the request
        # Credentials in the URL: never in a log line.
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url.replace("://", "://otlp:otlp-password@"),
        OTEL_EXPORTER_OTLP_HEADERS="x-vendor-key=vendor-secret-0123",
        OTEL_SERVICE_NAME="relay-under-test",
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    process = RelayProcess(tmp_path, env)
    try:
        yield process
    finally:
        process.stop()


def test_a_relayed_request_is_a_span_with_its_store_and_provider_calls(
    relay: RelayProcess, receiver: Receiver
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with relay.client() as client:
        token = register(client, "traced-app")
        store_key(client, token, "openai", KEY)
        response = client.post(
            "/relay/openai/v1/chat/completions",
            json=CHAT,
            headers={
                "x-relay-token": token,
                "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
            },
        )
    assert response.status_code == 200
    server = receiver.wait_for("POST /relay/")
    assert server.name == "POST /relay/{provider}/{path}"
    assert server.kind == Span.SPAN_KIND_SERVER
    assert server.trace_id.hex() == trace_id  # the caller's trace, joined
    assert server.parent_span_id.hex() == "00f067aa0ba902b7"
    found = attributes(server)
    assert found["gen_ai.provider.name"] == found["gen_ai.system"] == "openai"
    assert found["gen_ai.request.model"] == "gpt-4o-mini"
    assert (found["gen_ai.usage.input_tokens"], found["gen_ai.usage.output_tokens"]) == (11, 7)
    assert found["http.response.status_code"] == 200
    assert found["relay.outcome"] == "completed"
    assert found["relay.request_id"] == response.headers["x-relay-request-id"]

    upstream = receiver.wait_for("POST 127.0.0.1")
    assert upstream.kind == Span.SPAN_KIND_CLIENT
    assert upstream.parent_span_id == server.span_id
    assert attributes(upstream)["http.response.status_code"] == 200
    store = receiver.wait_for("store user_for_token")
    assert store.parent_span_id == server.span_id
    assert receiver.wait_for("store get_key").parent_span_id == server.span_id
    # Registration and key storage are not relayed requests: no trace of their own.
    assert not [s for s in receiver.spans if s.name.startswith(("POST /users", "POST /keys"))]

    exported = b"".join(receiver.bodies)
    for secret in (token.encode(), KEY.encode()):
        assert secret not in exported
    assert b"relay-under-test" in exported
    assert receiver.headers[0]["x-vendor-key"] == "vendor-secret-0123"
    logged = "".join(relay.lines)
    assert "traces: exported to 127.0.0.1" in logged
    for secret in ("vendor-secret-0123", "otlp-password"):
        assert secret not in logged


def test_a_provider_that_cannot_be_reached_is_an_error_span(
    mock: MockProvider, receiver: Receiver, tmp_path: Path
) -> None:
    env = relay_env(
        tmp_path / "relay.db",
        mock.url,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{receiver.url}/v1/traces",
        OTEL_BSP_SCHEDULE_DELAY="50",
        RELAY_UPSTREAM_TIMEOUT="0.3",
    )
    relay = RelayProcess(tmp_path, env)
    try:
        with relay.client() as client:
            _, response = chat_as_a_new_user(client, KEY, "delay_ms=2000")
        assert response.status_code == 504
        server = receiver.wait_for("POST /relay/")
        assert server.status.code == server.status.STATUS_CODE_ERROR
        assert attributes(server)["relay.outcome"] == "upstream_timeout"
    finally:
        relay.stop()


def test_nothing_of_opentelemetry_is_loaded_without_an_endpoint(tmp_path: Path) -> None:
    script = f"""
import sys
from starlette.testclient import TestClient
from relay.app import create_app
from relay.config import Settings
settings = Settings.from_env({{
    "ENCRYPTION_SECRET": {TEST_SECRET!r},
    "DATABASE_URL": "sqlite:///{tmp_path / "relay.db"}",
}})
from backends import migrate
migrate.upgrade(str(settings.database_url))
with TestClient(create_app(settings)) as client:
    assert client.post("/users", json={{"app_id": "a"}}).status_code == 200
    assert client.post("/relay/openai/v1/chat/completions").status_code == 401
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
print(loaded)
assert not loaded
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def in_memory_tracer(**options: Any) -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer = Tracer("http://127.0.0.1:9/v1/traces", exporter=exporter, **options)
    return tracer, exporter


def serve_once(tracer: Tracer, headers: list[tuple[bytes, bytes]], inner: Any) -> None:
    """One relayed-path request through the tracer's middleware, `inner` as the app."""

    async def main() -> None:
        scope = {"type": "http", "method": "POST", "path": "/relay/openai/x", "headers": headers}

        async def receive() -> Any:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            pass

        with contextlib.suppress(StoreError):
            await tracer.middleware(inner)(scope, receive, send)

    asyncio.run(main())
    tracer.shutdown()


def test_a_failure_is_recorded_by_its_type_never_its_message() -> None:
    """A driver's message may quote its query's parameters (a user id, a token's digest)."""
    tracer, exporter = in_memory_tracer()

    async def failing_store_call(scope: Any, receive: Any, send: Any) -> None:
        with tracer.store_span("get_key"):
            raise StoreError("[parameters: ('user-secret-id', 'digest-0123')]")

    serve_once(tracer, [], failing_store_call)
    store = next(s for s in exporter.get_finished_spans() if s.name == "store get_key")
    assert store.attributes is not None
    assert store.attributes["error.type"] == "StoreError"
    assert not store.events  # no exception event with its message
    assert store.status.description is None
    assert "user-secret-id" not in repr(
        [(s.name, s.attributes, s.events, s.status) for s in exporter.get_finished_spans()]
    )


@pytest.mark.parametrize(("follow", "joined"), [(True, True), (False, False)])
def test_a_callers_traceparent_is_followed_only_with_a_parentbased_sampler(
    follow: bool, joined: bool
) -> None:
    """With `always_off` and a sampled `traceparent`, a caller forces no trace."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    tracer, exporter = in_memory_tracer(sample_ratio=0.0, follow_caller=follow)

    async def nothing(scope: Any, receive: Any, send: Any) -> None:
        pass

    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01".encode()
    serve_once(tracer, [(b"traceparent", traceparent)], nothing)
    spans = exporter.get_finished_spans()
    assert bool(spans) is joined
    if joined:
        assert format(spans[0].context.trace_id, "032x") == trace_id


def test_the_sampler_names_are_read_as_the_sdk_reads_them() -> None:
    base = {"ENCRYPTION_SECRET": TEST_SECRET, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    cases = {
        "parentbased_always_on": (1.0, True),
        "always_off": (0.0, False),
        "traceidratio": (0.25, False),
        "parentbased_traceidratio": (0.25, True),
    }
    for name, expected in cases.items():
        env = {**base, "OTEL_TRACES_SAMPLER": name, "OTEL_TRACES_SAMPLER_ARG": "0.25"}
        traces = Settings.from_env(env).traces
        assert traces is not None
        assert (traces.sample_ratio, traces.follow_caller) == expected, name
        assert traces.endpoint == "http://c:4318/v1/traces"
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER"):
        Settings.from_env({**base, "OTEL_TRACES_SAMPLER": "jaeger_remote"})
    with pytest.raises(ConfigError, match="http/protobuf"):
        Settings.from_env({**base, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert Settings.from_env({**base, "OTEL_SDK_DISABLED": "true"}).traces is None
