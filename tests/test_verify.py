"""`relay.providers.verify`: key shapes, and the key check against the mock provider over real
sockets."""

from __future__ import annotations

import json
import random
import socket
import string
import time
from collections.abc import AsyncIterator, Callable

import anyio
import httpx
import pytest

from relay.errors import BadRequest
from relay.providers.table import PROVIDERS, KeyShape, Provider
from relay.providers.verify import (
    BODY_PREFIX_LIMIT,
    Verification,
    check_format,
    key_hint,
    verify_key,
)
from tests.mockprovider import MockProvider

pytestmark = pytest.mark.sqlite


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------

_rng = random.Random(5)
ALNUM = string.ascii_letters + string.digits


def _draw(alphabet: str, n: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


# One real-looking key per provider (and a second shape where a provider has two).
EXAMPLES: dict[str, list[str]] = {
    "openai": [
        "sk-" + _draw(ALNUM, 48),
        "sk-proj-" + _draw(ALNUM + "_-", 156),
        "sk-svcacct-" + _draw(ALNUM + "_-", 120),
    ],
    "anthropic": ["sk-ant-api03-" + _draw(ALNUM + "_-", 93) + "AA"],
    "google": ["AIza" + _draw(ALNUM + "_-", 35)],
    "groq": ["gsk_" + _draw(ALNUM, 52)],
    "openrouter": ["sk-or-v1-" + _draw("0123456789abcdef", 64)],
    "mistral": ["Xy" + _draw(ALNUM, 30)],
    "elevenlabs": ["sk_" + _draw("0123456789abcdef", 48), _draw("0123456789abcdef", 32)],
    "huggingface": ["hf_" + _draw(string.ascii_letters, 34)],
    "deepgram": [_draw("0123456789abcdef", 40)],
    "openai-compatible": ["ollama-local-key", "any printable thing ~!@#"],
}

# Keys that do not fit the provider's shape but carry no other provider's prefix (some of its
# own family, malformed): the provider's own check judges them.
UNFAMILIAR: dict[str, list[str]] = {
    "openai": ["sk-short", "sk-" + "a" * 30 + " b", "pk-" + "a" * 48, "SK-" + "a" * 48],
    "anthropic": ["sk-ant-short", "sk-ant-" + "a" * 40 + "!", "ant-" + "a" * 40],
    "google": ["AIza" + "a" * 34, "AIza" + "a" * 36, "AIza" + "a" * 34 + "."],
    "groq": ["gsk_short", "gsk_" + "a" * 30 + "-", "gsk" + "a" * 40],
    "openrouter": ["sk-or-short", "sk-or-" + "a" * 30 + "."],
    "mistral": ["a" * 31, "a" * 33, "a" * 31 + "-"],
    "elevenlabs": ["sk_" + "z" * 48, "sk_" + "a" * 20, "a" * 31, "0" * 33],
    "huggingface": ["hf_short", "hf_" + "a" * 30 + "-"],
    "deepgram": ["a" * 39, "a" * 41, "a" * 39 + "g"],
    "openai-compatible": ["short", "nine char", "tab\tinside-key", "ключ-ключ-ключ"],
}


def _prefixed(owner: str) -> list[str]:
    prefix = PROVIDERS[owner].key_shape.prefix
    return [k for k in EXAMPLES[owner] if prefix and k.startswith(prefix)]


# Keys with their provider's distinctive prefix: refused by every other provider (but
# openai-compatible), whatever their shape.
PREFIXED = {owner: _prefixed(owner) for owner in EXAMPLES}


def _refusal(provider: str, key: str) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        check_format(PROVIDERS[provider], key)
    error = caught.value
    assert error.status == 400
    assert error.code == "invalid_key_format"
    return error


def _assert_hint_shows_no_key(hint: str, key: str) -> None:
    assert key not in hint
    # Nothing of the key's secret part either (the first characters can be a public prefix).
    assert key[-6:] not in hint


def _assert_no_key(error: BadRequest, key: str) -> None:
    body = json.loads(error.body())
    assert set(body) == {"error", "code", "hint"}
    _assert_hint_shows_no_key(body["error"] + " " + body["hint"], key)


def test_every_provider_has_shape_examples() -> None:
    assert set(EXAMPLES) == set(PROVIDERS) == set(UNFAMILIAR)
    prefixed = {o for o, keys in PREFIXED.items() if keys}
    assert prefixed == {p.name for p in PROVIDERS.values() if p.key_shape.prefix}


@pytest.mark.parametrize(
    ("provider", "key"), [(p, k) for p, keys in EXAMPLES.items() for k in keys]
)
def test_real_shapes_pass_without_a_hint(provider: str, key: str) -> None:
    assert check_format(PROVIDERS[provider], key) is None


@pytest.mark.parametrize(
    ("provider", "key"), [(p, k) for p, keys in UNFAMILIAR.items() for k in keys]
)
def test_unfamiliar_shapes_pass_with_the_expected_shape_as_hint(provider: str, key: str) -> None:
    """Key formats change (OpenAI's `sk-proj-`, ElevenLabs' `sk_`): a key that does not fit is
    the provider's own check to judge, and the answer says what keys usually look like."""
    hint = check_format(PROVIDERS[provider], key)
    assert hint == PROVIDERS[provider].key_shape.expected
    _assert_hint_shows_no_key(hint, key)


@pytest.mark.parametrize(
    ("target", "owner", "key"),
    [
        (t, o, k)
        for t in PROVIDERS
        if t != "openai-compatible"
        for o, keys in PREFIXED.items()
        if o != t
        for k in keys
    ],
)
def test_another_providers_prefix_is_refused_naming_that_provider(
    target: str, owner: str, key: str
) -> None:
    error = _refusal(target, key)
    assert error.message == f"This does not look like {_a(PROVIDERS[target].title)} key."
    assert f"POST /keys/{owner}" in error.extra["hint"]
    assert PROVIDERS[owner].title in error.extra["hint"]
    _assert_no_key(error, key)


def _fits_both(target: str, owner: str, key: str) -> bool:
    """Where one provider's real key also fits another's shape."""
    # A 32-hex-digit (old ElevenLabs) key is also 32 letters and digits (Mistral).
    return target == "mistral" and owner == "elevenlabs" and len(key) == 32


@pytest.mark.parametrize(
    ("target", "owner", "key"),
    [
        (t, o, k)
        for t in PROVIDERS
        for o, keys in EXAMPLES.items()
        if o not in (t, "openai-compatible")
        for k in keys
        if k not in PREFIXED[o]
    ],
)
def test_another_providers_key_without_a_prefix_passes_with_a_hint_naming_it(
    target: str, owner: str, key: str
) -> None:
    """Mistral, Deepgram and old ElevenLabs keys have no prefix: their shape alone is no proof
    of whose they are, so the target provider's check decides."""
    hint = check_format(PROVIDERS[target], key)
    if target == "openai-compatible" or _fits_both(target, owner, key):
        assert hint is None
        return
    assert hint is not None
    assert f"POST /keys/{owner}" in hint
    assert PROVIDERS[owner].title in hint
    _assert_hint_shows_no_key(hint, key)


def _a(title: str) -> str:
    return ("an " if title[0] in "AEIOU" else "a ") + title


@pytest.mark.parametrize(
    ("target", "key", "message", "hint"),
    [
        (
            "openai",
            "sk-ant-api03-" + "x" * 60,
            "This does not look like an OpenAI key.",
            'Keys starting with "sk-ant-" are Anthropic keys: POST /keys/anthropic.',
        ),
        (
            "openai",
            "gsk_" + "x" * 52,
            "This does not look like an OpenAI key.",
            'Keys starting with "gsk_" are Groq keys: POST /keys/groq.',
        ),
        (
            "anthropic",
            "AIza" + "x" * 35,
            "This does not look like an Anthropic key.",
            'Keys starting with "AIza" are Google keys: POST /keys/google.',
        ),
        (
            "openai",
            "sk-or-v1-" + "b" * 64,
            "This does not look like an OpenAI key.",
            'Keys starting with "sk-or-" are OpenRouter keys: POST /keys/openrouter.',
        ),
        (
            "openrouter",
            "sk-proj-" + "x" * 60,
            "This does not look like an OpenRouter key.",
            'Keys starting with "sk-" are OpenAI keys: POST /keys/openai.',
        ),
        (
            "openai",
            "sk_" + "c" * 48,
            "This does not look like an OpenAI key.",
            'Keys starting with "sk_" are ElevenLabs keys: POST /keys/elevenlabs.',
        ),
    ],
)
def test_wrong_provider_hints(target: str, key: str, message: str, hint: str) -> None:
    error = _refusal(target, key)
    assert error.message == message
    assert error.extra["hint"] == hint
    assert json.loads(error.body()) == {
        "error": message,
        "code": "invalid_key_format",
        "hint": hint,
    }


@pytest.mark.parametrize(
    ("target", "key", "hint"),
    [
        ("huggingface", "d" * 40, "This looks like a Deepgram key: POST /keys/deepgram."),
        (
            "deepgram",
            "e" * 32,
            "This looks like a Mistral or ElevenLabs key: POST /keys/mistral or "
            "POST /keys/elevenlabs.",
        ),
        ("openai", "f" * 40, "This looks like a Deepgram key: POST /keys/deepgram."),
        ("elevenlabs", "xi-" + "a" * 40, PROVIDERS["elevenlabs"].key_shape.expected),
        ("google", "ya29." + "b" * 40, PROVIDERS["google"].key_shape.expected),
    ],
)
def test_unfamiliar_key_hints(target: str, key: str, hint: str) -> None:
    """Not refused: a key with no provider's prefix may be a new format; the hint says what it
    looks like instead."""
    assert check_format(PROVIDERS[target], key) == hint


def test_most_specific_prefix_wins_whatever_the_table_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reordered = dict(reversed(list(PROVIDERS.items())))
    for table in (PROVIDERS, reordered):
        monkeypatch.setattr("relay.providers.verify.PROVIDERS", table)
        check_format(PROVIDERS["anthropic"], "sk-ant-api03-" + "x" * 60)
        check_format(PROVIDERS["openrouter"], "sk-or-v1-" + "b" * 64)
        assert "POST /keys/anthropic" in _refusal("openai", "sk-ant-" + "x" * 60).extra["hint"]
        assert "POST /keys/openrouter" in _refusal("groq", "sk-or-" + "x" * 60).extra["hint"]


def test_openai_compatible_takes_any_servers_key() -> None:
    for keys in EXAMPLES.values():
        for key in keys:
            assert check_format(PROVIDERS["openai-compatible"], key) is None


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("sk-proj-abcdefgh1234a1b2", "sk-...a1b2"),
        ("0123456789abcdef", "012...cdef"),  # 16: the long form
        ("0123456789abcde", "...de"),  # 15: only the last two
        ("short-key1", "...y1"),
    ],
)
def test_key_hint(key: str, hint: str) -> None:
    assert key_hint(key) == hint


