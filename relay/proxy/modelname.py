"""The model a request names, read where its provider's `model_in` says: the path, the query,
or a field of its body (JSON, a urlencoded form or a multipart form), without parsing the rest.

A body is read at C speed only: JSON through `relay.proxy.jsonedit`, a multipart form through
python-multipart's streaming parser with at most `MAX_PARTS` parts, a urlencoded form by a
bounded search.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from urllib.parse import parse_qs, unquote_plus

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from relay.errors import BadRequest
from relay.providers.table import Provider
from relay.proxy.jsonedit import Body, TooDeep, member_value
from relay.usage.meter import MAX_MODEL_CHARS, model_name

__all__ = ["MAX_PARTS", "model_of"]

MAX_PARTS: Final = 100  # parts of a multipart form read for its model
_FORM_LOOKS: Final = 64  # places a urlencoded form is looked at for its model


def model_of(
    provider: Provider, path: str, query: bytes, content_type: str, body: Body
) -> str | None:
    """The model a request names, read where `provider.model_in` says; None if it names none."""
    kind, _, name = provider.model_in.partition(":")
    model: str | None
    if kind == "path":
        prefix = next((p for p in provider.allowed_paths if path.startswith(p + "/")), None)
        if prefix is None:
            return None
        model = path[len(prefix) + 1 :]
        if name == "action":  # Google: models/{model}:{action}
            model = model.partition(":")[0]
    elif kind == "query":
        model = _only(parse_qs(query.decode("latin-1"), keep_blank_values=True).get(name, ()))
    else:
        model = _body_field(content_type, body, name)
    return model_name(model)


def _body_field(content_type: str, body: Body, field: str) -> str | None:
    """`field` of a JSON object, a urlencoded form or a multipart form body: whatever the
    client says the content type is, a body that is none of these names no model."""
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return _multipart_field(content_type, body, field)
    if media_type == "application/x-www-form-urlencoded":
        return _form_field(body, field)
    try:
        value = member_value(body, field, str)
    except TooDeep:
        raise BadRequest("The JSON body nests too deeply", code="invalid_json") from None
    except ValueError:  # not a JSON object, or the field twice
        return None
    return value if isinstance(value, str) else None


def _form_field(body: Body, field: str) -> str | None:
    """`field` of a urlencoded form, found with `find` (no provider here takes such a form: it
    is read only as far as a plain `field=` goes, and two of them name no model)."""
    key = field.encode() + b"="
    values: list[str] = []
    at = body.find(key)
    for _ in range(_FORM_LOOKS):
        if at < 0 or len(values) > 1:
            return _only(values)
        if at == 0 or body[at - 1] == ord("&"):
            end = body.find(b"&", at)
            raw = body[at + len(key) : end if end >= 0 else len(body)]
            values.append(unquote_plus(bytes(raw).decode("latin-1")))
        at = body.find(key, at + 1)
    return None  # a form that says `model=` this often names no model we trust


class _TooManyParts(Exception):
    pass


def _multipart_field(content_type: str, body: Body, field: str) -> str | None:
    """`field`'s part of a multipart form, read by a streaming parser that looks no further
    than `MAX_PARTS` parts and keeps no more of a part than a model name can be."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        return None
    wanted = field.encode()
    values: list[bytes] = []
    parts = 0
    header = b""
    name: bytes | None = None
    current: bytearray | None = None

    def on_part_begin() -> None:
        nonlocal parts, name, current
        parts += 1
        if parts > MAX_PARTS:
            raise _TooManyParts
        name, current = None, None

    def on_header_field(data: bytes, start: int, end: int) -> None:
        nonlocal header
        header += bytes(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        nonlocal name
        if header.lower() == b"content-disposition":
            name = parse_options_header(bytes(data[start:end]))[1].get(b"name")

    def on_header_end() -> None:
        nonlocal header
        header = b""

    def on_headers_finished() -> None:
        nonlocal current
        if name == wanted:
            current = bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if current is not None and len(current) <= MAX_MODEL_CHARS * 4:
            current.extend(data[start : min(end, start + MAX_MODEL_CHARS * 4 + 1)])

    def on_part_end() -> None:
        if current is not None:
            values.append(bytes(current))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)  # type: ignore[arg-type]  # any buffer: it slices and finds
        parser.finalize()
    except _TooManyParts:
        raise BadRequest(
            f"A multipart body may have at most {MAX_PARTS} parts", code="too_many_parts"
        ) from None
    except (MultipartParseError, ValueError):  # not a form it can read: no model in it
        return None
    return _only(v.decode("utf-8", "replace") for v in values)


def _only(values: Iterable[str]) -> str | None:
    """The one value given; None for none, or for several (parsers disagree on which wins,
    and the provider must not read another model than the one checked)."""
    found = list(values)
    return found[0] if len(found) == 1 else None
