"""`GET /metrics` through real `byok-relay serve` processes: what relayed, refused and failed
requests count, tokens and time to first chunk, the gauges, store calls and rate-limit refusals;
`METRICS_TOKEN`; two workers' figures summed (and a dead worker's gauges forgotten); no label
that names a user, token or app. The exposition is parsed with prometheus_client's own parser."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

from backends import migrate, open_store
from backends.breaker import BreakerStore
from relay.telemetry import metrics
from relay.telemetry.storecalls import observed
from tests.mockprovider import MockProvider
from tests.relayprocess import RelayProcess
from tests.relayserver import register, relay_env, store_key
from tests.servers import drop_namespace, new_namespace
from tests.test_access import free_port

pytestmark = pytest.mark.sqlite

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
KEY = "test-openai-key-metrics-0123456789"
RELAY_ROUTE = "/relay/{provider}/{path}"
# The label names of every series the relay writes: none may say who asked.
LABELS = {
    "http_request_method",
    "http_route",
    "http_response_status_code",
    "provider",
    "model",
    "status",
    "outcome",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_token_type",
    "state",
    "operation",
    "error",
    "limit",
    "le",
    "generation",  # the GC collector's, served by a single process
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client, **headers: str) -> tuple[str, Samples]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over every series whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def wait_for(client: httpx.Client, name: str, expected: float, **labels: str) -> Samples:
    """The samples once `name{labels}` reached `expected` (a request is counted just after its
    last byte is sent)."""
    deadline = time.monotonic() + 5
    while True:
        _, samples = scrape(client)
        if value(samples, name, **labels) >= expected or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


@pytest.fixture
def relay(mock: MockProvider, tmp_path: Path) -> Iterator[RelayProcess]:
    env = relay_env(
        tmp_path / "relay.db",
        mock.url,
        LOG_LEVEL="info",
        # Anthropic unreachable: a connection refused, answered 502.
        RELAY_ANTHROPIC_BASE_URL=f"http://127.0.0.1:{free_port()}",
    )
    process = RelayProcess(tmp_path, env)
    try:
        yield process
    finally:
        process.stop()


def test_relayed_refused_and_failed_requests_are_counted(
    relay: RelayProcess, mock: MockProvider
) -> None:
    with relay.client() as client:
        token = register(client, "metrics-app")
        store_key(client, token, "openai", KEY)
        store_key(client, token, "anthropic", "test-anthropic-key-metrics-0123")
        auth = {"x-relay-token": token}
        path = "/relay/openai/v1/chat/completions"
        assert client.post(path, json=CHAT, headers=auth).status_code == 200
        streaming = {"stream": True, "stream_options": {"include_usage": True}}
        streamed = client.post(path, json={**CHAT, **streaming}, headers=auth)
        assert streamed.status_code == 200
        assert b"data: [DONE]" in streamed.content
        rejected = client.post(
            path + "?scenario=status&status=404", json={**CHAT, "model": "gpt-x"}, headers=auth
        )
        assert rejected.status_code == 404
        failed = client.post("/relay/anthropic/v1/messages", json=CHAT, headers=auth)
        assert failed.status_code == 502
        assert client.post(path, json=CHAT).status_code == 401
        assert client.get("/no/such/route").status_code == 404
        samples = wait_for(client, "relay_relayed_requests_total", 4)
        text, _ = scrape(client)

    duration = "http_server_request_duration_seconds_count"
    assert value(samples, duration, http_route=RELAY_ROUTE, http_response_status_code="200") == 2
    assert value(samples, duration, http_route=RELAY_ROUTE, http_response_status_code="401") == 1
    assert value(samples, duration, http_route="unmatched", http_response_status_code="404") == 1
    assert value(samples, duration, http_route="/users", http_request_method="POST") == 1

    relayed = "relay_relayed_requests_total"
    assert value(samples, relayed, provider="openai", model="gpt-4o-mini", outcome="completed") == 2
    # A refusal names no model the relay could read (nor one the provider answered with).
    assert value(samples, relayed, provider="openai", model="unknown", status="404") == 1
    assert (
        value(samples, relayed, provider="anthropic", status="502", outcome="upstream_error") == 1
    )
    assert (
        value(
            samples, "gen_ai_client_operation_duration_seconds_count", gen_ai_provider_name="openai"
        )
        == 3
    )

    tokens = "gen_ai_client_token_usage_sum"
    model = {"gen_ai_provider_name": "openai", "gen_ai_request_model": "gpt-4o-mini"}
    reported = [r for r in mock.requests if r.path == "/v1/chat/completions"]
    assert len(reported) == 3
    # The mock reports 11 in and 7 out for each answer it completes (both streamed and not).
    assert value(samples, tokens, gen_ai_token_type="input", **model) == 22
    assert value(samples, tokens, gen_ai_token_type="output", **model) == 14
    # Time to first chunk is for streamed answers only.
    first = "gen_ai_client_operation_time_to_first_chunk_seconds_count"
    assert value(samples, first, **model) == 1

    assert value(samples, "relay_open_exchanges") == 0
    assert ("relay_upstream_connections", frozenset({("state", "idle")})) in samples
    calls = "relay_store_call_duration_seconds_count"
    assert value(samples, calls, operation="create_user") == 1
    assert value(samples, calls, operation="put_key") == 2
    assert value(samples, "process_resident_memory_bytes") > 0

    names = {label for _, labels in samples for label, _ in labels}
    assert names <= LABELS, names - LABELS
    for secret in (token, KEY, "metrics-app"):
        assert secret not in text


def test_a_rate_limit_refusal_is_counted_by_its_limit(mock: MockProvider, tmp_path: Path) -> None:
    env = relay_env(tmp_path / "relay.db", mock.url, RATE_LIMIT_RELAY="1/minute")
    relay = RelayProcess(tmp_path, env)
    try:
        with relay.client() as client:
            token = register(client)
            store_key(client, token, "openai", KEY)
            path = "/relay/openai/v1/chat/completions"
            statuses = [
                client.post(path, json=CHAT, headers={"x-relay-token": token}).status_code
                for _ in range(2)
            ]
            assert statuses == [200, 429]
            samples = wait_for(client, "relay_rate_limited_requests_total", 1)
        assert value(samples, "relay_rate_limited_requests_total", limit="relay", status="429") == 1
        assert value(samples, "relay_rate_limited_requests_total", limit="global") == 0
    finally:
        relay.stop()


@pytest.mark.redis
def test_on_one_redis_a_reservation_counting_the_rate_limit_is_a_store_call(
    mock: MockProvider, tmp_path: Path, redis_url: str
) -> None:
    namespace = new_namespace()
    env = relay_env(
        tmp_path / "unused.db",
        mock.url,
        DATABASE_URL=redis_url,
        REDIS_URL=redis_url,
        REDIS_NAMESPACE=namespace,
    )
    relay = RelayProcess(tmp_path, env)
    try:
        with relay.client() as client:
            token = register(client)
            store_key(client, token, "openai", KEY)
            caps = {"caps": [{"period": "day", "requests": 100}]}
            assert client.put("/limits", json=caps, headers={"x-relay-token": token}).is_success
            path = "/relay/openai/v1/chat/completions"
            assert client.post(path, json=CHAT, headers={"x-relay-token": token}).is_success
            _, samples = scrape(client)
        # The user's first request, reserved in the store with its per-token hit.
        calls = "relay_store_call_duration_seconds_count"
        assert value(samples, calls, operation="reserve") == 1
    finally:
        relay.stop()
        drop_namespace(namespace)


def test_metrics_token_guards_the_endpoint_and_metrics_can_be_off(
    mock: MockProvider, tmp_path: Path
) -> None:
    secret = "scrape-token-0123456789"
    relay = RelayProcess(tmp_path, relay_env(tmp_path / "a.db", mock.url, METRICS_TOKEN=secret))
    try:
        with relay.client() as client:
            for headers in ({}, {"authorization": "Bearer wrong-token-0123456789"}):
                refused = client.get("/metrics", headers=headers)
                assert refused.status_code == 401
                assert refused.json()["code"] == "metrics_token_required"
            scrape(client, authorization=f"Bearer {secret}")
    finally:
        relay.stop()
    relay = RelayProcess(tmp_path, relay_env(tmp_path / "b.db", mock.url, RELAY_METRICS="off"))
    try:
        with relay.client() as client:
            absent = client.get("/metrics")
            assert absent.status_code == 404
            assert absent.json()["code"] == "not_found"
    finally:
        relay.stop()


def workers_of(relay: RelayProcess) -> list[int]:
    """The worker processes of a `serve --workers N` (children of the supervisor)."""
    children = Path(f"/proc/{relay.process.pid}/task/{relay.process.pid}/children")
    return [
        int(pid)
        for pid in children.read_text().split()
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()  # not the resource tracker
    ]


def multiprocess_dir_of(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    values = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    assert values, "serve --workers 2 set no PROMETHEUS_MULTIPROC_DIR"
    return Path(values[0].decode())


def answered_by(folder: Path) -> set[int]:
    """The processes that have counted a request (each writes its own histogram file)."""
    return {int(f.stem.rsplit("_", 1)[1]) for f in folder.glob("histogram_*.db")}


def started(relay: RelayProcess, count: int) -> None:
    """Once `count` workers in all have started serving."""
    deadline = time.monotonic() + 30
    while sum("Application startup complete" in line for line in relay.lines) < count:
        assert time.monotonic() < deadline, "".join(relay.lines)
        time.sleep(0.05)


def test_two_workers_figures_are_summed(mock: MockProvider, tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, relay_env(tmp_path / "relay.db", mock.url), "--workers", "2")
    try:
        started(relay, 2)
        workers = workers_of(relay)
        folder = multiprocess_dir_of(workers[0])
        assert folder == multiprocess_dir_of(workers[1])
        # Each worker answers some: the other is stopped meanwhile, so it accepts nothing.
        sent = 0
        for serving, stopped in (workers, workers[::-1]):
            os.kill(stopped, signal.SIGSTOP)
            try:
                for _ in range(3 + serving % 5):
                    with relay.client() as client:
                        assert client.get("/version").status_code == 200
                    sent += 1
            finally:
                os.kill(stopped, signal.SIGCONT)
        name = "http_server_request_duration_seconds_count"
        # Each worker hands its tally on at least once a second.
        deadline = time.monotonic() + 5
        while True:
            with relay.client() as client:
                _, samples = scrape(client)
            if value(samples, name, http_route="/version") == sent:
                assert answered_by(folder) == set(workers)
                break
            assert time.monotonic() < deadline, value(samples, name, http_route="/version")
            time.sleep(0.1)
        for _ in range(4):  # whichever worker serves the scrape, the sum is the group's
            with relay.client() as client:
                _, samples = scrape(client)
            assert value(samples, name, http_route="/version") == sent

        # A worker that dies takes its gauges with it; its counts stay in the sums.
        os.kill(workers[0], signal.SIGKILL)
        started(relay, 3)  # its replacement
        assert workers[0] not in workers_of(relay)
        with relay.client() as client:
            _, samples = scrape(client)
        assert value(samples, name, http_route="/version") == sent
        assert not list(folder.glob(f"gauge_live*_{workers[0]}.db"))
    finally:
        relay.stop()
    assert not folder.exists(), "the metrics folder outlived the relay"


def test_model_names_are_bounded_per_provider() -> None:
    names = metrics._ModelNames(3)
    assert [names.label("openai", f"m{i}", True) for i in range(5)] == [
        "m0",
        "m1",
        "m2",
        "other",
        "other",
    ]
    assert names.label("openai", "m1", False) == "m1"  # known: kept whatever the status
    assert names.label("groq", "refused", False) == "other"
    assert names.label("groq", "x" * 200, True) == "other"
    assert names.label("groq", None, True) == "unknown"
    assert names.label("groq", "llama", True) == "llama"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate.upgrade(url)
    return url


@pytest.mark.anyio
async def test_every_store_call_is_timed_and_its_failures_counted(store_url: str) -> None:
    store = open_store(store_url)
    guarded = BreakerStore(store)
    watched = observed(guarded)
    count = metrics.STORE_DURATION.labels("get_key")
    before = _count(count)
    unavailable = metrics.STORE_ERRORS.labels("get_key", "unavailable")
    refused_before = unavailable._value.get()
    assert await watched.get_key("nobody", "openai") is None
    assert _count(count) == before + 1
    guarded.breaker.down = True  # known down: refused at once, counted as unavailable
    with pytest.raises(Exception, match="known down"):
        await watched.get_key("nobody", "openai")
    assert unavailable._value.get() == refused_before + 1
    assert _count(count) == before + 2
    await watched.close()


def _count(histogram: object) -> float:
    for metric in histogram.collect():  # type: ignore[attr-defined]
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return float(sample.value)
    raise AssertionError("no count")


def test_the_exposition_holds_no_secret_even_with_odd_model_names(
    relay: RelayProcess,
) -> None:
    with relay.client() as client:
        token = register(client)
        store_key(client, token, "openai", KEY)
        odd = 'gpt"\\{model} ,='  # printable: a control character makes it no model at all
        response = client.post(
            "/relay/openai/v1/chat/completions",
            content=json.dumps({**CHAT, "model": odd}),
            headers={"x-relay-token": token, "content-type": "application/json"},
        )
        assert response.status_code == 200
        samples = wait_for(client, "relay_relayed_requests_total", 1)
    # The exposition escapes it, and the parser reads it back whole.
    assert value(samples, "relay_relayed_requests_total", model=odd) == 1


def test_an_upstream_the_client_names_cannot_grow_the_labels(
    relay: RelayProcess, mock: MockProvider
) -> None:
    """Its statuses outside HTTP's are `other`, and the models it accepts take no place."""
    with relay.client() as client:
        token = register(client)
        store_key(client, token, "openai-compatible", "test-compatible-key-metrics")
        headers = {"x-relay-token": token, "x-relay-base-url": mock.url}
        path = "/relay/openai-compatible/v1/chat/completions"
        for status in (200, 299, 599):
            answer = client.post(
                f"{path}?scenario=status&status={status}",
                json={**CHAT, "model": f"invented-{status}"},
                headers=headers,
            )
            assert answer.status_code == status
        samples = wait_for(client, "relay_relayed_requests_total", 3)
    relayed = "relay_relayed_requests_total"
    assert value(samples, relayed, provider="openai-compatible", status="200", model="other") == 1
    assert value(samples, relayed, provider="openai-compatible", status="other") == 2
    models = {dict(labels).get("model") for name, labels in samples if name == relayed}
    assert not any(model and model.startswith("invented") for model in models)
    statuses = {
        dict(labels)["http_response_status_code"]
        for name, labels in samples
        if name == "http_server_request_duration_seconds_count"
    }
    assert "299" not in statuses
    assert "599" not in statuses


