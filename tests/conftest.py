"""Shared fixtures: the mock provider, real relay servers, registered users, captured logs."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from backends import DAY_MS
from backends.migrate import upgrade
from relay.providers.table import PROVIDERS
from relay.telemetry.logs import JSONFormatter
from tests.mockprovider import MockProvider, start_mock
from tests.relayserver import RelayServer, register, relay_env, store_key
from tests.servers import (
    REDIS_URL,
    PrivatePostgres,
    PrivateRedis,
    PrivateStore,
    check_redis,
    create_database,
    drop_database,
    in_thread,
)


class LogCapture(logging.Handler):
    """Every log line the process writes, formatted exactly as production would write it."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JSONFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="session")
def captured_logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    yield capture
    root.removeHandler(capture)
    root.setLevel(previous)


@pytest.fixture(scope="session")
def mock() -> Iterator[MockProvider]:
    provider = start_mock()
    yield provider
    provider.stop()


@pytest.fixture(autouse=True)
def _clear_of_midnight() -> None:
    """Caps, budgets and the ledger count UTC days and months: a test begun seconds before
    midnight would count its first requests in one day and its last in the next. It waits
    midnight out first."""
    left = (DAY_MS - time.time() * 1000 % DAY_MS) / 1000
    if left < 30:
        time.sleep(left + 0.5)


@pytest.fixture(autouse=True)
def _fresh_mock_records(request: pytest.FixtureRequest) -> None:
    if "mock" in request.fixturenames:
        request.getfixturevalue("mock").clear()


@pytest.fixture(scope="session")
def relay(
    mock: MockProvider, tmp_path_factory: pytest.TempPathFactory, captured_logs: LogCapture
) -> Iterator[RelayServer]:
    """The relay with default settings, every provider pointed at the mock."""
    db = tmp_path_factory.mktemp("relay") / "relay.db"
    server = RelayServer.from_env(relay_env(db, mock.url))
    yield server
    server.stop()


RelayFactory = Callable[..., RelayServer]


@pytest.fixture
def make_relay(
    mock: MockProvider, tmp_path: Path, captured_logs: LogCapture
) -> Iterator[RelayFactory]:
    """Start a relay with extra environment (`make_relay(APP_SECRET="...")`); stopped after."""
    servers: list[RelayServer] = []

    def factory(**env: str) -> RelayServer:
        db = tmp_path / f"relay-{len(servers)}.db"
        server = RelayServer.from_env(relay_env(db, mock.url, **env))
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def client(relay: RelayServer) -> Iterator[httpx.Client]:
    with relay.client() as c:
        yield c


def provider_key(provider: str) -> str:
    """A fake key unique to this test run, shaped like nothing real."""
    return f"test-{provider}-key-{uuid.uuid4().hex}"


@pytest.fixture
def user(client: httpx.Client) -> tuple[str, dict[str, str]]:
    """A registered user with a stored key for every provider: (token, {provider: key})."""
    token = register(client)
    keys = {name: provider_key(name) for name in PROVIDERS}
    for name, key in keys.items():
        store_key(client, token, name, key)
    return token, keys


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated database of this test process's own on the test Postgres server."""
    # Fixtures may be first requested from inside a running event loop (an async fixture), and
    # asyncpg setup and alembic each run a loop of their own: give them a thread.
    url = in_thread(create_database, "byok_test")
    in_thread(upgrade, url)
    yield url
    in_thread(drop_database, url)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis server (tests keep to namespaces of their own)."""
    check_redis()
    return REDIS_URL


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def server(request: pytest.FixtureRequest) -> Iterator[PrivateStore]:
    """A private Postgres or Redis server of this test's own, which it may freeze or stop."""
    private: PrivateStore = PrivatePostgres() if request.param == "postgres" else PrivateRedis()
    try:
        private.start()
        yield private
    finally:
        private.remove()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A private Redis server of this test's own, which it may freeze or stop."""
    private = PrivateRedis()
    try:
        private.start()
        yield private
    finally:
        private.remove()
