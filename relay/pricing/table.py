"""What a relayed request cost, estimated from a pinned snapshot of the `genai-prices` table.

`prices.json` (written by `tools/update_prices.py`) holds, per provider, its models in the
package's order, each with the clause its names match and its prices per million tokens by kind,
dated where they changed and tiered where a long prompt costs more. A model is the first whose
clause matches the lower-cased name (then the name with a compact date `-20251211` written
`-2025-12-11`, then the provider's fallbacks), as the package finds it; its prices are those in
force on the request's UTC day.

The counts priced are totals, as the package counts them: `input` includes cache reads and
writes, `output` includes reasoning. Each priced part is taken out of its total (cache reads at
their price, the rest of the input at the input price), and a tier applies to a request whose
total input passed its start. A cost is integer micro-dollars; None for a model with no price.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import re
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Final

__all__ = ["PriceTable", "Tokens", "bundled_prices"]

_SNAPSHOT: Final = Path(__file__).with_name("prices.json")
_COMPACT_DATE: Final = re.compile(r"(-)(20\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?=-|:|$)")
_KINDS: Final = ("input", "output", "cache_read", "cache_write", "reasoning")
_PARTS: Final = {"input": ("cache_read", "cache_write"), "output": ("reasoning",)}
"""Each total and the kinds counted within it."""


@dataclasses.dataclass(frozen=True, slots=True)
class Tokens:
    """A request's tokens as totals: `input` includes the cache's, `output` the reasoning."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class _Tiered:
    base: Decimal
    tiers: tuple[tuple[int, Decimal], ...]

    def at(self, total_input: int) -> Decimal:
        for start, price in reversed(self.tiers):
            if total_input > start:
                return price
        return self.base


_Price = Decimal | _Tiered


@dataclasses.dataclass(frozen=True, slots=True)
class _Model:
    id: str
    dated: tuple[tuple[datetime.date | None, Mapping[str, _Price]], ...]

    def prices_on(self, day: datetime.date) -> Mapping[str, _Price]:
        for start, prices in reversed(self.dated):  # the last one in force wins
            if start is None or day >= start:
                return prices
        return self.dated[0][1]


def _matches(clause: Mapping[str, Any], name: str) -> bool:
    (kind, value), *_ = clause.items()
    if kind == "or":
        return any(_matches(c, name) for c in value)
    if kind == "and":
        return all(_matches(c, name) for c in value)
    if kind == "regex":
        return re.search(value, name) is not None
    value = str(value).lower()
    if kind == "equals":
        return name == value
    if kind == "starts_with":
        return name.startswith(value)
    if kind == "ends_with":
        return name.endswith(value)
    if kind == "contains":
        return value in name
    raise ValueError(f"unknown match clause {kind!r}")


def _price(raw: str | Mapping[str, Any]) -> _Price:
    if isinstance(raw, str):
        return Decimal(raw)
    return _Tiered(Decimal(raw["base"]), tuple((s, Decimal(p)) for s, p in raw["tiers"]))


def _model(raw: Mapping[str, Any]) -> _Model:
    dated = tuple(
        (
            datetime.date.fromisoformat(entry["from"]) if entry["from"] else None,
            {kind: _price(entry[kind]) for kind in _KINDS if kind in entry},
        )
        for entry in raw["prices"]
    )
    return _Model(raw["id"], dated)


class PriceTable:
    def __init__(self, snapshot: Mapping[str, Any]) -> None:
        self.version: str = snapshot["version"]
        self._providers: dict[str, tuple[Sequence[Mapping[str, Any]], list[str]]] = {
            name: (entry["models"], entry["fallback"])
            for name, entry in snapshot["providers"].items()
        }
        self.find = functools.lru_cache(maxsize=4096)(self._find)

    @property
    def providers(self) -> list[str]:
        return list(self._providers)

    def _match(self, provider: str, name: str) -> _Model | None:
        models, _ = self._providers[provider]
        for raw in models:
            if _matches(raw["match"], name):
                return _model(raw)
        return None

    def _find(self, provider: str, model: str) -> _Model | None:
        """The priced model `provider` serves as `model`; None when there is none."""
        if provider not in self._providers:
            return None
        name = model.lower()
        for tried in dict.fromkeys((name, _COMPACT_DATE.sub(_dashed, name))):
            found = self._match(provider, tried)
            for fallback in () if found else self._providers[provider][1]:
                found = found or self._match(fallback, tried)
            if found is not None:
                return found
        return None

    def cost(self, provider: str, model: str | None, tokens: Tokens, at: int) -> int | None:
        """The micro-dollars `tokens` of `model` cost through `provider` at `at` (epoch ms);
        None when the table has no price for it."""
        found = self.find(provider, model) if model else None
        if found is None:
            return None
        day = datetime.datetime.fromtimestamp(at / 1000, datetime.UTC).date()
        prices = found.prices_on(day)
        if "input" not in prices and "output" not in prices:
            return None  # priced by something else (audio, characters)
        total = Decimal(0)
        for kind, price in prices.items():
            count = getattr(tokens, kind)
            for part in _PARTS.get(kind, ()):
                if part in prices:
                    count -= getattr(tokens, part)
            per_million = price.at(tokens.input) if isinstance(price, _Tiered) else price
            total += per_million * max(count, 0)
        # A price per million tokens times tokens is micro-dollars.
        return int(total.quantize(Decimal(1), ROUND_HALF_UP))


def _dashed(match: re.Match[str]) -> str:
    year, month, day = (int(match.group(i)) for i in (2, 3, 4))
    try:
        datetime.date(year, month, day)
    except ValueError:
        return match.group(0)
    return f"{match.group(1)}{year:04d}-{month:02d}-{day:02d}"


@functools.cache
def bundled_prices() -> PriceTable:
    """The table shipped with the relay (read once: a quarter of a megabyte of JSON)."""
    return PriceTable(json.loads(_SNAPSHOT.read_text()))
