"""`GET /usage` and `GET /usage.csv`: the key owner's ledger, through a real relay.

The stores' side of it (grouping, spans, other users' records) is the contract test's
`test_the_ledger_sums_...`, on every store; this is the HTTP side: the sums equal what the mock
provider reported, the span and grouping parameters, the CSV, and bad input.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import time
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import anyio
import genai_prices
import httpx
import pytest

import backends
from backends import OUTCOMES, TOKEN_KINDS, UsageRecord, User
from backends.migrate import upgrade
from relay.api.ledger import span_of
from relay.usage import retention
from tests.conftest import RelayFactory
from tests.mockprovider import ANTHROPIC_USAGE, GEMINI_USAGE, OPENAI_USAGE
from tests.relayserver import RelayServer, register, store_key
from tests.test_stats import APP_SECRET, relay_all, user

pytestmark = pytest.mark.sqlite


@pytest.fixture
def server(make_relay: RelayFactory) -> RelayServer:
    return make_relay(APP_SECRET=APP_SECRET)


def ledger(client: httpx.Client, token: str, path: str = "/usage", **query: str) -> httpx.Response:
    return client.get(path, params=query, headers={"x-relay-token": token})


def test_the_ledger_by_provider_equals_what_each_provider_reported(server: RelayServer) -> None:
    with server.client() as client:
        token = user(client, "ledger-app")
        relay_all(client, token)
        other = user(client, "ledger-app")
        relay_all(client, other)
        response = ledger(client, token, group_by="provider")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    rows = {row["key"]: row for row in body["rows"]}
    assert list(rows) == ["anthropic", "google", "openai"]
    assert rows["anthropic"]["tokens"] == {
        "input": ANTHROPIC_USAGE["input_tokens"],
        "output": ANTHROPIC_USAGE["output_tokens"],
        "cache_read": ANTHROPIC_USAGE["cache_read_input_tokens"],
        "cache_write": ANTHROPIC_USAGE["cache_creation_input_tokens"],
        "reasoning": 0,
    }
    assert rows["google"]["tokens"]["reasoning"] == GEMINI_USAGE["thoughtsTokenCount"]
    # OpenAI: one answered chat, one 429 (no usage reported).
    assert rows["openai"]["requests"] == 2
    assert rows["openai"]["errors"] == 1
    assert (
        rows["openai"]["tokens"]["cache_read"]
        == (OPENAI_USAGE["prompt_tokens_details"]["cached_tokens"])
    )
    assert set(rows["openai"]["outcomes"]) == set(OUTCOMES)
    total = body["total"]
    assert total["requests"] == 4  # the caller's own, not the other user's
    assert total["tokens"] == {
        kind: sum(row["tokens"][kind] for row in rows.values()) for kind in TOKEN_KINDS
    }
    assert body["group_by"] == "provider"
    assert body["to"] - body["from"] == 30 * 86_400_000


def _oracle(provider: str, model: str, usage: genai_prices.Usage) -> int:
    """What `genai-prices` itself says, in micro-dollars (the relay's table is its snapshot)."""
    found = genai_prices.calc_price(usage, model, provider_id=provider)
    return int((found.total_price * 1_000_000).quantize(Decimal(1), ROUND_HALF_UP))


def test_each_models_cost_is_the_price_tables_for_what_its_provider_reported(
    server: RelayServer,
) -> None:
    with server.client() as client:
        token = user(client, "ledger-cost")
        relay_all(client, token)
        rows = ledger(client, token, group_by="model").json()["rows"]
    by_model = {row["key"]: row for row in rows}
    # Each provider's report in the table's terms: inputs with their cache, outputs with their
    # reasoning (Anthropic reports its cache apart from its input, Gemini its thoughts apart).
    a, g, o = ANTHROPIC_USAGE, GEMINI_USAGE, OPENAI_USAGE
    reported = {
        "openai": genai_prices.Usage(
            input_tokens=o["prompt_tokens"],
            cache_read_tokens=o["prompt_tokens_details"]["cached_tokens"],
            output_tokens=o["completion_tokens"],
        ),
        "anthropic": genai_prices.Usage(
            input_tokens=(
                a["input_tokens"] + a["cache_read_input_tokens"] + a["cache_creation_input_tokens"]
            ),
            cache_read_tokens=a["cache_read_input_tokens"],
            cache_write_tokens=a["cache_creation_input_tokens"],
            output_tokens=a["output_tokens"],
        ),
        "google": genai_prices.Usage(
            input_tokens=g["promptTokenCount"],
            cache_read_tokens=g["cachedContentTokenCount"],
            output_tokens=g["candidatesTokenCount"] + g["thoughtsTokenCount"],
        ),
    }
    prefixes = {"gpt-": "openai", "claude-": "anthropic", "gemini-": "google"}
    priced = 0
    assert by_model[None]["cost"] == {"micro_usd": 0, "usd": "0.000000", "unpriced": 0}  # the 429
    for model, row in by_model.items():
        if model is None:
            continue
        provider = next(p for prefix, p in prefixes.items() if model.startswith(prefix))
        expected = _oracle(provider, model, reported[provider])
        assert row["cost"]["micro_usd"] == expected, (model, row)
        assert expected > 0
        priced += 1
    assert priced == 3


@pytest.mark.parametrize("capped", [False, True])  # the answer's model; or, capped, the body's
def test_a_model_name_no_store_can_hold_loses_no_record(server: RelayServer, capped: bool) -> None:
    with server.client() as client:
        token = user(client, "odd-models")
        headers = {"x-relay-token": token, "content-type": "application/json"}
        if capped:
            caps = {"caps": [{"period": "day", "requests": 100}]}
            assert client.put("/limits", json=caps, headers=headers).status_code == 200
        # The mock answers with the model asked for; the first three would make a store refuse
        # the batch they are written in, with every other record of it (anyone's).
        for model in ("lone\ud800", "nul\u0000", "tab\tx", "fine"):
            body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
            sent = client.post("/relay/openai/v1/chat/completions", content=body, headers=headers)
            assert sent.status_code == 200, sent.text
        rows = ledger(client, token, group_by="model").json()["rows"]
    assert {row["key"]: row["requests"] for row in rows} == {None: 3, "fine": 1}


def test_the_ledger_by_day_and_the_span_parameters(server: RelayServer) -> None:
    today = datetime.datetime.now(datetime.UTC).date()
    with server.client() as client:
        token = user(client, "ledger-days")
        relay_all(client, token)
        by_day = ledger(client, token).json()
        week_ago = (today - datetime.timedelta(days=7)).isoformat()
        through_today = ledger(client, token, to=today.isoformat(), **{"from": week_ago})
        yesterday = (today - datetime.timedelta(days=1)).isoformat()
        before = ledger(client, token, to=yesterday)
        iso = ledger(client, token, **{"from": f"{today.isoformat()}T00:00:00+00:00"})
    assert [(row["key"], row["requests"]) for row in by_day["rows"]] == [(today.isoformat(), 4)]
    assert through_today.status_code == 200
    assert through_today.json()["total"]["requests"] == 4
    start = datetime.datetime.combine(today, datetime.time(), datetime.UTC)
    assert through_today.json()["to"] == int(start.timestamp() * 1000) + 86_400_000
    assert before.json()["rows"] == []
    assert iso.json()["total"]["requests"] == 4


def test_the_csv_has_a_header_a_row_per_group_and_never_a_formula(server: RelayServer) -> None:
    with server.client() as client:
        token = user(client, "ledger-csv")
        headers = {"x-relay-token": token}
        for model in ('=HYPERLINK("https://evil.example")', "gpt-4o-mini", "@sum"):
            chat = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            reply = client.post("/relay/openai/v1/chat/completions", json=chat, headers=headers)
            assert reply.status_code == 200
        response = ledger(client, token, "/usage.csv", group_by="model")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"].startswith(
        'attachment; filename="usage-by-model-'
    )
    table = list(csv.reader(io.StringIO(response.text)))
    assert table[0] == [
        "model", "requests", "errors", *(f"{kind}_tokens" for kind in TOKEN_KINDS),
        "cost_usd", "unpriced", *OUTCOMES,
    ]  # fmt: skip
    models = [row[0] for row in table[1:]]
    assert models == ['\'=HYPERLINK("https://evil.example")', "'@sum", "gpt-4o-mini"]
    assert all(row[1] == "1" for row in table[1:])
    assert table[1][3] == str(OPENAI_USAGE["prompt_tokens"])
    # No price for a made-up model; gpt-4o-mini's, in dollars.
    assert [row[8:10] for row in table[1:]] == [["0.000000", "1"]] * 2 + [["0.000006", "0"]]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"group_by": "week"}, "group_by must be one of: day, app, provider, model, token"),
        ({"from": "yesterday"}, "from must be epoch milliseconds"),
        ({"to": "2026-13-01"}, "to must be epoch milliseconds"),
        ({"from": "2026-06-02", "to": "2026-06-01"}, "from must be before to"),
        ({"from": "2020-01-01", "to": "2026-01-01"}, "A span may cover 400 days at most"),
        ({"from": "9" * 40}, "from must be epoch milliseconds"),
        ({"from": "²"}, "from must be epoch milliseconds"),  # a digit to str.isdigit, not int
    ],
)
def test_bad_ledger_queries_are_400s_that_say_why(
    client: httpx.Client, query: dict[str, str], message: str
) -> None:
    token = register(client)
    for path in ("/usage", "/usage.csv"):
        response = ledger(client, token, path, **query)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "invalid_query"
        assert response.json()["error"].startswith(message)


