"""Checking a provider key before it is stored: its shape, then one free call to the provider.

    check_format(provider, key)      400 `invalid_key_format`, with a `hint` naming the provider
                                     it belongs to, when the key carries another provider's
                                     prefix; else the hint for a key of unfamiliar shape (None
                                     when it fits), which the provider's own answer then judges
    verify_key(http, provider, ...)  one read-only GET (the models listing) with the key, as the
                                     relay would send it; the answer becomes a `Verification`
    key_hint(key)                    `sk-...a1b2`: enough for a person to tell their keys apart

The shapes and the probe of each provider are data in `relay.providers.table` (`key_shape`,
`verify_path`, `verify_credit`). Nothing here ever puts a key, or a provider's raw answer (which
may quote the key), into a message.

Longer than most modules because each provider says "bad key" and "no credit" its own way: the
classification of every provider's answers is kept beside the one probe that gets them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncGenerator, Iterator
from typing import Final, Literal

import anyio
import httpx

from relay.errors import BadRequest
from relay.providers.table import PROVIDERS, Provider, forwarded_request_headers

__all__ = [
    "BODY_PREFIX_LIMIT",
    "Status",
    "Verification",
    "check_format",
    "key_hint",
    "verify_key",
]

Status = Literal["ok", "invalid", "no_credit", "rate_limited", "unverified"]

BODY_PREFIX_LIMIT: Final = 16 * 1024
"""At most this much of a provider's answer is read to classify it."""


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------


def _title(provider: Provider) -> str:
    return provider.title or provider.name


def _article(title: str) -> str:
    return "an" if title[:1].lower() in "aeiou" else "a"


def _owner_by_prefix(key: str) -> Provider | None:
    """The provider whose key prefix the key starts with, the longest prefix winning."""
    owner: Provider | None = None
    for p in PROVIDERS.values():
        prefix = p.key_shape.prefix
        longer = owner is None or len(prefix) > len(owner.key_shape.prefix)
        if prefix and key.startswith(prefix) and longer:
            owner = p
    return owner


def _fits(provider: Provider, key: str) -> bool:
    return re.fullmatch(provider.key_shape.pattern, key) is not None


def _hint(provider: Provider, key: str, owner: Provider | None) -> str:
    """Which provider the key looks like, else what this provider's keys look like."""
    if owner is not None and owner.name != provider.name:
        prefix = owner.key_shape.prefix
        return f'Keys starting with "{prefix}" are {_title(owner)} keys: POST /keys/{owner.name}.'
    if owner is None:
        alike = [
            p
            for p in PROVIDERS.values()
            if p.name != provider.name and not p.key_shape.foreign and _fits(p, key)
        ]
        if alike:
            titles = " or ".join(_title(p) for p in alike)
            paths = " or ".join(f"POST /keys/{p.name}" for p in alike)
            return f"This looks like {_article(titles)} {titles} key: {paths}."
    return provider.key_shape.expected


def check_format(provider: Provider, key: str) -> str | None:
    """Raise `BadRequest` (400, `invalid_key_format`, with a `hint`) only when `key` carries
    another provider's prefix, even where the pattern would let it through (`sk-ant-...` is not
    an OpenAI key), except for a provider whose shape accepts foreign keys (openai-compatible).

    Otherwise the shape is a hint, not a gate (providers change their key formats): the hint
    for a key that does not fit `provider`'s pattern, None for one that does."""
    owner = _owner_by_prefix(key)
    if owner is not None and owner.name != provider.name and not provider.key_shape.foreign:
        title = _title(provider)
        raise BadRequest(
            f"This does not look like {_article(title)} {title} key.",
            code="invalid_key_format",
            hint=_hint(provider, key, owner),
        )
    return None if _fits(provider, key) else _hint(provider, key, owner)


