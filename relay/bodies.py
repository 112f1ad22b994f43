"""Reading small JSON request bodies with a size cap (the relay path streams instead)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

from .errors import BadRequest, PayloadTooLarge

__all__ = ["JSON_BODY_LIMIT", "declared_length", "read_json"]

# The account and key endpoints take a few hundred bytes of JSON; `POST /users` is open to
# anyone, so none of them reads more than this, whatever REQUEST_BODY_LIMIT_BYTES allows.
JSON_BODY_LIMIT = 64 * 1024


def declared_length(request: Request, limit: int) -> int | None:
    """The `content-length` the client declared; 413 when over `limit`, 400 when malformed."""
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequest("Invalid Content-Length header", code="invalid_content_length")
    if int(raw) > limit:
        raise PayloadTooLarge()
    return int(raw)


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object; `{}` for an empty body. 400 for anything that is not one,
    413 past `limit` (at most `JSON_BODY_LIMIT`)."""
    limit = min(limit, JSON_BODY_LIMIT)
    declared_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge()
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequest("Request body incomplete", code="incomplete_body") from None
    body = b"".join(chunks)
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("Malformed JSON body", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("Request body must be a JSON object", code="invalid_json")
    return data