# --------------------------------------------------------------------------------------------
# Verification against the mock provider
# --------------------------------------------------------------------------------------------

# provider -> (the probe's path, the header carrying the key, how the key is written in it)
PROBES: dict[str, tuple[str, str, str]] = {
    "openai": ("/v1/models", "authorization", "Bearer {}"),
    "anthropic": ("/v1/models", "x-api-key", "{}"),
    "google": ("/v1beta/models", "x-goog-api-key", "{}"),
    "groq": ("/openai/v1/models", "authorization", "Bearer {}"),
    "openrouter": ("/api/v1/key", "authorization", "Bearer {}"),
    "mistral": ("/v1/models", "authorization", "Bearer {}"),
    "elevenlabs": ("/v1/models", "xi-api-key", "{}"),
    "deepgram": ("/v1/projects", "authorization", "Token {}"),
    "openai-compatible": ("/v1/models", "authorization", "Bearer {}"),
}

# What a key must contain for the mock's answer (letters, and hex-only for hex-only keys).
MARKERS: dict[str, tuple[str, str]] = {
    "ok": ("", ""),
    "401": ("mock401", "deadbeef401"),
    "403": ("mock403", "deadbeef403"),
    "402": ("mock402", "deadbeef402"),
    "quota": ("mockquota", "deadbeef0402"),
    "429": ("mock429", "deadbeef429"),
    "500": ("mock500", "deadbeef500"),
    "slow": ("mockslow", "deadbeef0504"),
    "invalid": ("mockinvalid", "deadbeef0400"),
    "scoped": ("mockscoped", "deadbeef0403"),
}

