"""The key owner's hard spending caps through a real relay: set, refused at the right request
with the right body, settled to what the provider reported.

The counters' atomicity is the store contract's (`test_store_contract.py`); the race of two
instances on one store is `test_instances.py`'s.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import httpx
import pytest

from relay.pricing.caps import Cap, Caps, counted
from relay.pricing.table import Tokens, bundled_prices
from relay.proxy.spending import max_output
from tests.mockprovider import OPENAI_USAGE, MockProvider
from tests.relayserver import register, store_key

CHAT = {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
URL = "/relay/openai/v1/chat/completions"
REPORTED = OPENAI_USAGE["prompt_tokens"] + OPENAI_USAGE["completion_tokens"]


def auth(token: str) -> dict[str, str]:
    return {"x-relay-token": token}


@pytest.fixture
def owner(client: httpx.Client) -> str:
    token = register(client)
    store_key(client, token, "openai", "test-openai-key-caps-00001")
    store_key(client, token, "anthropic", "test-anthropic-key-caps-0001")
    return token


def set_caps(client: httpx.Client, token: str, *caps: dict[str, Any], **more: Any) -> Any:
    response = client.put("/limits", json={"caps": list(caps), **more}, headers=auth(token))
    assert response.status_code == 200, response.text
    return response.json()


def spent(client: httpx.Client, token: str) -> list[dict[str, Any]]:
    """Each cap's spend, once the settling written off the request path has landed."""
    time.sleep(0.2)
    return [cap["spent"] for cap in client.get("/limits", headers=auth(token)).json()["caps"]]


def next_midnight() -> int:
    today = datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=1)
    return int(datetime.datetime.combine(today, datetime.time(), datetime.UTC).timestamp() * 1000)


def test_the_request_past_a_request_cap_is_refused_with_the_cap_the_spend_and_the_reset(
    client: httpx.Client, owner: str, mock: MockProvider
) -> None:
    shown = set_caps(client, owner, {"period": "day", "requests": 2})
    assert shown["caps"][0]["spent"] == {"requests": 0}
    assert shown["caps"][0]["resets_at"] == next_midnight()
    mock.clear()
    assert [client.post(URL, json=CHAT, headers=auth(owner)).status_code for _ in range(2)] == [
        200,
        200,
    ]
    refused = client.post(URL, json=CHAT, headers=auth(owner))
    assert refused.status_code == 402, refused.text
    assert refused.headers["x-should-retry"] == "false"
    body = refused.json()
    assert body["code"] == "budget_exceeded"
    assert (body["metric"], body["limit"], body["spent"], body["requested"]) == (
        "requests",
        2,
        2,
        1,
    )
    assert body["cap"] == {"period": "day", "requests": 2}
    assert body["resets_at"] == next_midnight()
    assert "daily requests cap" in body["error"]
    assert len(mock.requests) == 2  # the refused one never reached the provider
    assert spent(client, owner) == [{"requests": 2}]


def test_a_token_cap_reserves_the_worst_case_and_settles_to_what_was_reported(
    client: httpx.Client, owner: str
) -> None:
    set_caps(client, owner, {"period": "month", "tokens": 1_000})
    # Its body and 5 000 output tokens could pass the cap: refused before it is sent.
    big = client.post(URL, json={**CHAT, "max_tokens": 5_000}, headers=auth(owner))
    assert big.status_code == 402
    assert big.json()["metric"] == "tokens"
    assert big.json()["requested"] > 5_000
    # No limit of its own: the most OpenAI writes is reserved, and refused as well.
    unbounded = {k: v for k, v in CHAT.items() if k != "max_tokens"}
    assert client.post(URL, json=unbounded, headers=auth(owner)).status_code == 402
    assert spent(client, owner) == [{"tokens": 0}]
    for _ in range(3):
        assert client.post(URL, json=CHAT, headers=auth(owner)).status_code == 200
    assert spent(client, owner) == [{"tokens": 3 * REPORTED}]
    # Streamed through the provider's own path (the body now read for the cap) the same way.
    streamed = client.post(URL, json={**CHAT, "stream": True}, headers=auth(owner))
    assert streamed.status_code == 200


