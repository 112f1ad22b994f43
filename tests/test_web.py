"""What the relay serves a browser besides its API: the client module and the demo page.

Served from memory with an ETag; the demo page under a strict Content-Security-Policy, on in
development and off in production (or with `RELAY_DEMO=off`); the client in every installed
relay, because the wheel carries it (`setup.py`). The browser itself runs them in
`tests/test_browser.py`.
"""

from __future__ import annotations

import html.parser
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from relay.config import ConfigError, Settings
from relay.web.assets import DEMO_POLICY
from tests.conftest import RelayFactory
from tests.relayserver import TEST_SECRET

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "js"
DEMO = ROOT / "relay" / "web" / "demo"


def test_the_client_is_served_as_a_javascript_module_with_an_etag_and_a_long_cache(
    client: httpx.Client,
) -> None:
    response = client.get("/sdk/byok-relay.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.content == (CLIENT / "byok-relay.js").read_bytes()
    assert response.headers["x-content-type-options"] == "nosniff"
    cache = response.headers["cache-control"]
    assert cache == "public, max-age=3600, stale-while-revalidate=86400"
    assert response.headers["vary"] == "Origin"
    etag = response.headers["etag"]
    assert etag.startswith('"')
    assert etag.endswith('"')

    again = client.get("/sdk/byok-relay.js", headers={"if-none-match": f'"other", W/{etag}'})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert again.headers["cache-control"] == cache
    assert again.headers["vary"] == "Origin"
    assert "content-length" not in again.headers
    assert client.get("/sdk/byok-relay.js", headers={"if-none-match": "*"}).status_code == 304
    assert client.get("/sdk/byok-relay.js", headers={"if-none-match": '"other"'}).status_code == 200
    head = client.head("/sdk/byok-relay.js")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["etag"] == etag

    types = client.get("/sdk/byok-relay.d.ts")
    assert types.headers["content-type"] == "application/typescript; charset=utf-8"
    assert types.content == (CLIENT / "byok-relay.d.ts").read_bytes()
    assert types.headers["etag"] != etag


def test_the_client_can_be_imported_from_another_origin(make_relay: RelayFactory) -> None:
    """A module script is fetched in CORS mode: an app's origin must be able to read it."""
    relay = make_relay(ALLOWED_ORIGINS="https://app.example")
    with relay.client() as http:
        allowed = http.get("/sdk/byok-relay.js", headers={"origin": "https://app.example"})
        other = http.get("/sdk/byok-relay.js", headers={"origin": "https://else.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            self.scripts.append(found)
        if tag == "style":
            self.inline.append("<style>")
        self.inline += [f"{tag} {name}" for name in found if name == "style" or name[:2] == "on"]


def test_the_demo_page_is_served_under_a_strict_policy_with_no_inline_script(
    client: httpx.Client,
) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == DEMO_POLICY
    policy = dict(d.strip().split(" ", 1) for d in DEMO_POLICY.split(";"))
    assert policy["script-src"] == "'self'"
    assert policy["default-src"] == "'none'"
    assert "unsafe" not in DEMO_POLICY
    assert policy["frame-ancestors"] == "'none'"
    parsed = _Page()
    parsed.feed(page.text)
    assert parsed.scripts == [{"type": "module", "src": "demo.js"}]
    assert parsed.inline == []
    for path, kind in (("/demo.js", "text/javascript"), ("/demo.css", "text/css")):
        asset = client.get(path)
        assert asset.status_code == 200
        assert asset.headers["content-type"] == f"{kind}; charset=utf-8"
        assert asset.content == (DEMO / path.removeprefix("/")).read_bytes()
    assert client.get("/", headers={"if-none-match": page.headers["etag"]}).status_code == 304


@pytest.mark.parametrize(
    "env",
    [{"RELAY_DEMO": "off"}, {"RELAY_ENV": "production"}],
    ids=["RELAY_DEMO=off", "production"],
)
def test_without_the_demo_its_paths_are_json_404s_and_the_client_is_still_served(
    make_relay: RelayFactory, env: dict[str, str]
) -> None:
    relay = make_relay(**env)
    with relay.client() as http:
        for path in ("/", "/demo.js", "/demo.css"):
            response = http.get(path)
            assert response.status_code == 404, path
            assert response.json()["code"] == "not_found"
        assert http.get("/sdk/byok-relay.js").status_code == 200


def test_relay_demo_defaults_by_environment_and_is_checked() -> None:
    base = {"ENCRYPTION_SECRET": TEST_SECRET}
    assert Settings.from_env(base).demo is True
    assert Settings.from_env({**base, "RELAY_ENV": "production"}).demo is False
    assert Settings.from_env({**base, "RELAY_ENV": "production", "RELAY_DEMO": "on"}).demo is True
    assert Settings.from_env({**base, "RELAY_DEMO": "OFF"}).demo is False
    with pytest.raises(ConfigError, match="RELAY_DEMO must be one of"):
        Settings.from_env({**base, "RELAY_DEMO": "yes"})


# ---- the client as a package: the wheel's copy, and npm's ------------------------------------


def test_an_installed_relay_serves_the_client_its_wheel_carries(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("byok_relay-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in ("byok-relay.js", "byok-relay.d.ts"):
            assert archive.read(f"relay/sdk/{name}") == (CLIENT / name).read_bytes()
        for path in DEMO.iterdir():
            assert f"relay/web/demo/{path.name}" in names
        prices = ROOT / "relay" / "pricing" / "prices.json"
        assert archive.read("relay/pricing/prices.json") == prices.read_bytes()
        archive.extractall(tmp_path / "site")
    # Installed, `relay.web` finds the wheel's copy, not a checkout's folder.
    where = "from relay.web.assets import client_folder; print(client_folder())"
    found = subprocess.run(
        [sys.executable, "-c", where],
        cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")},
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert Path(found.stdout.strip()) == tmp_path / "site" / "relay" / "sdk"


def test_the_client_folder_is_an_npm_package_of_the_module_its_types_and_readme() -> None:
    package = json.loads((CLIENT / "package.json").read_text())
    assert package["type"] == "module"
    assert package["exports"]["."] == {
        "types": "./byok-relay.d.ts",
        "default": "./byok-relay.js",
    }
    assert package.get("dependencies", {}) == {}
    source = (CLIENT / "byok-relay.js").read_text()
    assert f'export const VERSION = "{package["version"]}";' in source
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed to check the package's contents (`.ci/run` installs it)")
    packed = subprocess.run(
        [npm, "pack", "--dry-run", "--json"],
        cwd=CLIENT, check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    files = {entry["path"] for entry in json.loads(packed.stdout)[0]["files"]}
    assert files == {"byok-relay.js", "byok-relay.d.ts", "README.md", "package.json", "LICENSE"}