_KEY_TEMPLATES: dict[str, Callable[[str, str, str], str]] = {
    "openai": lambda m, h, t: f"sk-proj-{m}-{'a' * 40}{t}",
    "anthropic": lambda m, h, t: f"sk-ant-api03-{m}-{'a' * 60}{t}",
    "google": lambda m, h, t: "AIza" + (m + "a" * 35)[: 35 - len(t)] + t,
    "groq": lambda m, h, t: f"gsk_{m}{'a' * 44}{t}",
    "openrouter": lambda m, h, t: f"sk-or-v1-{m}{'a' * 56}{t}",
    "mistral": lambda m, h, t: (m + "a" * 32)[: 32 - len(t)] + t,
    "elevenlabs": lambda m, h, t: "sk_" + (h + "0" * 48)[: 48 - len(t)] + t,
    "deepgram": lambda m, h, t: (h + "0" * 40)[: 40 - len(t)] + t,
    "openai-compatible": lambda m, h, t: f"local-{m}-key-{t}",
    "huggingface": lambda m, h, t: f"hf_{m}{'a' * 30}{t}",
}


def make_key(provider: str, case: str) -> str:
    """A key of the provider's real shape that makes the mock answer `case`, ending in a
    fresh random hex tail (so a test can tell whether any of it leaked)."""
    letters, hexa = MARKERS[case]
    tail = f"{random.getrandbits(32):08x}"
    key = _KEY_TEMPLATES[provider](letters, hexa, tail)
    assert case == "ok" or any(m and m in key.lower() for m in (letters, hexa))
    assert check_format(PROVIDERS[provider], key) is None  # they fit the shape, too
    return key


