"""A user's provider keys: `POST /keys/{provider}`, `GET /keys`, `DELETE /keys/{provider}`.

Keys go in, encrypted; only provider names ever come out.
"""

from __future__ import annotations

import dataclasses

from starlette.requests import Request
from starlette.responses import JSONResponse

from backends import KeyMeta

from .auth import authenticate, now_ms
from .bodies import read_json
from .errors import BadRequest
from .keyhealth import key_hint
from .providers import PROVIDERS
from .proxy import unsupported_provider
from .services import Services

__all__ = ["delete_key", "list_keys", "store_key"]

MIN_KEY_LENGTH = 10
MAX_KEY_LENGTH = 4096
# The Node relay's clients send `key`; `apiKey` and `api_key` are accepted as aliases.
KEY_FIELDS = ("key", "apiKey", "api_key")


def _provider(request: Request) -> str:
    name: str = request.path_params["provider"]
    if name not in PROVIDERS:
        raise unsupported_provider()
    return name


async def store_key(request: Request) -> JSONResponse:
    services: Services = request.state.services
    user = await authenticate(services, request.headers)
    provider = _provider(request)
    body = await read_json(request, services.settings.request_body_limit)
    value = next((body[f] for f in KEY_FIELDS if f in body), None)
    key = value.strip() if isinstance(value, str) else ""
    # Keys travel in HTTP headers: printable ASCII only.
    if not MIN_KEY_LENGTH <= len(key) <= MAX_KEY_LENGTH or not (
        key.isascii() and key.isprintable()
    ):
        raise BadRequest("A valid API key is required", code="invalid_key")
    record = services.cipher.encrypt(key, user_id=user.id, provider=provider)
    await services.store.put_key(user.id, provider, record, now_ms(), KeyMeta(key_hint(key)))
    return JSONResponse({"ok": True, "provider": provider})


async def list_keys(request: Request) -> JSONResponse:
    services: Services = request.state.services
    user = await authenticate(services, request.headers)
    keys = await services.store.list_keys(user.id)
    return JSONResponse(
        {
            "providers": [k.provider for k in keys],
            "keys": [dataclasses.asdict(k) for k in keys],
        }
    )


async def delete_key(request: Request) -> JSONResponse:
    services: Services = request.state.services
    user = await authenticate(services, request.headers)
    provider = _provider(request)
    await services.store.delete_key(user.id, provider)
    return JSONResponse({"ok": True})
