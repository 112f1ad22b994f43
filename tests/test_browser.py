"""The browser client, `<byok-connect>` and the demo page in real Chromium.

Debian's `chromium`, driven by Playwright (no browser download), against a real `byok-relay serve`
process and the mock provider. The app's page is served from another origin than the relay's,
as an app's would be, and imports the client from the relay (`/sdk/byok-relay.js`); the official
SDKs (`tests/browser/package.json`) are bundled for it by esbuild. Missing Chromium or the npm
packages fail these tests (`.ci/run` and `./dev test` install them); `-m 'not browser'` leaves
them out on purpose.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mockprovider import MockProvider
from tests.relayprocess import RelayProcess
from tests.relayserver import relay_env

pytestmark = pytest.mark.browser

HERE = Path(__file__).resolve().parent
PAGES = HERE / "browser"
ESBUILD = PAGES / "node_modules" / ".bin" / "esbuild"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Screenshots for a person to look at (build/ is not committed).
SCREENSHOTS = HERE.parent / "build" / "screenshots"
# As root Chromium needs --no-sandbox; the rest keep it from calling out of this closed network.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
KEY = "sk-browser-test-0123456789abcdef"


def _missing(what: str) -> None:
    pytest.fail(
        f"{what}. `.ci/run` installs Chromium and `./dev test` the npm packages; deselect the "
        "browser tests on purpose with -m 'not browser'.",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        _missing(f"Chromium is not installed ({CHROMIUM})")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def app_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app's own origin: the test page, its harness and the bundled SDKs."""
    if not ESBUILD.exists():
        _missing(f"the browser tests' npm packages are not installed ({PAGES / 'node_modules'})")
    folder = tmp_path_factory.mktemp("app")
    for name in ("page.html", "harness.js"):
        shutil.copy(PAGES / name, folder / name)
    subprocess.run(
        [str(ESBUILD), "sdks.js", "--bundle", "--format=esm", "--platform=browser",
         f"--outfile={folder / 'sdks.bundle.js'}", "--log-level=warning"],
        cwd=PAGES, check=True, timeout=120,
    )  # fmt: skip
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _relay(folder: Path, mock: MockProvider, origin: str, **env: str) -> RelayProcess:
    return RelayProcess(
        folder, relay_env(folder / "relay.db", mock.url, ALLOWED_ORIGINS=origin, **env)
    )


@pytest.fixture(scope="module")
def relay(
    mock: MockProvider, app_origin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RelayProcess]:
    process = _relay(tmp_path_factory.mktemp("relay"), mock, app_origin)
    yield process
    process.stop()