def test_every_probe_is_covered() -> None:
    assert set(PROBES) == {p.name for p in PROVIDERS.values() if p.verify_path is not None}
    assert set(_KEY_TEMPLATES) == set(PROVIDERS)
    for name, (path, _, _) in PROBES.items():
        assert PROVIDERS[name].verify_path == path


# The mock's answer for a key of no credit differs per provider: its own quota answer.
QUOTA_STATUS = {
    "openai": 429,
    "groq": 429,
    "mistral": 429,
    "openai-compatible": 429,
    "anthropic": 400,
    "google": 429,
    "elevenlabs": 401,
    "deepgram": 402,
    "openrouter": 200,
}

CASES = [
    ("ok", "ok", True, 200),
    ("401", "invalid", True, 401),
    ("403", "invalid", True, 403),
    ("402", "no_credit", True, 402),
    ("quota", "no_credit", True, None),
    ("429", "rate_limited", True, 429),
    ("500", "unverified", False, 500),
]


def _check_request(mock: MockProvider, provider: str, key: str) -> None:
    """Exactly one request reached the mock: a GET of the probe, the key in its scheme."""
    assert len(mock.requests) == 1
    received = mock.last()
    path, header, scheme = PROBES[provider]
    assert received.method == "GET"
    assert received.path == path
    assert received.body == b""
    assert received.header(header) == scheme.format(key)
    if header != "authorization":
        assert received.header("authorization") is None
    if provider == "anthropic":
        assert received.header("anthropic-version") == "2023-06-01"


def _check_detail(result: Verification, key: str) -> None:
    assert result.detail
    assert key not in result.detail
    assert key[-8:] not in result.detail
    assert key_hint(key) not in result.detail


@pytest.mark.anyio
@pytest.mark.parametrize("provider", sorted(PROBES))
@pytest.mark.parametrize(("case", "status", "conclusive", "http_status"), CASES)
async def test_provider_answers_map_to_states(
    mock: MockProvider,
    provider: str,
    case: str,
    status: str,
    conclusive: bool,
    http_status: int | None,
) -> None:
    key = make_key(provider, case)
    async with httpx.AsyncClient() as http:
        result = await verify_key(http, PROVIDERS[provider], mock.url, key, timeout=5)
    assert result.status == status, result
    assert result.conclusive is conclusive
    assert result.refused is (conclusive and status != "ok")
    expected_http = QUOTA_STATUS[provider] if http_status is None else http_status
    assert result.http_status == expected_http
    _check_detail(result, key)
    _check_request(mock, provider, key)


