"""Settings, read once from the environment (and `.env` in the working directory), typed.

`Settings.from_env()` is the only place that looks at `os.environ`; everything else receives a
`Settings`. Tests build their own with `Settings.from_env({...})` instead of patching globals.
A bad value raises `ConfigError` whose message is one line and never contains a secret.

Every setting is parsed and checked here, in one place, so its length grows with the settings
table.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import limits
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from backends import SCHEMES, url_scheme
from backends.environ import (
    DEFAULT_DATABASE_URL,
    database_url,
    read_env_file,
    read_environment,
    statement_cache,
)
from backends.pgparams import UnsupportedParameter, translate
from relay.providers.table import PROVIDERS
from relay.upstream.egress import parse_proxy

__all__ = ["ConfigError", "Secret", "Settings", "TraceSettings", "read_env_file"]

MIN_SECRET_LENGTH: Final = 32
# Operator values for providers' default headers: (variable, provider, header).
HEADER_DEFAULTS: Final = (("RELAY_OPENROUTER_REFERER", "openrouter", "http-referer"),)


class ConfigError(Exception):
    """The configuration cannot be used; the message is a one-line reason, free of secrets."""


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclasses.dataclass(frozen=True)
class TraceSettings:
    """The OpenTelemetry exporter's standard variables, as the relay reads them."""

    endpoint: str
    """The OTLP/HTTP traces URL (`.../v1/traces`)."""
    headers: Secret | None = None
    """`key=value,...` sent with every export (a vendor's API key, say)."""
    service_name: str = "byok-relay"
    sample_ratio: float = 1.0
    """Of the traces begun here."""
    follow_caller: bool = True
    """A `parentbased_` sampler: a caller's `traceparent` joins its trace and its decision is
    followed. Else each request begins a trace of its own (a client cannot force sampling)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    encryption_secrets: tuple[Secret, ...]
    token_hmac_secret: Secret
    encryption_salt: str = "byok-relay-salt"
    app_secret: Secret | None = None
    allowed_origins: tuple[str, ...] = ("*",)
    allowed_models: tuple[str, ...] = ()
    database_url: Secret = dataclasses.field(default_factory=lambda: Secret(DEFAULT_DATABASE_URL))
    redis_url: Secret | None = None
    db_pool_size: int = 10
    db_pool_timeout: float = 5.0
    db_connect_timeout: float = 5.0
    db_statement_cache: bool = True
    """False (or `pgbouncer=true` in the URL): no prepared statements, for a transaction pooler."""
    redis_namespace: str = "byok-relay"
    rate_limit_global: str = "100/minute"
    rate_limit_relay: str = "20/minute"
    rate_limit_register: str = "10/hour"
    rate_limit_health: str = "6/minute"
    rate_limit_fail: str = "closed"
    cache_ttl: float = 1.0
    forwarded_allow_ips: tuple[str, ...] = ()
    token_expiry_days: float = 90
    usage_retention_days: float = 90
    """Usage records older than this are pruned in the background; 0 keeps them for ever."""
    request_body_limit: int = 10 * 1024 * 1024
    parse_limit: int = 10 * 1024 * 1024
    body_memory_limit: int = 256 * 1024 * 1024
    connect_timeout: float = 10.0
    upstream_timeout: float = 300.0
    stream_idle_timeout: float = 120.0
    client_send_timeout: float = 60.0
    head_timeout: float = 10.0
    body_timeout: float = 10.0
    max_connections: int = 0
    """0: as many as the process's open-file limit allows."""
    max_connections_per_address: int = 0
    """0: an eighth of `max_connections` (at least 16)."""
    drain_seconds: float = 25.0
    base_url_overrides: Mapping[str, str] = dataclasses.field(default_factory=dict)
    default_header_overrides: Mapping[str, Mapping[str, str]] = dataclasses.field(
        default_factory=dict
    )
    private_upstreams: tuple[str, ...] = ()
    forwarded_trusted_hops: int | None = None
    """Proxies in front whose `X-Forwarded-For` entries are believed; None: 1 when
    `FORWARDED_ALLOW_IPS` is `*`, no cap with a list (`relay.server.forwarded`)."""
    dns_timeout: float = 5.0
    """Seconds to resolve a host an openai-compatible client names."""
    https_proxy: Secret | None = None
    """The proxy https upstreams are reached through (CONNECT), `relay.upstream.egress`."""
    http_proxy: Secret | None = None
    no_proxy: str = ""
    ca_files: tuple[str, ...] = ()
    """PEM bundles trusted beside certifi's CAs (`RELAY_CA_BUNDLE`, `SSL_CERT_FILE`)."""
    ca_dirs: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 3000
    workers: int = 1
    log_level: str = "info"
    access_log: bool = True
    """One JSON line per request at `info` (`relay.telemetry.access`)."""
    metrics: bool = True
    """`GET /metrics` served and its figures counted (`relay.telemetry.metrics`)."""
    metrics_token: Secret | None = None
    """When set, `/metrics` answers only `Authorization: Bearer <METRICS_TOKEN>`."""
    metrics_dir: str | None = None
    """The operator's `PROMETHEUS_MULTIPROC_DIR` (`byok-relay serve` makes one for workers)."""
    demo: bool = True
    """The demo page at `GET /` (`relay.web`); off by default in production."""
    traces: TraceSettings | None = None
    """Where spans are exported (OTLP over HTTP), when an endpoint is set."""
    environment: str = "development"
    commit: str = "unknown"
    build_time: str = "unknown"
    unknown_variables: tuple[str, ...] = ()
    """One line for each `RELAY_*` or `RATE_LIMIT_*` variable set that nothing reads, naming
    the nearest known name: `byok-relay serve` logs them at start."""

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: Path | None = None
    ) -> Settings:
        """Build settings from `environ` (default: `os.environ` over `.env`)."""
        env = read_environment(env_file or Path(".env")) if environ is None else dict(environ)
        return _parse(env)

    def base_url_for(self, provider: str, default: str) -> str:
        return self.base_url_overrides.get(provider, default)

    def default_headers_for(self, provider: str) -> Mapping[str, str]:
        """The operator's values for `provider`'s default headers, by name (`HEADER_DEFAULTS`)."""
        return self.default_header_overrides.get(provider, {})


