"""`relay.config`: settings from the environment, refusals as one-line, secret-free reasons."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relay.config import ConfigError, Secret, Settings, read_env_file

SECRET = "enc-secret-SENTINEL-0123456789abcdefghijkl"
OLDER = "old-secret-SENTINEL-abcdefghijkl0123456789"
HMAC_SECRET = "hmac-secret-SENTINEL-0123456789abcdefghij"
APP_SECRET = "app-secret-SENTINEL-value"
DB_PASSWORD = "hunter2pass"
REDIS_PASSWORD = "redis-pw-SENTINEL"

# Every secret value the tests hand to `from_env`: none may ever show in a message or a repr.
SECRET_VALUES = (SECRET, OLDER, HMAC_SECRET, APP_SECRET, DB_PASSWORD, REDIS_PASSWORD, "SENTINEL")


def settings(**env: str) -> Settings:
    return Settings.from_env({"ENCRYPTION_SECRET": SECRET, **env})


def refusal(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert message
    assert "\n" not in message
    assert "\r" not in message
    for value in SECRET_VALUES:
        assert value not in message
    return message


def test_defaults_match_the_contract() -> None:
    s = Settings.from_env({"ENCRYPTION_SECRET": SECRET})
    assert s.encryption_secrets == (Secret(SECRET),)
    assert s.token_hmac_secret == Secret(SECRET)
    assert s.encryption_salt == "byok-relay-salt"
    assert s.app_secret is None
    assert s.allowed_origins == ("*",)
    assert s.allowed_models == ()
    assert str(s.database_url) == "sqlite:///./data/relay.db"
    assert s.redis_url is None
    assert s.rate_limit_global == "100/minute"
    assert s.rate_limit_relay == "20/minute"
    assert s.rate_limit_register == "10/hour"
    assert s.token_expiry_days == 90
    assert s.usage_retention_days == 90
    assert s.request_body_limit == 10485760
    assert s.connect_timeout == 10
    assert s.upstream_timeout == 300
    assert s.stream_idle_timeout == 120
    assert s.client_send_timeout == 60
    assert s.drain_seconds == 25
    assert dict(s.base_url_overrides) == {}
    assert s.private_upstreams == ()
    assert s.host == "127.0.0.1"
    assert s.port == 3000
    assert s.log_level == "info"


def test_blank_values_count_as_unset() -> None:
    s = settings(APP_SECRET="", TOKEN_HMAC_SECRET="  ", PORT="", RELAY_CONNECT_TIMEOUT=" ")
    assert s.app_secret is None
    assert s.token_hmac_secret == Secret(SECRET)
    assert s.port == 3000
    assert s.connect_timeout == 10


def test_values_are_read() -> None:
    s = settings(
        ENCRYPTION_SALT="my-salt",
        TOKEN_HMAC_SECRET=HMAC_SECRET,
        APP_SECRET=APP_SECRET,
        ALLOWED_ORIGINS="https://a.example, https://b.example",
        ALLOWED_MODELS="GPT-4o*, claude-*",
        DATABASE_URL=f"postgres://relay:{DB_PASSWORD}@db.internal:5432/relay",
        REDIS_URL=f"redis://:{REDIS_PASSWORD}@cache:6379/0",
        RATE_LIMIT_GLOBAL="5/second",
        RATE_LIMIT_RELAY="1/minute",
        RATE_LIMIT_REGISTER="2/day",
        TOKEN_EXPIRY_DAYS="0",
        USAGE_RETENTION_DAYS="0",
        REQUEST_BODY_LIMIT_BYTES="1024",
        RELAY_CONNECT_TIMEOUT="2.5",
        RELAY_UPSTREAM_TIMEOUT="600",
        RELAY_STREAM_IDLE_TIMEOUT="30",
        RELAY_CLIENT_SEND_TIMEOUT="15",
        RELAY_DRAIN_SECONDS="0",
        RELAY_PRIVATE_UPSTREAMS="ollama:11434, 10.0.0.0/8,fd00::/8",
        HOST="0.0.0.0",
        PORT="8080",
        LOG_LEVEL="DEBUG",
    )
    assert s.usage_retention_days == 0
    assert s.encryption_salt == "my-salt"
    assert s.token_hmac_secret == Secret(HMAC_SECRET)
    assert s.app_secret == Secret(APP_SECRET)
    assert s.allowed_origins == ("https://a.example", "https://b.example")
    assert s.allowed_models == ("gpt-4o*", "claude-*")
    assert str(s.database_url) == f"postgres://relay:{DB_PASSWORD}@db.internal:5432/relay"
    assert str(s.redis_url) == f"redis://:{REDIS_PASSWORD}@cache:6379/0"
    assert (s.rate_limit_global, s.rate_limit_relay, s.rate_limit_register) == (
        "5/second",
        "1/minute",
        "2/day",
    )
    assert s.token_expiry_days == 0
    assert s.request_body_limit == 1024
    assert (s.connect_timeout, s.upstream_timeout, s.stream_idle_timeout) == (2.5, 600, 30)
    assert (s.client_send_timeout, s.drain_seconds) == (15, 0)
    assert s.private_upstreams == ("ollama:11434", "10.0.0.0/8", "fd00::/8")
    assert (s.host, s.port, s.log_level) == ("0.0.0.0", 8080, "debug")


def test_db_path_sets_the_sqlite_file() -> None:
    assert str(settings(DB_PATH="/var/lib/relay/keys.db").database_url) == (
        "sqlite:////var/lib/relay/keys.db"
    )
    # DATABASE_URL wins over DB_PATH.
    s = settings(DB_PATH="/ignored.db", DATABASE_URL="sqlite:///chosen.db")
    assert str(s.database_url) == "sqlite:///chosen.db"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///./data/relay.db",
        "sqlite+aiosqlite:///x.db",
        "postgres://u:p@h/db",
        "postgresql://u:p@h:5432/db?sslmode=require",
        "postgresql+asyncpg://u@h/db",
        "POSTGRESQL://u@h/db",
    ],
)
def test_known_database_schemes(url: str) -> None:
    assert str(settings(DATABASE_URL=url).database_url) == url


# ---------------------------------------------------------------------------------------------
# Secrets


def test_token_hmac_secret_falls_back_to_the_encryption_secret() -> None:
    assert settings().token_hmac_secret == Secret(SECRET)
    assert settings(TOKEN_HMAC_SECRET=HMAC_SECRET).token_hmac_secret == Secret(HMAC_SECRET)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (f"{SECRET},{OLDER}", (SECRET, OLDER)),
        (f" {SECRET} , {OLDER} ", (SECRET, OLDER)),
        (f"{OLDER},{SECRET}", (OLDER, SECRET)),
        (f"{SECRET},,{OLDER},", (SECRET, OLDER)),
        (f"{SECRET},{OLDER},{HMAC_SECRET}", (SECRET, OLDER, HMAC_SECRET)),
    ],
)
def test_several_encryption_secrets_newest_first(raw: str, expected: tuple[str, ...]) -> None:
    s = Settings.from_env({"ENCRYPTION_SECRET": raw, "TOKEN_HMAC_SECRET": HMAC_SECRET})
    assert s.encryption_secrets == tuple(Secret(v) for v in expected)


def test_a_rotation_needs_an_explicit_token_secret() -> None:
    """Token digests would change with the newest secret, logging every user out."""
    message = refusal({"ENCRYPTION_SECRET": f"{SECRET},{OLDER}"})
    assert "TOKEN_HMAC_SECRET" in message
    assert SECRET not in message
    assert OLDER not in message


def test_secret_hides_itself() -> None:
    secret = Secret(SECRET)
    assert SECRET not in repr(secret)
    assert SECRET not in f"{[secret]}"
    assert str(secret) == SECRET
    assert secret == Secret(SECRET)
    assert secret != Secret(OLDER)
    assert secret != SECRET


def test_repr_of_settings_never_shows_a_secret() -> None:
    s = Settings.from_env(
        {
            "ENCRYPTION_SECRET": f"{SECRET},{OLDER}",
            "TOKEN_HMAC_SECRET": HMAC_SECRET,
            "APP_SECRET": APP_SECRET,
            "DATABASE_URL": f"postgresql://relay:{DB_PASSWORD}@db/relay",
            "REDIS_URL": f"rediss://default:{REDIS_PASSWORD}@cache:6380",
        }
    )
    for text in (repr(s), str(s), f"{s!r}"):
        for value in SECRET_VALUES:
            assert value not in text


def test_repr_of_settings_never_shows_a_password_in_a_base_url() -> None:
    """Base URL overrides point at egress proxies, which may carry credentials.

    Refusing such a URL (without echoing it) would keep the contract too; accepting it and
    printing it would not.
    """
    url = f"https://relay:{DB_PASSWORD}@egress.internal:8443"
    try:
        s = settings(RELAY_OPENAI_BASE_URL=url)
    except ConfigError as exc:
        message = str(exc)
    else:
        message = repr(s)
        assert s.base_url_for("openai", "https://api.openai.com") == url
    assert DB_PASSWORD not in message


# ---------------------------------------------------------------------------------------------
# Refusals


def test_missing_encryption_secret() -> None:
    assert "ENCRYPTION_SECRET" in refusal({})
    assert "ENCRYPTION_SECRET" in refusal({"ENCRYPTION_SECRET": "   "})
    assert "ENCRYPTION_SECRET" in refusal({"TOKEN_HMAC_SECRET": HMAC_SECRET})


@pytest.mark.parametrize("raw", [",", " , ,"])
@pytest.mark.parametrize("hmac_secret", [None, HMAC_SECRET], ids=["no-hmac", "hmac"])
def test_encryption_secret_of_only_commas(raw: str, hmac_secret: str | None) -> None:
    """A list with no secret in it is as missing as no list at all."""
    env = {"ENCRYPTION_SECRET": raw}
    if hmac_secret is not None:
        env["TOKEN_HMAC_SECRET"] = hmac_secret
    assert "ENCRYPTION_SECRET" in refusal(env)


@pytest.mark.parametrize("length", [8, 16, 31])
def test_short_encryption_secret(length: int) -> None:
    short = "SENTINEL0123456789abcdefghijklmnopqrstuvwxyz"[:length]
    message = refusal({"ENCRYPTION_SECRET": short})
    assert "ENCRYPTION_SECRET" in message
    assert "32" in message
    assert short not in message


def test_short_secret_in_a_rotation_list() -> None:
    short = "SENTINEL-short-second"
    message = refusal({"ENCRYPTION_SECRET": f"{SECRET},{short}"})
    assert "ENCRYPTION_SECRET" in message
    assert short not in message


def test_exactly_32_characters_is_enough() -> None:
    secret = "S" * 32
    assert settings(ENCRYPTION_SECRET=secret).encryption_secrets == (Secret(secret),)
    assert settings(TOKEN_HMAC_SECRET=secret).token_hmac_secret == Secret(secret)


def test_short_token_hmac_secret() -> None:
    short = "SENTINEL-hmac-too-short"
    message = refusal({"ENCRYPTION_SECRET": SECRET, "TOKEN_HMAC_SECRET": short})
    assert "TOKEN_HMAC_SECRET" in message
    assert short not in message


@pytest.mark.parametrize(
    "value", ["app secret SENTINEL", "SENTINEL\tsecret", "two  spaces SENTINEL", "a\nSENTINEL"]
)
def test_app_secret_with_spaces(value: str) -> None:
    # `refusal` checks that no part of the value (SENTINEL) shows in the message.
    assert "APP_SECRET" in refusal({"ENCRYPTION_SECRET": SECRET, "APP_SECRET": value})


def test_app_secret_without_spaces_is_fine() -> None:
    assert settings(APP_SECRET=APP_SECRET).app_secret == Secret(APP_SECRET)
    # Surrounding whitespace is trimmed, not refused.
    assert settings(APP_SECRET=f"  {APP_SECRET}\n").app_secret == Secret(APP_SECRET)


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        (f"mysql://user:{DB_PASSWORD}@host/db", "mysql"),
        (f"mongodb+srv://admin:{DB_PASSWORD}@cluster0.example/db", "mongodb+srv"),
        (f"mssql://sa:{DB_PASSWORD}@sql:1433/relay", "mssql"),
        (f"http://user:{DB_PASSWORD}@db.example", "http"),
    ],
)
def test_unknown_database_scheme(url: str, scheme: str) -> None:
    message = refusal({"ENCRYPTION_SECRET": SECRET, "DATABASE_URL": url})
    assert "DATABASE_URL" in message
    assert scheme in message
    assert DB_PASSWORD not in message
    assert "@" not in message


@pytest.mark.parametrize("url", [DB_PASSWORD, f"user:{DB_PASSWORD}@host/db", "/just/a/path.db"])
def test_database_url_without_a_scheme(url: str) -> None:
    message = refusal({"ENCRYPTION_SECRET": SECRET, "DATABASE_URL": url})
    assert "DATABASE_URL" in message
    assert DB_PASSWORD not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RELAY_CONNECT_TIMEOUT", "abc"),
        ("RELAY_CONNECT_TIMEOUT", "-1"),
        ("RELAY_CONNECT_TIMEOUT", "0"),
        ("RELAY_CONNECT_TIMEOUT", "nan"),
        ("RELAY_CONNECT_TIMEOUT", "10s"),
        ("RELAY_UPSTREAM_TIMEOUT", "-300"),
        ("RELAY_UPSTREAM_TIMEOUT", "five minutes"),
        ("RELAY_STREAM_IDLE_TIMEOUT", "-0.5"),
        ("RELAY_STREAM_IDLE_TIMEOUT", "abc"),
        ("RELAY_CLIENT_SEND_TIMEOUT", "0"),
        ("RELAY_CLIENT_SEND_TIMEOUT", "a minute"),
        ("RELAY_DRAIN_SECONDS", "-1"),
        ("RELAY_DRAIN_SECONDS", "3601"),
        ("TOKEN_EXPIRY_DAYS", "-1"),
        ("TOKEN_EXPIRY_DAYS", "ninety"),
        ("TOKEN_EXPIRY_DAYS", "inf"),
        ("USAGE_RETENTION_DAYS", "-1"),
        ("USAGE_RETENTION_DAYS", "a quarter"),
        ("USAGE_RETENTION_DAYS", "36501"),
        ("REQUEST_BODY_LIMIT_BYTES", "0"),
        ("REQUEST_BODY_LIMIT_BYTES", "-1"),
        ("REQUEST_BODY_LIMIT_BYTES", "10MB"),
        ("REQUEST_BODY_LIMIT_BYTES", "inf"),
        ("REQUEST_BODY_LIMIT_BYTES", "1e400"),
        ("PORT", "abc"),
        ("PORT", "-1"),
        ("PORT", "65536"),
        ("PORT", "inf"),
    ],
)
def test_bad_numbers(name: str, value: str) -> None:
    message = refusal({"ENCRYPTION_SECRET": SECRET, name: value})
    assert name in message


@pytest.mark.parametrize(
    "entry",
    [
        "ollama",
        "ollama:",
        ":11434",
        "ollama:abc",
        "ollama:0",
        "ollama:65536",
        "ollama:-1",
        "10.0.0.0/33",
        "10.0.0.0/abc",
        "not-a-cidr/8",
        "fd00::/129",
    ],
)
def test_bad_private_upstreams(entry: str) -> None:
    message = refusal({"ENCRYPTION_SECRET": SECRET, "RELAY_PRIVATE_UPSTREAMS": f"ok:1,{entry}"})
    assert "RELAY_PRIVATE_UPSTREAMS" in message


@pytest.mark.parametrize(
    "url",
    [
        "ftp://api.openai.com",
        "api.openai.com",
        "https://",
        "https:///v1",
        "javascript:alert(1)",
        f"file://user:{DB_PASSWORD}@/etc/passwd",
        f"ws://user:{DB_PASSWORD}@proxy",
    ],
)
def test_bad_base_url_override(url: str) -> None:
    message = refusal({"ENCRYPTION_SECRET": SECRET, "RELAY_OPENAI_BASE_URL": url})
    assert "RELAY_OPENAI_BASE_URL" in message
    assert DB_PASSWORD not in message


@pytest.mark.parametrize(
    ("name", "value"), [("RELAY_ENV", "staging"), ("LOG_LEVEL", "verbose"), ("LOG_LEVEL", "trace")]
)
def test_bad_choices(name: str, value: str) -> None:
    assert name in refusal({"ENCRYPTION_SECRET": SECRET, name: value})


# ---------------------------------------------------------------------------------------------
# Base URL overrides


@pytest.mark.parametrize(
    ("name", "provider"),
    [
        ("RELAY_OPENAI_BASE_URL", "openai"),
        ("RELAY_ANTHROPIC_BASE_URL", "anthropic"),
        ("RELAY_OPENAI_COMPATIBLE_BASE_URL", "openai-compatible"),
        ("RELAY_HUGGINGFACE_BASE_URL", "huggingface"),
    ],
)
def test_base_url_override_names_the_provider(name: str, provider: str) -> None:
    s = settings(**{name: "http://127.0.0.1:8999/"})
    assert dict(s.base_url_overrides) == {provider: "http://127.0.0.1:8999"}
    assert s.base_url_for(provider, "https://public.example") == "http://127.0.0.1:8999"
    assert s.base_url_for("mistral", "https://api.mistral.ai") == "https://api.mistral.ai"


def test_several_base_url_overrides() -> None:
    s = settings(
        RELAY_OPENAI_BASE_URL="https://eu.openai.example",
        RELAY_OPENAI_COMPATIBLE_BASE_URL="https://gateway.internal/llm/",
        RELAY_GOOGLE_BASE_URL="",
    )
    assert dict(s.base_url_overrides) == {
        "openai": "https://eu.openai.example",
        "openai-compatible": "https://gateway.internal/llm",
    }


@pytest.mark.parametrize(
    "url",
    [
        f"https://eu.openai.example/v1?api-key={DB_PASSWORD}",
        "https://eu.openai.example/?",
        "https://eu.openai.example/v1#SENTINEL",
        "https://eu.openai.example?x=1/",
    ],
)
def test_base_url_override_with_a_query_or_fragment(url: str) -> None:
    """The relay appends the request's path and query: they would land inside either."""
    message = refusal({"ENCRYPTION_SECRET": SECRET, "RELAY_OPENAI_BASE_URL": url})
    assert message == "RELAY_OPENAI_BASE_URL must not have a query or fragment"


