"""A user's provider keys: `POST /keys/{provider}` (`?verify=true`), `POST
/keys/{provider}/rotate`, `GET /keys`, `DELETE /keys/{provider}`.

Keys go in, encrypted; only their metadata ever comes out. A verified save refuses a key that
carries another provider's prefix, then asks the provider (one free, read-only call) before
anything is stored: a key the provider refuses never replaces the one stored before. A key of
unfamiliar shape is the provider's to judge; the answer then carries a `hint` about the shape.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType
from starlette.requests import Request
from starlette.responses import Response

from backends import KEY_STATUSES, KeyMeta
from relay.api.bodies import read_json
from relay.api.shapes import ProviderName, answer, parse
from relay.errors import BadRequest, RelayError
from relay.providers.table import PROVIDERS, Provider, unsupported_provider
from relay.providers.verify import Verification, check_format, key_hint, verify_key
from relay.security.auth import authenticate, now_ms
from relay.services import Services

__all__ = [
    "KeyInfo",
    "KeyList",
    "KeyStored",
    "Ok",
    "StoreKeyBody",
    "delete_key",
    "list_keys",
    "rotate_key",
    "store_key",
]

# The Node relay's clients send `key`; `apiKey` and `api_key` are accepted as aliases.
KEY_FIELDS = ("key", "apiKey", "api_key")


class StoreKeyBody(msgspec.Struct):
    """The provider key, trimmed; `apiKey` and `api_key` are accepted for `key`."""

    # Checked once trimmed. Keys travel in HTTP headers: printable ASCII only.
    key: Annotated[str, Meta(min_length=10, max_length=4096, pattern="^[ -~]*$")]


class KeyStored(msgspec.Struct, kw_only=True):
    ok: Literal[True]
    provider: ProviderName
    rotated: bool | UnsetType = UNSET
    status: Literal["ok", "unverified"] | UnsetType = UNSET
    hint: Annotated[
        str | UnsetType,
        Meta(
            description="Present when the key's shape is unfamiliar for the provider (which "
            "accepted it): a hint in case it was pasted for another one."
        ),
    ] = UNSET


class KeyInfo(msgspec.Struct):
    """A stored key as `GET /keys` shows it: what is known about it, never the key."""

    # Built field for field from the store's `backends.KeyInfo` (a test holds them equal).
    provider: ProviderName
    hint: Annotated[str, Meta(description="`sk-...a1b2`: never more of a key.")]
    status: Annotated[str, Meta(extra_json_schema={"enum": list(KEY_STATUSES)})]
    created_at: int
    updated_at: int
    verified_at: int | None
    last_used_at: int | None


class KeyList(msgspec.Struct):
    providers: list[ProviderName]
    keys: list[KeyInfo]


class Ok(msgspec.Struct):
    ok: Literal[True]


def _provider(request: Request) -> Provider:
    provider = PROVIDERS.get(request.path_params["provider"])
    if provider is None:
        raise unsupported_provider()
    return provider


async def store_key(request: Request) -> Response:
    verify = request.query_params.get("verify", "").lower() in ("1", "true", "yes")
    return await _save(request, verify=verify, rotation=False)


async def rotate_key(request: Request) -> Response:
    return await _save(request, verify=True, rotation=True)


async def _save(request: Request, *, verify: bool, rotation: bool) -> Response:
    services: Services = request.state.services
    user = await authenticate(services.store, services.tokens, request.headers)
    provider = _provider(request)
    body = await read_json(request, services.settings.request_body_limit)
    value = next((body[f] for f in KEY_FIELDS if f in body), None)
    trimmed = {"key": value.strip() if isinstance(value, str) else value}
    refusal = BadRequest("A valid API key is required", code="invalid_key")
    key = parse(trimmed, StoreKeyBody, refusal).key
    meta = KeyMeta(key_hint(key))
    status: Literal["ok", "unverified"] | UnsetType = UNSET
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
        status = "ok" if verification.conclusive else "unverified"
        meta = KeyMeta(key_hint(key), status, now_ms() if verification.conclusive else None)
    record = services.cipher.encrypt(key, user_id=user.id, provider=provider.name)
    existed = await services.store.put_key(user.id, provider.name, record, now_ms(), meta)
    return answer(
        KeyStored(
            ok=True,
            provider=provider.name,
            rotated=existed if rotation else UNSET,
            status=status,
            hint=UNSET if hint is None else hint,
        )
    )


async def _verify(services: Services, provider: Provider, key: str) -> Verification:
    base_url = services.settings.base_url_for(provider.name, provider.base_url)
    if not base_url:  # openai-compatible without a pinned upstream: nothing to ask
        return Verification("unverified", False, "the upstream is named per request")
    timeout = min(10.0, services.settings.upstream_timeout)
    return await verify_key(services.http, provider, base_url, key, timeout=timeout)


async def list_keys(request: Request) -> Response:
    services: Services = request.state.services
    user = await authenticate(services.store, services.tokens, request.headers)
    keys = await services.store.list_keys(user.id)
    infos = [KeyInfo(**dataclasses.asdict(k)) for k in keys]
    return answer(KeyList([k.provider for k in keys], infos))


async def delete_key(request: Request) -> Response:
    services: Services = request.state.services
    user = await authenticate(services.store, services.tokens, request.headers)
    provider = _provider(request)
    await services.store.delete_key(user.id, provider.name)
    return answer(Ok(True))
