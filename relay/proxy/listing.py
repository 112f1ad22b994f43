"""`GET /relay/v1/models`: the models of every provider the caller holds a key for, as one
OpenAI-format list, so that an OpenAI SDK at `/relay/v1` can `models.list()` across them.

Each provider with an OpenAI-compatible endpoint (`relay.providers.routing.COMPATIBLE_CHAT`) and
a key of the caller's is asked its own listing, concurrently, with that key; every id comes back
as `provider/id`, which `/relay/v1/chat/completions` routes to the same provider. A provider that
fails (no answer in time, an error, an answer that is not a listing, a key that cannot be
decrypted) is left out and named in `unavailable`: one provider's trouble never fails the list.
Listings are free and name no model, so nothing is metered and `ALLOWED_MODELS` is not asked.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import httpx
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from backends import User
from relay.providers.table import PROVIDERS, forwarded_request_headers
from relay.security.auth import authenticate_digest
from relay.security.crypto import DecryptionError
from relay.services import Services

__all__ = ["LISTINGS", "list_models"]

LISTINGS: Final = {
    "openai": "/v1/models",
    "anthropic": "/v1/models",
    "google": "/v1beta/openai/models",
    "groq": "/openai/v1/models",
    "openrouter": "/api/v1/models",
    "mistral": "/v1/models",
}
"""Each provider's OpenAI-format model listing (openai-compatible has no fixed upstream)."""
MAX_LISTING_BYTES: Final = 4 * 1024 * 1024  # OpenRouter's, the longest, is some 400 KB
TIMEOUT: Final = 10.0  # seconds for each provider's listing


class _Listing(msgspec.Struct):
    data: list[dict[str, Any]]


async def list_models(request: Request) -> Response:
    services: Services = request.state.services
    user, digest = await authenticate_digest(services.store, services.tokens, request.headers)
    await services.limiter.check("relay", digest)
    held = [info.provider for info in await services.store.list_keys(user.id)]
    asked = [name for name in LISTINGS if name in held]
    answers = await asyncio.gather(*(_listing(services, user, name) for name in asked))
    data = [model for models in answers if models is not None for model in models]
    unavailable = [name for name, models in zip(asked, answers, strict=True) if models is None]
    body = {"object": "list", "data": data, "unavailable": unavailable}
    return Response(msgspec.json.encode(body), media_type="application/json")


async def _listing(services: Services, user: User, name: str) -> list[dict[str, Any]] | None:
    provider = PROVIDERS[name]
    record = await services.store.get_key(user.id, name)
    if record is None:  # removed meanwhile
        return None
    try:
        key = services.cipher.decrypt(record, user_id=user.id, provider=name)
    except DecryptionError:
        return None
    settings = services.settings
    headers = forwarded_request_headers(provider, {}, key, settings.default_headers_for(name))
    url = settings.base_url_for(name, provider.base_url) + LISTINGS[name]
    try:
        async with asyncio.timeout(TIMEOUT):
            async with services.http.stream("GET", url, headers=headers) as answer:
                if answer.status_code != 200:
                    return None
                body = bytearray()
                async for chunk in answer.aiter_bytes():  # decoded: the bound is on what it holds
                    body += chunk
                    if len(body) > MAX_LISTING_BYTES:
                        return None
        listing = msgspec.json.decode(body, type=_Listing)
    except (TimeoutError, httpx.HTTPError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    return [
        {
            "id": f"{name}/{model_id.removeprefix('models/')}",
            "object": "model",
            "created": model.get("created") if isinstance(model.get("created"), int) else 0,
            "owned_by": name,
        }
        for model in listing.data
        if isinstance(model_id := model.get("id"), str) and model_id
    ]