def _parse(env: Mapping[str, str]) -> Settings:
    asked: set[str] = set()  # every name the parser reads: what `unknown_variables` checks

    def get(name: str) -> str | None:
        asked.add(name)
        value = env.get(name)
        return value.strip() if value is not None and value.strip() != "" else None

    raw_secrets = get("ENCRYPTION_SECRET")
    if raw_secrets is None:
        raise ConfigError(
            "ENCRYPTION_SECRET is not set: set it to a random string of at least "
            f"{MIN_SECRET_LENGTH} characters (`byok-relay serve` generates one in development)"
        )
    secrets = tuple(s.strip() for s in raw_secrets.split(",") if s.strip())
    if not secrets:
        raise ConfigError("ENCRYPTION_SECRET is empty: give at least one secret")
    for index, secret in enumerate(secrets):
        if len(secret) < MIN_SECRET_LENGTH:
            which = "ENCRYPTION_SECRET" if len(secrets) == 1 else f"ENCRYPTION_SECRET #{index + 1}"
            raise ConfigError(f"{which} is too short: at least {MIN_SECRET_LENGTH} characters")
    hmac_secret = get("TOKEN_HMAC_SECRET")
    if hmac_secret is not None and len(hmac_secret) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"TOKEN_HMAC_SECRET is too short: at least {MIN_SECRET_LENGTH} characters"
        )
    if hmac_secret is None and len(secrets) > 1:
        # Token digests cannot be re-encrypted like key records: every token would stop working.
        raise ConfigError(
            "ENCRYPTION_SECRET lists several secrets: set TOKEN_HMAC_SECRET to the secret the "
            "tokens were issued under (the oldest one) so that they survive the rotation"
        )
    app_secret = get("APP_SECRET")
    if app_secret is not None and re.search(r"\s", app_secret):
        raise ConfigError("APP_SECRET must not contain spaces")

    store_url = database_url(get("DATABASE_URL"), get("DB_PATH"))
    scheme = url_scheme(store_url)
    if scheme not in SCHEMES:
        known = ", ".join(sorted(SCHEMES))
        raise ConfigError(f"DATABASE_URL scheme {scheme!r} is not supported (use one of: {known})")
    _check_postgres_url(store_url)
    try:
        db_statement_cache = statement_cache(get("DB_STATEMENT_CACHE"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    environment = (get("RELAY_ENV") or "development").lower()
    if environment not in ("development", "production"):
        raise ConfigError("RELAY_ENV must be development or production")
    log_level = (get("LOG_LEVEL") or "info").lower()
    if log_level not in ("debug", "info", "warning", "error", "critical"):
        raise ConfigError("LOG_LEVEL must be one of debug, info, warning, error, critical")

    overrides: dict[str, str] = {}
    env_names = {provider.upper().replace("-", "_"): provider for provider in PROVIDERS}
    for name, value in env.items():
        match = re.fullmatch(r"RELAY_([A-Z0-9_]+)_BASE_URL", name)
        if match and value.strip():
            provider = env_names.get(match.group(1))
            if provider is None:  # a typo would leave the real provider's URL in force
                raise ConfigError(f"{name} names no provider (known: {', '.join(PROVIDERS)})")
            url = value.strip().rstrip("/")
            try:
                parts = urlsplit(url)
                valid = (
                    parts.scheme in ("http", "https")
                    and bool(parts.hostname)
                    and (parts.port is None or parts.port > 0)
                )
            except ValueError:
                valid = False
            if not valid:
                raise ConfigError(f"{name} must be an http(s) URL")
            if parts.username is not None or parts.password is not None:
                raise ConfigError(f"{name} must not contain credentials")
            if "?" in url or "#" in url:  # the request's path would land inside them
                raise ConfigError(f"{name} must not have a query or fragment")
            overrides[provider] = url

    header_overrides: dict[str, dict[str, str]] = {}
    for variable, provider, header in HEADER_DEFAULTS:
        chosen = get(variable)
        if chosen is None:
            continue
        try:
            parts = urlsplit(chosen)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            valid = False
        # Sent upstream as it is, as a header value: printable ASCII only.
        if not (valid and chosen.isascii() and chosen.isprintable()):
            raise ConfigError(f"{variable} must be an http(s) URL")
        header_overrides.setdefault(provider, {})[header] = chosen

    private = _csv(get("RELAY_PRIVATE_UPSTREAMS"))
    for entry in private:
        _check_private_upstream(entry)

    body_limit = int(
        _number(get, "REQUEST_BODY_LIMIT_BYTES", 10 * 1024 * 1024, minimum=1, maximum=2**40)
    )
    settings = Settings(
        encryption_secrets=tuple(Secret(s) for s in secrets),
        token_hmac_secret=Secret(hmac_secret or secrets[0]),
        encryption_salt=get("ENCRYPTION_SALT") or "byok-relay-salt",
        app_secret=Secret(app_secret) if app_secret else None,
        allowed_origins=_csv(get("ALLOWED_ORIGINS")) or ("*",),
        allowed_models=tuple(m.lower() for m in _csv(get("ALLOWED_MODELS"))),
        database_url=Secret(store_url),
        redis_url=Secret(redis) if (redis := get("REDIS_URL")) else None,
        db_pool_size=int(_number(get, "DB_POOL_SIZE", 10, minimum=1, maximum=1000)),
        db_pool_timeout=_number(get, "DB_POOL_TIMEOUT", 5, minimum=0.001, maximum=3600),
        db_connect_timeout=_number(get, "DB_CONNECT_TIMEOUT", 5, minimum=0.001, maximum=3600),
        db_statement_cache=db_statement_cache,
        redis_namespace=_namespace(get("REDIS_NAMESPACE") or "byok-relay"),
        rate_limit_global=_limit(get, "RATE_LIMIT_GLOBAL", "100/minute"),
        rate_limit_relay=_limit(get, "RATE_LIMIT_RELAY", "20/minute"),
        rate_limit_register=_limit(get, "RATE_LIMIT_REGISTER", "10/hour"),
        rate_limit_health=_limit(get, "RATE_LIMIT_HEALTH", "6/minute"),
        rate_limit_fail=_choice(get, "RATE_LIMIT_FAIL", ("closed", "open")),
        cache_ttl=_number(get, "CACHE_TTL", 1, minimum=0, maximum=1),
        forwarded_allow_ips=_csv(get("FORWARDED_ALLOW_IPS")),
        token_expiry_days=_number(get, "TOKEN_EXPIRY_DAYS", 90, minimum=0, maximum=36_500),
        usage_retention_days=_number(get, "USAGE_RETENTION_DAYS", 90, minimum=0, maximum=36_500),
        request_body_limit=body_limit,
        parse_limit=int(
            min(body_limit, _number(get, "RELAY_PARSE_LIMIT_BYTES", body_limit, minimum=1))
        ),
        body_memory_limit=int(
            _number(get, "REQUEST_BODY_MEMORY_BYTES", 256 * 1024 * 1024, minimum=1, maximum=2**40)
        ),
        connect_timeout=_number(get, "RELAY_CONNECT_TIMEOUT", 10, minimum=0.001),
        upstream_timeout=_number(get, "RELAY_UPSTREAM_TIMEOUT", 300, minimum=0.001),
        stream_idle_timeout=_number(get, "RELAY_STREAM_IDLE_TIMEOUT", 120, minimum=0.001),
        client_send_timeout=_number(get, "RELAY_CLIENT_SEND_TIMEOUT", 60, minimum=0.001),
        head_timeout=_number(get, "RELAY_HEAD_TIMEOUT", 10, minimum=0.001, maximum=3600),
        body_timeout=_number(get, "RELAY_BODY_TIMEOUT", 10, minimum=0.001, maximum=3600),
        max_connections=int(_number(get, "RELAY_MAX_CONNECTIONS", 0, minimum=0, maximum=2**31)),
        max_connections_per_address=int(
            _number(get, "RELAY_MAX_CONNECTIONS_PER_IP", 0, minimum=0, maximum=2**31)
        ),
        drain_seconds=_number(get, "RELAY_DRAIN_SECONDS", 25, minimum=0, maximum=3600),
        base_url_overrides=overrides,
        default_header_overrides=header_overrides,
        private_upstreams=private,
        forwarded_trusted_hops=_forwarded_hops(get),
        dns_timeout=_number(get, "RELAY_DNS_TIMEOUT", 5, minimum=0.001, maximum=60),
        https_proxy=_proxy(env, "HTTPS_PROXY"),
        http_proxy=_proxy(env, "HTTP_PROXY"),
        no_proxy=_lower_first(env, "NO_PROXY") or "",
        ca_files=_ca_files(get),
        ca_dirs=tuple(d for d in (get("SSL_CERT_DIR") or "").split(":") if d and Path(d).is_dir()),
        host=get("HOST") or "127.0.0.1",
        port=int(_number(get, "PORT", 3000, minimum=0, maximum=65535)),
        workers=int(_number(get, "WEB_CONCURRENCY", 1, minimum=1, maximum=256)),
        log_level=log_level,
        access_log=_choice(get, "RELAY_ACCESS_LOG", ("on", "off")) == "on",
        metrics=_choice(get, "RELAY_METRICS", ("on", "off")) == "on",
        metrics_token=_bearer_secret(get, "METRICS_TOKEN"),
        metrics_dir=get("PROMETHEUS_MULTIPROC_DIR") or None,
        demo=_choice(get, "RELAY_DEMO", _DEMO_CHOICES[environment]) == "on",
        traces=_traces(get),
        environment=environment,
        commit=get("RELAY_COMMIT")
        or get("RAILWAY_GIT_COMMIT_SHA")
        or get("RENDER_GIT_COMMIT")
        or "unknown",
        build_time=get("RELAY_BUILD_TIME") or "unknown",
    )
    read = asked | {f"RELAY_{name}_BASE_URL" for name in env_names}
    return dataclasses.replace(settings, unknown_variables=_unknown_variables(env, read))


def _unknown_variables(env: Mapping[str, str], known: set[str]) -> tuple[str, ...]:
    """A line for each variable in the relay's own families that no setting reads (a typo
    would otherwise leave the default in force, silently)."""
    lines = []
    for name in sorted(env):
        if name in known or not name.startswith(("RELAY_", "RATE_LIMIT_")):
            continue
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]}?)" if near else ""
        lines.append(f"{name} is set but is no setting of the relay{hint}")
    return tuple(lines)


