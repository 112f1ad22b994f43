"""`byok-relay import-node-db`: a Node byok-relay SQLite file, imported, keeps every token and key.

The Node files are built here the way the Node relay wrote them (AES-256-GCM with a random
16-byte IV, hex fields, scrypt-derived key; HMAC-SHA256 hex token digests), the real command runs
as a subprocess, and a real relay then serves the old tokens against the mock provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import math
import os
import secrets
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backends import open_store
from backends.migrate import upgrade
from relay.ops.nodeimport import decrypt_node_record, import_node_db, parse_timestamp
from relay.security.crypto import DecryptionError, KeyCipher, derive_key
from tests.mockprovider import MockProvider
from tests.relayprocess import run_cli
from tests.relayserver import TEST_SECRET, RelayServer, relay_env

pytestmark = pytest.mark.sqlite

SALT = "byok-relay-salt"
NODE_KEY = hashlib.scrypt(TEST_SECRET.encode(), salt=SALT.encode(), n=16384, r=8, p=1, dklen=32)
NEW_SECRET = "a-newer-encryption-secret-0123456789abcdef"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
NOW_MS = int(time.time() * 1000)
DAY_MS = 86_400_000

# The schema as the Node relay plausibly had it (its own later one is in the in-process test).
NODE_SCHEMA = """
CREATE TABLE users (
  id TEXT PRIMARY KEY,
  token_hash TEXT UNIQUE NOT NULL,
  app_id TEXT,
  created_at INTEGER,
  expires_at INTEGER,
  revoked INTEGER DEFAULT 0
);
CREATE TABLE keys (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  provider TEXT NOT NULL,
  encrypted_key TEXT NOT NULL,
  iv TEXT NOT NULL,
  auth_tag TEXT NOT NULL,
  created_at TEXT DEFAULT CURRENT_TIMESTAMP,
  updated_at TEXT DEFAULT CURRENT_TIMESTAMP,
  UNIQUE(user_id, provider)
);
"""


def node_seal(plaintext: str, key: bytes = NODE_KEY) -> tuple[str, str, str]:
    """Encrypt as the Node relay did: (encrypted_key, iv, auth_tag), hex."""
    iv = os.urandom(16)
    sealed = AESGCM(key).encrypt(iv, plaintext.encode(), None)
    return sealed[:-16].hex(), iv.hex(), sealed[-16:].hex()


def token_hash(token: str, secret: str = TEST_SECRET) -> str:
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def provider_key(provider: str) -> str:
    return f"test-node-{provider}-key-{uuid.uuid4().hex}"


@dataclasses.dataclass
class NodeUser:
    providers: tuple[str, ...] = ("openai",)
    app_id: str | None = "node-app"
    created_at: object = NOW_MS - 30 * DAY_MS
    expires_at: object = None
    revoked: int = 0
    id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    token: str = dataclasses.field(default_factory=lambda: secrets.token_hex(32))
    keys: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keys = {p: provider_key(p) for p in self.providers}


def write_node_db(
    path: Path, users: list[NodeUser], corrupt: frozenset[tuple[str, str]] = frozenset()
) -> dict[tuple[str, str], tuple[str, str, str]]:
    """The Node file at `path`; returns every (user id, provider)'s hex fields as written."""
    written: dict[tuple[str, str], tuple[str, str, str]] = {}
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")  # as the Node relay ran it
        db.executescript(NODE_SCHEMA)
        for user in users:
            db.execute(
                "INSERT INTO users (id, token_hash, app_id, created_at, expires_at, revoked)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    user.id,
                    token_hash(user.token),
                    user.app_id,
                    user.created_at,
                    user.expires_at,
                    user.revoked,
                ),
            )
            for provider, key in user.keys.items():
                encrypted, iv, tag = node_seal(key)
                if (user.id, provider) in corrupt:
                    encrypted = f"{int(encrypted[:2], 16) ^ 0x01:02x}" + encrypted[2:]
                written[(user.id, provider)] = (encrypted, iv, tag)
                db.execute(
                    "INSERT INTO keys (user_id, provider, encrypted_key, iv, auth_tag)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (user.id, provider, encrypted, iv, tag),
                )
        db.commit()
    return written


