"""Edit one top-level member of a JSON object body, leaving every other byte as it was.

`POST /relay` strips a `provider/` prefix from `model` (and, for Google, drops `model` and
`stream`, which Gemini rejects): the rest of the body reaches the provider byte for byte, as
the contract promises, instead of being re-serialised.
"""

from __future__ import annotations

import dataclasses
import json

__all__ = ["JSONObject", "parse_object"]

_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"


@dataclasses.dataclass(frozen=True)
class _Member:
    key: str
    start: int
    """Where the key's opening quote is."""
    value_start: int
    value_end: int


def _skip(text: str, index: int) -> int:
    while index < len(text) and text[index] in _WHITESPACE:
        index += 1
    return index


class JSONObject:
    """A JSON object body: its top-level members, and byte-preserving edits of them."""

    def __init__(self, text: str, members: list[_Member]) -> None:
        self.text = text
        self._members = members

    def values(self, key: str) -> list[object]:
        """Every value given for `key` (more than one when the body repeats the key)."""
        return [
            _DECODER.raw_decode(self.text, m.value_start)[0] for m in self._members if m.key == key
        ]

    def replace(self, key: str, value: object) -> JSONObject:
        """The body with the (single) `key` member's value replaced."""
        (member,) = [m for m in self._members if m.key == key]
        text = self.text[: member.value_start] + json.dumps(value) + self.text[member.value_end :]
        return parse_object(text.encode())

    def remove(self, key: str) -> JSONObject:
        """The body without any `key` member (and without the comma that went with it)."""
        result = self
        while True:
            members = result._members
            index = next((i for i, m in enumerate(members) if m.key == key), None)
            if index is None:
                return result
            member = members[index]
            if index + 1 < len(members):
                start, end = member.start, members[index + 1].start
            elif index > 0:
                start, end = members[index - 1].value_end, member.value_end
            else:
                start, end = member.start, member.value_end
            result = parse_object((result.text[:start] + result.text[end:]).encode())

    def encode(self) -> bytes:
        return self.text.encode()


def parse_object(body: bytes) -> JSONObject:
    """`body` as a JSON object; ValueError when it is not valid UTF-8 JSON of one object."""
    text = body.decode("utf-8")
    index = _skip(text, 0)
    if text[index : index + 1] != "{":
        raise ValueError("not a JSON object")
    index = _skip(text, index + 1)
    members: list[_Member] = []
    if text[index : index + 1] == "}":
        end = index + 1
    else:
        while True:
            if text[index : index + 1] != '"':
                raise ValueError("expected a key")
            key, after_key = _DECODER.raw_decode(text, index)
            colon = _skip(text, after_key)
            if text[colon : colon + 1] != ":":
                raise ValueError("expected ':'")
            value_start = _skip(text, colon + 1)
            _, value_end = _DECODER.raw_decode(text, value_start)
            members.append(_Member(key, index, value_start, value_end))
            index = _skip(text, value_end)
            if text[index : index + 1] == ",":
                index = _skip(text, index + 1)
                continue
            if text[index : index + 1] != "}":
                raise ValueError("expected ',' or '}'")
            end = index + 1
            break
    if _skip(text, end) != len(text):
        raise ValueError("trailing data")
    return JSONObject(text, members)