def _check_postgres_url(url: str) -> None:
    """A Postgres URL's parameters are ones asyncpg can honour (`backends.pgparams`)."""
    if not (SCHEMES[url_scheme(url)].driver or "").startswith("postgresql"):
        return
    try:
        translate(make_url(url))
    except UnsupportedParameter as exc:
        raise ConfigError(str(exc)) from None
    except (ArgumentError, ValueError):
        raise ConfigError("DATABASE_URL is not a valid URL") from None


def _limit(get: Callable[[str], str | None], name: str, default: str) -> str:
    value = get(name) or default
    try:
        limits.parse(value)
    except ValueError:
        raise ConfigError(f"{name} is not a rate limit like 20/minute or 100 per hour") from None
    return value


# The first choice is the default: the demo page is for trying the relay out, not for production.
_DEMO_CHOICES: Final = {"development": ("on", "off"), "production": ("off", "on")}


def _choice(get: Callable[[str], str | None], name: str, choices: tuple[str, ...]) -> str:
    value = (get(name) or choices[0]).lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of: {', '.join(choices)}")
    return value


def _bearer_secret(get: Callable[[str], str | None], name: str) -> Secret | None:
    value = get(name)
    if not value:
        return None
    if not re.fullmatch(r"[A-Za-z0-9._~+/=-]{16,}", value):
        raise ConfigError(
            f"{name} must be at least 16 characters of letters, digits and . _ ~ + / = -"
        )
    return Secret(value)


