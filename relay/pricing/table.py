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
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, NamedTuple

__all__ = ["PriceTable", "Tokens", "bundled_prices"]


class Tokens(NamedTuple):
    """A request's tokens as totals: `input` includes the cache's, `output` the reasoning."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0


_SNAPSHOT: Final = Path(__file__).with_name("prices.json")
_COMPACT_DATE: Final = re.compile(r"(-)(20\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?=-|:|$)")
_KINDS: Final = Tokens._fields
_INDEX: Final = {kind: index for index, kind in enumerate(_KINDS)}
"""Where each kind's count is in a `Tokens`."""
_INPUT, _OUTPUT, _CACHE_WRITE = (_INDEX[kind] for kind in ("input", "output", "cache_write"))
_PARTS: Final = {"input": ("cache_read", "cache_write"), "output": ("reasoning",)}
"""Each total and the kinds counted within it."""
_ALWAYS: Final = -(2**63)


class _Term(NamedTuple):
    """One kind's price, as `PriceTable.cost` and `most` unpack it."""

    count_at: int
    """Where its count is in a `Tokens`."""
    parts_at: tuple[int, ...]
    """Where the counts taken out of it are (priced apart)."""
    price: int
    """Per million tokens, times the model's scale."""
    tiers: tuple[tuple[int, int], ...]
    """(total input past which it applies, price) for the long-prompt tiers, the last first."""


def _price_for(price: int, tiers: tuple[tuple[int, int], ...], input: int) -> int:
    """A term's price for a request of `input` tokens in (total): its last tier passed, else
    its base `price`."""
    for start, tiered in tiers:
        if input > start:
            return tiered
    return price


@dataclasses.dataclass(frozen=True, slots=True)
class _Model:
    """A priced model, its prices held as integers: a price per million tokens is micro-dollars
    per token, times `scale` (a power of ten that makes every one of them whole), so a cost is
    exact integer arithmetic rounded once."""

    id: str
    scale: int
    dated: tuple[tuple[int, tuple[_Term, ...] | None], ...]
    """(epoch ms from which they apply, the terms; None for prices of other things than
    tokens), the earliest first."""

    def terms_at(self, at: int) -> tuple[_Term, ...] | None:
        for start, terms in reversed(self.dated):  # the last one in force wins
            if at >= start:
                return terms
        return self.dated[0][1]

    def rounded(self, total: int) -> int:
        """Micro-dollars from a total at the model's scale, rounded half up."""
        return (total + self.scale // 2) // self.scale


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


def _decimals(value: str) -> int:
    exponent = Decimal(value).as_tuple().exponent
    return max(-exponent, 0) if isinstance(exponent, int) else 0


def _amounts(price: str | Mapping[str, Any]) -> list[str]:
    """A price's amounts: itself, or a tiered price's base and tiers."""
    return [price] if isinstance(price, str) else [price["base"], *(p for _, p in price["tiers"])]


def _model(raw: Mapping[str, Any]) -> _Model:
    entries = raw["prices"]
    amounts = (a for e in entries for kind in _KINDS if kind in e for a in _amounts(e[kind]))
    scale = 10 ** max(map(_decimals, amounts), default=0)

    def scaled(value: str) -> int:
        return int(Decimal(value) * scale)

    def term(entry: Mapping[str, Any], kind: str) -> _Term:
        parts = tuple(_INDEX[p] for p in _PARTS.get(kind, ()) if p in entry)
        price = entry[kind]
        if isinstance(price, str):
            return _Term(_INDEX[kind], parts, scaled(price), ())
        tiers = tuple((start, scaled(p)) for start, p in reversed(price["tiers"]))
        return _Term(_INDEX[kind], parts, scaled(price["base"]), tiers)

    dated = tuple(
        (
            _epoch_ms(entry["from"]) if entry["from"] else _ALWAYS,
            tuple(term(entry, kind) for kind in _KINDS if kind in entry)
            if "input" in entry or "output" in entry
            else None,  # priced by something else (audio, characters)
        )
        for entry in entries
    )
    return _Model(raw["id"], scale, dated)


def _epoch_ms(day: str) -> int:
    start = datetime.datetime.combine(datetime.date.fromisoformat(day), datetime.time())
    return int(start.replace(tzinfo=datetime.UTC).timestamp() * 1000)


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

    def _terms(
        self, provider: str, model: str | None, at: int
    ) -> tuple[_Model, tuple[_Term, ...]] | None:
        """The model `provider` serves as `model` and its token prices at `at`; None when the
        table has none."""
        found = self.find(provider, model) if model else None
        terms = None if found is None else found.terms_at(at)
        return None if found is None or terms is None else (found, terms)

    def cost(self, provider: str, model: str | None, tokens: Tokens, at: int) -> int | None:
        """The micro-dollars `tokens` of `model` cost through `provider` at `at` (epoch ms);
        None when the table has no price for it."""
        priced = self._terms(provider, model, at)
        if priced is None:
            return None
        found, terms = priced
        total = 0
        for index, parts, price, tiers in terms:
            count = tokens[index]
            for part in parts:
                count -= tokens[part]
            if count > 0:
                total += (_price_for(price, tiers, tokens.input) if tiers else price) * count
        return found.rounded(total)

    def most(
        self, provider: str, model: str | None, input: int, output: int, at: int
    ) -> int | None:
        """The most `input` tokens in and `output` out may cost: `cost` of them sent plain or
        all written to a cache, whichever is dearer, worked out in one pass (a capped request's
        worst case)."""
        priced = self._terms(provider, model, at)
        if priced is None:
            return None
        found, terms = priced
        per_input = per_output = 0
        for index, _, price, tiers in terms:
            if tiers:
                price = _price_for(price, tiers, input)
            if index in (_INPUT, _CACHE_WRITE):
                per_input = max(per_input, price)
            elif index == _OUTPUT:
                per_output = price
        return found.rounded(per_input * input + per_output * output)


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