def test_an_operators_metrics_folder_loses_only_the_metrics_files(
    mock: MockProvider, tmp_path: Path
) -> None:
    """Given in `.env`, emptied of an earlier run's prometheus_client files at start, and
    nothing else (here the SQLite store lives in it too)."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "counter_12345.db").write_bytes(b"stale")
    (folder / "gauge_livesum_12345.db").write_bytes(b"stale")
    (tmp_path / ".env").write_text(f"PROMETHEUS_MULTIPROC_DIR={folder}\n")
    env = relay_env(folder / "relay.db", mock.url)
    relay = RelayProcess(tmp_path, env, "--workers", "2")
    try:
        started(relay, 2)
        with relay.client() as client:
            register(client)
            _, samples = scrape(client)
        assert value(samples, "http_server_request_duration_seconds_count", http_route="/users")
        assert not (folder / "counter_12345.db").exists()
        assert not (folder / "gauge_livesum_12345.db").exists()
        assert (folder / "relay.db").stat().st_size > 0
        assert {f.stem.split("_")[-1] for f in folder.glob("histogram_*.db")} <= {
            str(pid) for pid in workers_of(relay)
        }
    finally:
        relay.stop()
    assert (folder / "relay.db").exists()


def test_a_tally_applied_reads_as_the_same_observations_made_one_by_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tally writes prometheus_client's own sum and buckets (its private fields): the
    exposition must be what `observe` and `inc` would have written."""
    registry = CollectorRegistry()
    buckets = (0.1, 1, 10)
    direct = Histogram("direct", "d", ["k"], buckets=buckets, registry=registry)
    tallied = Histogram("tallied", "t", ["k"], buckets=buckets, registry=registry)
    counted = Counter("counted", "c", ["k"], registry=registry)
    monkeypatch.setitem(metrics._BOUNDS, tallied, (*buckets, float("inf")))
    tally = metrics._Tally()
    values = [0.05, 0.1, 0.5, 1, 3, 10, 11, 1e9]
    for value in values:
        direct.labels("a").observe(value)
        tally.observe(tallied, ("a",), value)
        tally.count(counted, ("a",))
    tally.apply()
    tally.apply()  # nothing twice
    samples = {
        (s.name.removeprefix("direct").removeprefix("tallied"), tuple(sorted(s.labels.items()))): (
            s.name.startswith("direct"),
            s.value,
        )
        for family in registry.collect()
        for s in family.samples
        if family.name in ("direct", "tallied")
    }
    mine = {k: v for k, (is_direct, v) in samples.items() if not is_direct}
    assert mine  # and every one equal to its direct twin:
    for family in registry.collect():
        if family.name == "direct":
            for s in family.samples:
                key = (s.name.removeprefix("direct"), tuple(sorted(s.labels.items())))
                assert mine[key] == s.value, key
    assert counted.labels("a")._value.get() == len(values)