def _traces(get: Callable[[str], str | None]) -> TraceSettings | None:
    """The OTLP exporter's variables, as OpenTelemetry's SDKs read them: traces only, over
    HTTP (protobuf); `OTEL_SDK_DISABLED` or `OTEL_TRACES_EXPORTER=none` turns them off."""
    traces = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base = get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not (traces or base):
        return None
    if (get("OTEL_SDK_DISABLED") or "").lower() == "true":
        return None
    exporter = (get("OTEL_TRACES_EXPORTER") or "otlp").lower()
    if exporter == "none":
        return None
    if exporter != "otlp":
        raise ConfigError("OTEL_TRACES_EXPORTER must be otlp or none")
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = get(name)
        if protocol and protocol != "http/protobuf":
            raise ConfigError(f"{name}: the relay exports traces over http/protobuf only")
    endpoint = traces or f"{(base or '').rstrip('/')}/v1/traces"
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("OTEL_EXPORTER_OTLP_ENDPOINT must be an http(s) URL")
    headers = get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or get("OTEL_EXPORTER_OTLP_HEADERS")
    sampler = (get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").lower()
    follow_caller = sampler.startswith("parentbased_")
    ratios = {"always_on": 1.0, "always_off": 0.0}
    kind = sampler.removeprefix("parentbased_")
    if kind == "traceidratio":
        ratio = _number(get, "OTEL_TRACES_SAMPLER_ARG", 1.0, minimum=0, maximum=1)
    elif kind in ratios:
        ratio = ratios[kind]
    else:
        names = [*ratios, "traceidratio"]
        raise ConfigError(
            "OTEL_TRACES_SAMPLER must be one of: "
            + ", ".join([*names, *(f"parentbased_{name}" for name in names)])
        )
    return TraceSettings(
        endpoint=endpoint,
        headers=Secret(headers) if headers else None,
        service_name=get("OTEL_SERVICE_NAME") or "byok-relay",
        sample_ratio=ratio,
        follow_caller=follow_caller,
    )


def _namespace(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", value):
        raise ConfigError("REDIS_NAMESPACE must be 1 to 64 letters, digits or _ . : -")
    return value


def _csv(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _number(
    get: Callable[[str], str | None],
    name: str,
    default: float,
    minimum: float,
    maximum: float | None = None,
) -> float:
    raw = get(name)
    if raw is None:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number") from None
    if not math.isfinite(value) or value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum:g} and {maximum:g}" if maximum is not None else f">= {minimum:g}"
        raise ConfigError(f"{name} must be a number {bound}")
    return value


def _check_private_upstream(entry: str) -> None:
    """`RELAY_PRIVATE_UPSTREAMS` entries are `host:port` or a CIDR block."""
    if "/" in entry:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"RELAY_PRIVATE_UPSTREAMS: {entry!r} is not a CIDR block") from None
        return
    host, sep, port = entry.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"RELAY_PRIVATE_UPSTREAMS: {entry!r} is not host:port or a CIDR block")


