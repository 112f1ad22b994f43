"""The deployment files, checked for structure: no Docker engine or platform account is needed.

What a broken file would cost is found here rather than on a first deploy: a compose stack
whose relay starts before its database, a variable nobody documented, an image running as root.
"""

from __future__ import annotations

import ast
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from relay.config import Settings
from relay.providers.table import PROVIDERS
from relay.server.drain import graceful_timeout

pytestmark = pytest.mark.sqlite

ROOT = Path(__file__).resolve().parent.parent

# The store options (issue 3): required by name too, so they stay documented wherever they are read.
NEW_VARIABLES = ("DB_POOL_SIZE", "DB_POOL_TIMEOUT", "DB_CONNECT_TIMEOUT", "REDIS_NAMESPACE")


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def load_yaml(name: str) -> Any:
    return yaml.safe_load(read(name))


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's `environment:`, in either of its two spellings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def healthcheck_command(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return test
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return " ".join(test[1:])


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", read("Dockerfile"))
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def base_image(from_arguments: str) -> str:
    """A FROM's image with the global `ARG NAME=default` values substituted."""
    defaults = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name] = value.strip('"')
    image = from_arguments.split()[0]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults[m[1] or m[2]], image)


def variables_read_by_the_relay() -> set[str]:
    """Every environment variable name `relay/config.py` and `relay/cli.py` mention.

    The names are the files' string constants shaped like a variable (`get("PORT")`,
    `_number(get, "DB_POOL_SIZE", ...)`, `os.environ.get("WEB_CONCURRENCY")`, the platform
    markers), so a variable added to the code is required in `.env.example` at once.
    """
    names: set[str] = set()
    for path in ("relay/config.py", "relay/cli.py"):
        tree = ast.parse(read(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.fullmatch(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*", node.value)
                and len(node.value) >= 4
            ):
                names.add(node.value)
    return names


# --- docker-compose.yml ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = load_yaml("docker-compose.yml")
    assert isinstance(document, dict)
    return document


def test_compose_runs_the_relay_postgres_and_redis(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"relay", "postgres", "redis"}
    assert compose["services"]["postgres"]["image"].startswith("postgres:")
    assert compose["services"]["redis"]["image"].startswith("redis:")


def test_compose_builds_the_relay_from_the_dockerfile(compose: dict[str, Any]) -> None:
    relay = compose["services"]["relay"]
    build = relay["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert context in (".", "./")
    assert "3000:3000" in [str(port) for port in relay["ports"]]


def test_compose_relay_waits_for_healthy_postgres_and_redis(compose: dict[str, Any]) -> None:
    depends_on = compose["services"]["relay"]["depends_on"]
    assert isinstance(depends_on, dict), "depends_on needs conditions, not a list"
    for dependency in ("postgres", "redis"):
        assert depends_on[dependency]["condition"] == "service_healthy"


def test_compose_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]
    relay_check = healthcheck_command(services["relay"])
    assert "/readyz" in relay_check
    assert "curl" not in relay_check, "the slim image has no curl"
    assert "wget" not in relay_check, "the slim image has no wget"
    assert "pg_isready" in healthcheck_command(services["postgres"])
    redis_check = healthcheck_command(services["redis"])
    assert "redis-cli" in redis_check
    assert "ping" in redis_check


def test_compose_data_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    assert {"pgdata", "redisdata"} <= declared

    def sources(service: str) -> dict[str, str]:
        mounts = compose["services"][service].get("volumes") or []
        pairs = [str(mount).split(":")[:2] for mount in mounts]
        return {source: target for source, target in pairs}

    assert sources("postgres").get("pgdata") == "/var/lib/postgresql/data"
    assert sources("redis").get("redisdata") == "/data"
    command = compose["services"]["redis"]["command"]
    command = command if isinstance(command, str) else " ".join(command)
    assert "--appendonly yes" in command, "Redis must persist (it may hold keys or counters)"


def test_compose_wires_the_relay_to_its_postgres_and_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env = environment(services["relay"])
    postgres = environment(services["postgres"])

    database = urlsplit(env["DATABASE_URL"])
    assert database.scheme in ("postgres", "postgresql")
    assert database.hostname == "postgres"
    assert database.port in (None, 5432)
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"]
    assert database.path == "/" + postgres["POSTGRES_DB"]

    redis = urlsplit(env["REDIS_URL"])
    assert redis.scheme == "redis"
    assert redis.hostname == "redis"
    assert redis.port in (None, 6379)

    assert env["HOST"] == "0.0.0.0"
    assert env["RELAY_ENV"] == "production"
    assert env["RELAY_DEMO"] == "off"
    assert env.get("PORT", "3000") == "3000"


def test_compose_refuses_to_start_without_an_encryption_secret(compose: dict[str, Any]) -> None:
    env = environment(compose["services"]["relay"])
    # `${VAR:?message}`: compose stops with the message when VAR is unset or empty.
    assert re.fullmatch(r"\$\{ENCRYPTION_SECRET:\?[^}]+\}", env["ENCRYPTION_SECRET"])
    env_file = compose["services"]["relay"]["env_file"]
    entries = env_file if isinstance(env_file, list) else [env_file]
    paths = [entry if isinstance(entry, str) else entry["path"] for entry in entries]
    assert ".env" in paths


# --- Dockerfile and .dockerignore -----------------------------------------------------------------


def test_dockerfile_runs_byok_relay_serve_as_a_non_root_user() -> None:
    stage = final_stage()
    image = base_image(stage[0][1])
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", image), image
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users, "the final stage needs a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    commands = [args for keyword, args in stage if keyword == "CMD"]
    assert commands[-1] == '["byok-relay", "serve"]'
    assert any(keyword == "EXPOSE" and "3000" in args.split() for keyword, args in stage)


def test_dockerfile_environment_suits_a_container() -> None:
    env = " ".join(args for keyword, args in final_stage() if keyword == "ENV")
    for setting in ("HOST=0.0.0.0", "RELAY_ENV=production", "RELAY_DEMO=off", "PYTHONUNBUFFERED=1"):
        assert setting in env
    assert "DB_PATH=/data/" in env


def test_dockerfile_healthcheck_probes_readiness_with_python() -> None:
    checks = [args for keyword, args in final_stage() if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/readyz" in checks[0]
    assert "python" in checks[0]
    assert "urllib" in checks[0]


def test_dockerfile_installs_the_package_not_an_editable_checkout() -> None:
    runs = " ".join(args for keyword, args in dockerfile_instructions() if keyword == "RUN")
    assert re.search(r"pip install \"?\.(\[[a-z,]+\])?\"?(\s|$)", runs)
    assert "--editable" not in runs
    assert " -e " not in runs
    keywords = {keyword for keyword, _ in dockerfile_instructions()}
    assert "VOLUME" not in keywords, "Railway rejects Dockerfiles with VOLUME"


def test_dockerfile_copies_every_package_the_build_needs() -> None:
    """pyproject's packages, its readme, setup.py and the browser client it copies into the
    package are in the build context and copied."""
    project = tomllib.loads(read("pyproject.toml"))
    needed = {
        pattern.rstrip("*")
        for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    needed |= {"pyproject.toml", project["project"]["readme"], "setup.py", "clients/js"}
    copied = " ".join(args for keyword, args in dockerfile_instructions() if keyword == "COPY")
    ignore = [line.strip() for line in read(".dockerignore").splitlines()]
    ignore = [line for line in ignore if line and not line.startswith("#")]
    assert ignore[0] == "*", ".dockerignore is an allowlist"
    for name in needed:
        assert re.search(rf"(^|\s){re.escape(name)}(\s|/|$)", copied), name
        assert f"!{name}" in ignore or f"!{name}/" in ignore, name
    assert not any(line.startswith("!.env") or line.startswith("!data") for line in ignore)


# --- .env.example ---------------------------------------------------------------------------------


def test_env_example_documents_every_variable_the_relay_reads() -> None:
    example = read(".env.example")
    names = variables_read_by_the_relay() | set(NEW_VARIABLES)
    # The scan must see the code: these are read today.
    assert {"ENCRYPTION_SECRET", "DATABASE_URL", "WEB_CONCURRENCY", "PORT"} <= names
    missing = sorted(name for name in names if not re.search(rf"\b{name}\b", example))
    assert not missing, f".env.example does not mention {missing}"


def test_env_example_names_every_provider_base_url_override() -> None:
    assert "RELAY_([A-Z0-9_]+)_BASE_URL" in read("relay/config.py"), "the family moved"
    example = read(".env.example")
    for provider in PROVIDERS:
        name = f"RELAY_{provider.upper().replace('-', '_')}_BASE_URL"
        assert re.search(rf"\b{name}=", example), name


def test_env_example_sets_no_secret_and_holds_nothing_key_shaped() -> None:
    example = read(".env.example")
    active = [line for line in example.splitlines() if line.strip() and not line.startswith("#")]
    assert not [line for line in active if "SECRET" in line.split("=")[0]]
    assert re.search(r"^# ENCRYPTION_SECRET=$", example, re.MULTILINE)
    assert "secrets.token_urlsafe(48)" in example
    key_shaped = r"\b(sk-[A-Za-z0-9_-]{16,}|sk-ant-|AIza[0-9A-Za-z_-]{20,}|gsk_|hf_[A-Za-z]{10,})"
    assert not re.search(key_shaped, example)


# --- Railway, Render, Procfile --------------------------------------------------------------------


def test_railway_builds_the_dockerfile_and_checks_health() -> None:
    railway = tomllib.loads(read("railway.toml"))
    assert railway["build"]["builder"] == "DOCKERFILE"
    assert railway["deploy"]["healthcheckPath"] == "/readyz"
    assert railway["deploy"]["startCommand"].split()[:2] == ["byok-relay", "serve"]
    assert railway["deploy"]["restartPolicyType"] in ("ON_FAILURE", "ALWAYS")


def test_render_blueprint_wires_postgres_and_key_value() -> None:
    blueprint = load_yaml("render.yaml")
    services = {service["name"]: service for service in blueprint["services"]}
    webs = [service for service in services.values() if service["type"] == "web"]
    assert len(webs) == 1
    web = webs[0]
    assert web["healthCheckPath"] == "/readyz"
    env = {var["key"]: var for var in web["envVars"]}

    database = env["DATABASE_URL"]["fromDatabase"]
    assert database["property"] == "connectionString"
    assert database["name"] in {db["name"] for db in blueprint["databases"]}

    redis = env["REDIS_URL"]["fromService"]
    assert redis["property"] == "connectionString"
    assert redis["type"] in ("keyvalue", "redis")
    assert services[redis["name"]]["type"] == redis["type"]

    assert env["RELAY_ENV"]["value"] == "production"
    assert env["RELAY_DEMO"]["value"] == "off"
    assert env["HOST"]["value"] == "0.0.0.0"
    secret = env["ENCRYPTION_SECRET"]
    assert secret.get("generateValue") is True or secret.get("sync") is False
    assert "PORT" not in env, "Render chooses PORT"


def test_procfile_web_process_runs_byok_relay_serve() -> None:
    processes = dict(line.split(":", 1) for line in read("Procfile").splitlines() if line.strip())
    words = shlex.split(processes["web"])
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # leading VAR=value
        words.pop(0)
    assert words[:2] == ["byok-relay", "serve"]
    assert "--port" not in words, "the platform's PORT must decide"


# --- Drain windows --------------------------------------------------------------------------------


def test_every_platform_waits_for_the_drain_before_killing() -> None:
    """SIGTERM to SIGKILL must hold the drain window and the ending after it."""
    needed = graceful_timeout(Settings.from_env({"ENCRYPTION_SECRET": "x" * 32}).drain_seconds)
    assert tomllib.loads(read("railway.toml"))["deploy"]["drainingSeconds"] >= needed
    (web,) = [s for s in load_yaml("render.yaml")["services"] if s["type"] == "web"]
    assert web["maxShutdownDelaySeconds"] >= needed
    grace = load_yaml("docker-compose.yml")["services"]["relay"]["stop_grace_period"]
    assert int(grace.removesuffix("s")) >= needed
