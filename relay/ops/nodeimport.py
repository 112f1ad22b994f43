"""Import the users and keys of a Node byok-relay SQLite file into any key store.

The Node relay kept `users(id, token_hash, app_id, created_at, ...)` and
`keys(user_id, provider, encrypted_key, iv, auth_tag, created_at, ...)`: hex AES-256-GCM fields
(16-byte IV, 16-byte tag, no associated data) under scrypt(ENCRYPTION_SECRET, salt), which is
`relay.security.crypto.derive_key`, and token digests that are `relay.security.tokens.TokenHasher`
digests. So digests are copied as they are and keys are re-sealed under our record format: every
token and key keeps working. Its schema grew over time, so columns are looked up, not assumed.

Importing is idempotent: a user whose token digest is already stored, and a key already stored
for (user, provider), are left alone and counted as already present.

A command of its own, run once: it reads the Node relay's schema and record format, which
nothing else needs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backends import KeyMeta, KeyStore, StoreError, StoreUnavailable, User
from relay.providers.table import PROVIDERS
from relay.providers.verify import key_hint
from relay.security.crypto import DecryptionError, KeyCipher

__all__ = [
    "DEFAULT_APP_ID",
    "ImportReport",
    "NodeDatabaseError",
    "Problem",
    "check_node_db",
    "decrypt_node_record",
    "import_node_db",
    "parse_timestamp",
]

DEFAULT_APP_ID: Final = "node-import"
_REQUIRED: Final = {
    "users": ("id", "token_hash"),
    "keys": ("user_id", "provider", "encrypted_key", "iv", "auth_tag"),
}
_OPTIONAL: Final = {
    "users": ("app_id", "created_at", "expires_at", "revoked", "revoked_at", "token_hmac_version"),
    "keys": ("created_at", "updated_at"),
}
_TAG_LEN: Final = 16
_SECONDS_BELOW: Final = 100_000_000_000
"""Epoch values below this are seconds (1e11 s is the year 5138; 1e11 ms is 1973)."""
_MAX_MS: Final = 253_402_300_800_000
"""Year 10000: anything later is not a timestamp."""
_MAX_ID_LEN: Final = 64
_DIGEST: Final = re.compile(r"[0-9a-f]{64}")


class NodeDatabaseError(Exception):
    """The Node file cannot be read as a Node relay database; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One row that was not imported. Names the row, never a key, digest or secret."""

    table: str
    user_id: str
    provider: str | None
    reason: str

    def __str__(self) -> str:
        where = f"user {self.user_id}" + (f", provider {self.provider}" if self.provider else "")
        return f"{self.table}: {where}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """What an import did (or, with `dry_run`, would do), as counts of Node rows."""

    dry_run: bool
    users_found: int = 0
    users_imported: int = 0
    users_present: int = 0
    users_skipped: int = 0
    """Invalid rows, or an id already taken in the store by another token."""
    legacy_token_digests: int = 0
    """Users the Node relay marked `token_hmac_version` 1: possibly hashed under
    ENCRYPTION_SECRET rather than TOKEN_HMAC_SECRET (see the CLI's warning)."""
    keys_found: int = 0
    keys_imported: int = 0
    keys_present: int = 0
    keys_failed: int = 0
    """Failed to decrypt under every configured secret (or malformed)."""
    keys_unsupported: int = 0
    keys_orphaned: int = 0
    """Their user was not imported, or is stored under another id."""
    failures: tuple[Problem, ...] = ()
    """Every key that failed to decrypt, every skipped user, in file order."""
    unsupported_providers: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.keys_failed == 0 and self.users_skipped == 0

    def summary(self) -> list[str]:
        prefix = "dry run: " if self.dry_run else ""
        users = (
            f"users: {self.users_found} found, {self.users_imported} imported, "
            f"{self.users_present} already present"
        )
        if self.users_skipped:
            users += f", {self.users_skipped} skipped"
        keys = (
            f"keys: {self.keys_found} found, {self.keys_imported} imported, "
            f"{self.keys_present} already present, {self.keys_failed} failed to decrypt, "
            f"{self.keys_unsupported} unsupported provider"
        )
        if self.keys_orphaned:
            keys += f", {self.keys_orphaned} without an imported user"
        return [prefix + users, prefix + keys]


@dataclasses.dataclass(frozen=True)
class _NodeUser:
    user: User
    token_hash: object
    legacy_digest: bool


@dataclasses.dataclass(frozen=True)
class _NodeKey:
    user_id: str
    provider: str
    sealed: tuple[object, object, object]
    """`encrypted_key`, `iv`, `auth_tag` as the file holds them (hex text, if well formed)."""
    at: int


def parse_timestamp(value: object) -> int | None:
    """`value` as epoch milliseconds, or None when it is absent or not a timestamp.

    Accepts epoch milliseconds, epoch seconds (below 1e11), as integers, floats or numeric text,
    and SQLite / ISO 8601 text (`2024-05-01 12:00:00`, `2024-05-01T12:00:00.123Z`, `+02:00`);
    text without an offset is UTC, as SQLite's `CURRENT_TIMESTAMP` writes it.
    """
    number: float
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            return _parse_iso(text)
    else:
        return None
    if not math.isfinite(number):
        return None
    ms = round(number * 1000) if abs(number) < _SECONDS_BELOW else round(number)
    return ms if 0 <= ms < _MAX_MS else None


def _parse_iso(text: str) -> int | None:
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    ms = round(parsed.timestamp() * 1000)
    return ms if 0 <= ms < _MAX_MS else None


def decrypt_node_record(
    encrypted_hex: str, iv_hex: str, tag_hex: str, keys: Sequence[bytes]
) -> str:
    """The plaintext key of a Node record, trying each derived key in turn (newest first).

    Raises `DecryptionError` for every failure: bad hex, wrong tag length, no key fits,
    or a plaintext that is not UTF-8.
    """
    try:
        ciphertext = bytes.fromhex(encrypted_hex)
        iv = bytes.fromhex(iv_hex)
        tag = bytes.fromhex(tag_hex)
    except (ValueError, TypeError):
        raise DecryptionError from None
    if len(tag) != _TAG_LEN or not 8 <= len(iv) <= 128:
        raise DecryptionError
    for key in keys:
        try:
            plain = AESGCM(key).decrypt(iv, ciphertext + tag, None)
        except (InvalidTag, ValueError):
            continue
        try:
            return plain.decode()
        except UnicodeDecodeError:
            raise DecryptionError from None
    raise DecryptionError


def _connect(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise NodeDatabaseError(f"{path}: no such file")
    if not path.is_file():
        raise NodeDatabaseError(f"{path}: not a file")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise NodeDatabaseError(f"{path}: cannot be read as a SQLite database ({exc})") from None
    return db


def _columns(db: sqlite3.Connection, path: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for table, required in _REQUIRED.items():
        try:
            names = {str(row[1]).lower() for row in db.execute(f"PRAGMA table_info({table})")}
        except sqlite3.Error as exc:
            raise NodeDatabaseError(f"{path}: cannot read table {table} ({exc})") from None
        if not names:
            raise NodeDatabaseError(f"{path}: no table {table!r}: not a Node byok-relay database")
        for column in required:
            if column not in names:
                raise NodeDatabaseError(f"{path}: table {table!r} has no column {column!r}")
        found[table] = names
    return found


def check_node_db(path: Path) -> None:
    """Raise `NodeDatabaseError` unless `path` is a readable Node relay database."""
    db = _connect(path)
    try:
        _columns(db, path)
    finally:
        db.close()


def _rows(
    db: sqlite3.Connection, table: str, columns: set[str], order: str
) -> Iterator[Mapping[str, object]]:
    wanted = [c for c in (*_REQUIRED[table], *_OPTIONAL[table]) if c in columns]
    # Column names come from the fixed tuples above, never from the file.
    query = f"SELECT {', '.join(wanted)} FROM {table} ORDER BY {order}"  # noqa: S608
    for row in db.execute(query):
        yield dict(zip(wanted, row, strict=True))


def _read(path: Path, now: int) -> tuple[list[_NodeUser], list[_NodeKey]]:
    db = _connect(path)
    try:
        columns = _columns(db, path)
        users = [_node_user(row, now) for row in _rows(db, "users", columns["users"], "id")]
        keys = [
            _node_key(row, now) for row in _rows(db, "keys", columns["keys"], "user_id, provider")
        ]
    except sqlite3.Error as exc:
        raise NodeDatabaseError(f"{path}: reading failed ({exc})") from None
    finally:
        db.close()
    return users, keys


def _ms(value: object, default: int) -> int:
    parsed = parse_timestamp(value)
    return default if parsed is None else parsed


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _node_user(row: Mapping[str, object], now: int) -> _NodeUser:
    expires = row.get("expires_at")
    revoked: int | None = None
    if row.get("revoked_at") is not None:
        revoked = _ms(row["revoked_at"], now)
    elif row.get("revoked"):
        revoked = now
    user = User(
        id=_text(row["id"]),
        app_id=_text(row.get("app_id")) or DEFAULT_APP_ID,
        created_at=_ms(row.get("created_at"), now),
        # Absent means no expiry; present but unreadable fails closed (expired now).
        expires_at=None if expires is None else _ms(expires, now),
        revoked_at=revoked,
    )
    version = row.get("token_hmac_version")
    return _NodeUser(user, row["token_hash"], legacy_digest=version not in (None, 2))


def _node_key(row: Mapping[str, object], now: int) -> _NodeKey:
    # The store keeps one time for a new record; the Node relay's newest one is the best fit.
    at = _ms(row.get("updated_at"), _ms(row.get("created_at"), now))
    return _NodeKey(
        user_id=_text(row["user_id"]),
        provider=_text(row["provider"]),
        sealed=(row["encrypted_key"], row["iv"], row["auth_tag"]),
        at=at,
    )


@dataclasses.dataclass
class _Tally:
    users_imported: int = 0
    users_present: int = 0
    users_skipped: int = 0
    legacy_token_digests: int = 0
    keys_imported: int = 0
    keys_present: int = 0
    keys_failed: int = 0
    keys_unsupported: int = 0
    keys_orphaned: int = 0
    failures: list[Problem] = dataclasses.field(default_factory=list)
    unsupported: set[str] = dataclasses.field(default_factory=set)

    def skip_user(self, user_id: str, reason: str) -> None:
        self.users_skipped += 1
        self.failures.append(Problem("users", user_id, None, reason))


async def _import_users(
    users: Sequence[_NodeUser], store: KeyStore, tally: _Tally, dry_run: bool
) -> set[str]:
    """Create the users not yet stored; the ids whose keys may be imported."""
    importable: set[str] = set()
    for node in users:
        user_id = node.user.id
        if node.legacy_digest:
            tally.legacy_token_digests += 1
        if not user_id or len(user_id) > _MAX_ID_LEN:
            tally.skip_user(user_id, f"id is empty or longer than {_MAX_ID_LEN} characters")
            continue
        token_hash = node.token_hash
        if not isinstance(token_hash, str) or not _DIGEST.fullmatch(token_hash):
            tally.skip_user(user_id, "token_hash is not an HMAC-SHA256 hex digest")
            continue
        existing = await store.user_for_token(token_hash)
        if existing is not None:
            tally.users_present += 1
            if existing.id == user_id:
                importable.add(user_id)
            continue
        if not dry_run:
            try:
                await store.create_user(node.user, token_hash)
            except StoreUnavailable:
                raise
            except StoreError:
                tally.skip_user(user_id, "the id is taken in the store by another token")
                continue
        tally.users_imported += 1
        importable.add(user_id)
    return importable


async def _import_keys(
    keys: Sequence[_NodeKey],
    importable: set[str],
    store: KeyStore,
    cipher: KeyCipher,
    node_keys: Sequence[bytes],
    tally: _Tally,
    dry_run: bool,
) -> None:
    written: set[tuple[str, str]] = set()  # what this run wrote, or would have
    for key in keys:
        if key.user_id not in importable:
            tally.keys_orphaned += 1
            continue
        if key.provider not in PROVIDERS:
            tally.unsupported.add(key.provider)
            tally.keys_unsupported += 1
            continue
        pair = (key.user_id, key.provider)
        if pair in written or await store.get_key(*pair) is not None:
            tally.keys_present += 1
            continue
        encrypted, iv, tag = key.sealed
        try:
            if not (isinstance(encrypted, str) and isinstance(iv, str) and isinstance(tag, str)):
                raise DecryptionError
            plain = decrypt_node_record(encrypted, iv, tag, node_keys)
        except DecryptionError:
            tally.keys_failed += 1
            tally.failures.append(Problem("keys", key.user_id, key.provider, "failed to decrypt"))
            continue
        record = cipher.encrypt(plain, user_id=key.user_id, provider=key.provider)
        if not dry_run:
            await store.put_key(key.user_id, key.provider, record, key.at, KeyMeta(key_hint(plain)))
        written.add(pair)
        tally.keys_imported += 1


async def import_node_db(
    path: Path | str,
    store: KeyStore,
    cipher: KeyCipher,
    node_keys: Sequence[bytes],
    *,
    dry_run: bool,
) -> ImportReport:
    """Copy the Node file's users and keys into `store`; with `dry_run`, read and count only.

    `node_keys` are the Node relay's AES keys, `derive_key(secret, salt)` of each configured
    secret, newest first. Raises `NodeDatabaseError` when the file cannot be read; a
    `StoreError` propagates (running again picks up where this run stopped).
    """
    path = Path(path)
    users, keys = _read(path, int(time.time() * 1000))
    tally = _Tally()
    importable = await _import_users(users, store, tally, dry_run)
    await _import_keys(keys, importable, store, cipher, node_keys, tally, dry_run)
    return ImportReport(
        dry_run=dry_run,
        users_found=len(users),
        users_imported=tally.users_imported,
        users_present=tally.users_present,
        users_skipped=tally.users_skipped,
        legacy_token_digests=tally.legacy_token_digests,
        keys_found=len(keys),
        keys_imported=tally.keys_imported,
        keys_present=tally.keys_present,
        keys_failed=tally.keys_failed,
        keys_unsupported=tally.keys_unsupported,
        keys_orphaned=tally.keys_orphaned,
        failures=tuple(tally.failures),
        unsupported_providers=tuple(sorted(tally.unsupported)),
    )
