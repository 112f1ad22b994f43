"""The provider table: everything that differs between providers, as data.

Adding a provider adds a row to `PROVIDERS`; no other module names a provider except where a
feature is provider-specific by nature (openai-compatible's per-request upstream).

Its length is the table: ten providers, each a declaration of data; the functions below it are
the few that read it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote

from relay.errors import BadRequest

__all__ = [
    "PROVIDERS",
    "KeyShape",
    "Provider",
    "forwarded_request_headers",
    "unsupported_provider",
]

# Forwarded to every provider when the client sends them.
COMMON_REQUEST_HEADERS: Final = ("content-type", "accept", "accept-encoding", "accept-language")


@dataclasses.dataclass(frozen=True)
class KeyShape:
    """What a provider's keys look like, for `relay.providers.verify.check_format`: a hint, not a
    gate, except for a prefix that is another provider's."""

    pattern: str = r"[\x20-\x7e]{10,}"
    """A regular expression this provider's keys match as a whole; a key that does not is still
    the provider's own check to judge."""
    prefix: str = ""
    """What this provider's keys start with, and no other's: a key sent to another provider is
    recognised by its longest matching prefix and refused there (so `sk-ant-` is Anthropic's
    although OpenAI's `sk-` matches too)."""
    expected: str = "Keys are at least 10 printable ASCII characters."
    """One sentence telling a person what a key of this provider looks like (the hint shown with
    a key that does not match `pattern`)."""
    foreign: bool = False
    """Also accept keys that carry another provider's prefix (openai-compatible: any server's)."""


@dataclasses.dataclass(frozen=True)
class Provider:
    name: str
    base_url: str
    """Public upstream origin; empty for openai-compatible (the client names it per request)."""
    auth_header: str
    auth_prefix: str
    """The key is sent as `<auth_header>: <auth_prefix><key>`."""
    allowed_paths: tuple[str, ...]
    """A path is allowed when it equals a prefix or continues one with `/`."""
    read_paths: tuple[str, ...] = ()
    """Path prefixes where GET is allowed as well as POST."""
    listing_paths: tuple[str, ...] = ()
    """Path prefixes where GET alone is allowed: the model listing the SDKs read (`models.list`,
    `models.retrieve`), which names no model and spends nothing."""
    openai_base: str = ""
    """The base path of the provider's own OpenAI-compatible API (its `/chat/completions` and
    `/models` below it), where `/relay/v1` sends; empty: it has none."""
    forwarded_headers: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(upstream name, client names in order of preference) forwarded besides the common ones."""
    default_headers: tuple[tuple[str, str], ...] = ()
    """Sent when the client did not send that header itself."""
    sse_query: tuple[tuple[str, str, str], ...] = ()
    """(path suffix, query name, value): added to the query when the path ends with the suffix."""
    withheld_query: tuple[str, ...] = ()
    """Query parameters never forwarded, by lower-cased name, matched in any case and after
    percent-decoding: credentials of the client's own, which would take the stored key's place."""
    request_id_header: str | None = None
    """The header this provider takes a client's request id in (logged on its side too), which
    the relay fills with its own request id."""
    model_in: str = "body:model"
    """Where a request names its model, for `ALLOWED_MODELS`: `body:<field>` (JSON or form),
    `query:<name>`, `path:rest` (the path after the allowed prefix) or `path:action` (the
    same, up to `:`)."""
    title: str = ""
    """The provider's name as people write it (`OpenAI`); empty: `name`."""
    max_output: int = 0
    """The most output tokens an answer may hold when the request sets no limit (the longest
    any of its models writes): what a spending cap reserves for it. 0: its answers are not
    counted in tokens (audio)."""
    key_shape: KeyShape = KeyShape()
    verify_path: str | None = None
    """A free, read-only GET that needs a valid key (the models listing), sent when a key is
    saved with verification or rotated; None: no such request exists, a key cannot be checked."""
    verify_credit: tuple[str, ...] = ()
    """The JSON path, in the answer to `verify_path`, of the credit left on the key: a number at
    or below zero means the key cannot pay (OpenRouter's key-info endpoint reports it)."""

    def allows(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.allowed_paths)

    def allows_read(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.read_paths)

    def allows_listing(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.listing_paths)

    def withholds(self, parameter: str) -> bool:
        """Whether the query's `name=value` part `parameter` names one of `withheld_query`."""
        return unquote(parameter.partition("=")[0]).lower() in self.withheld_query


def _compatible_paths() -> tuple[str, ...]:
    endpoints = (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/responses",
    )
    return tuple(prefix + e for prefix in ("", "/api", "/openai") for e in endpoints)


_BEARER = ("authorization", "Bearer ")
_ANTHROPIC_HEADERS = (
    ("anthropic-version", ("anthropic-version",)),
    ("anthropic-beta", ("anthropic-beta",)),
)
_OPENAI_HEADERS = (
    ("openai-organization", ("openai-organization",)),
    ("openai-project", ("openai-project",)),
)

