"""`relay.proxy.paths`: the upstream path is decoded once, dot-resolved, checked, then
re-encoded."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.providers.table import PROVIDERS
from relay.proxy.paths import encode_path, normalize_path

# No example database: the tests must not write files outside tmp_path.
PROPERTY = settings(database=None, max_examples=300, deadline=None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1/chat/completions/../../files", "/v1/files"),
        ("/v1/chat/completions/./../../files", "/v1/files"),
        ("/v1/./chat/./completions", "/v1/chat/completions"),
        ("/../v1/chat/completions", "/v1/chat/completions"),
        ("/../../../../etc/passwd", "/etc/passwd"),
        ("/v1/chat/completions/../completions", "/v1/chat/completions"),
        ("v1/chat/completions", "/v1/chat/completions"),
        ("", "/"),
        ("/", "/"),
        ("/v1//chat", "/v1//chat"),
        # Dot segments spelled with percent escapes resolve too.
        ("/v1/chat/%2e%2e/files", "/v1/files"),
        ("/v1/chat/%2E%2E/files", "/v1/files"),
        ("/v1/chat/.%2e/files", "/v1/files"),
        ("/v1/chat/%2e./files", "/v1/files"),
        ("/v1/chat/%2e/completions", "/v1/chat/completions"),
        # An encoded slash is a real slash after the one decode.
        ("/v1/chat%2Fcompletions", "/v1/chat/completions"),
        ("/v1/chat%2fcompletions", "/v1/chat/completions"),
        ("/v1/chat/completions%2F..%2F..%2Ffiles", "/v1/files"),
        ("/v1/chat/completions/..%2f..%2ffiles", "/v1/files"),
        ("/v1/chat/completions%2F%2e%2e%2F%2e%2e%2Ffiles", "/v1/files"),
        # Decoded once only: a double-encoded escape stays an escape, never a separator.
        ("/v1/chat%252Fcompletions", "/v1/chat%2Fcompletions"),
        ("/v1/chat/completions/%252e%252e/files", "/v1/chat/completions/%2e%2e/files"),
        ("/v1/chat/completions/%25", "/v1/chat/completions/%"),
        # Trailing dot segments keep the path a directory.
        ("/v1/chat/completions/.", "/v1/chat/completions/"),
        ("/v1/chat/completions/..", "/v1/chat/"),
        ("/v1/chat/completions/%2e", "/v1/chat/completions/"),
        ("/v1/chat/completions/%2e%2e", "/v1/chat/"),
        ("/.", "/"),
        ("/..", "/"),
        ("/../..", "/"),
        # Segments that merely contain dots are ordinary.
        ("/v1/.../x", "/v1/.../x"),
        ("/v1/..x/y", "/v1/..x/y"),
        ("/models/gemini-1.5-pro", "/models/gemini-1.5-pro"),
        # Valid UTF-8 escapes decode; malformed escapes are kept as text.
        ("/models/caf%C3%A9", "/models/café"),
        ("/models/a%zz", "/models/a%zz"),
        ("/models/a%", "/models/a%"),
        # Google's `model:action` keeps its colon, spelled literally or escaped.
        (
            "/v1beta/models/gemini-pro:streamGenerateContent",
            "/v1beta/models/gemini-pro:streamGenerateContent",
        ),
        (
            "/v1beta/models/gemini-pro%3AstreamGenerateContent",
            "/v1beta/models/gemini-pro:streamGenerateContent",
        ),
        ("/models/a b", "/models/a b"),
        ("/models/a%20b", "/models/a b"),
    ],
)
def test_normalize_path(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "/v1/chat/completions\x00",
        "/v1/chat/completions%00",
        "/v1/chat/\ncompletions",
        "/v1/chat/completions%0a",
        "/v1/chat/completions%0D%0AHost:%20evil",
        "/v1/chat/completions\r",
        "/v1/chat/completions\t",
        "/v1/chat/completions%09",
        "/v1/chat/completions\x1f",
        "/v1/chat/completions%1F",
        "/v1/chat/completions\x7f",
        "/v1/chat/completions%7F",
        "/v1/chat/completions\\..\\..\\files",
        "/v1/chat/completions%5c..%5c..%5cfiles",
        "/v1/chat/completions%5C",
    ],
)
def test_control_characters_and_backslashes_are_refused(raw: str) -> None:
    assert normalize_path(raw) is None


@pytest.mark.parametrize(
    "raw",
    [
        "/models/%ff",
        "/models/%FF%FE",
        "/models/%80",
        "/models/%c3%28",
        "/models/%c3",
        "/models/%e2%82",
        "/models/%ed%a0%80",  # an encoded UTF-16 surrogate
        "/models/%c0%af",  # overlong `/`
        "/v1/chat/completions/%c0%ae%c0%ae/files",  # overlong `..`
    ],
)
def test_invalid_utf8_escapes_are_refused(raw: str) -> None:
    assert normalize_path(raw) is None


@pytest.mark.parametrize(
    ("path", "wire"),
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        (
            "/v1beta/models/gemini-pro:streamGenerateContent",
            "/v1beta/models/gemini-pro:streamGenerateContent",
        ),
        ("/models/a b", "/models/a%20b"),
        ("/models/a?b", "/models/a%3Fb"),
        ("/models/a#b", "/models/a%23b"),
        ("/models/a%b", "/models/a%25b"),
        ("/models/a%2Fb", "/models/a%252Fb"),
        ('/models/"a"', "/models/%22a%22"),
        ("/models/<a>", "/models/%3Ca%3E"),
        ("/models/café", "/models/caf%C3%A9"),
        ("/models/猫", "/models/%E7%8C%AB"),
        ("/a/-._~!$&'()*+,;=:@", "/a/-._~!$&'()*+,;=:@"),
        ("/AZaz09", "/AZaz09"),
    ],
)
def test_encode_path(path: str, wire: str) -> None:
    assert encode_path(path) == wire


def test_double_encoded_slash_travels_as_an_escape() -> None:
    """`%252F` is checked as the text `%2F` and reaches the provider as that text again."""
    path = normalize_path("/v1beta/models/a%252Fb:generateContent")
    assert path == "/v1beta/models/a%2Fb:generateContent"
    assert encode_path(path) == "/v1beta/models/a%252Fb:generateContent"
    assert unquote(encode_path(path)) == path


@pytest.mark.parametrize(
    "raw",
    [
        "/v1/chat/completions/../../files",
        "/v1/chat/completions/%2e%2e/%2e%2e/files",
        "/v1/chat/completions%2f..%2f..%2ffiles",
        "/v1/chat/completions/..%2F..%2Ffiles",
        "/v1/chat/completions/../../../v1/files",
        "/v1/chat/completions/..",
        "/v1/chat/completionsX",
        "/v1/chat/completions%00",
        "/v1/chat/completions\\..\\files",
    ],
)
def test_escapes_from_an_allowed_prefix_are_not_allowed(raw: str) -> None:
    path = normalize_path(raw)
    assert path is None or not PROVIDERS["openai"].allows(path)


# ---------------------------------------------------------------------------------------------
# Properties

_PIECES = (
    "v1",
    "chat",
    "completions",
    "models",
    "files",
    "gemini:streamGenerateContent",
    "a b",
    "",
    ".",
    "..",
    "...",
    ".x",
    "%2e",
    "%2E",
    "%2e%2e",
    ".%2e",
    "%2f",
    "%2F",
    "%252F",
    "%252e%252e",
    "%25",
    "%",
    "%zz",
    "%c3%a9",
    "%ff",
    "%00",
    "\\",
    "%5c",
    "\n",
    "?",
    "#",
    ":",
)
_SEPARATORS = ("/", "/", "/", "%2F", "%2f", "//")


@st.composite
def tricky_suffixes(draw: st.DrawFn) -> str:
    """Path tails built from dot segments, escapes and separators that attack the allowlist."""
    parts = draw(st.lists(st.tuples(st.sampled_from(_SEPARATORS), st.sampled_from(_PIECES))))
    return "".join(sep + piece for sep, piece in parts)


_ALL_PREFIXES = sorted({p for provider in PROVIDERS.values() for p in provider.allowed_paths})
raw_paths = st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from("/.%2eEfF5cC0aA:é \\")),
    tricky_suffixes(),
    st.builds(str.__add__, st.sampled_from(_ALL_PREFIXES), tricky_suffixes()),
)


def _segments(path: str) -> list[str]:
    return path.split("/")[1:]


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 word for word (the input-buffer algorithm, rules A to E): an
    oracle independent of the implementation's segment stack, and what a provider's server
    would make of the path it receives."""
    given, output = path, ""
    while given:
        if given.startswith("../"):  # A
            given = given[3:]
        elif given.startswith("./") or given.startswith("/./"):
            given = given[2:]
        elif given == "/.":
            given = "/"
        elif given.startswith("/../") or given == "/..":  # C
            given = "/" + given[4:]
            output = output[: output.rfind("/")] if "/" in output else ""
        elif given in (".", ".."):  # D
            given = ""
        else:  # E
            end = given.find("/", 1)
            end = len(given) if end == -1 else end
            output, given = output + given[:end], given[end:]
    return output


