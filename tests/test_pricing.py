"""`relay.pricing`: the snapshot of `genai-prices` the relay ships, and the costs it gives.

The package itself is the oracle: every model of every provider the snapshot holds is priced
by both, for usages that meet caches, reasoning and long-prompt tiers, and the two agree to the
micro-dollar. The relay's own path (what a relayed answer's record costs) is `test_ledger.py`'s.
"""

from __future__ import annotations

import datetime
import json
from decimal import ROUND_HALF_UP, Decimal

import genai_prices
import pytest
from genai_prices import data

from backends import TOKEN_KINDS
from relay.pricing.table import PriceTable, Tokens, bundled_prices
from relay.usage.meter import Usage
from tools import update_prices

NOW = datetime.datetime(2026, 12, 3, 12, tzinfo=datetime.UTC)
USAGES = [
    Tokens(input=1_000, output=500, cache_read=100, cache_write=50, reasoning=20),
    Tokens(input=300_000, output=10, cache_read=200_000),  # past every long-prompt tier
    Tokens(input=7, output=0),
]


def _theirs(provider: str, model: str, tokens: Tokens, at: datetime.datetime) -> tuple[str, int]:
    usage = genai_prices.Usage(
        input_tokens=tokens.input,
        output_tokens=tokens.output,
        cache_read_tokens=tokens.cache_read,
        cache_write_tokens=tokens.cache_write,
        output_reasoning_tokens=tokens.reasoning,
    )
    found = genai_prices.calc_price(usage, model, provider_id=provider, genai_request_timestamp=at)
    micros = (found.total_price * 1_000_000).quantize(Decimal(1), ROUND_HALF_UP)
    return found.model.id, int(micros)


def test_the_snapshot_is_the_pinned_packages() -> None:
    """`tools/update_prices.py` wrote it from the version the test extra pins."""
    assert json.loads(update_prices.OUT.read_text()) == update_prices.snapshot()
    assert bundled_prices().version == f"genai-prices-{genai_prices.__version__}"


@pytest.mark.parametrize("provider", list(update_prices.PROVIDERS))
def test_every_model_costs_what_the_package_says(provider: str) -> None:
    table = bundled_prices()
    theirs_id = update_prices.PROVIDERS[provider]
    at = int(NOW.timestamp() * 1000)
    models = {p.id: p for p in data.providers}[theirs_id].models
    priced = 0
    for model in models:
        for tokens in USAGES:
            mine = table.cost(provider, model.id, tokens, at)
            try:
                found, theirs = _theirs(theirs_id, model.id, tokens, NOW)
            except LookupError:  # an id its own clause does not match (`ft:gpt-4o`)
                assert table.find(provider, model.id) is None
                continue
            assert table.find(provider, model.id).id == found
            if mine is None:  # priced by something else than tokens (audio, characters)
                assert theirs == 0, model.id
            else:
                assert mine == theirs, (model.id, tokens)
                priced += 1
    assert priced >= len(models)  # nearly every model, for each usage


def test_a_known_model_at_its_listed_price() -> None:
    # gpt-4o-mini: $0.15 a million input tokens, $0.075 cached, $0.60 output.
    cost = bundled_prices().cost(
        "openai", "gpt-4o-mini", Tokens(input=1_000_000, cache_read=200_000, output=100_000), 0
    )
    assert cost == 800_000 * 0.15 + 200_000 * 0.075 + 100_000 * 0.6