def run_import(
    tmp_path: Path, node_db: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    settings = {
        "ENCRYPTION_SECRET": TEST_SECRET,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
        **env,
    }
    return run_cli(tmp_path, "import-node-db", str(node_db), *args, **settings)


def keys_line(found: int, imported: int, present: int, failed: int, unsupported: int) -> str:
    return (
        f"keys: {found} found, {imported} imported, {present} already present, "
        f"{failed} failed to decrypt, {unsupported} unsupported provider"
    )


def relay_rows(db_path: Path, query: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return db.execute(query).fetchall()


@contextlib.contextmanager
def serving(db_path: Path, mock: MockProvider, **env: str) -> Iterator[RelayServer]:
    server = RelayServer.from_env(relay_env(db_path, mock.url, **env))
    try:
        yield server
    finally:
        server.stop()


def assert_relays_with(server: RelayServer, mock: MockProvider, user: NodeUser) -> None:
    paths = {"openai": ("/v1/chat/completions", "authorization", "Bearer {}")}
    paths["anthropic"] = ("/v1/messages", "x-api-key", "{}")
    with server.client() as client:
        for provider, key in user.keys.items():
            if provider not in paths:
                continue
            path, header, scheme = paths[provider]
            response = client.post(
                f"/relay/{provider}{path}", json=CHAT, headers={"x-relay-token": user.token}
            )
            assert response.status_code == 200, response.text
            assert mock.last().header(header) == scheme.format(key)


def assert_refused(server: RelayServer, user: NodeUser) -> None:
    with server.client() as client:
        response = client.post(
            "/relay/openai/v1/chat/completions", json=CHAT, headers={"x-relay-token": user.token}
        )
    assert response.status_code == 401, response.text


def assert_nothing_secret_in(text: str, users: list[NodeUser]) -> None:
    for user in users:
        assert user.token not in text
        assert token_hash(user.token) not in text
        for key in user.keys.values():
            assert key not in text
    assert TEST_SECRET not in text


def test_every_token_and_key_keeps_working(tmp_path: Path, mock: MockProvider) -> None:
    in_a_week_s = (NOW_MS + 7 * DAY_MS) // 1000
    alice = NodeUser(("openai", "anthropic", "cohere"))
    bob = NodeUser(created_at=1_700_000_000, expires_at=in_a_week_s)  # epoch seconds
    carol = NodeUser(revoked=1)
    dave = NodeUser(expires_at=NOW_MS - DAY_MS)
    erin = NodeUser(("anthropic",), app_id=None, created_at="2024-05-01 12:00:00")
    users = [alice, bob, carol, dave, erin]
    write_node_db(tmp_path / "node.db", users)

    result = run_import(tmp_path, tmp_path / "node.db")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "users: 5 found, 5 imported, 0 already present",
        keys_line(7, 6, 0, 0, 1),
    ]
    assert "cohere" in result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_secret_in(result.stdout + result.stderr, users)

    db_path = tmp_path / "relay.db"
    query = "SELECT id, app_id, created_at, expires_at, revoked_at FROM users"
    stored = {row[0]: row[1:] for row in relay_rows(db_path, query)}
    assert stored[alice.id] == ("node-app", alice.created_at, None, None)
    assert stored[bob.id] == ("node-app", 1_700_000_000_000, in_a_week_s * 1000, None)
    erin_created = int(datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp() * 1000)
    assert stored[erin.id] == ("node-import", erin_created, None, None)
    assert stored[carol.id][3] is not None  # revoked_at
    assert stored[dave.id][2:] == (NOW_MS - DAY_MS, None)

    with serving(db_path, mock) as server:
        for user in (alice, bob, erin):
            assert_relays_with(server, mock, user)
        assert_refused(server, carol)
        assert_refused(server, dave)
        with server.client() as client:
            listed = client.get("/keys", headers={"x-relay-token": alice.token})
        assert listed.json()["providers"] == ["anthropic", "openai"]


def test_dry_run_reports_the_counts_and_writes_nothing(tmp_path: Path) -> None:
    write_node_db(tmp_path / "node.db", [NodeUser(("openai", "google")), NodeUser()])

    dry = run_import(tmp_path, tmp_path / "node.db", "--dry-run")

    assert dry.returncode == 0, dry.stderr
    expected = ["users: 2 found, 2 imported, 0 already present", keys_line(3, 3, 0, 0, 0)]
    assert dry.stdout.splitlines() == [f"dry run: {line}" for line in expected]
    db_path = tmp_path / "relay.db"
    assert relay_rows(db_path, "SELECT count(*) FROM users") == [(0,)]
    assert relay_rows(db_path, "SELECT count(*) FROM keys") == [(0,)]

    real = run_import(tmp_path, tmp_path / "node.db")
    assert real.returncode == 0, real.stderr
    assert real.stdout.splitlines() == expected


def test_a_second_run_changes_nothing(tmp_path: Path) -> None:
    write_node_db(tmp_path / "node.db", [NodeUser(("openai", "mistral")), NodeUser()])
    first = run_import(tmp_path, tmp_path / "node.db")
    assert first.returncode == 0, first.stderr
    query = "SELECT * FROM users ORDER BY id", "SELECT * FROM keys ORDER BY user_id, provider"
    before = [relay_rows(tmp_path / "relay.db", q) for q in query]

    again = run_import(tmp_path, tmp_path / "node.db")

    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        "users: 2 found, 0 imported, 2 already present",
        keys_line(3, 0, 3, 0, 0),
    ]
    assert [relay_rows(tmp_path / "relay.db", q) for q in query] == before


