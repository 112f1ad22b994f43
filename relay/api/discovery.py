"""`GET /models`: how `POST /relay` routes model names, and which models are allowed."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import UNSET, Meta, UnsetType
from starlette.requests import Request
from starlette.responses import Response

from relay.api.shapes import ProviderName, answer
from relay.providers.routing import routing_table
from relay.services import Services

__all__ = ["Models", "models"]


class ModelPattern(msgspec.Struct):
    pattern: str
    flags: str
    provider: ProviderName


class Models(msgspec.Struct, kw_only=True):
    providers: list[ProviderName]
    provider_prefixes: Annotated[
        list[ProviderName],
        Meta(
            description="The providers a `provider/name` model may name, without the slash "
            "(as the Node relay lists them)."
        ),
    ] = msgspec.field(name="providerPrefixes")
    patterns: list[ModelPattern]
    restricted: bool
    allowed_models: list[str] | UnsetType = UNSET
    message: str | UnsetType = UNSET


async def models(request: Request) -> Response:
    services: Services = request.state.services
    allowed = list(services.settings.allowed_models)
    fields: dict[str, object] = {**routing_table(), "restricted": bool(allowed)}
    if allowed:
        fields["allowed_models"] = allowed
        fields["message"] = (
            "Only models matching allowed_models (* matches anything; the bare name or "
            "provider/name) are permitted on this relay."
        )
    # The routing table is the router's own data: held to this shape on the way out.
    return answer(msgspec.convert(fields, Models))
