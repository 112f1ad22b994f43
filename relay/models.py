"""`ALLOWED_MODELS`: which models an inference request may name, and where each provider puts
the model name (the provider table's `model_in`).

Patterns are comma-separated, case-insensitive, `*` matches any run of characters, and a
pattern must match the whole name: either the bare name (`gpt-4o-mini`) or the prefixed one
(`openai/gpt-4o-mini`). When the list is set, a request whose model cannot be read (no field,
a body that is not JSON or a form, a path without a model) is refused like a forbidden one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from email.parser import BytesParser
from email.policy import HTTP
from typing import Final
from urllib.parse import parse_qs

from .errors import Forbidden
from .providers import Provider

__all__ = ["ModelPolicy", "model_of"]

_MAX_MODEL_LENGTH: Final = 256


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
    provider: Provider, path: str, query: bytes, content_type: str, body: bytes
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


def _body_field(content_type: str, body: bytes, field: str) -> str | None:
    """`field` of a JSON object, a urlencoded form or a multipart form body: whatever the
    client says the content type is, a body that is none of these names no model."""
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        message = BytesParser(policy=HTTP).parsebytes(
            b"content-type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        parts = [
            part.get_payload(decode=True)
            for part in (message.iter_parts() if message.is_multipart() else ())
            if part.get_param("name", header="content-disposition") == field
        ]
        return _only(p.decode("utf-8", "replace") for p in parts if isinstance(p, bytes))
    if media_type == "application/x-www-form-urlencoded":
        return _only(parse_qs(body.decode("utf-8", "replace")).get(field, ()))
    try:
        pairs = json.loads(body, object_pairs_hook=_Object)
    except (ValueError, RecursionError):
        return None
    if not isinstance(pairs, _Object):
        return None
    named = [value for key, value in pairs if key == field]
    return named[0] if len(named) == 1 and isinstance(named[0], str) else None


class _Object(list[tuple[str, object]]):
    """A JSON object as its (key, value) pairs, duplicates kept."""


def _only(values: Iterable[str]) -> str | None:
    """The one value given; None for none, or for several (parsers disagree on which wins,
    and the provider must not read another model than the one checked)."""
    found = list(values)
    return found[0] if len(found) == 1 else None
