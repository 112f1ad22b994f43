"""Several relay processes on one shared store: one truth, whichever instance answers."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay.proxy.leases import IDLE
from tests.mockprovider import OPENAI_USAGE, MockProvider
from tests.relayprocess import RelayProcess
from tests.relayserver import relay_env, store_key
from tests.servers import create_database, drop_database, drop_namespace, in_thread, new_namespace

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
CACHE_TTL = 1.0  # the default: a relay process answers a token or key from memory this long
USERS = 20
WRITES_PER_USER = 20  # alternating instances: 2 x 200 writes in all
KEEPALIVE = 2.0  # seconds a client keeps an idle connection: below the server's 5


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
)
def shared_store(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The environment that points a relay at a fresh shared store of each networked kind."""
    if request.param == "postgres":
        request.getfixturevalue("postgres_url")  # fails clearly when the server is down
        url = in_thread(create_database, "byok_instances")
        yield {"DATABASE_URL": url}
        in_thread(drop_database, url)
    else:
        namespace = new_namespace()
        yield {"DATABASE_URL": request.getfixturevalue("redis_url"), "REDIS_NAMESPACE": namespace}
        drop_namespace(namespace)


@pytest.fixture(scope="module")
def relays(
    shared_store: dict[str, str], mock: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RelayProcess, RelayProcess]]:
    """Two relay processes on one store, shared by this module's tests (each uses new users)."""
    tmp_path = tmp_path_factory.mktemp("instances")
    env = relay_env(tmp_path / "unused.db", mock.url, LOG_LEVEL="info", **shared_store)
    first = RelayProcess(tmp_path, env)
    try:
        second = RelayProcess(tmp_path, env)
    except BaseException:
        first.stop()
        raise
    yield first, second
    first.stop()
    second.stop()


def register(client: httpx.Client) -> str:
    response = client.post("/users", json={"app_id": "instances"})
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def test_a_user_of_one_instance_relays_through_the_other(
    relays: tuple[RelayProcess, RelayProcess], mock: MockProvider
) -> None:
    first, second = relays
    with first.client() as a, second.client() as b:
        token = register(a)
        headers = {"x-relay-token": token}
        assert (
            a.post(
                "/keys/openai", json={"key": "test-openai-key-instance-1"}, headers=headers
            ).status_code
            == 200
        )
        assert b.get("/keys", headers=headers).json()["providers"] == ["openai"]
        response = b.post("/relay/openai/v1/chat/completions", json=CHAT, headers=headers)
        assert response.status_code == 200, response.text
    assert mock.last().header("authorization") == "Bearer test-openai-key-instance-1"


def after_the_cache_ttl(done: float) -> None:
    """Wait until every entry read before `done` (time.monotonic(), which every process on
    this machine shares) has died in every instance."""
    time.sleep(max(0.0, done + CACHE_TTL - time.monotonic()))


def test_revoking_on_one_instance_is_refused_by_the_other_within_the_cache_ttl(
    relays: tuple[RelayProcess, RelayProcess],
) -> None:
    first, second = relays
    with first.client() as a, second.client() as b:
        token = register(a)
        headers = {"x-relay-token": token}
        assert b.get("/keys", headers=headers).status_code == 200  # b now has it in memory
        assert a.post("/tokens/revoke", headers=headers).status_code == 200
        revoked = time.monotonic()
        assert a.get("/keys", headers=headers).status_code == 401  # the revoker: at once
        after_the_cache_ttl(revoked)
        for client in (b, a):
            refused = client.get("/keys", headers=headers)
            assert refused.status_code == 401
            assert refused.json()["error"] == "Invalid or expired token"


def test_revoking_a_narrow_tokens_parent_on_one_instance_ends_its_children_on_the_other(
    relays: tuple[RelayProcess, RelayProcess],
) -> None:
    first, second = relays
    with first.client() as a, second.client() as b:
        token = register(a)
        stored = a.post(
            "/keys/openai",
            json={"key": "test-openai-key-narrow-inst"},
            headers={"x-relay-token": token},
        )
        assert stored.status_code == 200, stored.text
        parent = a.post("/tokens", json={"providers": ["openai"]}, headers={"x-relay-token": token})
        assert parent.status_code == 201, parent.text
        child = a.post("/tokens", json={}, headers={"x-relay-token": parent.json()["token"]})
        assert child.status_code == 201, child.text
        narrow = {"x-relay-token": child.json()["token"]}
        url = "/relay/openai/v1/chat/completions"
        assert b.post(url, json=CHAT, headers=narrow).status_code == 200  # b has it in memory
        gone = a.delete(f"/tokens/{parent.json()['id']}", headers={"x-relay-token": token})
        assert gone.status_code == 200, gone.text
        revoked = time.monotonic()
        assert a.post(url, json=CHAT, headers=narrow).status_code == 401  # the revoker: at once
        after_the_cache_ttl(revoked)
        refused = b.post(url, json=CHAT, headers=narrow)
        assert refused.status_code == 401, refused.text
        assert b.post(url, json=CHAT, headers={"x-relay-token": token}).status_code == 200