@PROPERTY
@given(raw_paths)
@example("/v1/chat%252Fcompletions")
@example("/%2e%2e/%252e%252e/x")
@example("%")
def test_normalized_paths_are_absolute_dot_free_and_stable(raw: str) -> None:
    path = normalize_path(raw)
    if path is None:
        return
    assert path.startswith("/")
    assert not {".", ".."} & set(_segments(path))
    assert not any(ord(c) < 0x20 or c in "\x7f\\" for c in path)
    # Normalising is a no-op on its own output. The output is already decoded, so "again"
    # means on the form that goes on the wire: decoding that once gives the path back, and
    # a path with no `%` left in it is also literally a fixed point.
    wire = encode_path(path)
    assert normalize_path(wire) == path
    if "%" not in path:
        assert normalize_path(path) == path
    # What the provider sees after its one decode is exactly what was checked.
    assert unquote(wire, errors="strict") == path
    assert _remove_dot_segments(unquote(wire)) == path


@PROPERTY
@given(st.sampled_from(sorted(PROVIDERS)), raw_paths)
@example("openai", "/v1/chat/completions/../../files")
@example("openai", "/v1/chat/completions%2F..%2F..%2Ffiles")
@example("openai", "/v1/chat/completionsX")
@example("google", "/v1beta/models/%2e%2e/%2e%2e/v1/files")
def test_allowed_paths_really_are_under_an_allowed_prefix(name: str, raw: str) -> None:
    provider = PROVIDERS[name]
    path = normalize_path(raw)
    if path is None or not provider.allows(path):
        return
    segments = _segments(path)
    assert not {".", ".."} & set(segments)
    assert any(
        segments[: len(_segments(prefix))] == _segments(prefix) for prefix in provider.allowed_paths
    ), path
    assert any(path == prefix or path.startswith(prefix + "/") for prefix in provider.allowed_paths)
    # The provider, decoding once and resolving dot segments itself, lands on the same path.
    assert _remove_dot_segments(unquote(encode_path(path))) == path