def test_the_ledger_needs_a_token(client: httpx.Client) -> None:
    for path in ("/usage", "/usage.csv"):
        response = client.get(path)
        assert response.status_code == 401
        assert response.json()["code"] == "token_required"
    token = register(client)
    store_key(client, token, "openai", "test-openai-key-ledger-check")
    assert ledger(client, token).json()["rows"] == []


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_records_past_retention_are_pruned_soon_after_start(
    make_relay: RelayFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "FIRST_PRUNE_WITHIN", (0.0, 0.01))
    url = f"sqlite:///{tmp_path / 'kept.db'}"
    await anyio.to_thread.run_sync(upgrade, url)
    store = backends.open_store(url)
    now = int(time.time() * 1000)
    await store.create_user(User("u1", "retention", now), "0" * 64)
    record = UsageRecord("u1", "retention", "openai", "gpt-4o", 200, 5, False, 1, 1, now)
    await store.record_usage([dataclasses.replace(record, created_at=now - 2 * 86_400_000), record])
    await anyio.to_thread.run_sync(lambda: make_relay(USAGE_RETENTION_DAYS="1", DATABASE_URL=url))
    with anyio.fail_after(10):
        while (await store.usage_stats(now, app_id="retention")).total != 1:
            await anyio.sleep(0.05)
    await store.close()


def test_the_default_span_counts_a_request_of_this_very_millisecond() -> None:
    # A client that asks right after its request may ask in the millisecond it was recorded.
    start, end, _ = span_of({}, 1_800_000_000_000)
    assert start <= 1_800_000_000_000 < end
    assert span_of({"to": "1800000000000"}, 1_900_000_000_000)[1] == 1_800_000_000_000