def test_an_error_answer_gives_back_all_but_the_request(client: httpx.Client, owner: str) -> None:
    set_caps(client, owner, {"period": "day", "requests": 10, "tokens": 10_000})
    limited = client.post(URL + "?scenario=ratelimited", json=CHAT, headers=auth(owner))
    assert limited.status_code == 429
    assert spent(client, owner) == [{"requests": 1, "tokens": 0}]


def test_a_cost_cap_counts_the_price_tables_cost(client: httpx.Client, owner: str) -> None:
    set_caps(client, owner, {"period": "day", "cost_usd": "0.50"})
    assert client.post(URL, json=CHAT, headers=auth(owner)).status_code == 200
    one = bundled_prices().cost(
        "openai",
        "gpt-4o-mini",
        Tokens(
            input=OPENAI_USAGE["prompt_tokens"],
            output=OPENAI_USAGE["completion_tokens"],
            cache_read=OPENAI_USAGE["prompt_tokens_details"]["cached_tokens"],
        ),
        int(time.time() * 1000),
    )
    assert one is not None
    assert spent(client, owner) == [{"cost_usd": f"0.{one:06d}"}]
    # A cap so small that one request's worst case passes it.
    set_caps(client, owner, {"period": "day", "cost_usd": "0.000010"})
    refused = client.post(URL, json={**CHAT, "max_tokens": 1_000}, headers=auth(owner))
    assert refused.status_code == 402
    assert refused.json()["metric"] == "cost"
    assert "$0.000010" in refused.json()["error"]


def test_a_model_of_no_known_price_under_a_cost_cap_is_refused_unless_allowed(
    client: httpx.Client, owner: str
) -> None:
    unknown = {**CHAT, "model": "made-up-model"}
    set_caps(client, owner, {"period": "day", "cost_usd": 5})
    refused = client.post(URL, json=unknown, headers=auth(owner))
    assert refused.status_code == 402
    assert refused.json()["code"] == "model_unpriced"
    assert "made-up-model" in refused.json()["error"]
    assert refused.headers["x-should-retry"] == "false"
    set_caps(client, owner, {"period": "day", "cost_usd": 5}, allow_unpriced=True)
    assert client.post(URL, json=unknown, headers=auth(owner)).status_code == 200


def test_a_cap_covers_only_its_scope(client: httpx.Client, owner: str) -> None:
    set_caps(client, owner, {"period": "day", "requests": 1, "provider": "anthropic"},
             {"period": "day", "requests": 2, "model": "GPT-4o-mini"})  # fmt: skip
    claude = {"model": "claude-3-5-haiku-latest", "max_tokens": 9, "messages": []}
    assert client.post("/relay", json=claude, headers=auth(owner)).status_code == 200
    assert client.post("/relay", json=claude, headers=auth(owner)).status_code == 402
    statuses = [client.post(URL, json=CHAT, headers=auth(owner)).status_code for _ in range(3)]
    assert statuses == [200, 200, 402]
    other = client.post(URL, json={**CHAT, "model": "gpt-4o"}, headers=auth(owner))
    assert other.status_code == 200


def test_a_narrow_token_spends_under_its_accounts_caps_and_cannot_change_them(
    client: httpx.Client, owner: str
) -> None:
    set_caps(client, owner, {"period": "day", "requests": 1})
    narrow = client.post("/tokens", json={}, headers=auth(owner)).json()["token"]
    assert client.post(URL, json=CHAT, headers=auth(narrow)).status_code == 200
    assert client.post(URL, json=CHAT, headers=auth(owner)).status_code == 402
    for method in ("PUT", "GET", "DELETE"):
        response = client.request(method, "/limits", json={"caps": []}, headers=auth(narrow))
        assert response.status_code == 403
        assert response.json()["code"] == "account_token_required"


