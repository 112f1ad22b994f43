"""What a relayed request reserves under its owner's spending caps before it is sent
(`relay.pricing.caps`); the exchange settles it when it ends.

The worst case: one request; as input, one token for each byte of the body (no tokenizer
gives fewer bytes a token); as output, the body's own limit (`max_tokens`,
`max_completion_tokens`, `max_output_tokens`, Gemini's `generationConfig.maxOutputTokens`, times
`n` or `candidateCount` answers), else the most the provider writes (`Provider.max_output`);
and the cost of those at the model's price, as if the whole input were written to a cache (the
dearest way to send it) when that costs more.
"""

from __future__ import annotations

import datetime
import functools
from typing import Any, Final

import msgspec

from backends import DAY_MS, User
from relay.errors import PaymentRequired
from relay.pricing.caps import (
    MOST,
    Cap,
    Caps,
    Counted,
    Reserved,
    Unpriced,
    Worst,
    caps_of,
    charges,
    counted,
    describe,
    shown,
    usd,
)
from relay.pricing.table import PriceTable
from relay.providers.table import Provider
from relay.proxy.exchange import Request
from relay.security.auth import now_ms
from relay.security.grants import Limits
from relay.services import Services

__all__ = ["capped", "max_output", "reserve", "worst_case"]


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


class _Config(msgspec.Struct):
    maxOutputTokens: Any = None
    candidateCount: Any = None


class _Limits(msgspec.Struct):
    """The members of a request body that bound its output; the rest is skipped unread."""

    max_tokens: Any = None
    max_completion_tokens: Any = None
    max_output_tokens: Any = None
    n: Any = None
    generationConfig: _Config | None = None


_limits = msgspec.json.Decoder(_Limits)
_NO_CONFIG: Final = _Config()


def max_output(body: bytes | bytearray | None) -> int | None:
    """The most output the request's JSON body allows, when it says."""
    if not body:
        return None
    try:
        data = _limits.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    config = data.generationConfig or _NO_CONFIG
    for limit in (data.max_tokens, data.max_completion_tokens, data.max_output_tokens,
                  config.maxOutputTokens):  # fmt: skip
        if limit is not None and _count(limit) is not None:
            answers = _count(data.n) or _count(config.candidateCount) or 1
            return int(limit) * min(answers, 128)
    return None


def worst_case(
    prices: PriceTable, provider: Provider, model: str | None, body: bytes | bytearray | None,
    now: int,
) -> Worst:  # fmt: skip
    size = len(body) if body else 0
    limit = max_output(body)
    output = provider.max_output if limit is None else limit
    return Worst(size + output, prices.most(provider.name, model, size, output, now))


@functools.lru_cache(maxsize=4096)
def _caps(caps: str | None, limits: str | None) -> Caps | None:
    """The owner's caps and the narrow token's budgets, together; None: neither."""
    owner = caps_of(caps) if caps is not None else Caps([])
    budgets = msgspec.json.decode(limits, type=Limits).budgets if limits is not None else None
    everything = [*owner.caps, *(msgspec.convert(b, Cap) for b in budgets or ())]
    return Caps(everything, owner.allow_unpriced) if everything else None


@functools.lru_cache(maxsize=4096)
def _counted(
    caps: str | None, limits: str | None, app: str, provider: str, model: str | None, day: int
) -> tuple[Counted, ...]:
    """What a request is counted on, worked out once a day per owner's caps and scope."""
    everything = _caps(caps, limits)
    if everything is None:
        return ()
    return tuple(counted(everything, app, provider, model, day * DAY_MS))


def capped(user: User) -> Caps | None:
    """The caps a request of `user`'s token is under: its owner's, and its own budgets."""
    if user.caps is None and user.child is None:
        return None
    return _caps(user.caps, user.child.limits if user.child is not None else None)


async def reserve(
    services: Services, request: Request, provider: Provider, model: str | None,
    body: bytes | bytearray | None,
) -> Reserved | None:  # fmt: skip
    """Reserve the request's worst case against every cap that covers it (`request.caps`); 402
    when one could be passed. None: no cap covers it. Its rate-limit hit (`request.hit`) is
    counted with the reservation (`Leases.reserve`)."""
    user, caps, hit = request.user, request.caps, request.hit
    if caps is None:
        return None
    now = now_ms()
    limits = user.child.limits if user.child is not None else None
    counts = _counted(user.caps, limits, user.app_id, provider.name, model, now // DAY_MS)
    if not counts:
        return None
    worst = worst_case(services.prices, provider, model, body, now)
    try:
        wanted = charges(counts, worst, caps.allow_unpriced)
    except Unpriced as refusal:
        raise PaymentRequired(
            f"The key owner's {describe(refusal.cap)} cost cap applies, and "
            + (f'model "{model}" has' if model else "this request names no model that has")
            + " no known price: it cannot be kept within the cap. (The owner may allow models "
            "of no known price with allow_unpriced.)",
            code="model_unpriced",
            cap=shown(refusal.cap),
        ) from None
    refused = await services.leases.reserve(user.id, wanted, now, hit)
    if refused is None:
        return Reserved(user.id, counts, wanted)
    charge, count = wanted[refused], counts[refused]
    cap, metric = count.cap, count.metric
    spent = (await services.leases.spent(user.id, [charge.counter], now)).get(charge.counter, 0)
    money = metric == "cost"

    def amount(value: int) -> str:
        return f"${usd(value)}" if money else str(value)

    requested = (
        f"up to {amount(charge.amount)}" if charge.amount <= MOST else f"more than {amount(MOST)}"
    )
    raise PaymentRequired(
        f"The key owner's {describe(cap)} {metric} cap would be passed: {amount(spent)} of "
        f"{amount(charge.limit)} spent, and this request may take {requested}. It resets at "
        f"{_iso(count.resets_at)}.",
        cap=shown(cap),
        metric=metric,
        limit=charge.limit,
        spent=spent,
        requested=charge.amount,
        resets_at=count.resets_at,
    )


def _iso(at: int) -> str:
    return datetime.datetime.fromtimestamp(at / 1000, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
