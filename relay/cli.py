"""The `byok-relay` command: serve the relay, and the operator's maintenance commands.

serve            apply pending migrations, then run uvicorn on the app factory
migrate          apply pending migrations
rotate-keys      re-encrypt every stored key under the newest ENCRYPTION_SECRET
import-node-db   copy users and keys from a Node byok-relay SQLite file
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from backends.environ import read_environment
from relay.config import ConfigError, Settings

if TYPE_CHECKING:
    from backends import KeyStore
    from relay.security.crypto import KeyCipher

T = TypeVar("T")

__all__ = ["app_from_env", "ensure_dev_secret", "main"]

ENV_FILE = Path(".env")
# prometheus_client's variable (`relay.telemetry.metrics.MULTIPROCESS_DIR`), named here so that
# the workers' supervisor loads the metrics only to empty an operator's folder.
METRICS_FOLDER: Final = "PROMETHEUS_MULTIPROC_DIR"
# Hosting platforms whose containers lose `.env` on every deploy: a generated secret there would
# make every stored key unreadable after the next deploy, so they must configure one.
_PLATFORM_MARKERS = ("RAILWAY_ENVIRONMENT", "RENDER", "KUBERNETES_SERVICE_HOST", "DYNO")


# How byok-relay runs uvicorn (the tests' in-process servers use the same options).
SERVER_OPTIONS: Final[dict[str, Any]] = {
    "http": "relay.server.protocol:JSONErrorsProtocol",  # httptools, with JSON 400s
    "log_config": None,  # relay.telemetry.logs configures logging: JSON lines
    "access_log": False,  # a measurable share of throughput; the relay logs what it needs
    "server_header": False,
    "proxy_headers": False,  # the app applies FORWARDED_ALLOW_IPS itself
    "ws": "none",  # no WebSocket route: an upgrade request is an ordinary request
}


def ensure_dev_secret(env_file: Path = ENV_FILE) -> str | None:
    """On a first development start, write a fresh ENCRYPTION_SECRET into `.env` (mode 0600).

    Returns the one line to print, or None when nothing was generated.
    """
    env = read_environment(env_file)
    if env.get("ENCRYPTION_SECRET", "").strip():
        return None
    if env.get("RELAY_ENV", "development").strip().lower() != "development":
        return None
    if any(marker in env for marker in _PLATFORM_MARKERS):
        return None
    secret = secrets.token_urlsafe(48)
    existing = env_file.read_text(encoding="utf-8") if env_file.exists() else ""
    separator = "" if not existing or existing.endswith("\n") else "\n"
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"{existing}{separator}ENCRYPTION_SECRET={secret}\n")
    os.chmod(env_file, 0o600)
    return (
        f"byok-relay: generated a development ENCRYPTION_SECRET in {env_file.resolve()} "
        "(keep it: stored keys cannot be read without it)"
    )


def app_from_env() -> object:
    """uvicorn's factory (`--factory`), also run by every worker process."""
    from relay.app import create_app
    from relay.telemetry.logs import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return create_app(settings, tune_gc=True)


def _load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"byok-relay: {exc}")


def _migrate(settings: Settings) -> None:
    from backends import UnknownScheme, migrate

    try:
        migrate.upgrade(str(settings.database_url), statement_cache=settings.db_statement_cache)
    except UnknownScheme as exc:
        sys.exit(f"byok-relay: {exc}")
    except Exception as exc:  # any driver error: one line, no URL
        sys.exit(f"byok-relay: migrations failed: {migrate.failure_reason(exc)}")


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from relay.server.drain import graceful_timeout
    from relay.server.edge import raise_file_limit
    from relay.telemetry.logs import configure_logging

    raise_file_limit()  # before the workers start: they inherit it
    message = ensure_dev_secret()
    if message:
        print(message, file=sys.stderr)
    settings = _load_settings()
    configure_logging(settings.log_level)
    for line in settings.unknown_variables:  # here, once: not again in every worker
        logging.getLogger("relay").warning(line)
    _migrate(settings)
    workers = args.workers or settings.workers
    with _shared_metrics(workers if settings.metrics else 1, settings.metrics_dir):
        uvicorn.run(
            "relay.cli:app_from_env",
            factory=True,
            host=args.host or settings.host,
            port=args.port if args.port is not None else settings.port,
            workers=workers,
            # The drain (relay.server.drain) ends every exchange first: uvicorn never cancels one.
            timeout_graceful_shutdown=graceful_timeout(settings.drain_seconds),
            **SERVER_OPTIONS,
        )


