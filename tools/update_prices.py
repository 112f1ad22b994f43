"""Write `relay/pricing/prices.json`: the token prices of `genai-prices` for the providers the
relay serves, as plain data the relay reads without that package.

    pip install genai-prices==<version>      # the test extra pins the one the snapshot is of
    python tools/update_prices.py

Kept: each model's match clause, its text-token prices (input, output, cache reads and writes,
reasoning) with their tiers, and every dated price change. Left out: what the relay does not
count (images, audio, web searches, pages) and price variants (batch, priority tiers), which
the relay cannot tell from an answer. `tests/test_pricing.py` checks the snapshot's prices
against the package's own.
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
from genai_prices import data, types

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "relay" / "pricing" / "prices.json"

# The relay's provider -> genai-prices' (none: Hugging Face routes to many providers, Deepgram
# and openai-compatible are not in the table).
PROVIDERS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "google",
    "groq": "groq",
    "openrouter": "openrouter",
    "mistral": "mistral",
    "elevenlabs": "elevenlabs",
}
# Our token kinds -> genai-prices' price keys (per million tokens).
PRICE_KEYS = {
    "input": "input_mtok",
    "output": "output_mtok",
    "cache_read": "cache_read_mtok",
    "cache_write": "cache_write_mtok",
    "reasoning": "output_reasoning_mtok",
}
_CLAUSES = {
    types.ClauseEquals: "equals",
    types.ClauseStartsWith: "starts_with",
    types.ClauseEndsWith: "ends_with",
    types.ClauseContains: "contains",
    types.ClauseRegex: "regex",
}


def clause(match: Any) -> dict[str, Any]:
    if isinstance(match, types.ClauseOr):
        return {"or": [clause(c) for c in match.or_]}
    if isinstance(match, types.ClauseAnd):
        return {"and": [clause(c) for c in match.and_]}
    name = _CLAUSES[type(match)]
    return {name: getattr(match, name)}


def price(value: Decimal | types.TieredPrices) -> str | dict[str, Any]:
    if isinstance(value, types.TieredPrices):
        return {"base": str(value.base), "tiers": [[t.start, str(t.price)] for t in value.tiers]}
    return str(value)


def prices(model_price: types.ModelPrice) -> dict[str, Any]:
    out = {}
    for kind, key in PRICE_KEYS.items():
        value = getattr(model_price, key, None)
        if value is not None:
            out[kind] = price(value)
    return out


def dated(model: types.ModelInfo) -> list[dict[str, Any]]:
    """The model's prices, oldest first, each from the day it starts (None: always)."""
    if isinstance(model.prices, types.ModelPrice):
        return [{"from": None, **prices(model.prices)}]
    out = []
    for conditional in model.prices:
        constraint = conditional.constraint
        if constraint is not None and not isinstance(constraint, types.StartDateConstraint):
            raise SystemExit(f"{model.id}: a price constraint the relay cannot read: {constraint}")
        start = constraint.start_date.isoformat() if constraint is not None else None
        out.append({"from": start, **prices(conditional.prices)})
    return out


def snapshot() -> dict[str, Any]:
    """The snapshot of the installed `genai-prices`."""
    by_id = {provider.id: provider for provider in data.providers}
    table: dict[str, Any] = {}
    for ours, theirs in PROVIDERS.items():
        provider = by_id[theirs]
        fallback = [
            ours_too
            for p in provider.fallback_model_providers or ()
            for ours_too, t in PROVIDERS.items()
            if t == p
        ]
        table[ours] = {
            "fallback": fallback,
            "models": [
                {"id": m.id, "match": clause(m.match), "prices": dated(m)} for m in provider.models
            ],
        }
    return {"version": f"genai-prices-{genai_prices.__version__}", "providers": table}


def main() -> None:
    written = snapshot()
    OUT.write_text(json.dumps(written, separators=(",", ":")) + "\n")
    print(f"{OUT.relative_to(ROOT)}: {written['version']}", file=sys.stderr)


if __name__ == "__main__":
    main()