def test_a_corrupted_key_is_reported_and_the_others_imported(tmp_path: Path) -> None:
    frank, grace = NodeUser(("openai", "anthropic")), NodeUser(("groq",))
    written = write_node_db(
        tmp_path / "node.db", [frank, grace], corrupt=frozenset({(frank.id, "anthropic")})
    )

    result = run_import(tmp_path, tmp_path / "node.db")

    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "users: 2 found, 2 imported, 0 already present",
        keys_line(3, 2, 0, 1, 0),
    ]
    failure = [line for line in result.stderr.splitlines() if "failed to decrypt" in line]
    assert len(failure) == 1
    assert frank.id in failure[0]
    assert "anthropic" in failure[0]
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    for field in written[(frank.id, "anthropic")]:
        assert field not in output
    assert_nothing_secret_in(output, [frank, grace])

    cipher = KeyCipher([TEST_SECRET], SALT)
    records = relay_rows(tmp_path / "relay.db", "SELECT user_id, provider, record FROM keys")
    plain = {(u, p): cipher.decrypt(r, user_id=u, provider=p) for u, p, r in records}
    assert plain == {
        (frank.id, "openai"): frank.keys["openai"],
        (grace.id, "groq"): grace.keys["groq"],
    }


def test_keys_under_an_older_secret_are_resealed_under_the_newest(
    tmp_path: Path, mock: MockProvider
) -> None:
    henry = NodeUser(("openai",))
    write_node_db(tmp_path / "node.db", [henry])
    rotated = {"ENCRYPTION_SECRET": f"{NEW_SECRET},{TEST_SECRET}", "TOKEN_HMAC_SECRET": TEST_SECRET}

    result = run_import(tmp_path, tmp_path / "node.db", **rotated)

    assert result.returncode == 0, result.stderr
    [(record,)] = relay_rows(tmp_path / "relay.db", "SELECT record FROM keys")
    newest_only = KeyCipher([NEW_SECRET], SALT)
    assert newest_only.decrypt(record, user_id=henry.id, provider="openai") == henry.keys["openai"]
    with serving(tmp_path / "relay.db", mock, **rotated) as server:
        assert_relays_with(server, mock, henry)


