"""OpenTelemetry traces of relayed requests, exported over OTLP/HTTP (the `otel` extra).

Imported only when an OTLP endpoint is configured (`relay.config.TraceSettings`): without one
nothing of OpenTelemetry is loaded and no request pays for it. With one, each relayed request
is a server span carrying the GenAI attributes (`gen_ai.provider.name`, `gen_ai.request.model`,
`gen_ai.usage.*_tokens`) and the relay's outcome; the key store calls it makes and its request
to the provider (until the provider's head: the body streams within the request's span) are its
children. With a `parentbased_` sampler a caller's `traceparent` joins its trace; with any
other, a caller can neither join nor force one. No span or attribute holds a token, a key, a
user id or a URL's query (a provider key may travel in one), and a failure is recorded by its
type alone: a driver's message may quote the parameters of its query.

Spans are exported by the SDK's batch processor, on its own thread: the loop never waits on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Final

import httpx
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.re import parse_env_headers
from opentelemetry.util.types import Attributes
from starlette.types import ASGIApp, Receive, Scope, Send

from relay.telemetry.access import ACCESS, Access

__all__ = ["Tracer"]

TRACED_PREFIX: Final = "/relay"
_PROPAGATOR: Final = TraceContextTextMapPropagator()


class Tracer:
    """The relay's tracer: its request middleware, the store's and the upstream's spans."""

    def __init__(
        self,
        endpoint: str,
        *,
        headers: str | None = None,
        service_name: str = "byok-relay",
        service_version: str = "unknown",
        sample_ratio: float = 1.0,
        follow_caller: bool = True,
        exporter: SpanExporter | None = None,
    ) -> None:
        """`exporter` replaces the OTLP one (tests)."""
        sampler: Sampler = TraceIdRatioBased(sample_ratio)
        self.provider = TracerProvider(
            resource=Resource.create(
                {"service.name": service_name, "service.version": service_version}
            ),
            sampler=ParentBased(sampler) if follow_caller else sampler,
        )
        self.follow_caller = follow_caller
        if exporter is None:
            exporter = OTLPSpanExporter(
                endpoint=endpoint,
                headers=dict(parse_env_headers(headers, liberal=True)) if headers else None,
                timeout=10,
            )
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self.provider.get_tracer("byok-relay", service_version)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        return _Traced(app, self._tracer, self.follow_caller)

    def transport(self, transport: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        return _TracedTransport(transport, self._tracer)

    def store_span(self, operation: str) -> contextlib.AbstractContextManager[object]:
        """A child span for one store call, or nothing outside a traced request (background
        writes are no trace's)."""
        if not trace.get_current_span().is_recording():
            return contextlib.nullcontext()
        return _child(self._tracer, f"store {operation}", {"db.operation.name": operation})

    def shutdown(self) -> None:
        """Export what is left, then stop (blocking: run it off the loop)."""
        self.provider.shutdown()


@contextlib.contextmanager
def _child(tracer: trace.Tracer, name: str, attributes: Attributes) -> Iterator[trace.Span]:
    """A client span, current within; a failure is its type, never its message."""
    with tracer.start_as_current_span(
        name,
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR))
            raise


class _Traced:
    """The server span of each relayed request, current while it is served."""

    def __init__(self, app: ASGIApp, tracer: trace.Tracer, follow_caller: bool) -> None:
        self.app = app
        self.tracer = tracer
        self.follow_caller = follow_caller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(TRACED_PREFIX):
            await self.app(scope, receive, send)
            return
        parent = (
            _PROPAGATOR.extract(_HeaderCarrier(scope["headers"]))
            if self.follow_caller
            else otel_context.Context()
        )
        span = self.tracer.start_span(
            f"{scope['method']} {TRACED_PREFIX}", context=parent, kind=SpanKind.SERVER
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            await self.app(scope, receive, send)
        finally:
            otel_context.detach(token)
            access: Access | None = scope.get(ACCESS)
            if access is not None and span.is_recording():
                _describe(span, scope, access)
            span.end()


def _describe(span: trace.Span, scope: Scope, access: Access) -> None:
    route = access.route_of(scope)
    span.update_name(f"{scope['method']} {route}")
    attributes: dict[str, str | int] = {
        "http.request.method": scope["method"],
        "http.route": route,
        "http.response.status_code": access.status,
        "relay.request_id": access.id,
    }
    if access.provider is not None:
        attributes["gen_ai.provider.name"] = access.provider
        attributes["gen_ai.system"] = access.provider  # the name before semconv 1.37
    optional = {
        "gen_ai.request.model": access.model,
        "gen_ai.usage.input_tokens": access.input_tokens,
        "gen_ai.usage.output_tokens": access.output_tokens,
        "relay.outcome": access.outcome,
        "relay.app_id": access.app_id,
    }
    attributes.update({name: value for name, value in optional.items() if value is not None})
    span.set_attributes(attributes)
    if access.status >= 500 or access.status == 0:
        span.set_status(Status(StatusCode.ERROR, access.outcome or None))


class _HeaderCarrier(Mapping[str, str]):
    """An ASGI header list read as the propagator reads a carrier (its `traceparent` only)."""

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self._headers = headers

    def __getitem__(self, name: str) -> str:
        wanted = name.encode()
        for key, value in self._headers:
            if key == wanted:
                return value.decode("latin-1")
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (key.decode("latin-1") for key, _ in self._headers)

    def __len__(self) -> int:
        return len(self._headers)


class _TracedTransport(httpx.AsyncBaseTransport):
    """The upstream pool, each request within a traced one a client span until the head."""

    def __init__(self, transport: httpx.AsyncBaseTransport, tracer: trace.Tracer) -> None:
        self.transport = transport
        self.tracer = tracer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not trace.get_current_span().is_recording():
            return await self.transport.handle_async_request(request)
        url = request.url
        with _child(
            self.tracer,
            f"{request.method} {url.host}",
            {
                "http.request.method": request.method,
                "server.address": url.host,
                "server.port": url.port or (443 if url.scheme == "https" else 80),
            },
        ) as span:
            response = await self.transport.handle_async_request(request)
            span.set_attribute("http.response.status_code", response.status_code)
            return response

    async def aclose(self) -> None:
        await self.transport.aclose()