def _lower_first(env: Mapping[str, str], name: str) -> str | None:
    """`https_proxy` before `HTTPS_PROXY`, as curl, requests and httpx read them."""
    for variable in (name.lower(), name):
        value = env.get(variable, "").strip()
        if value:
            return value
    return None


def _proxy(env: Mapping[str, str], name: str) -> Secret | None:
    value = _lower_first(env, name)
    if value is None:
        return None
    try:
        parse_proxy(value)
    except ValueError as exc:  # the message never repeats the URL: it may hold a password
        raise ConfigError(f"{name} {exc}") from None
    return Secret(value)


def _ca_files(get: Callable[[str], str | None]) -> tuple[str, ...]:
    """`RELAY_CA_BUNDLE` (which must be readable) and `SSL_CERT_FILE` (taken when it exists, as
    OpenSSL does), each checked to hold certificates."""
    files = []
    bundle, system = get("RELAY_CA_BUNDLE"), get("SSL_CERT_FILE")
    if bundle is not None:
        if not Path(bundle).is_file():
            raise ConfigError(f"RELAY_CA_BUNDLE: {bundle} is not a file")
        files.append(("RELAY_CA_BUNDLE", bundle))
    if system is not None and Path(system).is_file():
        files.append(("SSL_CERT_FILE", system))
    for name, path in files:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
        except (ssl.SSLError, OSError):
            raise ConfigError(f"{name}: {path} holds no certificate that can be read") from None
    return tuple(path for _, path in files)


def _forwarded_hops(get: Callable[[str], str | None]) -> int | None:
    """`FORWARDED_TRUSTED_HOPS`, checked together with the `FORWARDED_ALLOW_IPS` it counts."""
    allowed = _csv(get("FORWARDED_ALLOW_IPS"))
    for entry in allowed:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"FORWARDED_ALLOW_IPS: {entry!r} is not an IP address, a CIDR block or *"
            ) from None
    if "*" in allowed and len(allowed) > 1:
        raise ConfigError("FORWARDED_ALLOW_IPS: * trusts every address, list nothing beside it")
    raw = get("FORWARDED_TRUSTED_HOPS")
    if raw is None:
        return None
    if not allowed:
        raise ConfigError("FORWARDED_TRUSTED_HOPS needs FORWARDED_ALLOW_IPS: the proxies it counts")
    if not (len(raw) <= 2 and raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 16):
        raise ConfigError("FORWARDED_TRUSTED_HOPS must be a whole number from 1 to 16")
    return int(raw)