@pytest.mark.parametrize(
    "name", ["RELAY_OPENAL_BASE_URL", "RELAY_CLAUDE_BASE_URL", "RELAY_OPENAI_COMPAT_BASE_URL"]
)
def test_base_url_override_for_no_provider(name: str) -> None:
    """A misspelt provider would leave the real one pointed at its public URL, unnoticed."""
    message = refusal({"ENCRYPTION_SECRET": SECRET, name: "https://eu.openai.example"})
    assert message.startswith(f"{name} names no provider (known: openai, anthropic, ")
    assert "openai-compatible" in message
    # Blank counts as unset, as everywhere.
    assert dict(settings(**{name: " "}).base_url_overrides) == {}


# ---------------------------------------------------------------------------------------------
# The client's address behind proxies, and client-named upstreams


def test_forwarded_and_dns_defaults() -> None:
    s = settings()
    assert (s.forwarded_allow_ips, s.forwarded_trusted_hops, s.dns_timeout) == ((), None, 5)
    s = settings(FORWARDED_ALLOW_IPS="*", FORWARDED_TRUSTED_HOPS="2", RELAY_DNS_TIMEOUT="0.5")
    assert (s.forwarded_allow_ips, s.forwarded_trusted_hops, s.dns_timeout) == (("*",), 2, 0.5)
    s = settings(FORWARDED_ALLOW_IPS="10.0.0.0/8, 192.0.2.7, fd00::/8", FORWARDED_TRUSTED_HOPS="3")
    assert s.forwarded_allow_ips == ("10.0.0.0/8", "192.0.2.7", "fd00::/8")
    assert s.forwarded_trusted_hops == 3


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"FORWARDED_ALLOW_IPS": "railway"}, "FORWARDED_ALLOW_IPS: 'railway' is not an IP"),
        ({"FORWARDED_ALLOW_IPS": "10.0.0.0/33"}, "FORWARDED_ALLOW_IPS: '10.0.0.0/33' is not"),
        ({"FORWARDED_ALLOW_IPS": "*, 10.0.0.1"}, "FORWARDED_ALLOW_IPS: * trusts every address"),
        ({"FORWARDED_TRUSTED_HOPS": "1"}, "FORWARDED_TRUSTED_HOPS needs FORWARDED_ALLOW_IPS"),
        *(
            ({"FORWARDED_ALLOW_IPS": "*", "FORWARDED_TRUSTED_HOPS": hops}, "a whole number")
            for hops in ("0", "17", "1.5", "two", "-1", "\u00b2", "9" * 5000)
        ),
        ({"RELAY_DNS_TIMEOUT": "0"}, "RELAY_DNS_TIMEOUT must be a number between"),
        ({"RELAY_DNS_TIMEOUT": "61"}, "RELAY_DNS_TIMEOUT must be a number between"),
        ({"RELAY_DNS_TIMEOUT": "soon"}, "RELAY_DNS_TIMEOUT must be a number"),
    ],
)
def test_bad_forwarded_and_dns_settings(env: dict[str, str], reason: str) -> None:
    assert reason in refusal({"ENCRYPTION_SECRET": SECRET, **env})


