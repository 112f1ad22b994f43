"""Spending caps the key owner sets on their own usage, and what a request reserves under them.

A cap limits requests, tokens or estimated cost (any of the three) over a UTC day or calendar
month, for all of the owner's usage or for one app, provider or model. Before a request is sent
its worst case is reserved against every cap it falls under, atomically (`KeyStore.reserve`):
one request, its input (at most one token a byte of its body) plus the most output it may be
answered with, and what those tokens would cost at the model's price. A request that could
pass a cap is refused; when the exchange ends, each reservation is settled to what the provider
reported. A counter is named by its cap's scope, metric and period, so changing a cap's limit
keeps what it has counted.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Annotated, Final, Literal, NamedTuple

import msgspec
from msgspec import Meta

from backends import Charge

__all__ = [
    "METRICS",
    "MOST",
    "MOST_CAPS",
    "Cap",
    "Caps",
    "Counted",
    "Reserved",
    "Unpriced",
    "Worst",
    "caps_of",
    "charges",
    "clash",
    "counted",
    "describe",
    "micro_usd",
    "period_of",
    "shown",
    "usd",
]

METRICS: Final = ("requests", "tokens", "cost")
MOST_CAPS: Final = 20
MOST: Final = 10**15
"""The largest limit in any metric (in cost, a billion dollars): past any real budget, and far
inside the stores' 64-bit counters."""
_PAST_ANY_LIMIT: Final = MOST + 1
"""What a larger worst case is charged as: still refused by every cap, and no counter overflows."""


