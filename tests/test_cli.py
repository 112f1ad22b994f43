"""`byok-relay serve` and `byok-relay migrate` as a person runs them: real processes."""

from __future__ import annotations

import json
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory

from backends.migrate import alembic_config
from relay.config import read_env_file
from tests.relayprocess import RelayProcess, run_cli

pytestmark = pytest.mark.sqlite


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    processes: list[RelayProcess] = []

    def start(**env: str) -> RelayProcess:
        processes.append(RelayProcess(tmp_path, env))
        return processes[-1]

    yield start
    for process in processes:
        process.stop()


def test_first_start_generates_a_dev_secret_and_serves(
    tmp_path: Path, serve: Callable[..., RelayProcess]
) -> None:
    served = serve()
    assert served.lines[0].startswith("byok-relay: generated a development ENCRYPTION_SECRET")
    env_file = tmp_path / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    secret = read_env_file(env_file)["ENCRYPTION_SECRET"]
    assert len(secret) >= 32
    assert secret not in "".join(served.lines)
    health = httpx.get(served.url + "/health", timeout=5)
    assert health.status_code == 200
    assert health.json()["checks"]["db"]["ok"] is True
    assert (tmp_path / "data" / "relay.db").exists()
    token = httpx.post(served.url + "/users", json={"app_id": "cli"}, timeout=5).json()["token"]
    stored = httpx.post(
        served.url + "/keys/openai",
        json={"key": "test-openai-key-cli"},
        headers={"x-relay-token": token},
        timeout=5,
    )
    assert stored.status_code == 200
    served.stop()

    again = serve()
    assert not any("generated" in line for line in again.lines)
    assert read_env_file(env_file)["ENCRYPTION_SECRET"] == secret
    listed = httpx.get(again.url + "/keys", headers={"x-relay-token": token}, timeout=5)
    assert listed.json()["providers"] == ["openai"]


def test_production_never_generates_a_secret(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "serve", RELAY_ENV="production")
    assert result.returncode != 0
    assert result.stderr.strip().startswith("byok-relay: ENCRYPTION_SECRET is not set")
    assert not (tmp_path / ".env").exists()


@pytest.mark.parametrize(
    ("env", "reason", "never_shown"),
    [
        ({"ENCRYPTION_SECRET": "short-secret"}, "ENCRYPTION_SECRET is too short", "short-secret"),
        ({"TOKEN_HMAC_SECRET": "tiny-hmac"}, "TOKEN_HMAC_SECRET is too short", "tiny-hmac"),
        ({"APP_SECRET": "has a space"}, "APP_SECRET must not contain spaces", "has a space"),
        ({"DATABASE_URL": "mysql://relay:hunter2pass@db/relay"}, "'mysql'", "hunter2pass"),
        ({"RELAY_UPSTREAM_TIMEOUT": "soon"}, "RELAY_UPSTREAM_TIMEOUT must be a number", "soon"),
        (
            {"RELAY_OPENAI_BASE_URL": "https://eu.example/v1?api-key=hunter2pass"},
            "RELAY_OPENAI_BASE_URL must not have a query or fragment",
            "hunter2pass",
        ),
        (
            {"RELAY_OPENAL_BASE_URL": "https://relay:hunter2pass@eu.example"},
            "RELAY_OPENAL_BASE_URL names no provider",
            "hunter2pass",
        ),
        (
            {"FORWARDED_ALLOW_IPS": "*", "FORWARDED_TRUSTED_HOPS": "0"},
            "FORWARDED_TRUSTED_HOPS must be a whole number",
            "Traceback",
        ),
    ],
)
def test_bad_configuration_is_refused_in_one_line(
    tmp_path: Path, env: dict[str, str], reason: str, never_shown: str
) -> None:
    env = {"ENCRYPTION_SECRET": "x" * 40, **env}
    for command in ("serve", "migrate"):
        result = run_cli(tmp_path, command, **env)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert reason in lines[0]
        assert never_shown not in result.stderr
        assert "Traceback" not in result.stderr


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "migrate", ENCRYPTION_SECRET="x" * 40, DB_PATH="store/relay.db")
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "store" / "relay.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = db.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"users", "keys", "alembic_version"} <= tables
    assert version == (ScriptDirectory.from_config(alembic_config("")).get_current_head(),)
    again = run_cli(tmp_path, "migrate", ENCRYPTION_SECRET="x" * 40, DB_PATH="store/relay.db")
    assert again.returncode == 0, again.stderr


def test_the_sqlite_store_and_its_folders_are_owner_only(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "migrate", ENCRYPTION_SECRET="x" * 40, DB_PATH="a/b/relay.db")
    assert result.returncode == 0, result.stderr
    for folder in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    store = tmp_path / "a" / "b" / "relay.db"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    wal = tmp_path / "a" / "b" / "relay.db-wal"
    assert not wal.exists() or stat.S_IMODE(wal.stat().st_mode) == 0o600


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    result = run_cli(tmp_path, "migrate", ENCRYPTION_SECRET="x" * 40, DB_PATH="shared/relay.db")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "relay.db").stat().st_mode) == 0o600


def test_serve_warns_once_of_an_unknown_relay_variable(
    tmp_path: Path, serve: Callable[..., RelayProcess]
) -> None:
    (tmp_path / ".env").write_text("RATE_LIMIT_RELAI=5/minute # a typo in .env\n")
    served = serve(ENCRYPTION_SECRET="x" * 40, RELAY_DRAIN_SECOND="3")
    with served.client() as client:
        assert client.get("/health").status_code == 200
    for name, near in (("RELAY_DRAIN_SECOND", "RELAY_DRAIN_SECONDS"), ("RATE_LIMIT_RELAI", "")):
        warned = [line for line in served.lines if f"{name} is set but" in line]
        assert len(warned) == 1, served.lines
        assert json.loads(warned[0])["level"] == "warning"
        assert near in warned[0]
