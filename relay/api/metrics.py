"""`GET /metrics`: the Prometheus text format (`relay.telemetry.metrics`), behind
`Authorization: Bearer <METRICS_TOKEN>` when one is set."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

import relay.telemetry.metrics as metrics
from relay.security.auth import check_app_secret
from relay.services import Services

__all__ = ["metrics_endpoint"]


async def metrics_endpoint(request: Request) -> Response:
    services: Services = request.state.services
    check_app_secret(
        services.settings.metrics_token,
        request.headers,
        "GET /metrics needs Authorization: Bearer <METRICS_TOKEN>",
        code="metrics_token_required",
    )
    services.sample_gauges()
    # Off the loop: with several workers it reads each one's files.
    return Response(
        await run_in_threadpool(metrics.exposition),
        media_type=metrics.CONTENT_TYPE,
        headers={"cache-control": "no-store"},
    )
