"""Top-level members of a JSON object body, read and edited without parsing the rest.

`POST /relay` reads `model` and `stream`, then strips a `provider/` prefix from `model` (and,
for Google, drops both, which Gemini rejects); an `ALLOWED_MODELS` check reads the model of a
provider's own request, as do a narrow token's model patterns and the owner's caps. Such bodies
can be megabytes (base64 images in a vision request) of any shape a client likes, so they are
never walked in Python: msgspec validates the whole body and skips every other member at C
speed, holding each wanted value as a view into the body (no copy), from which the member's
place is known; an edit is one splice in place, and every other byte reaches the provider as
the client sent it. A check only reads (`member_value`), and works out no place unless the name
may be there twice.

A member named twice is refused: parsers disagree on which one counts, and the provider must
not read another model than the one the relay checked. A key can be spelled with escapes
(`"mod\\u0065l"`), so the body is decoded a second time without the member found whenever the
name may occur elsewhere in it (written plainly twice, or with one of its letters escaped
anywhere); nested members of the same name are fine.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import re
from collections.abc import Sequence
from typing import Any, Final

import msgspec

__all__ = [
    "Body",
    "Member",
    "Repeated",
    "TooDeep",
    "cut",
    "find_members",
    "member_value",
    "replace_value",
]

Body = bytes | bytearray

MAX_KEY_BYTES: Final = 256  # a wanted member's key as written, escapes and all
_WHITESPACE: Final = b" \t\n\r"


class TooDeep(ValueError):
    """The body nests deeper than the decoder follows."""


class Repeated(ValueError):
    """A wanted member is given twice at the top level."""


@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    raw: bytes
    """The value as the body spells it (a view into the body until copied; wanted values are
    small)."""
    start: int
    """Where the member's key begins."""
    value_start: int
    end: int
    """Just past the value."""

    def value(self, kind: type[Any]) -> Any:
        """The value decoded as `kind` (`str`, `bool`), or None when it is not one."""
        return _value(self.raw, kind)


def _value(raw: bytes | msgspec.Raw, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError:
        return None


@functools.lru_cache(maxsize=16)
def _decoder(names: tuple[str, ...]) -> msgspec.json.Decoder[Any]:
    """A decoder that keeps `names` as raw views and skips everything else."""
    fields = [(name, msgspec.Raw, None) for name in names]
    return msgspec.json.Decoder(msgspec.defstruct("Members", fields))


class _Py_buffer(ctypes.Structure):
    _fields_ = (
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.py_object),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )


def _address(buffer: object) -> int:
    """Where `buffer`'s bytes are in memory (a `msgspec.Raw` is a view into its input)."""
    view = _Py_buffer()
    ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(buffer), ctypes.byref(view), 0)
    try:
        return int(view.buf or 0)
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


def _decode(body: Body, names: tuple[str, ...]) -> Any:
    try:
        return _decoder(names).decode(body)
    except RecursionError:
        raise TooDeep("the JSON body nests too deeply") from None
    except msgspec.DecodeError as exc:  # ValidationError (not an object) is one too
        raise ValueError(str(exc)) from None


def _key_start(body: Body, value_start: int) -> int:
    """Where the key of the member whose value starts at `value_start` begins."""
    at = value_start - 1
    while body[at] in _WHITESPACE:
        at -= 1
    if body[at] != ord(":"):
        raise ValueError("expected ':' before a value")
    at -= 1
    while body[at] in _WHITESPACE:
        at -= 1
    close, floor = at, max(0, at - MAX_KEY_BYTES)
    while True:  # back to the key's opening quote: the first one not escaped
        at = body.rfind(b'"', floor, at)
        if at < 0:
            raise ValueError("a key longer than the relay reads")
        before = body[floor:at]
        if (len(before) - len(before.rstrip(b"\\"))) % 2 == 0:
            break
    if close - at < 1:
        raise ValueError("expected a key")
    return at


def find_members(body: Body, names: Sequence[str]) -> dict[str, Member]:
    """The top-level members of the JSON object `body` named `names` that it has.

    ValueError when `body` is not one JSON object (`TooDeep` when it nests past the decoder's
    limit); `Repeated` when it gives one of `names` twice."""
    wanted = tuple(names)
    found = _decode(body, wanted)
    base = _address(body)
    members: dict[str, Member] = {}
    for name in wanted:
        raw = getattr(found, name)
        if raw is None:
            continue
        value_start = _address(raw) - base
        end = value_start + len(memoryview(raw))
        members[name] = Member(name, bytes(raw), _key_start(body, value_start), value_start, end)
    del found
    for member in members.values():
        if _maybe_twice(body, member.name):
            rest = bytearray(body)
            cut(rest, [member])
            if getattr(_decode(rest, (member.name,)), member.name) is not None:
                raise Repeated(f"{member.name} is given twice")
    return members


def member_value(body: Body, name: str, kind: type[Any]) -> Any:
    """The top-level member `name` of the JSON object `body` decoded as `kind`; None when it has
    none, or one that is not a `kind`. Raises as `find_members`, whose work on where the member
    is (which only an edit needs) it skips unless the name may be there twice."""
    found = getattr(_decode(body, (name,)), name)
    if found is None:
        return None
    if _maybe_twice(body, name):
        return find_members(body, (name,))[name].value(kind)
    return _value(found, kind)


def _maybe_twice(body: Body, name: str) -> bool:
    """Whether `name` may be a key more than once: written plainly more than once, or with one
    of its letters escaped somewhere. Two passes over the body, each at memory speed."""
    return body.count(b'"' + name.encode() + b'"') != 1 or _escaped(name).search(body) is not None


@functools.lru_cache(maxsize=16)
def _escaped(name: str) -> re.Pattern[bytes]:
    """Any of `name`'s letters as a `\\uXXXX` escape, in either case. One pattern, so the
    body is searched once; its literal `\\u00` prefix keeps the search at memory speed (the
    names wanted are ASCII)."""

    def either_case(digit: str) -> str:
        return f"[{digit.lower()}{digit.upper()}]" if digit.isalpha() else digit

    codes = sorted({"".join(map(either_case, f"{ord(c):02x}")) for c in name})
    return re.compile(rb"\\u00(?:" + "|".join(codes).encode() + rb")")


def _removal(body: Body, member: Member) -> tuple[int, int]:
    """The span to cut for `member`: with the comma after it, or else the one before it."""
    after = member.end
    while body[after] in _WHITESPACE:
        after += 1
    if body[after] == ord(","):
        return member.start, after + 1
    before = member.start - 1
    while body[before] in _WHITESPACE:
        before -= 1
    if body[before] == ord(","):
        return before, member.end
    return member.start, member.end  # the only member


def cut(body: bytearray, members: Sequence[Member]) -> None:
    """Remove `members` (found in `body`) from `body`, in place; every other byte stays."""
    for member in sorted(members, key=lambda m: m.start, reverse=True):
        # The later member goes first: an earlier one's offsets stay true.
        start, end = _removal(body, member)
        del body[start:end]


def replace_value(body: bytearray, member: Member, value: object) -> None:
    """Replace `member`'s value in `body` by `value`, encoded as JSON, in place."""
    body[member.value_start : member.end] = msgspec.json.encode(value)