class Page:
    """A page of the app's origin with the harness loaded; what it logs as an error (an
    uncaught exception, a Content-Security-Policy violation) fails the test. Error statuses the
    tests ask for are not errors of the page: Chromium logs each, and those are left out."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def open(self, url: str) -> None:
        self.page.goto(url)

    def harness(self, relay_url: str) -> None:
        self.page.goto(f"{self._origin}/page.html?relay={relay_url}")
        self.page.wait_for_function("window.harness !== undefined")

    def run(self, call: str, *args: Any) -> Any:
        return self.page.evaluate(f"(args) => window.harness.{call}(...args)", list(args))

    _origin = ""


@pytest.fixture
def page(browser: Any, app_origin: str) -> Iterator[Page]:
    context = browser.new_context()
    tab = Page(context.new_page())
    tab._origin = app_origin
    yield tab
    context.close()
    assert tab.errors == [], tab.errors


def spread(streamed: list[list[Any]]) -> float:
    """Milliseconds between the first delta's arrival and the last's."""
    return float(streamed[-1][0] - streamed[0][0])


# The harness's streams send 5 deltas 150 ms apart: held back to the end they would arrive
# together; a first delta handled late (a slow machine compiling an SDK's code) shortens this.
STREAMED_APART = 4 * 150 * 0.4


def text(streamed: list[list[Any]]) -> str:
    return "".join(piece for _, piece in streamed)


# ---- <byok-connect> ----------------------------------------------------------------------------


def test_byok_connect_stores_checks_replaces_and_removes_a_key(
    page: Page, relay: RelayProcess, mock: MockProvider
) -> None:
    page.harness(relay.url)
    page.run("mountConnect", {"providers": "openai,anthropic"})
    ui = page.page
    listed = ui.get_by_role("list")
    ui.get_by_text("No key stored yet.").wait_for()
    provider = ui.get_by_label("Provider")
    assert provider.locator("option").all_inner_texts() == ["OpenAI", "Anthropic"]
    key_field = ui.get_by_label("API key")
    assert key_field.get_attribute("type") == "password"
    assert key_field.get_attribute("autocomplete") == "off"

    # Keyboard only: the key typed in, Enter sends it; the provider checks it.
    key_field.focus()
    ui.keyboard.type(KEY)
    ui.keyboard.press("Enter")
    status = ui.get_by_role("status")
    status.filter(has_text="saved").wait_for()
    assert status.inner_text() == "OpenAI key sk-...cdef saved: Working."
    assert key_field.input_value() == ""
    row = listed.get_by_role("listitem").filter(has_text="OpenAI")
    assert row.inner_text().split("\n")[:3] == ["OpenAI", "sk-...cdef", "Working"]
    checks = [r for r in mock.requests if r.path == "/v1/models"]
    assert [r.header("authorization") for r in checks] == [f"Bearer {KEY}"]

    # The key left the page with the request: nothing of the page holds it.
    held = ui.evaluate(
        """() => {
            const element = document.querySelector("byok-connect");
            const fields = [...element.shadowRoot.querySelectorAll("input, select")];
            return JSON.stringify([localStorage, sessionStorage, document.cookie,
                document.documentElement.outerHTML, element.shadowRoot.innerHTML,
                fields.map((field) => field.value), Object.entries(element)]);
        }"""
    )
    assert KEY not in held
    assert "0123456789abcdef" not in held

    # A key the provider refuses is not stored, and the user is told why.
    ui.get_by_role("button", name="Replace the OpenAI key").click()
    assert (
        ui.evaluate("() => document.querySelector('byok-connect').shadowRoot.activeElement.type")
        == "password"
    )
    key_field.fill("sk-mock401-0123456789abcdef")
    ui.get_by_role("button", name="Check and save").click()
    alert = ui.get_by_role("alert")
    alert.wait_for()
    assert alert.inner_text() == (
        "OpenAI did not accept this key (Refused by the provider); nothing was saved."
    )
    assert row.inner_text().split("\n")[:3] == ["OpenAI", "sk-...cdef", "Working"]
    key_field.fill("sk-mock402-0123456789abcdef")
    ui.get_by_role("button", name="Check and save").click()
    alert.filter(has_text="Out of credit").wait_for()
    assert alert.inner_text() == (
        "OpenAI did not accept this key (Out of credit); nothing was saved."
    )

    ui.get_by_role("button", name="Remove the OpenAI key").click()
    ui.get_by_text("OpenAI key removed.").wait_for()
    ui.get_by_text("No key stored yet.").wait_for()


def test_byok_connect_takes_a_key_only_once_it_has_read_the_providers(
    page: Page, relay: RelayProcess
) -> None:
    """Until the relay has named its providers there is none to send a key for: the button waits
    (a click or Enter before would be refused with "Choose a provider first." and the key kept in
    the field). The page holds the providers' answer back until the test lets it through."""
    page.page.add_init_script(
        """(() => {
            const fetch = window.fetch;
            let release;
            const held = new Promise((resolve) => { release = resolve; });
            window.releaseModels = release;
            window.fetch = async (input, init = {}) => {
                if (/\\/models$/.test(String(input))) await held;
                return fetch(input, init);
            };
        })()"""
    )
    page.harness(relay.url)
    page.run("mountConnect")
    ui = page.page
    save = ui.get_by_role("button", name="Check and save")
    key_field = ui.get_by_label("API key")
    key_field.fill(KEY)
    assert save.is_disabled()
    key_field.press("Enter")  # a form whose only button is disabled does not submit
    assert ui.get_by_role("alert").inner_text() == ""
    ui.evaluate("() => window.releaseModels()")
    ui.get_by_text("No key stored yet.").wait_for()
    save.click()
    status = ui.get_by_role("status")
    status.filter(has_text="saved").wait_for()
    assert status.inner_text() == "OpenAI key sk-...cdef saved: Working."


# ---- the official SDKs and the client's helpers --------------------------------------------------


