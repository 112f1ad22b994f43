"""`GET /llms.txt` and `SKILL.md`: what a coding agent is told, held to what the relay does."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from relay.providers.table import PROVIDERS
from tests.conftest import RelayFactory
from tests.relayserver import RelayServer

pytestmark = pytest.mark.sqlite

ROOT = Path(__file__).resolve().parent.parent


def guide(relay: RelayServer, **headers: str) -> str:
    with httpx.Client(base_url=relay.url) as client:
        response = client.get("/llms.txt", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/markdown; charset=utf-8"
    return response.text


def test_the_guide_lists_every_provider_and_its_paths(relay: RelayServer) -> None:
    text = guide(relay)
    assert text.startswith("# byok-relay\n\n> ")
    for name, provider in PROVIDERS.items():
        line = next(line for line in text.splitlines() if line.startswith(f"- `{name}` "))
        for path in provider.allowed_paths:
            assert f"`{path}`" in line
    assert "`POST /users` is open on this relay" in text
    assert "Every model of a provider may be named." in text


def test_the_sdk_base_urls_it_gives_reach_allowed_paths(relay: RelayServer) -> None:
    section = guide(relay).split("## SDK base URLs", 1)[1].split("\n## ", 1)[0]
    bases = re.findall(r"`/relay/([a-z0-9-]+)(/[^`]*)?`", section)
    assert len(bases) >= 6
    for provider, prefix in bases:
        if provider == "v1":  # the one base URL for every model: a route of its own
            with httpx.Client(base_url=relay.url) as client:
                refused = client.post(f"/relay/v1{prefix}/chat/completions", json={})
            assert refused.json()["code"] == "token_required"
            continue
        endpoint = "/v1/messages" if provider == "anthropic" else "/chat/completions"
        assert PROVIDERS[provider].allows(prefix + endpoint), (provider, prefix)


def test_the_guide_says_what_this_relays_settings_ask(make_relay: RelayFactory) -> None:
    relay = make_relay(
        APP_SECRET="guide-app-secret-0123456789abcdef", ALLOWED_MODELS="gpt-4o-mini,claude-*"
    )
    text = guide(relay, host="attacker.example")
    assert "needs `Authorization: Bearer <APP_SECRET>`" in text
    assert "`gpt-4o-mini`, `claude-*`" in text
    assert "guide-app-secret" not in text
    assert "attacker.example" not in text  # nothing of the request echoed


def test_the_skill_file_points_at_the_running_relays_guide() -> None:
    skill = (ROOT / "SKILL.md").read_text(encoding="utf-8")
    assert skill.startswith("---\nname: byok-relay\ndescription: ")
    for needed in ("/llms.txt", "POST /users", "POST /keys/", "/relay/", "x-relay-token"):
        assert needed in skill
