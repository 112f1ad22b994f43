"""`ALLOWED_MODELS`: which models an inference request may name, and where each provider puts
the model name (the provider table's `model_in`).

Patterns are comma-separated, case-insensitive, `*` matches any run of characters, and a
pattern must match the whole name: either the bare name (`gpt-4o-mini`) or the prefixed one
(`openai/gpt-4o-mini`). When the list is set, a request whose model cannot be read (no field,
a body that is not JSON or a form, a path without a model) is refused like a forbidden one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final
from urllib.parse import parse_qs, unquote_plus

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import BadRequest, Forbidden
from .jsonedit import Body, TooDeep, find_members
from .providers import Provider

__all__ = ["ModelPolicy", "model_of"]

_MAX_MODEL_LENGTH: Final = 256
MAX_PARTS: Final = 100  # parts of a multipart form read for its model
_FORM_LOOKS: Final = 64  # places a urlencoded form is looked at for its model


class ModelPolicy:
    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(p.strip().lower() for p in patterns if p.strip())
        self._regex = re.compile(
            "|".join("(?:" + ".*".join(map(re.escape, p.split("*"))) + ")" for p in self.patterns),
            re.IGNORECASE | re.DOTALL,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.patterns)

    def allows(self, model: str, provider: str) -> bool:
        if not self.enabled:
            return True
        return any(self._regex.fullmatch(name) for name in (model, f"{provider}/{model}"))

    def check(self, model: str | None, provider: str) -> None:
        """403 unless `model` may be used through `provider`."""
        if model is None:
            raise Forbidden(
                "The request names no model this relay can read, and only some models are "
                "permitted on this relay.",
                code="model_not_permitted",
                allowed_models=list(self.patterns),
            )
        if not self.allows(model, provider):
            raise Forbidden(
                f'Model "{model}" is not permitted on this relay.',
                code="model_not_permitted",
                allowed_models=list(self.patterns),
            )


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
    if not model or len(model) > _MAX_MODEL_LENGTH:
        return None
    return model


def _body_field(content_type: str, body: Body, field: str) -> str | None:
    """`field` of a JSON object, a urlencoded form or a multipart form body: whatever the
    client says the content type is, a body that is none of these names no model."""
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return _multipart_field(content_type, body, field)
    if media_type == "application/x-www-form-urlencoded":
        return _form_field(body, field)
    try:
        member = find_members(body, (field,)).get(field)
    except TooDeep:
        raise BadRequest("The JSON body nests too deeply", code="invalid_json") from None
    except ValueError:  # not a JSON object, or the field twice
        return None
    value = member.value(str) if member is not None else None
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
        if current is not None and len(current) <= _MAX_MODEL_LENGTH * 4:
            current.extend(data[start : min(end, start + _MAX_MODEL_LENGTH * 4 + 1)])

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