PROVIDERS: Final[Mapping[str, Provider]] = {
    p.name: p
    for p in (
        Provider(
            "openai",
            "https://api.openai.com",
            *_BEARER,
            allowed_paths=(
                "/v1/chat/completions",
                "/v1/completions",
                "/v1/embeddings",
                "/v1/responses",
                "/v1/audio/speech",
                "/v1/audio/transcriptions",
                "/v1/audio/translations",
                "/v1/images/generations",
                "/v1/moderations",
            ),
            read_paths=("/v1/responses",),
            listing_paths=("/v1/models",),
            forwarded_headers=_OPENAI_HEADERS,
            request_id_header="x-client-request-id",
            openai_base="/v1",
            title="OpenAI",
            key_shape=KeyShape(
                r"sk-[A-Za-z0-9_-]{20,}",
                "sk-",
                'OpenAI keys start with "sk-" (also "sk-proj-" or "sk-svcacct-").',
            ),
            verify_path="/v1/models",
            max_output=128_000,
        ),
        Provider(
            "anthropic",
            "https://api.anthropic.com",
            "x-api-key",
            "",
            allowed_paths=("/v1/messages", "/v1/complete", "/v1/chat/completions"),
            listing_paths=("/v1/models",),
            forwarded_headers=_ANTHROPIC_HEADERS,
            default_headers=(("anthropic-version", "2023-06-01"),),
            openai_base="/v1",
            title="Anthropic",
            key_shape=KeyShape(
                r"sk-ant-[A-Za-z0-9_-]{20,}", "sk-ant-", 'Anthropic keys start with "sk-ant-".'
            ),
            verify_path="/v1/models",
            max_output=128_000,
        ),
        Provider(
            "google",
            "https://generativelanguage.googleapis.com",
            "x-goog-api-key",
            "",
            allowed_paths=("/v1beta/models", "/v1/models", "/v1beta/openai/chat/completions"),
            listing_paths=("/v1beta/models", "/v1/models", "/v1beta/openai/models"),
            sse_query=((":streamGenerateContent", "alt", "sse"),),
            # Google's system parameters: an API key as `key` or `$key` (`%24key`), an OAuth
            # token as `access_token` or `oauth_token`.
            withheld_query=("key", "$key", "access_token", "oauth_token"),
            model_in="path:action",
            openai_base="/v1beta/openai",
            title="Google",
            key_shape=KeyShape(
                r"AIza[0-9A-Za-z_-]{35}",
                "AIza",
                'Google AI Studio keys start with "AIza" and are 39 characters long.',
            ),
            verify_path="/v1beta/models",
            max_output=65_536,
        ),
        Provider(
            "groq",
            "https://api.groq.com",
            *_BEARER,
            allowed_paths=(
                "/openai/v1/chat/completions",
                "/openai/v1/completions",
                "/openai/v1/embeddings",
                "/openai/v1/audio/speech",
                "/openai/v1/audio/transcriptions",
                "/openai/v1/audio/translations",
            ),
            listing_paths=("/openai/v1/models",),
            openai_base="/openai/v1",
            title="Groq",
            key_shape=KeyShape(r"gsk_[A-Za-z0-9]{20,}", "gsk_", 'Groq keys start with "gsk_".'),
            verify_path="/openai/v1/models",
            max_output=65_536,
        ),
        Provider(
            "openrouter",
            "https://openrouter.ai",
            *_BEARER,
            allowed_paths=("/api/v1/chat/completions", "/api/v1/completions", "/api/v1/embeddings"),
            listing_paths=("/api/v1/models",),
            forwarded_headers=(
                ("http-referer", ("http-referer", "x-relay-referer")),
                ("x-title", ("x-title",)),
            ),
            # OpenRouter credits requests to the app its HTTP-Referer names; the Node relay sent
            # its project's URL.
            default_headers=(("http-referer", "https://github.com/byok-relay/byok-relay"),),
            openai_base="/api/v1",
            title="OpenRouter",
            key_shape=KeyShape(
                r"sk-or-[A-Za-z0-9_-]{20,}", "sk-or-", 'OpenRouter keys start with "sk-or-".'
            ),
            verify_path="/api/v1/key",
            verify_credit=("data", "limit_remaining"),
            max_output=128_000,
        ),
        Provider(
            "mistral",
            "https://api.mistral.ai",
            *_BEARER,
            allowed_paths=(
                "/v1/chat/completions",
                "/v1/completions",
                "/v1/embeddings",
                "/v1/fim/completions",
            ),
            listing_paths=("/v1/models",),
            openai_base="/v1",
            title="Mistral",
            key_shape=KeyShape(r"[A-Za-z0-9]{32}", "", "Mistral keys are 32 letters and digits."),
            verify_path="/v1/models",
            max_output=128_000,
        ),
        Provider(
            "elevenlabs",
            "https://api.elevenlabs.io",
            "xi-api-key",
            "",
            allowed_paths=(
                "/v1/text-to-speech",
                "/v1/speech-to-speech",
                "/v1/sound-generation",
                "/v1/audio-isolation",
                "/v1/voice-generation",
                "/v1/voices",
            ),
            read_paths=("/v1/voices",),
            model_in="body:model_id",
            title="ElevenLabs",
            key_shape=KeyShape(
                r"sk_[0-9a-fA-F]{32,}|[0-9a-fA-F]{32}",
                "sk_",
                'ElevenLabs keys start with "sk_" and continue in hexadecimal digits '
                "(older keys are 32 hexadecimal digits).",
            ),
            verify_path="/v1/models",
        ),
        Provider(
            "huggingface",
            "https://api-inference.huggingface.co",
            *_BEARER,
            allowed_paths=("/models",),
            model_in="path:rest",
            title="Hugging Face",
            key_shape=KeyShape(
                r"hf_[A-Za-z0-9]{20,}", "hf_", 'Hugging Face tokens start with "hf_".'
            ),
            # Its token check (whoami) lives on huggingface.co, not on the inference host.
            verify_path=None,
            max_output=128_000,
        ),
        Provider(
            "deepgram",
            "https://api.deepgram.com",
            "authorization",
            "Token ",
            allowed_paths=("/v1/listen", "/v1/speak", "/v1/read"),
            model_in="query:model",
            title="Deepgram",
            key_shape=KeyShape(r"[0-9a-fA-F]{40}", "", "Deepgram keys are 40 hexadecimal digits."),
            verify_path="/v1/projects",
        ),
        Provider(
            "openai-compatible",
            "",
            *_BEARER,
            allowed_paths=_compatible_paths(),
            listing_paths=tuple(prefix + "/v1/models" for prefix in ("", "/api", "/openai")),
            forwarded_headers=_OPENAI_HEADERS + _ANTHROPIC_HEADERS,
            openai_base="/v1",
            title="OpenAI-compatible",
            key_shape=KeyShape(foreign=True),
            verify_path="/v1/models",
            max_output=128_000,
        ),
    )
}