@contextlib.contextmanager
def _shared_metrics(workers: int, given: str | None) -> Iterator[None]:
    """Several workers share their metrics through files in `PROMETHEUS_MULTIPROC_DIR`
    (`relay.telemetry.metrics`): the operator's folder (from the environment or `.env`),
    emptied of an earlier run's files (prometheus_client's own names only: the folder may hold
    other things), else for two workers or more a fresh one, removed at exit. The workers
    inherit the variable."""
    if given:
        from relay.telemetry.metrics import clear_folder

        os.environ[METRICS_FOLDER] = given
        clear_folder(given)
        yield
        return
    if workers < 2:
        yield
        return
    folder = tempfile.mkdtemp(prefix="byok-relay-metrics-")
    os.environ[METRICS_FOLDER] = folder
    try:
        yield
    finally:
        del os.environ[METRICS_FOLDER]
        shutil.rmtree(folder, ignore_errors=True)


def _with_store(settings: Settings, work: Callable[[KeyStore], Awaitable[T]], what: str) -> T:
    """Run `work` on the configured key store, closing it after; store failures in one line."""
    from backends import StoreError, open_store
    from relay.services import store_options

    async def run() -> T:
        store = open_store(str(settings.database_url), store_options(settings))
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreError as exc:  # names the operation, never the URL
        sys.exit(f"byok-relay: {what} stopped: {exc} (running it again resumes)")


def _cipher(settings: Settings) -> KeyCipher:
    from relay.security.crypto import KeyCipher

    return KeyCipher([str(s) for s in settings.encryption_secrets], settings.encryption_salt)


def rotate_keys(args: argparse.Namespace) -> None:
    """Re-encrypt every stored key under the newest secret."""
    from relay.ops.rotation import rotate_keys as rotate

    settings = _load_settings()
    _migrate(settings)
    cipher = _cipher(settings)
    report = _with_store(
        settings, lambda store: rotate(store, cipher, dry_run=args.dry_run), "rotation"
    )
    print(report.summary(args.dry_run))
    for user_id, provider in report.unreadable:
        print(f"byok-relay: unreadable: user {user_id}, provider {provider}", file=sys.stderr)
    if report.unreadable:
        sys.exit(1)


def import_node(args: argparse.Namespace) -> None:
    """Copy a Node byok-relay SQLite file's users and keys into the configured key store."""
    from relay.ops.nodeimport import NodeDatabaseError, check_node_db, import_node_db
    from relay.security.crypto import derive_key

    settings = _load_settings()
    path = Path(args.path)
    try:
        check_node_db(path)  # before migrating: a wrong path must not create the store
    except NodeDatabaseError as exc:
        sys.exit(f"byok-relay: {exc}")
    _migrate(settings)
    encryption_secrets = [str(s) for s in settings.encryption_secrets]
    cipher = _cipher(settings)
    node_keys = [derive_key(s, settings.encryption_salt) for s in encryption_secrets]
    try:
        report = _with_store(
            settings,
            lambda store: import_node_db(path, store, cipher, node_keys, dry_run=args.dry_run),
            "import",
        )
    except NodeDatabaseError as exc:
        sys.exit(f"byok-relay: {exc}")
    for line in report.summary():
        print(line)
    for problem in report.failures:
        print(f"byok-relay: not imported: {problem}", file=sys.stderr)
    if report.unsupported_providers:
        names = ", ".join(report.unsupported_providers)
        print(f"byok-relay: skipped keys of unsupported providers: {names}", file=sys.stderr)
    if report.legacy_token_digests and str(settings.token_hmac_secret) not in encryption_secrets:
        print(
            f"byok-relay: warning: {report.legacy_token_digests} Node user(s) have "
            "token_hmac_version 1 (digest never confirmed): if their tokens were hashed under "
            "ENCRYPTION_SECRET rather than TOKEN_HMAC_SECRET, those tokens will not work here",
            file=sys.stderr,
        )
    if not report.ok:
        sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="byok-relay", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="apply migrations, then run the relay")
    serve_parser.add_argument("--host", help="interface to listen on (default: HOST or 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, help="port (default: PORT or 3000)")
    serve_parser.add_argument(
        "--workers", type=int, help="worker processes (default: WEB_CONCURRENCY or 1)"
    )
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    rotate_parser = commands.add_parser(
        "rotate-keys", help="re-encrypt every stored key under the newest ENCRYPTION_SECRET"
    )
    rotate_parser.add_argument(
        "--dry-run", action="store_true", help="decrypt and count; write nothing"
    )
    node_parser = commands.add_parser(
        "import-node-db",
        help="import the users and keys of a Node byok-relay SQLite file into DATABASE_URL",
    )
    node_parser.add_argument("path", help="the Node relay's SQLite file (opened read-only)")
    node_parser.add_argument(
        "--dry-run", action="store_true", help="read, decrypt and count; write nothing"
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args)
    elif args.command == "import-node-db":
        import_node(args)
    elif args.command == "rotate-keys":
        rotate_keys(args)
    else:
        _migrate(_load_settings())
        print("byok-relay: migrations applied", file=sys.stderr)