def test_names_are_matched_as_the_package_matches_them() -> None:
    table = bundled_prices()
    at = int(NOW.timestamp() * 1000)
    tokens = USAGES[0]
    for provider, name in [
        ("openai", "GPT-4o-Mini-2024-07-18"),  # any case, a dated name
        ("anthropic", "claude-sonnet-4-5-20250929"),  # a compact date, dashed on a retry
        ("google", "claude-3-5-haiku@20241022"),  # Vertex: Anthropic's models as a fallback
        ("openrouter", "openai/gpt-4o-mini"),
    ]:
        found = table.find(provider, name)
        assert found is not None, name
        theirs = _theirs(update_prices.PROVIDERS[provider], name, tokens, NOW)
        assert (found.id, table.cost(provider, name, tokens, at)) == theirs


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "no-such-model"),
        ("openai-compatible", "gpt-4o-mini"),  # whose upstream is anyone's
        ("huggingface", "meta-llama/Llama-3.1-8B-Instruct"),
        ("deepgram", "nova-3"),
        ("openai", None),
        ("openai", "tts-1"),  # priced by the character
    ],
)
def test_no_price_is_none(provider: str, model: str | None) -> None:
    assert bundled_prices().cost(provider, model, USAGES[0], 0) is None


def test_prices_are_those_in_force_on_the_requests_day_and_tiers_by_its_input() -> None:
    table = PriceTable(
        {
            "version": "test",
            "providers": {
                "p": {
                    "fallback": [],
                    "models": [
                        {
                            "id": "m",
                            "match": {"starts_with": "m"},
                            "prices": [
                                {"from": None, "input": "1", "output": "2"},
                                {
                                    "from": "2026-01-01",
                                    "input": {"base": "10", "tiers": [[100, "20"]]},
                                    "output": "30",
                                    "cache_read": "5",
                                },
                            ],
                        }
                    ],
                }
            },
        }
    )
    before = int(datetime.datetime(2025, 12, 31, 23, 59, tzinfo=datetime.UTC).timestamp() * 1000)
    after = before + 60_000
    assert table.cost("p", "m-1", Tokens(input=10, output=1), before) == 12
    assert table.cost("p", "m-1", Tokens(input=10, output=1), after) == 130
    # Past the tier the whole input is at its price; cache reads are taken out at theirs.
    assert table.cost("p", "m-1", Tokens(input=101, cache_read=1), after) == 100 * 20 + 5
    # A report whose parts exceed its total (a broken provider) costs no negative amount.
    assert table.cost("p", "m-1", Tokens(input=1, cache_read=3), after) == 15


def test_a_reports_totals_add_what_it_counts_apart() -> None:
    assert Tokens._fields == TOKEN_KINDS  # a usage's totals are a Tokens' fields, in order
    openai = Usage(11, 7, None, 3, None, 2)
    assert Tokens(*openai.totals()) == Tokens(
        input=11, output=7, cache_read=3, cache_write=0, reasoning=2
    )
    anthropic = Usage(12, 6, None, 5, 4, None, apart=frozenset({"cache_read", "cache_write"}))
    assert Tokens(*anthropic.totals()) == Tokens(input=21, output=6, cache_read=5, cache_write=4)
    gemini = Usage(10, 5, None, 2, None, 3, apart=frozenset({"reasoning"}))
    assert Tokens(*gemini.totals()) == Tokens(input=10, output=8, cache_read=2, reasoning=3)


@pytest.mark.parametrize("provider", list(update_prices.PROVIDERS))
def test_a_worst_case_costs_the_dearer_of_its_input_sent_plain_or_written_to_a_cache(
    provider: str,
) -> None:
    """`most`, one pass, against `cost` twice, for every model of the table, with inputs on
    both sides of every long-prompt tier."""
    table = bundled_prices()
    theirs_id = update_prices.PROVIDERS[provider]
    at = int(NOW.timestamp() * 1000)
    compared = 0
    for model in {p.id: p for p in data.providers}[theirs_id].models:
        for size, output in ((0, 0), (67, 16_384), (199_999, 1), (200_001, 8_192), (10**6, 0)):
            plain = table.cost(provider, model.id, Tokens(input=size, output=output), at)
            cached = table.cost(
                provider, model.id, Tokens(input=size, cache_write=size, output=output), at
            )
            dearer = None if plain is None or cached is None else max(plain, cached)
            assert table.most(provider, model.id, size, output, at) == dearer, (model.id, size)
            compared += dearer is not None
    assert compared > 0