# ---------------------------------------------------------------------------------------------
# `.env` files


def test_read_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "\n".join(
            [
                "# a comment",
                "   # an indented comment",
                "",
                "export ENCRYPTION_SECRET=from-export",
                "export  TWO_SPACES=after-export",
                "PLAIN=plain",
                'DOUBLE="double quoted"',
                "SINGLE='single quoted'",
                "SPACED = spaced value  ",
                "EQUALS=a=b=c",
                'HASH="#not a comment"',
                "EMPTY=",
                'EMPTY_QUOTES=""',
                "MISMATCHED=\"half'",
                "LONE='",
                "NO_EQUALS_SIGN",
                "exported=not-a-prefix",
                "CRLF=windows\r",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    assert read_env_file(env_file) == {
        "ENCRYPTION_SECRET": "from-export",
        "TWO_SPACES": "after-export",
        "PLAIN": "plain",
        "DOUBLE": "double quoted",
        "SINGLE": "single quoted",
        "SPACED": "spaced value",
        "EQUALS": "a=b=c",
        "HASH": "#not a comment",
        "EMPTY": "",
        "EMPTY_QUOTES": "",
        "exported": "not-a-prefix",
        "CRLF": "windows",
    }


def test_read_env_file_reads_what_compose_reads(tmp_path: Path) -> None:
    """python-dotenv's format: inline comments, escapes in double quotes, multi-line values; an
    unterminated quote is no value (python-dotenv logs the line), not a quote kept in it."""
    env_file = tmp_path / ".env"
    env_file.write_text(
        "RELAY_ENV=production # an inline comment\n"
        "HASHED=abc#def\n"
        'ESCAPED="line one\\nline two"\n'
        "LITERAL='no \\n escape'\n"
        'MULTI="first\nsecond"\n'
        "AFTER=still read\n",
        encoding="utf-8",
    )
    assert read_env_file(env_file) == {
        "RELAY_ENV": "production",
        "HASHED": "abc#def",
        "ESCAPED": "line one\nline two",
        "LITERAL": "no \\n escape",
        "MULTI": "first\nsecond",
        "AFTER": "still read",
    }


def test_read_env_file_missing(tmp_path: Path) -> None:
    assert read_env_file(tmp_path / "nope.env") == {}


def test_from_env_reads_the_env_file_under_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"ENCRYPTION_SECRET={SECRET}\nexport LOG_LEVEL=warning\nPORT=4000\n", encoding="utf-8"
    )
    for name in ("ENCRYPTION_SECRET", "TOKEN_HMAC_SECRET", "LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PORT", "5000")
    s = Settings.from_env(env_file=env_file)
    assert s.encryption_secrets == (Secret(SECRET),)
    assert s.log_level == "warning"
    assert s.port == 5000


def test_the_openrouter_referer_is_the_operators_when_set() -> None:
    assert settings().default_headers_for("openrouter") == {}
    chosen = settings(RELAY_OPENROUTER_REFERER="https://relay.example/app")
    assert chosen.default_headers_for("openrouter") == {"http-referer": "https://relay.example/app"}
    assert chosen.default_headers_for("openai") == {}


@pytest.mark.parametrize(
    "value",
    ["not a url", "ftp://x.example", "https://", "https://x.example/\x7f", "https://é.example"],
)
def test_a_referer_that_is_no_http_url_stops_start_up(value: str) -> None:
    with pytest.raises(ConfigError, match="RELAY_OPENROUTER_REFERER must be an http"):
        settings(RELAY_OPENROUTER_REFERER=value)


# ---------------------------------------------------------------------------------------------
# Mistakes caught at start


def test_unknown_relay_variables_are_named_with_the_nearest_setting() -> None:
    s = settings(RELAY_DRAIN_SECOND="3", RATE_LIMIT_GLOBL="5/minute", RELAY_ZZZ_QQQ="1")
    assert s.unknown_variables == (
        "RATE_LIMIT_GLOBL is set but is no setting of the relay (did you mean RATE_LIMIT_GLOBAL?)",
        "RELAY_DRAIN_SECOND is set but is no setting of the relay "
        "(did you mean RELAY_DRAIN_SECONDS?)",
        "RELAY_ZZZ_QQQ is set but is no setting of the relay",
    )


def test_known_variables_and_other_families_are_not_warned_about() -> None:
    s = settings(
        RELAY_DRAIN_SECONDS="3",
        RATE_LIMIT_FAIL="open",
        RELAY_OPENAI_BASE_URL="https://egress.test",
        RELAY_OPENROUTER_REFERER="https://example.test",
        RELAY_ENV="development",
        DRAIN_SECONDS="3",  # not one of the relay's families: the machine's own, perhaps
    )
    assert s.unknown_variables == ()


def test_unknown_variables_in_the_env_file_count_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"ENCRYPTION_SECRET={SECRET}\nRELAY_UPSTREAM_TIMOUT=9 # a typo\n")
    for name in [n for n in os.environ if n.startswith(("RELAY_", "RATE_LIMIT_"))]:
        monkeypatch.delenv(name)
    s = Settings.from_env(env_file=env_file)
    assert s.unknown_variables == (
        "RELAY_UPSTREAM_TIMOUT is set but is no setting of the relay "
        "(did you mean RELAY_UPSTREAM_TIMEOUT?)",
    )


@pytest.mark.parametrize(("value", "cached"), [("0", False), ("1", True), ("", True)])
def test_db_statement_cache(value: str, cached: bool) -> None:
    assert settings(DB_STATEMENT_CACHE=value).db_statement_cache is cached


def test_db_statement_cache_must_be_a_switch() -> None:
    with pytest.raises(ConfigError, match="DB_STATEMENT_CACHE must be 0 or 1"):
        settings(DB_STATEMENT_CACHE="maybe")