class Cap(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One cap as stored: limits in requests, tokens and micro-dollars; a scope left None is
    every app, provider or model."""

    period: Literal["day", "month"]
    requests: Annotated[int, Meta(ge=1, le=MOST)] | None = None
    tokens: Annotated[int, Meta(ge=1, le=MOST)] | None = None
    cost_micro_usd: Annotated[int, Meta(ge=1, le=MOST)] | None = None
    app: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    provider: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    model: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    token: Annotated[str, Meta(max_length=64)] | None = None
    """A narrow token's budget: only what is spent with that token (and those minted from it)."""

    def limit(self, metric: str) -> int | None:
        return self.cost_micro_usd if metric == "cost" else getattr(self, metric)

    def covers(self, app: str, provider: str, model: str | None) -> bool:
        # A request whose model is unknown is under every model's cap: a cap is never dodged.
        return (
            (self.app is None or self.app == app)
            and (self.provider is None or self.provider == provider)
            and (self.model is None or model is None or self.model.lower() == model.lower())
        )

    def scope(self) -> str:
        """What the cap counts (its app, provider, model in any case, and token) as one name."""
        scope = f"{self.app}\0{self.provider}\0{(self.model or '').lower()}\0{self.token}"
        return hashlib.sha256(scope.encode()).hexdigest()[:16]

    def counter(self, metric: str, start: datetime.date) -> str:
        return f"{metric}:{self.period}:{start.isoformat()}:{self.scope()}"


class Caps(msgspec.Struct, forbid_unknown_fields=True):
    caps: Annotated[list[Cap], Meta(max_length=MOST_CAPS)]
    allow_unpriced: bool = False
    """Whether a model with no price may be used under a cost cap (its cost counted as 0)."""


@functools.lru_cache(maxsize=4096)
def caps_of(text: str) -> Caps:
    """The caps a user's stored text holds (parsed once per distinct text)."""
    return msgspec.json.decode(text, type=Caps)


def period_of(period: str, now: int) -> tuple[datetime.date, int]:
    """The period `now` (epoch ms) falls in: its first day, and when it ends (epoch ms)."""
    day = datetime.datetime.fromtimestamp(now / 1000, datetime.UTC).date()
    if period == "day":
        start, end = day, day + datetime.timedelta(days=1)
    else:
        start = day.replace(day=1)
        end = (start + datetime.timedelta(days=32)).replace(day=1)
    midnight = datetime.datetime.combine(end, datetime.time(), datetime.UTC)
    return start, int(midnight.timestamp() * 1000)


def micro_usd(text: str | int | float) -> int:
    """Dollars (`"5"`, `"0.25"`, `5`) as micro-dollars; ValueError if that is not what it is."""
    try:
        amount = Decimal(str(text)) * 1_000_000
    except InvalidOperation:
        raise ValueError(f"not an amount of dollars: {text!r}") from None
    if not amount.is_finite() or amount != amount.to_integral_value() or amount <= 0:
        raise ValueError(f"not a positive amount of whole micro-dollars: {text!r}")
    return int(amount)


def usd(micros: int) -> str:
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def _per_metric(tokens: int, cost: int) -> tuple[int, ...]:
    """What a request counts in each metric, in `METRICS`' order: itself, its tokens, its cost."""
    return 1, tokens, cost


class Worst(NamedTuple):
    """The most a request may spend: one request, its tokens, and their cost (None: its model
    has no price)."""

    tokens: int
    cost: int | None


class Reserved(NamedTuple):
    """What one request reserved: what it is counted on, and the charge made on each."""

    user_id: str
    counts: Sequence[Counted]
    charges: Sequence[Charge]

    def settlement(self, tokens: int, cost: int) -> list[tuple[str, int]]:
        """The changes that turn the reservation into what was spent."""
        spent = _per_metric(tokens, cost)
        return [
            (charge.counter, spent[count.at] - charge.amount)
            for count, charge in zip(self.counts, self.charges, strict=True)
        ]


@dataclasses.dataclass(frozen=True, slots=True)
class Counted:
    """One metric of one cap that covers a request, in the period it falls in."""

    cap: Cap
    metric: str
    counter: str
    limit: int
    resets_at: int
    at: int
    """Where `metric` is in `METRICS`."""


class Unpriced(Exception):
    """A cost cap applies and the model has no price (the owner did not allow that)."""

    def __init__(self, cap: Cap) -> None:
        super().__init__("unpriced")
        self.cap = cap


def clash(caps: Sequence[Cap]) -> tuple[Cap, str] | None:
    """A cap, and a metric of it, that an earlier cap of the same scope and period limits too:
    both would count on one counter, so each request would count twice."""
    seen = set()
    for cap in caps:
        for metric in METRICS:
            if cap.limit(metric) is not None:
                place = (cap.period, cap.scope(), metric)
                if place in seen:
                    return cap, metric
                seen.add(place)
    return None


def counted(caps: Caps, app: str, provider: str, model: str | None, now: int) -> list[Counted]:
    """What a request to `provider`'s `model` from `app` is counted on at `now`: each metric
    of each cap that covers it, each counter once (the same all day: callers may keep it)."""
    out: dict[str, Counted] = {}
    for cap in caps.caps:
        if cap.covers(app, provider, model):
            start, ends = period_of(cap.period, now)
            for at, metric in enumerate(METRICS):
                limit = cap.limit(metric)
                if limit is not None:
                    counter = cap.counter(metric, start)
                    # Caps stored before `clash` refused them may share one: the lower limit.
                    earlier = out.get(counter)
                    if earlier is None or limit < earlier.limit:
                        out[counter] = Counted(cap, metric, counter, limit, ends, at)
    return list(out.values())


def charges(counts: Sequence[Counted], worst: Worst, allow_unpriced: bool) -> list[Charge]:
    """The charge the request's worst case makes on each of `counts`, in their order;
    `Unpriced` when a cost cap counts it and its cost is unknown, unless the owner allowed
    that."""
    if worst.cost is None and not allow_unpriced:
        for count in counts:
            if count.metric == "cost":
                raise Unpriced(count.cap)
    amounts = _per_metric(min(worst.tokens, _PAST_ANY_LIMIT), min(worst.cost or 0, _PAST_ANY_LIMIT))
    return [Charge(c.counter, amounts[c.at], c.limit, c.resets_at) for c in counts]


def describe(cap: Cap) -> str:
    """`cap`'s scope and period in words: "daily", "monthly openai"."""
    scope = " ".join(
        f"{name} {value}"
        for name in ("token", "app", "provider", "model")
        if (value := getattr(cap, name))
    )
    return ("daily" if cap.period == "day" else "monthly") + (f" ({scope})" if scope else "")


def shown(cap: Cap) -> dict[str, object]:
    """`cap` as the API writes it: its cost in dollars."""
    out: dict[str, object] = msgspec.to_builtins(cap)
    if cap.cost_micro_usd is not None:
        out["cost_usd"] = usd(out.pop("cost_micro_usd"))  # type: ignore[arg-type]
    return out
