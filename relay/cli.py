"""The `byok-relay` command: `serve` (migrate, then run uvicorn) and `migrate`."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import ConfigError, Settings, read_env_file

__all__ = ["app_from_env", "ensure_dev_secret", "main"]

ENV_FILE = Path(".env")
# Hosting platforms whose containers lose `.env` on every deploy: a generated secret there would
# make every stored key unreadable after the next deploy, so they must configure one.
_PLATFORM_MARKERS = ("RAILWAY_ENVIRONMENT", "RENDER", "KUBERNETES_SERVICE_HOST")


def ensure_dev_secret(env_file: Path = ENV_FILE) -> str | None:
    """On a first development start, write a fresh ENCRYPTION_SECRET into `.env` (mode 0600).

    Returns the one line to print, or None when nothing was generated.
    """
    env = read_env_file(env_file)
    env.update(os.environ)
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
    from .app import create_app
    from .logs import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return create_app(settings)


def _load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"byok-relay: {exc}")


def _migrate(settings: Settings) -> None:
    from backends import UnknownScheme, migrate

    try:
        migrate.upgrade(str(settings.database_url))
    except UnknownScheme as exc:
        sys.exit(f"byok-relay: {exc}")
    except Exception as exc:  # any driver error: one line, no URL
        sys.exit(
            f"byok-relay: migrations failed ({type(exc).__name__}); is the database reachable?"
        )


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from .logs import configure_logging

    message = ensure_dev_secret()
    if message:
        print(message, file=sys.stderr)
    settings = _load_settings()
    configure_logging(settings.log_level)
    _migrate(settings)
    uvicorn.run(
        "relay.cli:app_from_env",
        factory=True,
        host=args.host or settings.host,
        port=args.port if args.port is not None else settings.port,
        workers=args.workers,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=30,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="byok-relay", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="apply migrations, then run the relay")
    serve_parser.add_argument("--host", help="interface to listen on (default: HOST or 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, help="port (default: PORT or 3000)")
    serve_parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WEB_CONCURRENCY", "1")),
        help="worker processes (default: WEB_CONCURRENCY or 1)",
    )
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args)
    else:
        _migrate(_load_settings())
        print("byok-relay: migrations applied", file=sys.stderr)