def test_the_official_openai_package_streams_through_the_client(
    page: Page, relay: RelayProcess, mock: MockProvider
) -> None:
    page.harness(relay.url)
    out = page.run("openaiPackage", KEY)
    assert text(out["streamed"]) == "tok0 tok1 tok2 tok3 tok4 "
    assert spread(out["streamed"]) >= STREAMED_APART  # chunk by chunk, not all at the end
    assert out["plain"] == "Hello from mock"
    assert out["models"] > 0
    chats = [r for r in mock.requests if r.path == "/v1/chat/completions"]
    # The user's key reached the provider, never the token or the SDK's placeholder key.
    assert {r.header("authorization") for r in chats} == {f"Bearer {KEY}"}


def test_the_official_anthropic_package_streams_with_the_token_as_its_key(
    page: Page, relay: RelayProcess, mock: MockProvider
) -> None:
    page.harness(relay.url)
    out = page.run("anthropicPackage", "sk-ant-browser-test-0123456789")
    assert text(out["streamed"]).startswith("tok0 ")
    assert spread(out["streamed"]) >= STREAMED_APART
    sent = [r for r in mock.requests if r.path == "/v1/messages"]
    assert [r.header("x-api-key") for r in sent] == ["sk-ant-browser-test-0123456789"]


def test_the_vercel_ai_sdk_streams_through_the_clients_fetch_at_relay_v1(
    page: Page, relay: RelayProcess
) -> None:
    page.harness(relay.url)
    out = page.run("vercelAi", KEY)
    assert text(out["streamed"]) == "tok0 tok1 tok2 tok3 tok4 "


def test_the_clients_helpers_yield_text_from_openai_anthropic_and_gemini_streams(
    page: Page, relay: RelayProcess
) -> None:
    page.harness(relay.url)
    keys = {"openai": KEY, "anthropic": "sk-ant-browser-0123456789", "google": "AIza-browser-01234"}
    out = page.run("helpers", keys)
    for name in ("openai", "anthropic", "google"):
        answer = out[name]
        assert answer["provider"] == name
        assert answer["keyHint"].endswith(keys[name][-4:])
        assert len(answer["streamed"]) >= 5, name
        assert spread(answer["streamed"]) >= STREAMED_APART, name
        assert "tok0" in text(answer["streamed"]), name
    assert out["routed"]["provider"] == "anthropic"
    assert text(out["routed"]["streamed"]).startswith("tok0 ")


@pytest.mark.parametrize("how", ["abort", "break"])
def test_leaving_a_stream_closes_it_at_the_provider(
    page: Page, relay: RelayProcess, mock: MockProvider, how: str
) -> None:
    page.harness(relay.url)
    out = page.run("cancel", KEY, how)
    assert out["deltas"] == 3
    if how == "abort":
        assert out["error"]["name"] == "AbortError"
    else:
        assert out["error"] is None
    assert mock.wait_for_disconnect(timeout=5) is not None


def test_a_narrow_token_works_only_from_the_page_it_was_minted_for(
    page: Page, relay: RelayProcess, app_origin: str
) -> None:
    """The browser sets `Origin` itself: a page cannot claim another's."""
    page.harness(relay.url)
    out = page.run("narrowTokens", KEY)
    assert out["listed"] == [["this page", [app_origin]], ["", ["https://elsewhere.example"]]]
    assert out["here"]["text"] == "tok0 tok1 tok2 tok3 tok4 "
    for name, limit in (("otherProvider", "providers"), ("elsewhere", "origins")):
        error = out[name]["error"]
        assert (error["status"], error["code"], error["limit"]) == (403, "token_limit", limit)
        assert error["isRelayError"]
        assert not error["fromProvider"]
    assert len(out["revoked"]) == 1
    assert (out["afterRevoke"]["error"]["status"], out["afterRevoke"]["error"]["code"]) == (
        401,
        "invalid_token",
    )
    assert out["own"]["text"] == "tok0 tok1 tok2 tok3 tok4 "


def test_a_429_reads_as_a_relay_error_with_its_retry_after(
    page: Page, mock: MockProvider, app_origin: str, tmp_path: Path
) -> None:
    limited = _relay(tmp_path, mock, app_origin, RATE_LIMIT_RELAY="2/minute")
    try:
        page.harness(limited.url)
        out = page.run("tooMany", KEY, "gpt-4o-mini", 5)
        error = out["error"]
        assert out["attempt"] == 3
        assert error["isRelayError"]
        assert error["status"] == 429
        assert error["code"] == "rate_limited"
        assert not error["fromProvider"]
        assert 0 < error["retryAfter"] <= 60
    finally:
        limited.stop()