@pytest.mark.anyio
async def test_details_are_sentences_of_ours(mock: MockProvider) -> None:
    openai = PROVIDERS["openai"]
    expected = {
        "ok": "the provider accepted the key (200)",
        "401": "the key was refused (401)",
        "402": "the account has no credit (402)",
        "quota": "the account has no credit or a billing problem (429)",
        "429": "the provider is rate-limiting this key (429)",
        "500": "the provider failed (500), so the key could not be checked",
    }
    async with httpx.AsyncClient() as http:
        for case, detail in expected.items():
            key = make_key("openai", case)
            result = await verify_key(http, openai, mock.url, key, timeout=5)
            assert result.detail == detail
    # The mock's own 401 quotes part of the key back, as OpenAI does; none of that got out.
    key = make_key("openai", "401")
    async with httpx.AsyncClient() as http:
        raw = await http.get(mock.url + "/v1/models", headers={"authorization": f"Bearer {key}"})
    assert key[-4:] in raw.json()["error"]["message"]


@pytest.mark.anyio
async def test_google_bad_key_answer_is_invalid(mock: MockProvider) -> None:
    """Google answers a bad key with 400 `API_KEY_INVALID`, not 401."""
    key = make_key("google", "invalid")
    async with httpx.AsyncClient() as http:
        result = await verify_key(http, PROVIDERS["google"], mock.url, key, timeout=5)
    assert (result.status, result.http_status, result.conclusive) == ("invalid", 400, True)
    assert result.detail == "the key was refused (400)"


@pytest.mark.anyio
async def test_google_rate_limit_mentioning_billing_details_is_a_rate_limit(
    mock: MockProvider,
) -> None:
    """Google's per-minute 429 says "check your plan and billing details": not a lack of
    credit. Its "prepayment credits are depleted" 429 is."""
    google = PROVIDERS["google"]
    limited, broke = make_key("google", "429"), make_key("google", "quota")
    async with httpx.AsyncClient() as http:
        raw = await http.get(mock.url + "/v1beta/models", headers={"x-goog-api-key": limited})
        assert "billing details" in raw.json()["error"]["message"]
        assert raw.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert (await verify_key(http, google, mock.url, limited, timeout=5)).status == (
            "rate_limited"
        )
        assert (await verify_key(http, google, mock.url, broke, timeout=5)).status == ("no_credit")


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["openai", "elevenlabs"])
async def test_scoped_key_is_genuine(mock: MockProvider, provider: str) -> None:
    """A restricted key that may not list models is answered 401 "missing scopes" /
    `missing_permissions`: the provider knows it, so it is not an invalid key."""
    key = make_key(provider, "scoped")
    async with httpx.AsyncClient() as http:
        result = await verify_key(http, PROVIDERS[provider], mock.url, key, timeout=5)
    assert (result.status, result.conclusive, result.http_status) == ("ok", True, 401)
    assert not result.refused


@pytest.mark.anyio
async def test_slow_provider_is_inconclusive_and_the_request_is_dropped(
    mock: MockProvider,
) -> None:
    key = make_key("openai", "slow")
    started = time.monotonic()
    async with httpx.AsyncClient() as http:
        result = await verify_key(http, PROVIDERS["openai"], mock.url, key, timeout=0.5)
    elapsed = time.monotonic() - started
    assert result == Verification("unverified", False, "the provider did not answer in time")
    assert not result.refused
    assert 0.4 < elapsed < 2, elapsed
    _check_request(mock, "openai", key)
    gone = await anyio.to_thread.run_sync(mock.wait_for_disconnect, 3)
    assert gone is not None
    assert gone - started < 2


@pytest.mark.anyio
async def test_unreachable_provider_is_inconclusive() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more: the connection is refused.
    async with httpx.AsyncClient() as http:
        result = await verify_key(
            http, PROVIDERS["openai"], f"http://127.0.0.1:{port}", "sk-" + "a" * 40, timeout=2
        )
    assert result == Verification("unverified", False, "the provider could not be reached")


@pytest.mark.anyio
async def test_provider_without_probe_is_not_asked(mock: MockProvider) -> None:
    huggingface = PROVIDERS["huggingface"]
    assert huggingface.verify_path is None
    async with httpx.AsyncClient() as http:
        result = await verify_key(
            http, huggingface, mock.url, make_key("huggingface", "401"), timeout=5
        )
    assert result == Verification("unverified", False, "this provider offers no free key check")
    assert mock.requests == []