def key_hint(key: str) -> str:
    """Enough of a key for a person to tell which of theirs it is (`sk-...a1b2`): never more
    than 7 of its characters, and only 2 of a short one."""
    return f"{key[:3]}...{key[-4:]}" if len(key) >= 16 else f"...{key[-2:]}"


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verification:
    """What the provider's answer says about a key."""

    status: Status
    """`ok`, `invalid`, `no_credit`, `rate_limited`, or `unverified` (the check said nothing:
    the provider failed, was slow or unreachable, or offers no free check)."""
    conclusive: bool
    """The provider answered about the key itself; False exactly for `unverified`."""
    detail: str
    """A short sentence for a person (`the key was refused (401)`); never the key, never the
    provider's own words."""
    http_status: int | None = None
    """The provider's HTTP status, None when it gave none (or was not asked)."""

    @property
    def refused(self) -> bool:
        """The provider conclusively refused the key: it must not replace a stored one."""
        return self.conclusive and self.status != "ok"


@dataclasses.dataclass(frozen=True)
class _Rule:
    """Answers with one of `codes` whose body shows one of `tokens` (error codes, types and
    reasons, as words) or matches `wording` (if neither is given: any body) mean `status`."""

    codes: frozenset[int]
    status: Status
    detail: str
    """`{code}` is replaced by the HTTP status."""
    tokens: frozenset[str] = frozenset()
    wording: re.Pattern[str] | None = None

    def matches(self, code: int, words: frozenset[str], text: str) -> bool:
        if code not in self.codes:
            return False
        if not self.tokens and self.wording is None:
            return True
        return bool(self.tokens & words) or bool(self.wording and self.wording.search(text))


def _codes(*codes: int | range) -> frozenset[int]:
    out: set[int] = set()
    for c in codes:
        out.update(c if isinstance(c, range) else (c,))
    return frozenset(out)


# First match wins. The providers' own ways of saying "no credit":
# OpenAI 429 `insufficient_quota`; Anthropic 400 "Your credit balance is too low" and the
# `billing_error` type; ElevenLabs 401 `quota_exceeded`; Deepgram 402 `ASR_PAYMENT_REQUIRED`;
# Google 403 `BILLING_DISABLED` or 429 "prepayment credits are depleted". Not the bare word
# "billing": Google's ordinary per-minute 429 says "check your plan and billing details".
_NO_CREDIT_TOKENS: Final = frozenset(
    {
        "insufficient_quota",
        "billing_error",
        "billing_disabled",
        "billing_not_active",
        "quota_exceeded",
        "payment_required",
        "asr_payment_required",
        "insufficient_credits",
        "insufficient_funds",
    }
)
_NO_CREDIT_WORDING: Final = re.compile(
    r"credit balance is too low|credits? (?:are |is |have been )?(?:depleted|exhausted)"
    r"|insufficient (?:credit|funds|balance)|out of credits?|requires billing"
    r"|billing (?:is )?(?:not (?:been )?enabled|disabled|required)|enable billing"
    r"|payment required"
)
# A scoped key (OpenAI restricted keys, ElevenLabs key permissions) that may not list models is
# still a key the provider knows: 401 "Missing scopes: api.model.read" / `missing_permissions`.
_SCOPED_TOKENS: Final = frozenset({"missing_permissions"})
_SCOPED_WORDING: Final = re.compile(
    r"insufficient permissions|missing scopes?\b|missing the permission"
)
# Google answers a bad key with 400 `API_KEY_INVALID`.
_BAD_KEY_TOKENS: Final = frozenset({"api_key_invalid", "invalid_api_key", "authentication_error"})
_BAD_KEY_WORDING: Final = re.compile(r"api key not valid|invalid api key|incorrect api key")

_RULES: Final = (
    _Rule(_codes(range(200, 300)), "ok", "the provider accepted the key ({code})"),
    _Rule(_codes(402), "no_credit", "the account has no credit ({code})"),
    _Rule(
        _codes(400, 401, 403, 429),
        "no_credit",
        "the account has no credit or a billing problem ({code})",
        _NO_CREDIT_TOKENS,
        _NO_CREDIT_WORDING,
    ),
    _Rule(
        _codes(401, 403),
        "ok",
        "the provider knows the key but it may not list models ({code})",
        _SCOPED_TOKENS,
        _SCOPED_WORDING,
    ),
    _Rule(_codes(401, 403), "invalid", "the key was refused ({code})"),
    _Rule(
        _codes(400), "invalid", "the key was refused ({code})", _BAD_KEY_TOKENS, _BAD_KEY_WORDING
    ),
    _Rule(_codes(429), "rate_limited", "the provider is rate-limiting this key ({code})"),
    _Rule(
        _codes(range(500, 600)),
        "unverified",
        "the provider failed ({code}), so the key could not be checked",
    ),
)
_OTHER_ANSWER: Final = "the provider answered {code}, so the key could not be checked"