# Encodings the usage meter can read as a copy passes (zlib); the client accepts them too, since
# it offered them. Brotli and zstd answers would pass through unmetered.
_METERABLE_ENCODINGS: Final = frozenset({"gzip", "deflate", "identity"})


def _meterable_encodings(accept_encoding: str) -> str:
    """The client's `accept-encoding`, less the encodings the relay cannot meter."""
    kept = [
        part.strip()
        for part in accept_encoding.split(",")
        if part.split(";")[0].strip().lower() in _METERABLE_ENCODINGS
    ]
    return ", ".join(kept) or "identity"


def _clean(value: str) -> bytes:
    """A header value as the bytes the client sent, less CR, LF and NUL: nothing a client
    sends can split a header, and non-ASCII bytes pass as they came."""
    return value.replace("\r", "").replace("\n", "").replace("\0", "").encode("latin-1")


def forwarded_request_headers(
    provider: Provider,
    client_headers: Mapping[str, str],
    key: str,
    defaults: Mapping[str, str] | None = None,
) -> list[tuple[bytes, bytes]]:
    """The headers sent upstream: the allowlisted client headers, the defaults, the stored key.

    `client_headers` maps lower-cased names to values. Nothing else the client sent (its
    `Authorization`, `x-relay-token`, cookies, hop-by-hop headers) is ever forwarded.
    `defaults` holds the operator's values for some of `provider.default_headers`, by name; the
    table's values stand for the others. Either is sent only where the client sent no value.
    """
    out: list[tuple[bytes, bytes]] = []
    for name in COMMON_REQUEST_HEADERS:
        value = client_headers.get(name)
        if value is not None:
            if name == "accept-encoding":
                value = _meterable_encodings(value)
            out.append((name.encode(), _clean(value)))
    for upstream_name, client_names in provider.forwarded_headers:
        for client_name in client_names:
            value = client_headers.get(client_name)
            if value is not None:
                out.append((upstream_name.encode(), _clean(value)))
                break
    sent = {name for name, _ in out}
    chosen = defaults or {}
    out.extend(
        (name.encode(), chosen.get(name, value).encode())
        for name, value in provider.default_headers
        if name.encode() not in sent
    )
    out.append((provider.auth_header.encode(), (provider.auth_prefix + key).encode()))
    return out


def unsupported_provider() -> BadRequest:
    """The 400 for a provider name the table does not hold."""
    return BadRequest(
        f"Unsupported provider. Supported: {', '.join(PROVIDERS)}", code="unsupported_provider"
    )