@pytest.mark.anyio
async def test_unsendable_key_is_invalid_without_a_request(mock: MockProvider) -> None:
    async with httpx.AsyncClient() as http:
        for key in ("sk-ключ-" + "a" * 30, "sk-" + "a" * 30 + "\n"):
            result = await verify_key(http, PROVIDERS["openai"], mock.url, key, timeout=5)
            assert (result.status, result.conclusive, result.http_status) == (
                "invalid",
                True,
                None,
            )
    assert mock.requests == []


# In-memory transports for what the mock cannot show: redirects and oversized answers.


def _recording_client(
    answer: Callable[[httpx.Request], httpx.Response],
) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler), follow_redirects=True), seen


@pytest.mark.anyio
async def test_redirects_are_not_followed() -> None:
    client, seen = _recording_client(
        lambda r: httpx.Response(302, headers={"location": "http://127.0.0.1:9/elsewhere"})
    )
    async with client:
        result = await verify_key(
            client, PROVIDERS["openai"], "http://127.0.0.1:1", "sk-" + "a" * 40, timeout=5
        )
    assert [str(r.url) for r in seen] == ["http://127.0.0.1:1/v1/models"]
    assert (result.status, result.conclusive, result.http_status) == ("unverified", False, 302)


@pytest.mark.anyio
@pytest.mark.parametrize(("offset", "status"), [(0, "no_credit"), (BODY_PREFIX_LIMIT, "invalid")])
async def test_only_a_prefix_of_the_answer_is_read(offset: int, status: str) -> None:
    """Wording past the first `BODY_PREFIX_LIMIT` bytes is never seen, and a long answer is
    not read to its end."""
    message = b"Your credit balance is too low to access the Anthropic API."
    pulled: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        yield b" " * offset + message
        for i in range(1000):  # a further 4 MB
            pulled.append(i)
            yield b" " * 4096

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept-encoding"] == "identity"
        return httpx.Response(403, content=body(), headers={"content-type": "text/plain"})

    client, seen = _recording_client(answer)
    async with client:
        result = await verify_key(
            client, PROVIDERS["anthropic"], "http://127.0.0.1:1", "sk-ant-" + "a" * 40, timeout=5
        )
    assert len(seen) == 1
    assert result.status == status
    assert len(pulled) <= 5


@pytest.mark.anyio
async def test_the_whole_check_keeps_to_its_time_budget() -> None:
    """A provider that answers at once but drips its body still gets only `timeout`."""

    async def drip() -> AsyncIterator[bytes]:
        for _ in range(20):
            await anyio.sleep(0.1)
            yield b" "

    client, _ = _recording_client(lambda r: httpx.Response(401, content=drip()))
    started = time.monotonic()
    async with client:
        result = await verify_key(
            client, PROVIDERS["openai"], "http://127.0.0.1:1", "sk-" + "a" * 40, timeout=0.5
        )
    assert time.monotonic() - started < 1.5
    assert result == Verification("unverified", False, "the provider did not answer in time")


@pytest.mark.anyio
async def test_an_already_read_answer_is_classified() -> None:
    body = {"error": {"type": "insufficient_quota", "code": "insufficient_quota"}}
    client, _ = _recording_client(lambda r: httpx.Response(429, json=body))
    async with client:
        result = await verify_key(
            client, PROVIDERS["openai"], "http://127.0.0.1:1", "sk-" + "a" * 40, timeout=5
        )
    assert (result.status, result.http_status) == ("no_credit", 429)


def test_verification_is_frozen() -> None:
    result = Verification("ok", True, "the provider accepted the key (200)", 200)
    with pytest.raises(AttributeError):
        result.status = "invalid"  # type: ignore[misc]


def test_table_fields_have_safe_defaults() -> None:
    """A provider row without shape or probe data fits printable keys and is unverified."""
    bare = Provider("x", "https://x.invalid", "authorization", "Bearer ", allowed_paths=("/v1",))
    assert check_format(bare, "0123456789") is None
    assert check_format(bare, "012345678") == KeyShape().expected
    assert bare.verify_path is None
