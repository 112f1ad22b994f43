"""Upstream path normalisation: decode once, resolve dot segments, re-encode for the wire.

The allowlist is checked on the normalised form, and exactly that form is sent upstream, so what
is checked is what the provider sees: `/v1/chat/completions/../../files` and `%2e%2e` tricks
resolve before the check, and a `%2F` becomes a real `/` on both sides of it.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote, unquote

__all__ = ["encode_path", "normalize_path"]

# RFC 3986 pchar minus what we re-encode; `:` must stay literal for Google's `model:action`.
_SAFE = "/:@!$&'()*+,;=-._~"
_REFUSED: Final = re.compile(r"[\x00-\x1f\x7f\\]")  # control characters and backslashes


def normalize_path(raw: str) -> str | None:
    """The decoded, dot-resolved path, or None when it can never be a valid upstream path."""
    try:
        decoded = unquote(raw, errors="strict") if "%" in raw else raw
    except UnicodeDecodeError:
        return None
    if _REFUSED.search(decoded):
        return None
    if not decoded.startswith("/"):
        decoded = "/" + decoded
    if "/." not in decoded:
        return decoded  # no dot segment: nothing to resolve
    output: list[str] = []
    segments = decoded.split("/")[1:]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "..":
            if output:
                output.pop()
            if last:
                output.append("")
        elif segment == ".":
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/" + "/".join(output)


def encode_path(path: str) -> str:
    return quote(path, safe=_SAFE)
