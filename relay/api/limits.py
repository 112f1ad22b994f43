"""`PUT /limits`, `GET /limits`, `DELETE /limits`: the key owner's spending caps on their own
usage (`relay.pricing.caps`), with what each has counted in its current period."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from relay.api.bodies import read_json
from relay.api.shapes import Count, answer
from relay.errors import BadRequest
from relay.pricing.caps import (
    METRICS,
    MOST,
    MOST_CAPS,
    Cap,
    Caps,
    caps_of,
    clash,
    describe,
    micro_usd,
    period_of,
    usd,
)
from relay.providers.table import PROVIDERS
from relay.security.auth import authenticate, now_ms
from relay.services import Services

__all__ = [
    "CapIn",
    "CapsIn",
    "CapsShown",
    "cap_of",
    "clear_limits",
    "distinct",
    "get_limits",
    "put_limits",
]

_NO_STORE = {"cache-control": "no-store"}


class CapIn(msgspec.Struct, forbid_unknown_fields=True):
    """A cap: at least one of `requests`, `tokens` and `cost_usd` over its period, for all the
    owner's usage or only one app, provider or model."""

    period: Annotated[Literal["day", "month"], Meta(description="A UTC day, or calendar month.")]
    requests: Annotated[int, Meta(ge=1, le=MOST)] | None = None
    tokens: (
        Annotated[int, Meta(ge=1, le=MOST, description="Input and output, as reported.")] | None
    ) = None
    cost_usd: (
        Annotated[str | float, Meta(description="Dollars, estimated at the model's price.")] | None
    ) = None
    app: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    provider: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    model: Annotated[str, Meta(min_length=1, max_length=256)] | None = None


class CapsIn(msgspec.Struct, forbid_unknown_fields=True):
    """Every cap of the caller's (replacing those set before); `[]` for none."""

    caps: Annotated[list[CapIn], Meta(max_length=MOST_CAPS)]
    allow_unpriced: Annotated[
        bool, Meta(description="Let models of no known price through cost caps (as free).")
    ] = False


class Spent(msgspec.Struct, omit_defaults=True):
    requests: Count | None = None
    tokens: Count | None = None
    cost_usd: str | None = None


class CapShown(msgspec.Struct, omit_defaults=True):
    period: str
    spent: Spent
    resets_at: Annotated[int, Meta(description="Epoch ms at which the period ends.")]
    requests: int | None = None
    tokens: int | None = None
    cost_usd: str | None = None
    app: str | None = None
    provider: str | None = None
    model: str | None = None


class CapsShown(msgspec.Struct):
    """The caller's caps, each with what it has counted in its current period."""

    caps: list[CapShown]
    allow_unpriced: bool


def _refused(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_limits")


def cap_of(given: CapIn) -> Cap:
    """A cap as `PUT /limits` and a narrow token's budget take it, checked."""
    if given.requests is None and given.tokens is None and given.cost_usd is None:
        raise _refused("A cap limits at least one of requests, tokens and cost_usd")
    if given.provider is not None and given.provider not in PROVIDERS:
        raise _refused(f'Unsupported provider "{given.provider}"')
    try:
        cost = None if given.cost_usd is None else micro_usd(given.cost_usd)
    except ValueError:
        raise _refused("cost_usd is a positive amount of dollars (at most 6 decimals)") from None
    fields = msgspec.to_builtins(given) | {"cost_micro_usd": cost}
    del fields["cost_usd"]
    try:
        return msgspec.convert(fields, Cap)  # its own bounds checked too
    except msgspec.ValidationError as exc:
        raise _refused(f"Invalid cap: {exc}") from None


def distinct(caps: list[Cap]) -> list[Cap]:
    """`caps`, refused when two of one scope and period limit the same metric."""
    found = clash(caps)
    if found is not None:
        cap, metric = found
        raise _refused(
            f"Two {describe(cap)} caps limit {metric}: a scope and period may cap each metric "
            "once (put the limits in one cap)"
        )
    return caps


async def put_limits(request: Request) -> Response:
    services: Services = request.state.services
    user = await authenticate(services.store, services.tokens, request.headers)
    body = await read_json(request, services.settings.request_body_limit)
    try:
        given = msgspec.convert(body, CapsIn)
    except msgspec.ValidationError as exc:
        raise _refused(f"Invalid limits: {exc}") from None
    caps = Caps(distinct([cap_of(cap) for cap in given.caps]), given.allow_unpriced)
    stored = msgspec.json.encode(caps).decode() if caps.caps else None
    await services.store.set_caps(user.id, stored)
    return await _shown(services, user.id, caps)


async def get_limits(request: Request) -> Response:
    services: Services = request.state.services
    user = await authenticate(services.store, services.tokens, request.headers)
    caps = caps_of(user.caps) if user.caps is not None else Caps([])
    return await _shown(services, user.id, caps)


async def clear_limits(request: Request) -> Response:
    services: Services = request.state.services
    user = await authenticate(services.store, services.tokens, request.headers)
    await services.store.set_caps(user.id, None)
    return await _shown(services, user.id, Caps([]))


async def _shown(services: Services, user_id: str, caps: Caps) -> Response:
    now = now_ms()
    counters = []
    for cap in caps.caps:
        start, _ = period_of(cap.period, now)
        counters += [cap.counter(metric, start) for metric in METRICS if cap.limit(metric)]
    spent = await services.leases.spent(user_id, counters, now)
    shown = []
    for cap in caps.caps:
        start, ends = period_of(cap.period, now)
        amounts = {m: spent.get(cap.counter(m, start), 0) for m in METRICS if cap.limit(m)}
        cost = amounts.get("cost")
        shown.append(
            CapShown(
                period=cap.period,
                spent=Spent(
                    amounts.get("requests"),
                    amounts.get("tokens"),
                    None if cost is None else usd(cost),
                ),
                resets_at=ends,
                requests=cap.requests,
                tokens=cap.tokens,
                cost_usd=None if cap.cost_micro_usd is None else usd(cap.cost_micro_usd),
                app=cap.app,
                provider=cap.provider,
                model=cap.model,
            )
        )
    return answer(CapsShown(shown, caps.allow_unpriced), headers=_NO_STORE)
