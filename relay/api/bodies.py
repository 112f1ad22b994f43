"""Request bodies the relay reads rather than streams: a declared length checked once, a capped
read, and a budget on what the process holds at once.

The account and key endpoints read a few hundred bytes of JSON (`read_json`). A relayed body is
read whole only when the relay must look inside it (`POST /relay`, an `ALLOWED_MODELS` check):
into one buffer, never copied on the way, and held against the process's `BodyBudget` until it
has been sent, so that many large bodies waiting on a slow provider cannot take the process's
memory.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from relay.errors import BadRequest, PayloadTooLarge, ServiceUnavailable

__all__ = [
    "JSON_BODY_LIMIT",
    "BodyBudget",
    "ClientGone",
    "declared_length",
    "read_json",
    "read_whole",
]

# The account and key endpoints take a few hundred bytes of JSON; `POST /users` is open to
# anyone, so none of them reads more than this, whatever REQUEST_BODY_LIMIT_BYTES allows.
JSON_BODY_LIMIT: Final = 64 * 1024


class ClientGone(Exception):
    """The client disconnected while its request body was still arriving."""


def declared_length(headers: Headers, limit: int, too_large: str | None = None) -> int | None:
    """The `content-length` the client declared; 413 (saying `too_large`) when over `limit`,
    400 when malformed."""
    raw = headers.get("content-length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequest("Invalid Content-Length header", code="invalid_content_length")
    if int(raw) > limit:
        raise PayloadTooLarge(too_large or "Request body too large")
    return int(raw)


class BodyBudget:
    """The bytes of request bodies the process holds whole, in all: past `limit`, 503."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise ServiceUnavailable(
                "The relay holds as many request bodies as it can: try again shortly",
                code="relay_busy",
                headers={"retry-after": "1"},
            )
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size


async def read_whole(
    receive: Receive, declared: int | None, limit: int, budget: BodyBudget, too_large: str
) -> bytearray:
    """The whole body, at most `limit` bytes (413 saying `too_large` past it), in one buffer
    taken from `budget`: the caller gives `len()` of it back once the body is sent. `declared`
    is the checked `content-length`, if any; `ClientGone` when the client leaves first."""
    if declared is not None:
        budget.take(declared)
        body = bytearray(declared)
    else:
        body = bytearray()
    size = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            if declared is None:
                if size + len(chunk) > limit:
                    raise PayloadTooLarge(too_large)
                budget.take(len(chunk))
                body += chunk
            else:  # the server holds the client to its declared length
                body[size : size + len(chunk)] = chunk
            size += len(chunk)
            if not message.get("more_body", False):
                return body
    except BaseException:
        budget.give(declared if declared is not None else size)
        raise


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object; `{}` for an empty body. 400 for anything that is not one,
    413 past `limit` (at most `JSON_BODY_LIMIT`)."""
    limit = min(limit, JSON_BODY_LIMIT)
    declared_length(request.headers, limit)
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
        # msgspec, not json: it refuses what no store can hold (a lone surrogate's escape) and
        # what JSON is not (NaN).
        data = msgspec.json.decode(body)
    except (ValueError, RecursionError):
        raise BadRequest("Malformed JSON body", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("Request body must be a JSON object", code="invalid_json")
    return data
