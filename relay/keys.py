"""A user's provider keys: `POST /keys/{provider}` (`?verify=true`), `POST
/keys/{provider}/rotate`, `GET /keys`, `DELETE /keys/{provider}`.

Keys go in, encrypted; only their metadata ever comes out. A verified save refuses a key that
carries another provider's prefix, then asks the provider (one free, read-only call) before
anything is stored: a key the provider refuses never replaces the one stored before. A key of
unfamiliar shape is the provider's to judge; the answer then carries a `hint` about the shape.
"""

from __future__ import annotations

import dataclasses

from starlette.requests import Request
from starlette.responses import JSONResponse

from backends import KeyMeta

from .auth import authenticate, now_ms
from .bodies import read_json
from .errors import BadRequest, RelayError
from .providers import PROVIDERS, Provider
from .proxy import unsupported_provider
from .services import Services
from .verify import Verification, check_format, key_hint, verify_key

__all__ = ["delete_key", "list_keys", "rotate_key", "store_key"]

MIN_KEY_LENGTH = 10
MAX_KEY_LENGTH = 4096
# The Node relay's clients send `key`; `apiKey` and `api_key` are accepted as aliases.
KEY_FIELDS = ("key", "apiKey", "api_key")


def _provider(request: Request) -> Provider:
    provider = PROVIDERS.get(request.path_params["provider"])
    if provider is None:
        raise unsupported_provider()
    return provider


async def store_key(request: Request) -> JSONResponse:
    verify = request.query_params.get("verify", "").lower() in ("1", "true", "yes")
    return await _save(request, verify=verify, rotation=False)


async def rotate_key(request: Request) -> JSONResponse:
    return await _save(request, verify=True, rotation=True)


async def _save(request: Request, *, verify: bool, rotation: bool) -> JSONResponse:
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
    meta = KeyMeta(key_hint(key))
    hint: str | None = None  # about a key of unfamiliar shape, which the provider judges
    if verify:
        hint = check_format(provider, key)
        verification = await _verify(services, provider, key)
        if verification.refused:
            title = provider.title or provider.name
            rejected = RelayError(
                f"New key was rejected by {title} ({verification.detail}). "
                "Your existing key was not changed.",
                code="key_rejected",
                status=422,
                key_status=verification.status,
            )
            if hint is not None:
                rejected.extra["hint"] = hint
            raise rejected
        verified_at = now_ms() if verification.conclusive else None
        meta = KeyMeta(
            key_hint(key), "ok" if verification.conclusive else "unverified", verified_at
        )
    record = services.cipher.encrypt(key, user_id=user.id, provider=provider.name)
    existed = await services.store.put_key(user.id, provider.name, record, now_ms(), meta)
    answer: dict[str, object] = {"ok": True, "provider": provider.name}
    if rotation:
        answer["rotated"] = existed
    if verify:
        answer["status"] = meta.status
    if hint is not None:
        answer["hint"] = hint
    return JSONResponse(answer)


async def _verify(services: Services, provider: Provider, key: str) -> Verification:
    base_url = services.settings.base_url_for(provider.name, provider.base_url)
    if not base_url:  # openai-compatible without a pinned upstream: nothing to ask
        return Verification("unverified", False, "the upstream is named per request")
    timeout = min(10.0, services.settings.upstream_timeout)
    return await verify_key(services.http, provider, base_url, key, timeout=timeout)


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
    await services.store.delete_key(user.id, provider.name)
    return JSONResponse({"ok": True})