RACERS = 200
CAP_REQUESTS = 50
CAP_TOKENS = 600  # fills before the requests cap: each reserves its body and 10 tokens


async def _capped_race(urls: tuple[str, str], token: str) -> list[int]:
    """RACERS chats at once, half through each instance; their statuses."""
    limits = httpx.Limits(max_connections=RACERS, keepalive_expiry=KEEPALIVE)
    async with (
        httpx.AsyncClient(base_url=urls[0], timeout=60, limits=limits) as a,
        httpx.AsyncClient(base_url=urls[1], timeout=60, limits=limits) as b,
    ):
        body = {**CHAT, "max_tokens": 10}
        responses = await asyncio.gather(
            *(
                client.post(
                    "/relay/openai/v1/chat/completions", json=body, headers={"x-relay-token": token}
                )
                for client, _ in zip(itertools.cycle((a, b)), range(RACERS))
            )
        )
    return [response.status_code for response in responses]


def _spent(client: httpx.Client, headers: dict[str, str]) -> list[dict[str, int]]:
    return [cap["spent"] for cap in client.get("/limits", headers=headers).json()["caps"]]


def test_two_instances_racing_a_cap_never_pass_it(
    relays: tuple[RelayProcess, RelayProcess], mock: MockProvider
) -> None:
    first, second = relays
    with first.client() as a:
        token = register(a)
        headers = {"x-relay-token": token}
        stored = a.post("/keys/openai", json={"key": "test-openai-key-race-caps"}, headers=headers)
        assert stored.status_code == 200, stored.text
        caps = [
            {"period": "day", "requests": CAP_REQUESTS},
            {"period": "month", "tokens": CAP_TOKENS},
        ]
        assert a.put("/limits", json={"caps": caps}, headers=headers).status_code == 200
        after_the_cache_ttl(time.monotonic())  # the other instance has read the caps
        mock.clear()
        statuses = asyncio.run(_capped_race((first.url, second.url), token))
        assert set(statuses) == {200, 402}
        passed = statuses.count(200)
        assert len(mock.requests) == passed  # a refused request never reached the provider
        reported = OPENAI_USAGE["prompt_tokens"] + OPENAI_USAGE["completion_tokens"]
        settled = [{"requests": passed}, {"tokens": passed * reported}]
        # Off the request path: the settling, and what each instance held ahead going back.
        deadline = time.monotonic() + 3 * IDLE + 2
        while (spent := _spent(a, headers)) != settled and time.monotonic() < deadline:
            time.sleep(0.1)
    assert spent == settled
    assert passed * reported <= CAP_TOKENS
    assert passed <= CAP_REQUESTS
    assert passed > 1  # the cap was raced, not one request at a time


def test_deleting_a_user_on_one_instance_erases_it_for_the_other(
    relays: tuple[RelayProcess, RelayProcess],
) -> None:
    first, second = relays
    with first.client() as a, second.client() as b:
        token = register(a)
        headers = {"x-relay-token": token}
        assert (
            a.post(
                "/keys/mistral", json={"key": "test-mistral-key-instance"}, headers=headers
            ).status_code
            == 200
        )
        assert b.delete("/users", headers=headers).status_code == 200
        after_the_cache_ttl(time.monotonic())
        assert a.get("/keys", headers=headers).status_code == 401
        assert (
            a.post("/relay/mistral/v1/chat/completions", json=CHAT, headers=headers).status_code
            == 401
        )