def test_clearing_the_caps_lifts_them(client: httpx.Client, owner: str) -> None:
    set_caps(client, owner, {"period": "day", "requests": 1})
    assert client.post(URL, json=CHAT, headers=auth(owner)).status_code == 200
    assert client.post(URL, json=CHAT, headers=auth(owner)).status_code == 402
    cleared = client.delete("/limits", headers=auth(owner))
    assert cleared.json() == {"caps": [], "allow_unpriced": False}
    assert client.post(URL, json=CHAT, headers=auth(owner)).status_code == 200
    # Set again, the cap remembers what it counted today (not what ran with no cap).
    set_caps(client, owner, {"period": "day", "requests": 5})
    assert spent(client, owner) == [{"requests": 1}]


@pytest.mark.parametrize(
    "caps",
    [
        {"caps": [{"period": "day"}]},  # limits nothing
        {"caps": [{"period": "week", "requests": 1}]},
        {"caps": [{"period": "day", "requests": 0}]},
        {"caps": [{"period": "day", "cost_usd": "-1"}]},
        {"caps": [{"period": "day", "cost_usd": "0.0000001"}]},
        {"caps": [{"period": "day", "cost_usd": "a lot"}]},
        {"caps": [{"period": "day", "cost_usd": "1e30"}]},
        {"caps": [{"period": "day", "requests": 10**15 + 1}]},  # past any store's counters
        {"caps": [{"period": "day", "tokens": 2**63}]},
        {"caps": [{"period": "day", "requests": 1, "provider": "nope"}]},
        {"caps": [{"period": "day", "requests": 1, "budget": 3}]},
        {"caps": [{"period": "day", "requests": 1}] * 21},
        # Two caps of one scope and period on one metric would count each request twice.
        {"caps": [{"period": "day", "requests": 5}, {"period": "day", "requests": 3, "tokens": 9}]},
        {"caps": [{"period": "month", "tokens": 5, "model": m} for m in ("GPT-4o", "gpt-4o")]},
        {"cap": []},
        {},
    ],
)
def test_malformed_caps_are_refused_and_change_nothing(
    client: httpx.Client, owner: str, caps: Any
) -> None:
    set_caps(client, owner, {"period": "day", "requests": 7})
    response = client.put("/limits", json=caps, headers=auth(owner))
    _refused_and_kept(client, owner, response)


def test_caps_naming_a_lone_surrogate_are_refused(client: httpx.Client, owner: str) -> None:
    set_caps(client, owner, {"period": "day", "requests": 7})
    sent = '{"caps": [{"period": "day", "requests": 5, "app": "\\ud800"}]}'
    headers = {**auth(owner), "content-type": "application/json"}
    response = client.put("/limits", content=sent, headers=headers)
    _refused_and_kept(client, owner, response, "invalid_json")


def _refused_and_kept(
    client: httpx.Client, owner: str, response: httpx.Response, code: str = "invalid_limits"
) -> None:
    """`response` a 400 with `code`, and the caps set before (a daily 7 requests) kept."""
    assert response.status_code == 400, response.text
    assert response.json()["code"] == code
    kept = client.get("/limits", headers=auth(owner)).json()["caps"]
    assert [cap["requests"] for cap in kept] == [7]


@pytest.mark.parametrize(
    ("cap", "said"),
    [
        ({"period": "day", "tokens": 10**15}, "may take more than 1000000000000000."),
        ({"period": "day", "cost_usd": "5"}, "may take more than $1000000000.000000."),
    ],
)
def test_a_worst_case_past_every_limit_is_refused_under_any_cap(
    client: httpx.Client, owner: str, mock: MockProvider, cap: dict[str, Any], said: str
) -> None:
    set_caps(client, owner, cap)
    for most in (10**30, 2**63 - 1):  # past the stores' 64-bit counters, alone or added to
        asked = {**CHAT, "max_tokens": most}
        refused = client.post(URL, json=asked, headers=auth(owner))
        assert refused.status_code == 402, refused.text
        assert refused.json()["code"] == "budget_exceeded"
        assert said in refused.json()["error"]
    assert mock.requests == []
    assert client.post(URL, json=CHAT, headers=auth(owner)).status_code == 200