def _keys_without_auth_tag(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(
            "CREATE TABLE users (id TEXT PRIMARY KEY, token_hash TEXT);"
            "CREATE TABLE keys (user_id TEXT, provider TEXT, encrypted_key TEXT, iv TEXT);"
        )


def _no_users_table(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE accounts (id TEXT)")


def _not_sqlite(path: Path) -> None:
    path.write_text("id,token_hash\n1,abc\n" * 200)


def _missing(path: Path) -> None:
    pass


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_keys_without_auth_tag, "table 'keys' has no column 'auth_tag'"),
        (_no_users_table, "no table 'users'"),
        (_not_sqlite, "cannot be read as a SQLite database"),
        (_missing, "no such file"),
    ],
)
def test_an_unusable_node_file_is_refused_in_one_line(
    tmp_path: Path, make: Callable[[Path], None], reason: str
) -> None:
    make(tmp_path / "node.db")

    result = run_import(tmp_path, tmp_path / "node.db")

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("byok-relay: ")
    assert reason in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "relay.db").exists()  # refused before the store was touched


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_714_564_800_000, 1_714_564_800_000),  # epoch ms
        (1_714_564_800, 1_714_564_800_000),  # epoch seconds
        (1_714_564_800.25, 1_714_564_800_250),  # float seconds
        (1_714_564_800_123.0, 1_714_564_800_123),  # float ms
        ("1714564800000", 1_714_564_800_000),  # numeric text
        ("1714564800", 1_714_564_800_000),
        ("2024-05-01 12:00:00", 1_714_564_800_000),  # SQLite CURRENT_TIMESTAMP (UTC)
        ("2024-05-01T12:00:00", 1_714_564_800_000),
        ("2024-05-01T12:00:00Z", 1_714_564_800_000),
        ("2024-05-01T12:00:00.250Z", 1_714_564_800_250),  # JavaScript's toISOString()
        ("2024-05-01T14:00:00+02:00", 1_714_564_800_000),
        ("2024-05-01 07:00:00-05:00", 1_714_564_800_000),
        ("2024-05-01", 1_714_521_600_000),
        (" 2024-05-01 12:00:00 ", 1_714_564_800_000),
        (None, None),
        ("", None),
        ("yesterday", None),
        ("2024-13-45 99:00:00", None),
        (math.nan, None),
        (math.inf, None),
        (-5, None),
        (10**20, None),
        (True, None),
        (b"2024-05-01", None),
    ],
)
def test_timestamps_in_every_node_format(value: object, expected: int | None) -> None:
    assert parse_timestamp(value) == expected


def test_node_record_decryption() -> None:
    other = derive_key(NEW_SECRET, SALT)
    sealed = node_seal("sk-node-plain-ünïcode")
    assert decrypt_node_record(*sealed, [NODE_KEY]) == "sk-node-plain-ünïcode"
    assert decrypt_node_record(*sealed, [other, NODE_KEY]) == "sk-node-plain-ünïcode"
    encrypted, iv, tag = sealed
    bad = [
        (encrypted, iv, tag, [other]),  # no configured secret fits
        (encrypted, iv, tag, []),
        (encrypted, iv, "00" * 16, [NODE_KEY]),  # tampered tag
        (encrypted, iv, tag[:-2], [NODE_KEY]),  # short tag
        (encrypted, "zz" + iv[2:], tag, [NODE_KEY]),  # not hex
        (encrypted, "", tag, [NODE_KEY]),  # no IV
        (encrypted[:-2], iv, tag, [NODE_KEY]),  # truncated ciphertext
    ]
    for args in bad:
        with pytest.raises(DecryptionError):
            decrypt_node_record(*args)
    not_utf8 = node_seal("x")
    raw_iv = bytes.fromhex(not_utf8[1])
    sealed_bytes = AESGCM(NODE_KEY).encrypt(raw_iv, b"\xff\xfe", None)
    with pytest.raises(DecryptionError):
        decrypt_node_record(
            sealed_bytes[:-16].hex(), not_utf8[1], sealed_bytes[-16:].hex(), [NODE_KEY]
        )


