"""`POST /relay`: which provider and path a model name goes to, as data shared with `/models`.

A `provider/name` model goes to that provider (prefix case-insensitive, stripped before
forwarding), at the path of the first of that provider's `ROUTES` matching the name, else at its
chat-style path; any other model goes where the first matching pattern of `ROUTES` says. The
model name is data, never a path: names that are not plain model names (`google/../x`, empty,
control characters) are refused, and the name is percent-encoded where it goes into a path.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Final
from urllib.parse import quote

from relay.errors import BadRequest
from relay.providers.table import PROVIDERS

__all__ = ["COMPATIBLE_CHAT", "ROUTES", "Route", "Routed", "route_compatible", "route_model"]

# A model name as providers spell them: letters, digits and . _ - : / @ (OpenRouter and Hugging
# Face use `org/name`, Bedrock-style ids use `:`), no `..` segment, at most 200 characters.
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,199}")
# Google model names go into the path (`models/{name}:action`): no `/` or `:` there.
_GOOGLE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclasses.dataclass(frozen=True)
class Route:
    pattern: str
    """A regular expression matched (case-insensitively) at the start of the model name."""
    provider: str
    path: str
    """The upstream path; `{model}` is replaced by the encoded name, `{action}` by Google's."""

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern, re.IGNORECASE)


_CHAT = "/v1/chat/completions"
_GOOGLE = "/v1beta/models/{model}:{action}"

ROUTES: Final = (
    Route(r"text-embedding-", "openai", "/v1/embeddings"),
    Route(r"gpt-", "openai", _CHAT),
    Route(r"chatgpt-", "openai", _CHAT),
    Route(r"o[134](?:-|$)", "openai", _CHAT),
    Route(r"claude-", "anthropic", "/v1/messages"),
    Route(r"gemini-", "google", _GOOGLE),
    Route(r"(?:mistral-|codestral-|open-mistral)", "mistral", _CHAT),
    Route(r"(?:llama|mixtral-|gemma-|qwen-)", "groq", "/openai/v1/chat/completions"),
)

# The providers a `provider/name` model may name (`GET /models`' `providerPrefixes`, in the
# Node relay's order), and the chat-style path for a name none of their routes matches.
_PREFIX_PATHS: Final = {
    "openai": _CHAT,
    "anthropic": "/v1/messages",
    "google": _GOOGLE,
    "groq": "/openai/v1/chat/completions",
    "openrouter": "/api/v1/chat/completions",
    "mistral": _CHAT,
    "openai-compatible": _CHAT,
}


@dataclasses.dataclass(frozen=True)
class Routed:
    provider: str
    model: str
    """The name the provider receives (any `provider/` prefix stripped)."""
    path: str
    query: str = ""
    in_path: bool = False
    """The model travels in the path (Google's native API): the body must not name it."""


# Each provider's own OpenAI-compatible chat endpoint, where `/relay/v1/chat/completions` sends
# an OpenAI-format body as it is (its model less any `provider/` prefix): no translation of ours.
COMPATIBLE_CHAT: Final = {
    name: provider.openai_base + "/chat/completions"
    for name, provider in PROVIDERS.items()
    if provider.openai_base
}


def _unroutable(model: str) -> BadRequest:
    return BadRequest(
        f'Cannot route model "{model}". Use a "provider/name" model '
        f"(providers: {', '.join(_PREFIX_PATHS)}) or a known model family; see GET /models.",
        code="unroutable_model",
    )


def _first_route(name: str, provider: str | None = None) -> Route | None:
    """The first route matching `name`, among `provider`'s routes when one is given."""
    return next((r for r in ROUTES if provider in (None, r.provider) and r.regex.match(name)), None)


def route_model(model: object, stream: bool) -> Routed:
    """Where `model` goes. `stream` picks Google's streaming action."""
    if not isinstance(model, str) or not model.strip():
        raise BadRequest(
            'model field is required. Name a model such as "gpt-4o-mini" or '
            '"anthropic/claude-3-5-haiku-latest"; see GET /models.',
            code="model_required",
        )
    prefix, slash, rest = model.partition("/")
    provider = prefix.lower()
    if slash and provider in _PREFIX_PATHS:
        route = _first_route(rest, provider)
        name, path = rest, route.path if route is not None else _PREFIX_PATHS[provider]
    else:
        route = _first_route(model)
        if route is None:
            raise _unroutable(model)
        provider, name, path = route.provider, model, route.path
    pattern = _GOOGLE_NAME if provider == "google" else _NAME
    if not pattern.fullmatch(name) or ".." in name.split("/") or name.endswith("/"):
        raise BadRequest(f'"{model}" is not a valid model name.', code="invalid_model")
    if "{model}" not in path:
        return Routed(provider, name, path)
    action = "streamGenerateContent" if stream else "generateContent"
    filled = path.replace("{model}", quote(name, safe="")).replace("{action}", action)
    return Routed(provider, name, filled, "alt=sse" if stream else "", in_path=True)


def route_compatible(model: object, stream: bool) -> Routed:
    """Where `model` goes through its provider's OpenAI-compatible chat endpoint (the provider
    chosen as `route_model` chooses it)."""
    routed = route_model(model, stream)
    path = COMPATIBLE_CHAT.get(routed.provider)
    if path is None:  # not reached by the routes today; kept honest should a route be added
        raise BadRequest(
            f'"{routed.provider}" has no OpenAI-compatible endpoint: use /relay/{routed.provider}',
            code="unroutable_model",
        )
    return Routed(routed.provider, routed.model, path)


def routing_table() -> dict[str, object]:
    """The data `GET /models` shows: the same table `route_model` uses."""
    return {
        "providers": list(PROVIDERS),
        "providerPrefixes": list(_PREFIX_PATHS),
        "patterns": [
            {"pattern": f"^{r.pattern}", "flags": "i", "provider": r.provider} for r in ROUTES
        ],
    }
