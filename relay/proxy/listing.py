"""`GET /relay/v1/models`: the models of every provider the caller holds a key for, as one
OpenAI-format list, so that an OpenAI SDK at `/relay/v1` can `models.list()` across them.

Each provider with an OpenAI-compatible API (the table's `openai_base`) and a key of the
caller's is asked its own listing, concurrently, with that key; every id comes back as
`provider/id`, which `/relay/v1/chat/completions` routes to the same provider. A provider that
fails (no answer in time, an error, an answer that is not a listing, a key that cannot be
decrypted) is left out and named in `unavailable`: one provider's trouble never fails the list.
Listings are free and name no model, so nothing is metered and `ALLOWED_MODELS` is not asked;
a narrow token sees only the providers and models it may use.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import httpx
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from backends import User
from relay.errors import RelayError
from relay.providers.table import PROVIDERS, forwarded_request_headers
from relay.proxy.prepare import caller, stored_key
from relay.security.grants import grant_of
from relay.services import Services

__all__ = ["LISTINGS", "list_models"]

LISTINGS: Final = {
    name: provider.openai_base + "/models"
    for name, provider in PROVIDERS.items()
    if provider.openai_base and provider.base_url  # openai-compatible has no fixed upstream
}
"""Each provider's OpenAI-format model listing."""
MAX_LISTING_BYTES: Final = 4 * 1024 * 1024  # OpenRouter's, the longest, is some 400 KB
TIMEOUT: Final = 10.0  # seconds for each provider's listing


class _Listing(msgspec.Struct):
    data: list[dict[str, Any]]


async def list_models(request: Request) -> Response:
    services: Services = request.state.services
    user, _, _ = await caller(services, request.headers)
    grant = grant_of(user)
    held = [info.provider for info in await services.store.list_keys(user.id)]
    asked = [name for name in LISTINGS if name in held and grant.may_use(name)]
    answers = await asyncio.gather(*(_listing(services, user, name) for name in asked))
    data = [
        model
        for models in answers
        if models is not None
        for model in models
        if grant.may_use(model["owned_by"], model["id"].partition("/")[2])
    ]
    unavailable = [name for name, models in zip(asked, answers, strict=True) if models is None]
    body = {"object": "list", "data": data, "unavailable": unavailable}
    return Response(msgspec.json.encode(body), media_type="application/json")


async def _listing(services: Services, user: User, name: str) -> list[dict[str, Any]] | None:
    provider = PROVIDERS[name]
    try:
        _, key = await stored_key(services, user, provider)
    except RelayError:  # removed meanwhile, or unreadable (logged)
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