# The schema of the Node relay's own later releases: uuid key ids, no updated_at, revocation by
# setting expires_at to the past, and `token_hmac_version` (1: a digest not yet confirmed).
NODE_RELAY_SCHEMA = """
CREATE TABLE users (
  id TEXT PRIMARY KEY,
  token_hash TEXT UNIQUE NOT NULL,
  token_hmac_version INTEGER NOT NULL DEFAULT 2,
  app_id TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER
);
CREATE TABLE keys (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  provider TEXT NOT NULL,
  encrypted_key TEXT NOT NULL,
  iv TEXT NOT NULL,
  auth_tag TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  UNIQUE(user_id, provider)
);
"""
MINIMAL_SCHEMA = """
CREATE TABLE users (id INTEGER PRIMARY KEY, token_hash TEXT);
CREATE TABLE keys (user_id INTEGER, provider TEXT, encrypted_key TEXT, iv TEXT, auth_tag TEXT);
"""


def test_the_node_relays_own_schema_and_a_minimal_one(tmp_path: Path) -> None:
    node_db = tmp_path / "node.db"
    with contextlib.closing(sqlite3.connect(node_db)) as db:
        db.executescript(NODE_RELAY_SCHEMA)
        db.executemany(
            "INSERT INTO users VALUES (?, ?, ?, 'app-x', ?, ?)",
            [
                ("u-live", token_hash("live"), 2, NOW_MS - DAY_MS, NOW_MS + DAY_MS),
                ("u-legacy", token_hash("legacy"), 1, NOW_MS - DAY_MS, None),
                ("u-revoked", token_hash("revoked"), 2, NOW_MS - DAY_MS, NOW_MS - 1),
            ],
        )
        db.execute(
            "INSERT INTO keys VALUES (?, 'u-live', 'openai', ?, ?, ?, ?)",
            (str(uuid.uuid4()), *node_seal("sk-live-openai-key"), NOW_MS - DAY_MS),
        )
        db.commit()
    minimal_db = tmp_path / "minimal.db"
    with contextlib.closing(sqlite3.connect(minimal_db)) as db:
        db.executescript(MINIMAL_SCHEMA)
        db.execute("INSERT INTO users VALUES (7, ?)", (token_hash("minimal"),))
        db.execute("INSERT INTO keys VALUES (7, 'google', ?, ?, ?)", node_seal("gm-minimal-key"))
        db.execute("INSERT INTO keys VALUES (8, 'google', ?, ?, ?)", node_seal("gm-orphan-key"))
        db.commit()
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    upgrade(url)
    cipher = KeyCipher([TEST_SECRET], SALT)

    async def scenario() -> None:
        store = open_store(url)
        try:
            report = await import_node_db(node_db, store, cipher, [NODE_KEY], dry_run=False)
            assert (report.users_imported, report.keys_imported) == (3, 1)
            assert report.legacy_token_digests == 1
            assert report.ok
            live = await store.user_for_token(token_hash("live"))
            assert live is not None
            assert (live.id, live.app_id, live.created_at) == ("u-live", "app-x", NOW_MS - DAY_MS)
            assert live.expires_at == NOW_MS + DAY_MS
            revoked = await store.user_for_token(token_hash("revoked"))
            assert revoked is not None
            assert revoked.expires_at == NOW_MS - 1  # still refused
            record = await store.get_key("u-live", "openai")
            assert record is not None
            assert cipher.decrypt(record, user_id="u-live", provider="openai") == (
                "sk-live-openai-key"
            )

            before = int(time.time() * 1000)
            report = await import_node_db(minimal_db, store, cipher, [NODE_KEY], dry_run=False)
            assert (report.users_imported, report.keys_imported, report.keys_orphaned) == (1, 1, 1)
            user = await store.user_for_token(token_hash("minimal"))
            assert user is not None
            assert (user.id, user.app_id, user.expires_at, user.revoked_at) == (
                "7",
                "node-import",
                None,
                None,
            )
            assert before <= user.created_at <= int(time.time() * 1000)
            record = await store.get_key("7", "google")
            assert record is not None
            assert cipher.decrypt(record, user_id="7", provider="google") == "gm-minimal-key"
        finally:
            await store.close()

    asyncio.run(scenario())