_NO_PROBE: Final = Verification("unverified", False, "this provider offers no free key check")
_TIMED_OUT: Final = Verification("unverified", False, "the provider did not answer in time")
_UNREACHABLE: Final = Verification("unverified", False, "the provider could not be reached")
_UNSENDABLE: Final = Verification(
    "invalid", True, "the key has characters that cannot be sent in an HTTP header"
)

# Sent with the probe as if the client had sent them: a JSON answer, not compressed (the
# body is read raw and only in part, so a compressed one could not be classified).
_PROBE_HEADERS: Final = {"accept": "application/json", "accept-encoding": "identity"}


def _strings(value: object) -> Iterator[str]:
    """Every string value in a parsed JSON document (not the keys)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _parse(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _signals(body: bytes) -> tuple[frozenset[str], str]:
    """(the words of the answer, lower-cased, as tokens; its text, lower-cased). For JSON the
    text is its string values, whatever the provider's error shape."""
    parsed = _parse(body)
    text = "\n".join(_strings(parsed)) if parsed is not None else ""
    if not text:
        text = body.decode("utf-8", "replace")
    text = text.lower()
    return frozenset(re.findall(r"[a-z0-9_]+", text)), text


def _credit_left(body: bytes, path: tuple[str, ...]) -> float | None:
    value: object = _parse(body)
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _classify(provider: Provider, code: int, body: bytes) -> Verification:
    if 200 <= code < 300 and provider.verify_credit:
        left = _credit_left(body, provider.verify_credit)
        if left is not None and left <= 0:
            return Verification("no_credit", True, f"the key has no credit left ({code})", code)
    words, text = _signals(body)
    for rule in _RULES:
        if rule.matches(code, words, text):
            conclusive = rule.status != "unverified"
            return Verification(rule.status, conclusive, rule.detail.format(code=code), code)
    return Verification("unverified", False, _OTHER_ANSWER.format(code=code), code)


def _wants_body(provider: Provider, code: int) -> bool:
    return 400 <= code < 500 or (200 <= code < 300 and bool(provider.verify_credit))


async def _read_prefix(response: httpx.Response) -> bytes:
    if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
        return b""  # it ignored `accept-encoding: identity`; the status has to do
    if response.is_stream_consumed:  # answered from memory, already read (a test transport)
        try:
            return response.content[:BODY_PREFIX_LIMIT]
        except httpx.ResponseNotRead:
            return b""
    body = bytearray()
    chunks = response.aiter_raw()
    try:
        async for chunk in chunks:
            body += chunk
            if len(body) >= BODY_PREFIX_LIMIT:
                break
    finally:
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()
    return bytes(body[:BODY_PREFIX_LIMIT])


async def verify_key(
    http: httpx.AsyncClient,
    provider: Provider,
    base_url: str,
    key: str,
    *,
    timeout: float,  # noqa: ASYNC109 - one budget for the whole call, enforced inside
) -> Verification:
    """Ask the provider about `key` with one free, read-only request: GET `base_url` +
    `provider.verify_path`, the key sent exactly as the relay sends it, no redirects, the whole
    exchange within `timeout` seconds.

    `base_url` is the provider's configured origin (`Settings.base_url_for`); for
    openai-compatible the operator's configured upstream (a client-named one is never probed). Never
    raises for anything the provider does.
    """
    if provider.verify_path is None:
        return _NO_PROBE
    if not (key.isascii() and key.isprintable()):
        return _UNSENDABLE
    url = base_url.rstrip("/") + provider.verify_path
    headers = forwarded_request_headers(provider, _PROBE_HEADERS, key)
    try:
        with anyio.fail_after(timeout):
            async with http.stream(
                "GET", url, headers=headers, timeout=timeout, follow_redirects=False
            ) as response:
                code = response.status_code
                body = await _read_prefix(response) if _wants_body(provider, code) else b""
    except (TimeoutError, httpx.TimeoutException):
        return _TIMED_OUT
    except (httpx.HTTPError, httpx.InvalidURL):
        return _UNREACHABLE
    return _classify(provider, code, body)