async def _write_chains(urls: tuple[str, str], tokens: list[str]) -> dict[str, str]:
    """Per user, WRITES_PER_USER writes alternating between the instances, each awaited; the
    users run concurrently. Returns each user's last written key."""
    # A connection idle past the server's keep-alive (5 s) would be closed as a request goes
    # out on it, on a loaded machine; a POST is never retried.
    limits = httpx.Limits(max_connections=USERS, keepalive_expiry=KEEPALIVE)
    async with (
        httpx.AsyncClient(base_url=urls[0], timeout=30, limits=limits) as a,
        httpx.AsyncClient(base_url=urls[1], timeout=30, limits=limits) as b,
    ):

        async def chain(user: int, token: str) -> str:
            value = ""
            for write, client in zip(range(WRITES_PER_USER), itertools.cycle((a, b))):
                value = f"test-openai-key-u{user}-w{write}-" + "x" * 20
                response = await client.post(
                    "/keys/openai", json={"key": value}, headers={"x-relay-token": token}
                )
                assert response.status_code == 200, response.text
            return value

        last = await asyncio.gather(*(chain(i, t) for i, t in enumerate(tokens)))
    return dict(zip(tokens, last, strict=True))


async def _race(urls: tuple[str, str], tokens: list[str]) -> dict[str, set[str]]:
    """Per user, both instances write at the same moment; returns the two candidates."""
    limits = httpx.Limits(keepalive_expiry=KEEPALIVE)
    async with (
        httpx.AsyncClient(base_url=urls[0], timeout=30, limits=limits) as a,
        httpx.AsyncClient(base_url=urls[1], timeout=30, limits=limits) as b,
    ):

        async def race(user: int, token: str) -> set[str]:
            values = [f"test-openai-key-race-{user}-{side}-" + "y" * 20 for side in "ab"]
            responses = await asyncio.gather(
                *(
                    client.post(
                        "/keys/openai", json={"key": value}, headers={"x-relay-token": token}
                    )
                    for client, value in zip((a, b), values, strict=True)
                )
            )
            assert all(r.status_code == 200 for r in responses)
            return set(values)

        candidates = await asyncio.gather(*(race(i, t) for i, t in enumerate(tokens)))
    return dict(zip(tokens, candidates, strict=True))


def _key_reaching_the_provider(client: httpx.Client, mock: MockProvider, token: str) -> str:
    response = client.post(
        "/relay/openai/v1/chat/completions", json=CHAT, headers={"x-relay-token": token}
    )
    assert response.status_code == 200, response.text
    return (mock.last().header("authorization") or "").removeprefix("Bearer ")


def test_concurrent_key_writes_from_both_instances_lose_nothing(
    relays: tuple[RelayProcess, RelayProcess], mock: MockProvider
) -> None:
    first, second = relays
    with first.client() as a, second.client() as b:
        tokens = [register(a if i % 2 else b) for i in range(USERS)]
        last = asyncio.run(_write_chains((first.url, second.url), tokens))
        for token, expected in last.items():
            assert _key_reaching_the_provider(a, mock, token) == expected
            listed = b.get("/keys", headers={"x-relay-token": token}).json()
            assert listed["providers"] == ["openai"]
            assert listed["keys"][0]["hint"] == f"{expected[:3]}...{expected[-4:]}"

        candidates = asyncio.run(_race((first.url, second.url), tokens))
        for token, possible in candidates.items():
            assert _key_reaching_the_provider(b, mock, token) in possible


def test_an_instance_that_stops_gives_back_what_it_held_ahead(
    shared_store: dict[str, str],
    relays: tuple[RelayProcess, RelayProcess],
    mock: MockProvider,
    tmp_path: Path,
) -> None:
    first, _ = relays
    third = RelayProcess(tmp_path, relay_env(tmp_path / "unused.db", mock.url, **shared_store))
    try:
        with third.client() as c:
            token = register(c)
            headers = {"x-relay-token": token}
            store_key(c, token, "openai", "test-openai-key-stops-held")
            caps = {"caps": [{"period": "day", "requests": 10**6}]}
            assert c.put("/limits", json=caps, headers=headers).status_code == 200
            for _ in range(40):  # fast enough to be taken ahead
                sent = c.post("/relay/openai/v1/chat/completions", json=CHAT, headers=headers)
                assert sent.status_code == 200, sent.text
        with first.client() as a:
            held = _spent(a, headers)[0]["requests"]
        assert held > 40  # what the third instance holds counts as spent elsewhere
    finally:
        third.stop()
    with first.client() as a:
        assert _spent(a, headers) == [{"requests": 40}]