def test_caps_on_one_metric_of_different_scopes_or_periods_are_each_counted(
    client: httpx.Client, owner: str
) -> None:
    set_caps(
        client, owner,
        {"period": "day", "requests": 3}, {"period": "month", "requests": 3},
        {"period": "day", "requests": 3, "provider": "openai"},
    )  # fmt: skip
    assert client.post(URL, json=CHAT, headers=auth(owner)).status_code == 200
    assert spent(client, owner) == [{"requests": 1}] * 3


def test_caps_stored_sharing_a_counter_count_each_request_once_at_the_lower_limit() -> None:
    # As `PUT /limits` took them before it refused such a pair.
    both = Caps([Cap("day", requests=5), Cap("day", requests=2, tokens=100)])
    counts = counted(both, "app", "openai", "gpt-4o", int(time.time() * 1000))
    assert [(c.metric, c.limit) for c in counts] == [("requests", 2), ("tokens", 100)]
    assert len({c.counter for c in counts}) == 2


def test_a_narrow_tokens_budget_limits_it_and_those_minted_from_it(
    client: httpx.Client, owner: str, mock: MockProvider
) -> None:
    minted = client.post(
        "/tokens", json={"budget": [{"period": "day", "requests": 2}]}, headers=auth(owner)
    )
    assert minted.status_code == 201, minted.text
    parent = minted.json()
    assert parent["budget"] == [{"period": "day", "requests": 2, "token": parent["id"]}]
    # Minted from it with a budget of its own: both apply.
    child = client.post(
        "/tokens", json={"budget": [{"period": "day", "tokens": 100_000}]},
        headers=auth(parent["token"]),
    ).json()  # fmt: skip
    assert [b["token"] for b in child["budget"]] == [parent["id"], child["id"]]
    mock.clear()
    assert client.post(URL, json=CHAT, headers=auth(child["token"])).status_code == 200
    assert client.post(URL, json=CHAT, headers=auth(parent["token"])).status_code == 200
    for token in (parent["token"], child["token"]):
        refused = client.post(URL, json=CHAT, headers=auth(token))
        assert refused.status_code == 402
        assert refused.json()["cap"] == {"period": "day", "requests": 2, "token": parent["id"]}
        assert f"daily (token {parent['id']}) requests cap" in refused.json()["error"]
    assert len(mock.requests) == 2
    # The account's own token is not under the narrow token's budget.
    assert client.post(URL, json=CHAT, headers=auth(owner)).status_code == 200


def test_a_malformed_budget_mints_nothing(client: httpx.Client, owner: str) -> None:
    for budget in (
        [{"period": "day"}],
        [{"period": "day", "requests": 1, "token": "x"}],
        [{"period": "day", "requests": 1}, {"period": "day", "requests": 2}],
    ):
        response = client.post("/tokens", json={"budget": budget}, headers=auth(owner))
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "invalid_limits"
    assert client.get("/tokens", headers=auth(owner)).json()["tokens"] == []


@pytest.mark.parametrize(
    ("body", "most"),
    [
        (b'{"model": "m", "max_tokens": 10}', 10),
        (b'{"max_completion_tokens": 5, "n": 3}', 15),
        (b'{"max_output_tokens": 8, "input": [{"role": "user"}]}', 8),
        (b'{"generationConfig": {"maxOutputTokens": 7, "candidateCount": 2}}', 14),
        (b'{"max_tokens": 4, "n": 100000}', 4 * 128),  # answers count up to 128
        (b'{"max_tokens": "10"}', None),  # not a count: the provider's most
        (b'{"max_tokens": true}', None),
        (b'{"max_tokens": -1}', None),
        (b'{"messages": []}', None),
        (b"[1, 2]", None),
        (b"not json", None),
        (b"", None),
        (None, None),
    ],
)
def test_the_most_output_a_body_allows(body: bytes | None, most: int | None) -> None:
    assert max_output(body) == most
