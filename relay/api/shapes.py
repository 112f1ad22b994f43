"""The JSON the endpoints read and answer, declared once as msgspec Structs.

Each endpoint module declares its own request bodies and answers beside its handler; this module
holds what several share and the two uses of a declaration: `parse` holds a request body to one,
`answer` encodes one as the response. `relay.api.openapi` documents the same classes, so the
document cannot drift from what is validated and sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, TypeVar

import msgspec
from msgspec import Meta
from starlette.responses import Response

from relay.errors import BadRequest

__all__ = [
    "NAME_CHARS",
    "PROVIDER_NAME_REF",
    "AppId",
    "Count",
    "ProviderName",
    "answer",
    "is_printable_name",
    "parse",
]

T = TypeVar("T")

PROVIDER_NAME_REF: Final = "#/components/schemas/ProviderName"
# One of `PROVIDERS`, documented as a reference to the enum the document builds from the table;
# `Any` so that msgspec writes the reference alone, without a `type` beside it.
ProviderName = Annotated[Any, Meta(extra_json_schema={"$ref": PROVIDER_NAME_REF})]
NAME_CHARS: Final = 128
"""The most characters of an app id or a token's name."""
AppId = Annotated[str, Meta(min_length=1, max_length=NAME_CHARS)]
"""Printable too (`is_printable_name`): more than a JSON Schema pattern can say."""
Count = Annotated[int, Meta(ge=0)]


def is_printable_name(text: str) -> bool:
    """Whether `text` is 1 to `NAME_CHARS` printable characters, as an app id and a token's name
    are (no control character, no lone surrogate: every store can hold it)."""
    return 0 < len(text) <= NAME_CHARS and text.isprintable()


def parse(data: Mapping[str, Any], shape: type[T], refusal: BadRequest) -> T:
    """`data` (a request's JSON object) as `shape`; `refusal` when it does not fit. Fields the
    shape does not name are ignored."""
    try:
        return msgspec.convert(data, shape)
    except msgspec.ValidationError:
        raise refusal from None


def answer(
    shape: msgspec.Struct, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(msgspec.json.encode(shape), status, headers, media_type="application/json")
