"""`GET /stats` (the caller's usage) and `GET /stats/{app_id}` (a whole app's, for the operator)."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

import backends
from backends import OUTCOMES, TOKEN_KINDS
from relay.api.shapes import NAME_CHARS, Count, answer, is_printable_name
from relay.errors import BadRequest, ServiceUnavailable
from relay.security.auth import authenticate, check_app_secret, now_ms
from relay.services import Services

__all__ = ["AppUsageStats", "Cost", "UsageStats", "app_stats", "cost_of", "user_stats"]

NO_STORE = {"cache-control": "no-store"}


class ProviderTotals(msgspec.Struct):
    total: Count
    errors: Count


class ModelTotal(msgspec.Struct):
    model: str
    total: Count


class Tokens(msgspec.Struct):
    """Each of `backends.TOKEN_KINDS`, summed as the providers reported them."""

    input: Count
    output: Count
    cache_read: Count
    cache_write: Count
    reasoning: Count


class Cost(msgspec.Struct):
    """What the records cost, estimated from the relay's price table (docs/api.md, "Cost")."""

    micro_usd: Annotated[Count, Meta(description="Millionths of a US dollar: the exact sum.")]
    usd: Annotated[str, Meta(description="The same in dollars, six decimals.", examples=["0.0125"])]
    unpriced: Annotated[
        Count, Meta(description="Records with tokens but no price (not in the sum).")
    ]


def cost_of(micros: int, unpriced: int) -> Cost:
    return Cost(micros, f"{micros // 1_000_000}.{micros % 1_000_000:06d}", unpriced)


class UsageStats(msgspec.Struct):
    total: Count
    last_7d: Count
    last_30d: Count
    error_count: Count
    error_rate: Annotated[float, Meta(ge=0, le=1)]
    providers: dict[str, ProviderTotals]
    top_models: list[ModelTotal]
    last_request: int | None
    tokens: Tokens
    cost: Cost
    outcomes: Annotated[
        dict[str, Count],
        Meta(
            description="Requests by how their exchange ended.",
            extra_json_schema={"required": list(OUTCOMES)},
        ),
    ]


class AppUsageStats(UsageStats):
    app_id: str
    user_count: Count


U = TypeVar("U", bound=UsageStats)


def _usage(stats: backends.UsageStats, shape: type[U], **more: Any) -> U:
    return shape(
        total=stats.total,
        last_7d=stats.last_7d,
        last_30d=stats.last_30d,
        error_count=stats.error_count,
        error_rate=round(stats.error_count / stats.total, 4) if stats.total else 0,
        providers={p: ProviderTotals(t["total"], t["errors"]) for p, t in stats.providers.items()},
        top_models=[ModelTotal(model, total) for model, total in stats.top_models],
        last_request=stats.last_request,
        tokens=Tokens(**{kind: getattr(stats, f"{kind}_tokens") for kind in TOKEN_KINDS}),
        cost=cost_of(stats.cost_micros, stats.unpriced),
        outcomes={outcome: stats.outcomes.get(outcome, 0) for outcome in OUTCOMES},
        **more,
    )


async def user_stats(request: Request) -> Response:
    services: Services = request.state.services
    user = await authenticate(services.store, services.tokens, request.headers)
    await services.usage.flush()  # the caller sees their latest request counted
    stats = await services.store.usage_stats(now_ms(), user_id=user.id)
    return answer(_usage(stats, UsageStats), headers=NO_STORE)


async def app_stats(request: Request) -> Response:
    services: Services = request.state.services
    if services.settings.app_secret is None:
        raise ServiceUnavailable(
            "App statistics need APP_SECRET to be configured", code="app_secret_not_configured"
        )
    check_app_secret(
        services.settings.app_secret,
        request.headers,
        "Unauthorized: valid Authorization: Bearer <APP_SECRET> header required.",
    )
    app_id: str = request.path_params["app_id"]
    if not is_printable_name(app_id):  # no app could be registered so: nothing to look up
        raise BadRequest(f"app_id is 1 to {NAME_CHARS} printable characters", code="invalid_app_id")
    await services.usage.flush()
    stats = await services.store.usage_stats(now_ms(), app_id=app_id)
    user_count = await services.store.count_users(app_id)
    return answer(
        _usage(stats, AppUsageStats, app_id=app_id, user_count=user_count), headers=NO_STORE
    )