def test_a_providers_429_reads_as_a_relay_error_from_the_provider(
    page: Page, relay: RelayProcess
) -> None:
    page.harness(relay.url)
    out = page.run("tooMany", KEY, "openai/mock-ratelimited", 1)
    error = out["error"]
    assert error["isRelayError"]
    assert error["status"] == 429
    assert error["fromProvider"]
    assert error["retryAfter"] is not None


# ---- the demo page -----------------------------------------------------------------------------


def test_the_demo_page_connects_adds_a_key_and_chats(
    browser: Any, relay: RelayProcess, mock: MockProvider
) -> None:
    context = browser.new_context(viewport={"width": 900, "height": 1300})
    tab = Page(context.new_page())
    tab.open(relay.url + "/")
    ui = tab.page
    assert ui.get_by_role("heading", name="2. Add your key").is_hidden()
    ui.get_by_role("button", name="Connect").click()
    ui.get_by_text("Connected.").wait_for()
    # Open registration on this relay: the form for a token from the app's backend stays hidden.
    assert ui.get_by_label("Relay token").is_hidden()
    ui.get_by_label("API key").fill(KEY)
    ui.get_by_role("button", name="Check and save").click()
    # Whatever the check said, it is named when it is not what was expected.
    said = ui.get_by_text(re.compile(r" saved: |did not accept this key"))
    said.wait_for()
    assert said.inner_text().endswith("saved: Working."), said.inner_text()
    model = ui.get_by_label("Model")
    assert model.input_value() == "gpt-4o-mini"  # suggested from the key just stored
    ui.get_by_role("button", name="Send").click()
    ui.get_by_text("paid by your key sk-...cdef").wait_for()
    answer = ui.get_by_label("Answer")
    ui.wait_for_function("document.getElementById('answer').getAttribute('aria-busy') === 'false'")
    assert answer.inner_text() == "tok0 tok1 tok2 tok3 tok4 "
    ui.get_by_role("row", name="Requests 1").wait_for()
    # The ledger's row for the provider that answered (the mock's stream reports no usage
    # unless asked to).
    ledger = ui.get_by_role("row", name="With openai (30 days)")
    assert ledger.inner_text().split("\t") == [
        "With openai (30 days)",
        "1 requests; tokens none reported; $0.000000",
    ]
    # A daily cap of a cent: the next chat could cost more (no max_tokens: the most OpenAI
    # writes is reserved), so the relay refuses it before the provider hears of it.
    ui.get_by_text("No spending cap.").wait_for()
    ui.get_by_label("Daily spending cap, US dollars").fill("0.01")
    ui.get_by_role("button", name="Set cap").click()
    ui.get_by_text("Daily cap $0.010000: $0.000000 spent today.").wait_for()
    ui.get_by_role("button", name="Send").click()
    ui.get_by_text("(402 budget_exceeded)", exact=False).wait_for()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ui.screenshot(path=SCREENSHOTS / "demo.png", full_page=True)
    context.close()
    assert tab.errors == []


def test_on_a_relay_with_an_app_secret_the_demo_takes_a_token_the_backend_issued(
    browser: Any, mock: MockProvider, tmp_path: Path
) -> None:
    secret = "demo-backend-secret-0123456789"
    relay = RelayProcess(tmp_path, relay_env(tmp_path / "relay.db", mock.url, APP_SECRET=secret))
    context = browser.new_context()
    try:
        with relay.client() as http:
            issued = http.post(
                "/users", json={"app_id": "demo"}, headers={"authorization": f"Bearer {secret}"}
            ).json()["token"]
        tab = Page(context.new_page())
        tab.open(relay.url + "/")
        ui = tab.page
        ui.get_by_role("button", name="Connect").click()
        ui.get_by_text("Registration needs the app's backend on this relay.").wait_for()
        ui.get_by_label("Relay token").fill(issued)
        ui.get_by_role("button", name="Use this token").click()
        ui.get_by_text("Connected.").wait_for()
        assert ui.get_by_label("Relay token").input_value() == ""
        ui.get_by_text("No key stored yet.").wait_for()
        assert tab.errors == []
    finally:
        context.close()
        relay.stop()
